"""Sweep files: a search space over dotted config keys, in YAML (no Ray here).

    name: beta-cost                       # the sweep directory's name (default: the file's stem)
    config: base.yaml                     # optional base config (relative to this file)
    overrides: [ppo.steps=20]             # applied to every trial
    smoke: [ppo.steps=2]                  # added (after the pipeline's smoke sizes) by --smoke
    metric: population/expected_reward    # what schedulers and "best" use (reported every PPO step)
    mode: max
    num_samples: 1                        # repeats of the whole space (random domains drawn anew)
    max_concurrent: 0                     # 0 = derived from the cluster and each trial's bundles
    seed: 0                               # Dirichlet draws and Tune's sampler
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}   # fifo | asha | pbt
    space:
      ppo.beta: {loguniform: [0.01, 1.0]}           # or {grid: [...]}, {uniform: [lo, hi]}, {choice: [...]}
      reward.cost: {grid: [reward_gap, ordinal, costs/flat.npy]}    # names or .npy/.yaml L x L matrices
      crowd.mixture: {named: {uniform: {}, experts: {expert_chemist: 3, casual_user: 1}}}
      # or: crowd.mixture: {dirichlet: {alpha: 1.0, personas: [a, b, c], samples: 4}}
      ppo.lr: 0.0005                                # a bare value fixes the key for every trial

Each swept key takes *labels* in Tune's config (what the results table shows: a number, a
cost name, a mixture's name); :meth:`SweepSpace.resolve` maps a trial's labels to config
values. Dirichlet mixtures are drawn here, once, from ``seed`` (so a resumed sweep and the
table see the same weights), and swept as a grid over their draws.

Every error is one line naming the file and the key (``space.ppo.beta: ...``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raydprm.config import Config, ConfigError, describe

__all__ = ["SweepSpaceError", "Param", "SchedulerSpec", "SweepSpace", "load_space", "DOMAINS", "SCHEDULERS"]

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint", "named", "dirichlet")
SCHEDULERS = ("fifo", "asha", "pbt")
_TOP_KEYS = ("name", "description", "config", "overrides", "smoke", "metric", "mode", "num_samples",
             "max_concurrent", "seed", "scheduler", "space")
_SCHED_KEYS = {"fifo": (), "asha": ("max_t", "grace_period", "reduction_factor"),
               "pbt": ("perturbation_interval", "mutations", "quantile_fraction", "resample_probability",
                               "synch")}
# keys whose value is a whole mapping (the rest of the config tree is leaves)
_MAPPING_KEYS = ("crowd.mixture",)


class SweepSpaceError(ConfigError):
    """A sweep file is malformed; the message names the file and the key."""


def _keys() -> set[str]:
    return {k for k, *_ in describe()}


@dataclass(frozen=True)
class Param:
    """One swept (or fixed) dotted key.

    ``kind``: a domain of :data:`DOMAINS` or ``"value"``; ``args``: its bounds (uniform,
    loguniform, randint) or its labels (grid, choice, named, dirichlet, value); ``values``:
    label -> config value where they differ (named mixtures, drawn mixtures, cost files)."""

    key: str
    kind: str
    args: tuple[Any, ...]
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def discrete(self) -> bool:
        return self.kind in ("grid", "choice", "named", "dirichlet", "value")

    def resolve(self, label: Any) -> Any:
        return self.values.get(label, label) if isinstance(label, str) else label


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "fifo"
    options: Mapping[str, Any] = field(default_factory=dict)
    mutations: tuple[Param, ...] = ()


@dataclass(frozen=True)
class SweepSpace:
    """A parsed sweep file (see the module docstring)."""

    path: Path
    name: str
    params: tuple[Param, ...]
    base_config: Path | None = None
    overrides: tuple[str, ...] = ()
    smoke: tuple[str, ...] = ()
    metric: str = "population/expected_reward"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent: int = 0
    seed: int = 0
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    description: str = ""

    @property
    def swept(self) -> tuple[str, ...]:
        """Dotted keys that vary between trials (the results table has a column for each)."""
        return tuple(p.key for p in self.params if p.kind != "value")

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    def resolve(self, labels: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's Tune config (labels by dotted key) -> config values by dotted key."""
        out = {}
        for p in self.params:
            if p.key in labels:
                out[p.key] = p.resolve(labels[p.key])
        return out

    def overrides_of(self, labels: Mapping[str, Any]) -> list[str]:
        """``key=value`` overrides of a trial (values as JSON, which YAML reads back)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.resolve(labels).items()]

    def check(self, base: Config) -> None:
        """Every value a trial can take is a valid config for ``base`` (each discrete value and
        both ends of each range); the first that is not raises naming its key."""
        for p in (*self.params, *self.scheduler.mutations):
            if p.kind in ("uniform", "loguniform", "randint"):
                samples = [p.args[0], p.args[1] - 1 if p.kind == "randint" else p.args[1]]
            else:
                samples = list(p.args)
            for label in samples:
                try:
                    cfg = base.override([f"{p.key}={json.dumps(p.resolve(label))}"])
                except ConfigError as e:
                    raise SweepSpaceError(f"{self.path}: space.{p.key} = {label!r}: {e}") from None
                if p.key == "reward.cost":
                    _check_cost(self.path, label, cfg)
        if self.scheduler.type == "pbt":
            every = int(self.scheduler.options.get("perturbation_interval", 1))
            ck = base.pipeline.checkpoint_every
            if every % ck:
                raise SweepSpaceError(f"{self.path}: scheduler.perturbation_interval = {every} must be a multiple of "
                                      f"pipeline.checkpoint_every = {ck} (PBT clones a trial from its checkpoint)")


def _check_cost(path: Path, label: Any, cfg: Config) -> None:
    """A named cost exists for these labels; a matrix file is L x L, finite, >= 0, zero diagonal."""
    from raydprm.errors import RaydprmError
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.train.reward import resolve_cost

    try:
        resolve_cost(cfg.reward.cost, label_scale_from_config(cfg.labels))
    except RaydprmError as e:
        raise SweepSpaceError(f"{path}: space.reward.cost = {label!r}: {e}") from None


# --------------------------------------------------------------------------- parsing


def _err(path: Path, where: str, msg: str) -> SweepSpaceError:
    return SweepSpaceError(f"{path}: {where}: {msg}")


def _number(path: Path, where: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise _err(path, where, f"expected a number, got {x!r}")
    try:
        v = float(x)
    except ValueError:
        raise _err(path, where, f"expected a number, got {x!r}") from None
    if not math.isfinite(v):
        raise _err(path, where, f"expected a finite number, got {x!r}")
    return v


def _bounds(path: Path, where: str, kind: str, spec: Any) -> tuple[float, float]:
    if not isinstance(spec, (list, tuple)) or len(spec) != 2:
        raise _err(path, where, f"{kind} needs [low, high], got {spec!r}")
    lo, hi = (_number(path, where, x) for x in spec)
    if not lo < hi:
        raise _err(path, where, f"{kind} needs low < high, got [{lo:g}, {hi:g}]")
    if kind == "loguniform" and lo <= 0:
        raise _err(path, where, f"loguniform needs 0 < low, got [{lo:g}, {hi:g}]")
    if kind == "randint":
        if not (lo.is_integer() and hi.is_integer()):
            raise _err(path, where, f"randint needs integer bounds, got [{lo:g}, {hi:g}]")
        return int(lo), int(hi)
    return lo, hi


def _cost_value(path: Path, where: str, v: Any) -> tuple[str, str]:
    """(label, config value) of a cost: a name stays; a file is made absolute (trials run elsewhere)."""
    if not isinstance(v, str) or not v:
        raise _err(path, where, f"a cost is a name or a .npy/.yaml file, got {v!r}")
    if not v.endswith((".npy", ".yaml", ".yml")):
        return v, v
    f = Path(v).expanduser()
    f = f if f.is_absolute() else (path.parent / f)
    if not f.is_file():
        raise _err(path, where, f"cost matrix file '{v}' does not exist (relative paths are read from {path.parent})")
    return v, str(f.resolve())


def _mixture(path: Path, where: str, m: Any, personas: Sequence[str]) -> dict[str, float]:
    if not isinstance(m, Mapping):
        raise _err(path, where, f"a persona mixture is a mapping persona: weight, got {m!r}")
    unknown = sorted(set(m) - set(personas))
    if unknown:
        raise _err(path, where, f"unknown persona(s) {unknown}; known: {', '.join(personas)}")
    out = {str(k): _number(path, f"{where}.{k}", w) for k, w in m.items()}
    if any(w < 0 for w in out.values()) or (out and sum(out.values()) <= 0):
        raise _err(path, where, f"mixture weights must be >= 0 with a positive total, got {out}")
    return out


def _persona_names(base: Config) -> list[str]:
    from raydprm.sim.personas import load_personas

    return list(load_personas(base.crowd.personas_source or None))


def _dirichlet(path: Path, where: str, spec: Any, personas: Sequence[str], seed: int) -> dict[str, dict[str, float]]:
    """``samples`` mixtures w ~ Dirichlet(alpha) over ``personas`` (all by default), drawn once from ``seed``."""
    import numpy as np

    if not isinstance(spec, Mapping):
        raise _err(path, where, f"dirichlet needs a mapping {{alpha, personas, samples}}, got {spec!r}")
    extra = sorted(set(spec) - {"alpha", "personas", "samples", "seed"})
    if extra:
        raise _err(path, where, f"unknown dirichlet option(s) {extra}; allowed: alpha, personas, samples, seed")
    names = list(spec.get("personas") or personas)
    _mixture(path, where, dict.fromkeys(names, 1.0), personas)  # names known
    if len(names) < 2:
        raise _err(path, where, f"dirichlet needs at least 2 personas, got {names}")
    alpha = spec.get("alpha", 1.0)
    a = [_number(path, f"{where}.alpha", x) for x in (alpha if isinstance(alpha, (list, tuple)) else [alpha] * len(names))]
    if len(a) != len(names) or min(a) <= 0:
        raise _err(path, where, f"dirichlet alpha needs {len(names)} positive numbers (one per persona), got {alpha!r}")
    n = spec.get("samples", 4)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _err(path, where, f"dirichlet samples must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(int(spec.get("seed", seed)))
    w = rng.dirichlet(np.asarray(a), size=n)  # (n, P): w_i ~ Dir(alpha)
    return {f"dirichlet-{i}": {p: round(float(x), 6) for p, x in zip(names, row)} for i, row in enumerate(w)}


def _param(path: Path, key: str, spec: Any, keys: set[str], base: Config, seed: int) -> Param:
    where = f"space.{key}"
    if key not in keys:
        import difflib

        close = difflib.get_close_matches(key, sorted(keys), n=1)
        raise _err(path, where, "not a config key" + (f"; did you mean '{close[0]}'?" if close else
                                                      " (see `raydprm config show`)"))
    is_mix, is_cost = key in _MAPPING_KEYS, key == "reward.cost"
    if not isinstance(spec, Mapping) or (is_mix and not (len(spec) == 1 and next(iter(spec)) in DOMAINS)):
        value = spec
        if is_mix:
            value = _mixture(path, where, spec, _persona_names(base))
            return Param(key, "value", ("fixed",), {"fixed": value})
        if is_cost:
            label, value = _cost_value(path, where, spec)
            return Param(key, "value", (label,), {label: value})
        return Param(key, "value", (value,))
    if len(spec) != 1:
        raise _err(path, where, f"give one domain ({', '.join(DOMAINS)}), got {sorted(spec)}")
    kind, arg = next(iter(spec.items()))
    if kind not in DOMAINS:
        raise _err(path, where, f"unknown domain '{kind}'; allowed: {', '.join(DOMAINS)}")
    if kind in ("uniform", "loguniform", "randint"):
        if is_mix or is_cost:
            raise _err(path, where, f"{kind} is for numbers; use grid/choice/named" + ("/dirichlet" if is_mix else ""))
        return Param(key, kind, _bounds(path, where, kind, arg))
    if kind in ("named", "dirichlet") and not is_mix:
        raise _err(path, where, f"{kind} is for persona mixtures (crowd.mixture)")
    if kind == "dirichlet":
        draws = _dirichlet(path, where, arg, _persona_names(base), seed)
        return Param(key, "dirichlet", tuple(draws), draws)
    if kind == "named":
        if not isinstance(arg, Mapping) or not arg:
            raise _err(path, where, f"named needs a mapping name: mixture, got {arg!r}")
        personas = _persona_names(base)
        named = {str(n): _mixture(path, f"{where}.{n}", m or {}, personas) for n, m in arg.items()}
        return Param(key, "named", tuple(named), named)
    if not isinstance(arg, (list, tuple)) or not arg:
        raise _err(path, where, f"{kind} needs a non-empty list of values, got {arg!r}")
    if is_cost:
        pairs = [_cost_value(path, f"{where}[{i}]", v) for i, v in enumerate(arg)]
        return Param(key, kind, tuple(lab for lab, _ in pairs), {lab: v for lab, v in pairs if lab != v})
    if is_mix:
        raise _err(path, where, "a mixture grid is written as named: {name: {persona: weight}}")
    if any(isinstance(v, (Mapping, list)) for v in arg):
        raise _err(path, where, f"{kind} values must be scalars, got {list(arg)!r}")
    return Param(key, kind, tuple(arg))


def _scheduler(path: Path, spec: Any, keys: set[str], base: Config, seed: int) -> SchedulerSpec:
    if spec is None:
        return SchedulerSpec()
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise _err(path, "scheduler", f"expected a mapping with 'type', got {spec!r}")
    kind = spec.get("type", "fifo")
    if kind not in SCHEDULERS:
        raise _err(path, "scheduler.type", f"'{kind}' is not one of {', '.join(SCHEDULERS)}")
    extra = sorted(set(spec) - {"type", *_SCHED_KEYS[kind]})
    if extra:
        raise _err(path, f"scheduler.{extra[0]}", f"not an option of {kind} (options: "
                   f"{', '.join(_SCHED_KEYS[kind]) or 'none'})")
    opts: dict[str, Any] = {}
    for k in ("max_t", "grace_period", "reduction_factor", "perturbation_interval"):
        if k in spec:
            v = spec[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if k == "reduction_factor" else 1):
                raise _err(path, f"scheduler.{k}", f"must be an integer >= {2 if k == 'reduction_factor' else 1}, "
                           f"got {v!r}")
            opts[k] = v
    for k in ("quantile_fraction", "resample_probability"):
        if k in spec:
            v = _number(path, f"scheduler.{k}", spec[k])
            if not 0 <= v <= (0.5 if k == "quantile_fraction" else 1):
                raise _err(path, f"scheduler.{k}", f"out of range, got {v:g}")
            opts[k] = v
    if "synch" in spec:
        if not isinstance(spec["synch"], bool):
            raise _err(path, "scheduler.synch", f"must be true or false, got {spec['synch']!r}")
        opts["synch"] = spec["synch"]
    mutations: tuple[Param, ...] = ()
    if kind == "pbt":
        m = spec.get("mutations")
        if not isinstance(m, Mapping) or not m:
            raise _err(path, "scheduler.mutations", "PBT needs a mapping of dotted keys to domains, e.g. "
                       "{ppo.beta: {loguniform: [0.01, 1.0]}}")
        params = []
        for k, v in m.items():
            if not str(k).startswith("ppo."):
                raise _err(path, f"scheduler.mutations.{k}", "PBT can only mutate ppo.* keys (a clone continues "
                           "from another trial's learner checkpoint; its SFT, crowd and reward model stay)")
            p = _param(path, str(k), {"choice": v} if isinstance(v, list) else v, keys, base, seed)
            if p.kind not in ("grid", "choice", "uniform", "loguniform", "randint"):
                raise _err(path, f"scheduler.mutations.{k}", "give a list (grid/choice) or a range "
                           "(uniform/loguniform/randint)")
            params.append(p)
        mutations = tuple(params)
    return SchedulerSpec(kind, opts, mutations)


def load_space(path: str | Path, base: Config | None = None, *, check: bool = True) -> SweepSpace:
    """Parse and check a sweep file against ``base`` (default: its own ``config`` + ``overrides``);
    ``check=False`` reads it without checking the values against a config (to learn its base config
    and overrides first)."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpaceError(f"sweep file '{path}' does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepSpaceError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(doc, Mapping):
        raise SweepSpaceError(f"{path}: a sweep file is a mapping with a 'space' key")
    extra = sorted(set(doc) - set(_TOP_KEYS))
    if extra:
        raise _err(path, extra[0], f"unknown key; allowed: {', '.join(_TOP_KEYS)}")
    cfg_file = doc.get("config")
    base_config = None
    if cfg_file:
        base_config = Path(cfg_file) if Path(cfg_file).is_absolute() else (path.parent / cfg_file).resolve()
        if not base_config.is_file():
            raise _err(path, "config", f"base config '{cfg_file}' does not exist")
    lists = {}
    for k in ("overrides", "smoke"):
        v = doc.get(k) or []
        if not isinstance(v, list) or not all(isinstance(x, str) and "=" in x for x in v):
            raise _err(path, k, f"expected a list of key=value strings, got {v!r}")
        lists[k] = tuple(v)
    if base is None:
        from raydprm.config import load_config

        try:
            base = load_config(base_config, lists["overrides"])
        except ConfigError as e:
            raise _err(path, "overrides", str(e)) from None
    ints = {}
    for k, lo, default in (("num_samples", 1, 1), ("max_concurrent", 0, 0), ("seed", 0, 0)):
        v = doc.get(k, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise _err(path, k, f"must be an integer >= {lo}, got {v!r}")
        ints[k] = v
    mode = doc.get("mode", "max")
    if mode not in ("max", "min"):
        raise _err(path, "mode", f"must be 'max' or 'min', got {mode!r}")
    metric = doc.get("metric", "population/expected_reward")
    if not isinstance(metric, str) or not metric:
        raise _err(path, "metric", f"must be a metric name, got {metric!r}")
    space = doc.get("space")
    if not isinstance(space, Mapping) or not space:
        raise _err(path, "space", "needs a mapping of dotted config keys to domains or values")
    keys = _keys()
    params = [_param(path, str(k), v, keys, base, ints["seed"]) for k, v in space.items()]
    sched = _scheduler(path, doc.get("scheduler"), keys, base, ints["seed"])
    have = {p.key for p in params}
    params += [p for p in sched.mutations if p.key not in have]  # PBT's keys start from their domain
    name = doc.get("name") or path.stem
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        raise _err(path, "name", f"must be a plain directory name, got {name!r}")
    out = SweepSpace(path=path.resolve(), name=name, params=tuple(params), base_config=base_config,
                     overrides=lists["overrides"], smoke=lists["smoke"], metric=metric, mode=mode,
                     num_samples=ints["num_samples"], max_concurrent=ints["max_concurrent"], seed=ints["seed"],
                     scheduler=sched, description=str(doc.get("description") or ""))
    if check:
        out.check(base)
    return out
