"""Typed, frozen configuration for every raydprm component.

One small dataclass per component under one root :class:`Config`. Every field carries
its documentation and its allowed values (``choices`` or a numeric range) in the
field metadata, so that validation, error messages and ``raydprm config --help``-style
listings all read from one place.

Loading::

    cfg = load_config("my.yaml", ["ppo.beta=0.1", "rollout.engine=vllm"])
    save_config(cfg, run_dir)          # writes run_dir/config.yaml

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
full dotted key and what is allowed; so do duplicate keys in a YAML file, non-finite
numbers (every float is finite), integers that do not fit in 64 bits, and the cross-field
rules of each section (``validate``) and between sections (:meth:`Config.__post_init__`).
Secrets (``serve.auth_token``) are masked as ``<redacted>`` in ``config show`` and in saved
configs; a masked value read back means "not given". Defaults run on a laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

# the label defaults (plain Python; importing it loads no torch)
from raydprm.core.hh_labels import HH_GRID, HH_LABELS, HH_REWARDS
from raydprm.errors import ConfigError

_MISSING = dataclasses.MISSING
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # every config integer fits in 64 bits (torch, numpy, SQLite)
MASK = "<redacted>"  # how secrets are written out; read back it means "not given"


def opt(default: Any = _MISSING, *, doc: str, choices: Sequence[Any] | None = None,
        ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, factory: Any = _MISSING, secret: bool = False) -> Any:
    """A config field: default, one line of documentation, and its allowed values.
    ``secret``: masked in ``config show`` and in saved configs, refused on the command line."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "le": le, "lt": lt, "secret": secret}
    if factory is not _MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _allowed(meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    parts = []
    for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(k) is not None:
            parts.append(f"{sym} {meta[k]}")
    return " and ".join(parts) if parts else "any value"


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Range/choice checks for one (already type-correct) value."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed; expected {_allowed(meta)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN
            raise ConfigError(f"config key '{key}' is NaN; expected {_allowed(meta)}")
        for k, ok in (("ge", lambda v, b: v >= b), ("gt", lambda v, b: v > b),
                      ("le", lambda v, b: v <= b), ("lt", lambda v, b: v < b)):
            bound = meta.get(k)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"config key '{key}' = {value!r} is out of range; expected {_allowed(meta)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config key '{key}' = {value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT_MIN <= value <= INT_MAX:
                shown = value if abs(value) < 10 ** 30 else f"an integer of {len(str(abs(value)))} digits"
                raise ConfigError(f"config key '{key}' = {shown} is out of range; integers must fit in 64 bits "
                                  f"({INT_MIN}..{INT_MAX})")
            return value
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected an integer")
    if tp is float:
        if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            raise ConfigError(f"config key '{key}' = an integer of {len(str(abs(value)))} digits is out of range; "
                              "expected a finite number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            out = float(value)  # YAML 1.1 reads "3e-3" (no dot) as a string
        else:
            raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a number")
        if not math.isfinite(out):
            raise ConfigError(f"config key '{key}' = {value!r} is not a finite number")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{key}' must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a mapping")
        if len(value) > 4096:
            raise ConfigError(f"config key '{key}' has {len(value)} entries; at most 4096 are accepted")
        kt, vt = args if args else (Any, Any)
        return {_coerce(f"{key}", k, kt): _coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug, not user error


@dataclass(frozen=True)
class Section:
    """Base of every config section: validates its fields' metadata on construction."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self.section}.{f.name}" if self.section else f.name
            value = _coerce(key, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            _check_value(key, value, f.metadata)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override in a section. Raise ConfigError naming the key."""


def check_path_component(key: str, value: str) -> None:
    """Refuse a value that is not exactly one path component (a name joined under a directory):
    empty, ``.``/``..``, a separator (so an absolute path too) or a NUL would put what is written
    under it somewhere else (``run.name=../x`` wrote beside the output directory)."""
    why = None
    if not value.strip():
        why = "is empty"
    elif value in (".", ".."):
        why = "is a relative directory reference"
    elif os.path.isabs(value):
        why = "is an absolute path"
    elif "/" in value or "\\" in value or (os.altsep and os.altsep in value):
        why = "contains a path separator"
    elif "\0" in value:
        why = "contains a NUL character"
    if why:
        raise ConfigError(f"config key '{key}' = {value!r} {why}; it must be one directory name under "
                          "run.output_dir (e.g. run.name=demo2)")


# --------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class RunConfig(Section):
    section: ClassVar[str] = "run"
    name: str = opt("demo", doc="Run name; outputs go to <output_dir>/<name>.")
    output_dir: str = opt("runs", doc="Directory under which every run writes its outputs.")
    seed: int = opt(0, doc="Global random seed (torch, numpy, python, samplers).", ge=0)
    device: str = opt("auto", doc="Device for single-process work.", choices=("auto", "cpu", "cuda"))
    log_level: str = opt("INFO", doc="Python logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    loggers: tuple[str, ...] = opt(("tensorboard",), doc="Where runs, comparisons and sweep trials log the resolved "
                                   "config (params) and every metric: any of tensorboard (<run_dir>/tb), mlflow "
                                   "(run.tracking_uri), wandb (offline, <run_dir>/wandb); [] logs nowhere. mlflow and "
                                   "wandb need the 'tracking' extra.")
    tracking_uri: str = opt("", doc="MLflow tracking URI (http://host:5000, file:/path, databricks); empty = a file "
                            "store at <run.output_dir>/mlruns.")
    experiment: str = opt("raydprm", doc="The MLflow experiment / W&B project that runs log under.")

    def validate(self) -> None:
        self._validate_loggers()
        check_path_component("run.name", self.name)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", self.output_dir):
            # every role writes its own outputs as files on its own node (the SFT and reward tasks, the
            # learner's checkpoints and export, the SQLite store): the run directory is a file path
            raise ConfigError(
                f"config key 'run.output_dir' = '{self.output_dir}' is a storage URI; raydprm's roles write the "
                "run directory as files (checkpoints, models, a SQLite store) from their own nodes, so give a "
                "path every node can write: a shared disk (NFS, a PersistentVolumeClaim), or the bucket mounted "
                "at the same path on every node (mountpoint-s3, gcsfuse, s3fs)")

    def _validate_loggers(self) -> None:
        known = ("tensorboard", "mlflow", "wandb")
        for name in self.loggers:
            if name not in known:
                raise ConfigError(f"config key 'run.loggers' has {name!r}; known loggers: {', '.join(known)}")
        if len(set(self.loggers)) != len(self.loggers):
            raise ConfigError(f"config key 'run.loggers' names a logger twice: {list(self.loggers)}")
        if not self.experiment.strip():
            raise ConfigError("config key 'run.experiment' must not be empty")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class ModelsConfig(Section):
    section: ClassVar[str] = "models"
    policy: str = opt("tiny-gpt2", doc="Policy model: 'tiny-gpt2'/'tiny-opt' (built offline), a local HF directory or a hub name.")
    reward_backbone: str = opt("tiny-opt", doc="Reward-model backbone: a tiny kit name, a directory or a hub name.")
    tokenizer: str = opt("", doc="Tokenizer directory or hub name; empty = the policy's own.")
    cache_dir: str = opt("", doc="Where tiny offline models are built; empty = $RAYDPRM_CACHE or ~/.cache/raydprm.")
    dtype: str = opt("float32", doc="Parameter dtype for loaded models.", choices=("float32", "bfloat16", "float16"))
    trust_remote_code: bool = opt(False, doc="Passed to from_pretrained for hub models with custom code.")


@dataclass(frozen=True)
class LabelsConfig(Section):
    section: ClassVar[str] = "labels"
    names: tuple[str, ...] = opt(HH_LABELS, doc="Label names, best first by convention (default: the paper's 6 HH labels).")
    rewards: tuple[float, ...] = opt(HH_REWARDS, doc="Scalar reward of each label (paper, Table 1).")
    grid: tuple[tuple[float, float], ...] | None = opt(
        tuple((float(h), float(d)) for h, d in HH_GRID),
        doc="Optional (helpfulness level, harm level) coordinates of each label, used by the grid_l1 cost.")

    def validate(self) -> None:
        if len(self.names) < 2:
            raise ConfigError(f"config key 'labels.names' needs at least 2 labels, got {len(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ConfigError("config key 'labels.names' has duplicate names")
        if len(self.rewards) != len(self.names):
            raise ConfigError(f"config key 'labels.rewards' has {len(self.rewards)} entries but labels.names has {len(self.names)}")
        if any(r != r or r in (float("inf"), float("-inf")) for r in self.rewards):
            raise ConfigError("config key 'labels.rewards' must be finite numbers")
        if self.grid is not None and len(self.grid) != len(self.names):
            raise ConfigError(f"config key 'labels.grid' has {len(self.grid)} entries but labels.names has {len(self.names)}")


def check_mixture(key: str, mixture: Mapping[str, float]) -> None:
    """Persona weights: each >= 0 and a positive total (empty = the caller's default)."""
    for k, w in mixture.items():
        if not (w >= 0):
            raise ConfigError(f"config key '{key}.{k}' = {w!r} must be >= 0")
    if mixture and sum(mixture.values()) <= 0:
        raise ConfigError(f"config key '{key}' must have a positive total weight")


# crowd.preset -> the persona file shipped in raydprm/sim/ (raydprm.sim.personas reads this table)
CROWD_PRESETS: dict[str, str] = {"default": "personas.yaml", "polarized": "personas_polarized.yaml"}


@dataclass(frozen=True)
class CrowdConfig(Section):
    section: ClassVar[str] = "crowd"
    personas_file: str = opt("", doc="YAML file of personas; empty = the shipped raydprm/sim/personas.yaml.")
    mixture: dict[str, float] = opt(factory=dict, doc="Persona weights of the population; empty = uniform over all personas.")
    n_items: int = opt(384, doc="Number of generated (prompt, response) items the crowd votes on.", ge=1)
    votes_per_item: int = opt(12, doc="Votes cast on each item (spread over personas by the mixture).", ge=1)
    preset: str = opt("default", doc="Shipped persona set: 'default' (raydprm/sim/personas.yaml, personas that differ "
                      "mostly in strictness) or 'polarized' (raydprm/sim/personas_polarized.yaml, groups that "
                      "disagree in direction; docs/pluralism.md); crowd.personas_file overrides both.",
                      choices=tuple(CROWD_PRESETS))

    def validate(self) -> None:
        check_mixture("crowd.mixture", self.mixture)

    @property
    def personas_source(self) -> str:
        """The personas file this crowd reads: crowd.personas_file if set, else the preset's shipped
        file ("" = the default personas.yaml, what ``load_personas`` reads for an empty path)."""
        if self.personas_file:
            return self.personas_file
        if self.preset == "default":
            return ""
        return str(Path(__file__).resolve().parent / "sim" / CROWD_PRESETS[self.preset])  # shipped beside personas.yaml


@dataclass(frozen=True)
class SFTConfig(Section):
    section: ClassVar[str] = "sft"
    n_examples: int = opt(4000, doc="SFT examples drawn from the simulated world (mostly decent, every quality present: world.SFT_QUALITIES).", ge=1)
    epochs: int = opt(5, doc="SFT epochs (5 x 4000 examples: the tiny policy learns which topic answers a question on every seed tried; 3 did on one of two, docs/world.md).", ge=1)
    lr: float = opt(1e-2, doc="SFT learning rate (AdamW, warm-up then linear decay; sized for the tiny default policy, docs/world.md).", gt=0)
    batch_size: int = opt(32, doc="SFT batch size.", ge=1)
    max_length: int = opt(96, doc="Max tokens of prompt + response + eos.", ge=8)


@dataclass(frozen=True)
class StoreConfig(Section):
    section: ClassVar[str] = "store"
    path: str = opt("", doc="SQLite file of the preference store; empty = <run_dir>/store.db.")
    prior: float | None = opt(None, doc="Dirichlet prior concentration per label of a new store (default 1.0); "
                              "a store records its own, and a different value here is an error (change a store "
                              "with `raydprm store reconfigure`); unset = the store's.", gt=0)
    half_life_s: float | None = opt(None, doc="Exponential forgetting half-life of votes in seconds of a new store "
                                    "(default 0 = no forgetting); recorded by the store like store.prior; unset = "
                                    "the store's.", ge=0)
    synchronous: str = opt("FULL", doc="SQLite synchronous mode under WAL.", choices=("NORMAL", "FULL"))
    smoothing: float = opt(0.0, doc="Targeted label smoothing mass applied to exported targets.", ge=0, lt=1)
    max_text_chars: int = opt(16384, doc="Longest prompt or response accepted.", ge=1)
    heldout_fraction: float = opt(0.2, doc="Share of items held out by the deterministic split by item id "
                                  "(raydprm.store.heldout_mask; `store export --split`, the gold judge of "
                                  "pipeline.crowd=store).", ge=0, le=1)
    split_seed: int = opt(0, doc="Seed of the split of items by item id (hash of seed:item_id).", ge=0)


@dataclass(frozen=True)
class RewardConfig(Section):
    section: ClassVar[str] = "reward"
    loss: str = opt("ot", doc="Training loss of the reward model.", choices=("ot", "wasserstein", "ce", "bt"))
    cost: str = opt("reward_gap", doc="OT cost matrix by name, or a path to a .npy/.yaml L x L matrix.")
    ot_method: str = opt("exact", doc="OT solver.", choices=("exact", "sinkhorn"))
    sinkhorn_eps: float = opt(0.05, doc="Entropic regularisation of the Sinkhorn solver.", gt=0)
    sinkhorn_iters: int = opt(200, doc="Iteration cap of the Sinkhorn solver.", ge=1)
    sinkhorn_tol: float = opt(1e-6, doc="Convergence tolerance (marginal L1 error) of the Sinkhorn solver.", gt=0)
    lr: float = opt(2e-3, doc="Learning rate (AdamW; sized for the tiny default backbone, docs/world.md).", gt=0)
    weight_decay: float = opt(0.0, doc="AdamW weight decay.", ge=0)
    epochs: int = opt(20, doc="Training epochs (at most; early stopping by reward.patience).", ge=1)
    batch_size: int = opt(32, doc="Training batch size (global).", ge=1)
    max_length: int = opt(128, doc="Max tokens of prompt + response.", ge=8)
    eval_fraction: float = opt(0.2, doc="Held-out fraction of items.", gt=0, lt=1)
    patience: int = opt(4, doc="Early stopping: evaluations without improvement before stopping; 0 = off.", ge=0)
    num_workers: int = opt(1, doc="Ray Train workers (TorchTrainer, gloo on CPU) when > 1.", ge=1)
    scalar: str = opt("expected", doc="Scalar reward read from the predicted distribution.", choices=("expected", "cvar", "mean_std"))
    cvar_alpha: float = opt(0.2, doc="Level of the CVaR readout.", gt=0, le=1)
    kappa: float = opt(1.0, doc="Risk aversion of the mean - kappa * std readout.", ge=0)
    num_replicas: int = opt(1, doc="RewardActor replicas in the pool.", ge=1)
    grad_clip: float = opt(1.0, doc="Gradient clipping norm; 0 = off.", ge=0)
    eval_every: int = opt(0, doc="Optimizer steps between held-out evaluations; 0 = once per epoch.", ge=0)
    bt_pairs_per_item: int = opt(4, doc="Bradley-Terry pairs drawn per item from the crowd's label distributions.", ge=1)
    model_dir: str = opt("", doc="Trained reward model directory (read by eval, the reward actor and serve); empty = <run_dir>/reward/best.")
    actor_num_cpus: float = opt(1.0, doc="CPUs reserved per RewardActor replica.", gt=0)
    conditioning: str = opt("none", doc="none: the DPRM predicts the population's label distribution; group: one backbone, one label distribution per rater group (persona or store group), trained on each group's posterior; the population is their mixture under reward.group_weights (docs/pluralism.md).", choices=("none", "group"))
    objective: str = opt("population", doc="What PPO maximises over the groups (raydprm.core.group_objectives): population = the mixture's E[r] (reward.scalar); worst_group (soft minimum, temperature reward.objective_tau), cvar_groups (worst reward.objective_alpha share), nash, mean_minus_std (reward.objective_kappa) need reward.conditioning = group.", choices=("population", "worst_group", "cvar_groups", "nash", "mean_minus_std"))
    objective_tau: float = opt(0.1, doc="Temperature of the worst_group soft minimum (-> 0: MaxMin).", ge=0)
    objective_alpha: float = opt(0.25, doc="Share of the population (worst groups first) averaged by cvar_groups.", gt=0, le=1)
    objective_kappa: float = opt(1.0, doc="Weight of the spread across groups in mean_minus_std.", ge=0)
    group_weights: dict[str, float] = opt(factory=dict, doc="Group weights of the population at scoring time (a group-conditioned DPRM; groups not named get 0), also the mixture of the store export's targets (crowd DPO's P(a > b)); empty = the groups' vote shares in the training data.")

    def validate(self) -> None:
        check_mixture("reward.group_weights", self.group_weights)
        if self.objective != "population" and self.conditioning != "group":
            raise ConfigError(f"config key 'reward.objective' = {self.objective!r} weighs rater groups: it needs "
                              "reward.conditioning = 'group' (a reward model that predicts each group's labels)")
        if self.conditioning == "group" and self.loss == "bt":
            raise ConfigError("config key 'reward.conditioning' = 'group' needs a distributional reward.loss "
                              "(ot, wasserstein, ce), not 'bt'")
        if self.group_weights and self.conditioning != "group":
            raise ConfigError("config key 'reward.group_weights' is set but reward.conditioning is not 'group'")


@dataclass(frozen=True)
class RolloutConfig(Section):
    section: ClassVar[str] = "rollout"
    engine: str = opt("transformers", doc="Generation engine.", choices=("transformers", "vllm"))
    num_replicas: int = opt(1, doc="Generator actors.", ge=1)
    num_cpus: float = opt(1.0, doc="CPUs reserved per generator actor.", gt=0)
    num_gpus: float = opt(0.0, doc="GPUs reserved per generator actor.", ge=0)
    max_new_tokens: int = opt(32, doc="Tokens generated per response.", ge=1)
    temperature: float = opt(1.0, doc="Sampling temperature; 0 = greedy.", ge=0)
    top_p: float = opt(1.0, doc="Nucleus sampling mass.", gt=0, le=1)
    top_k: int = opt(0, doc="Top-k sampling; 0 = off.", ge=0)
    n: int = opt(1, doc="Samples per prompt.", ge=1)
    seed: int = opt(-1, doc="Sampling seed (per request, reproducible across batch layouts); -1 = unseeded.", ge=-1)
    stop: tuple[str, ...] = opt((), doc="Stop strings: a response ends before the first one it produces.")
    max_prompt_tokens: int = opt(192, doc="Longest prompt accepted (tokens); longer prompts are refused.", ge=1)
    batch_size: int = opt(64, doc="Prompts per generate call of one engine (the pool splits bigger batches).", ge=1)
    vllm_multiprocessing: bool = opt(False, doc="vLLM: run the engine core in its own process (start-up ~12 s on CPU vs ~2 s in-process).")
    tensor_parallel_size: int = opt(1, doc="vLLM tensor parallel size (GPU).", ge=1)
    gpu_memory_utilization: float = opt(0.5, doc="vLLM GPU memory fraction.", gt=0, le=1)
    kv_cache_memory_mb: int = opt(64, doc="vLLM KV-cache size on CPU in MiB.", ge=1)
    weight_sync: str = opt("object_store", doc="Learner -> generator weight transport.", choices=("object_store", "vllm_rpc", "nccl"))
    sync_timeout_s: float = opt(120.0, doc="A weight sync that takes longer fails with an error.", gt=0)
    bucket_mb: int = opt(64, doc="Bucket size for object-store weight sync.", ge=1)
    probe_tolerance: float = opt(1e-3, doc="Max |logprob difference| of the post-sync probe.", gt=0)
    probe_length: int = opt(32, doc="Tokens of the fixed probe sequence scored after every weight sync.", ge=2)
    n_per_prompt: int = opt(1, doc="Responses sampled per prompt in an RL step (a group: the critic-free estimators' "
                            "baseline is over it); ppo.rollout_batch counts responses, so a step asks "
                            "ppo.rollout_batch / n_per_prompt prompts.", ge=1)


@dataclass(frozen=True)
class EngineSection(Section):
    """``engine.*``: how a learner group runs, one section for every learner (PPO, direct
    alignment). System-level only: the fields here change where a learner runs, how many ranks
    share a minibatch, how memory is split (ZeRO, offload, micro-batches, precision) and which
    frozen model anchors the KL, never the optimisation problem itself. The optimisation
    hyperparameters that legitimately differ between PPO and direct alignment (a DPO learning
    rate is typically 10x below PPO's; the minibatch divides ``ppo.rollout_batch`` or
    ``align.batch``, counted in rollouts or in pairs; weight decay and gradient clipping are
    tuned with the learning rate) stay in ``ppo.*`` / ``align.*``; :class:`EngineConfig`
    joins the two. ``engine.reference`` is here because it is the one frozen model a run's
    learners score against (PPO's KL and DPO's log-ratios alike)."""

    section: ClassVar[str] = "engine"
    engine: str = opt("deepspeed", doc="Training engine of every learner group (PPO, direct alignment).", choices=("deepspeed", "torch"))
    num_workers: int = opt(1, doc="Learner actors (ranks) in the torch.distributed group; ppo.minibatch and align.minibatch must be multiples.", ge=1)
    micro_batch: int = opt(8, doc="Rows (PPO rollouts, alignment pairs) per forward/backward on one rank; "
                           "gradient accumulation is derived (the applied gradient is the minibatch's whatever it is).", ge=1)
    zero_stage: int = opt(0, doc="DeepSpeed ZeRO stage (0 = plain data parallel).", ge=0, le=3)
    offload_optimizer: bool = opt(False, doc="ZeRO optimizer offload to CPU (needs engine.zero_stage >= 1).")
    offload_params: bool = opt(False, doc="ZeRO-3 parameter offload to CPU (needs engine.zero_stage = 3).")
    precision: str = opt("fp32", doc="Training precision of the learners.", choices=("fp32", "bf16"))
    optimizer: str = opt("adamw", doc="adamw: torch AdamW as DeepSpeed's client optimizer (no JIT build); ds_adam: "
                         "DeepSpeed's own Adam (CPUAdam/FusedAdam, JIT-built once).", choices=("adamw", "ds_adam"))
    ds_jit_ops: bool = opt(False, doc="Let DeepSpeed JIT-build its optional CPU comm op (~2-3 min the first time); "
                           "off = plain torch.distributed collectives.")
    dist_timeout_s: float = opt(600.0, doc="torch.distributed collective timeout of a learner group.", gt=0)
    num_cpus_per_worker: float = opt(1.0, doc="CPUs reserved per learner actor.", gt=0)
    num_gpus_per_worker: float = opt(0.0, doc="GPUs reserved per learner actor (NCCL when > 0).", ge=0)
    reference: str = opt("", doc="Frozen reference model of the learners (PPO's KL, direct alignment's log-ratios): "
                         "a directory or hub name; empty = the initial policy.")

    def validate(self) -> None:
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("config key 'engine.offload_params' needs engine.zero_stage = 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("config key 'engine.offload_optimizer' needs engine.zero_stage >= 1")


# The keys of ``engine.*``; each was once declared as ppo.<key> and align.<key> too, and those are refused
# with a line naming the new key (from_dict).
ENGINE_KEYS = tuple(f.name for f in dataclasses.fields(EngineSection))
MOVED_KEYS = {f"{sec}.{k}": f"engine.{k}" for sec in ("ppo", "align") for k in ENGINE_KEYS}
# The optimisation keys each algorithm section keeps (EngineConfig reads them from it).
ALGO_ENGINE_KEYS = ("minibatch", "lr", "weight_decay", "grad_clip")


@dataclass(frozen=True)
class EngineConfig:
    """The training engine of one learner group, the one type every learner reads
    (:class:`raydprm.train.rank.LearnerRank`, ``ds_engine.build_engine``): the ``engine.*``
    section joined with the algorithm's optimisation keys (``<section>.minibatch``, ``lr``,
    ``weight_decay``, ``grad_clip``). Build it with :meth:`of`; its checks name the real keys."""

    system: EngineSection
    minibatch: int
    lr: float = 5e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    section: str = "ppo"  # the algorithm section the optimisation keys come from (ppo, align)

    @classmethod
    def of(cls, engine: EngineSection, algo: PPOConfig | AlignConfig) -> EngineConfig:
        """``engine.*`` plus the optimisation keys of ``algo`` (a PPOConfig or AlignConfig)."""
        return cls(engine, **{k: getattr(algo, k) for k in ALGO_ENGINE_KEYS}, section=algo.section)

    def __post_init__(self) -> None:
        s, W = self.section, self.num_workers
        if self.minibatch % W:
            raise ConfigError(f"config key '{s}.minibatch' = {self.minibatch} must be a multiple of "
                              f"engine.num_workers = {W}")
        if self.worker_minibatch % self.worker_micro_batch:
            raise ConfigError(f"config key 'engine.micro_batch' = {self.micro_batch} must divide the per-worker "
                              f"minibatch {s}.minibatch / engine.num_workers = {self.worker_minibatch}")

    # engine.* as attributes of the joined config (what the engines and the rank base read)
    engine = property(lambda self: self.system.engine)
    num_workers = property(lambda self: self.system.num_workers)
    micro_batch = property(lambda self: self.system.micro_batch)
    zero_stage = property(lambda self: self.system.zero_stage)
    offload_optimizer = property(lambda self: self.system.offload_optimizer)
    offload_params = property(lambda self: self.system.offload_params)
    precision = property(lambda self: self.system.precision)
    optimizer = property(lambda self: self.system.optimizer)
    ds_jit_ops = property(lambda self: self.system.ds_jit_ops)
    dist_timeout_s = property(lambda self: self.system.dist_timeout_s)
    reference = property(lambda self: self.system.reference)

    @property
    def worker_minibatch(self) -> int:
        """Rows of one minibatch that each learner worker processes."""
        return self.minibatch // self.num_workers

    @property
    def worker_micro_batch(self) -> int:
        """Rows per forward/backward on one worker (micro_batch, capped by the worker's share)."""
        return min(self.micro_batch, self.worker_minibatch)

    @property
    def grad_accum(self) -> int:
        """Micro-batches accumulated per optimizer step on each worker."""
        return self.worker_minibatch // self.worker_micro_batch


# raydprm.core.advantages.ADVANTAGES and raydprm.core.ppo_loss.POLICY_LOSSES (a test keeps them equal)
ADVANTAGES = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")  # need rollout.n_per_prompt >= 2
POLICY_LOSSES = ("clip", "dual_clip", "clip_higher")


@dataclass(frozen=True)
class PPOConfig(Section):
    section: ClassVar[str] = "ppo"
    beta: float = opt(0.05, doc="KL penalty coefficient (initial value for the adaptive controller).", ge=0)
    kl_controller: str = opt("fixed", doc="KL coefficient control.", choices=("fixed", "adaptive"))
    target_kl: float = opt(6.0, doc="Target KL of the adaptive controller.", gt=0)
    kl_horizon: int = opt(10000, doc="Horizon of the adaptive controller.", ge=1)
    kl_estimator: str = opt("k1", doc="Per-token KL estimator.", choices=("k1", "k2", "k3"))
    gamma: float = opt(1.0, doc="Discount.", ge=0, le=1)
    lam: float = opt(0.95, doc="GAE lambda.", ge=0, le=1)
    clip_ratio: float = opt(0.2, doc="PPO ratio clip.", gt=0)
    value_clip: float = opt(0.2, doc="Value clip.", gt=0)
    vf_coef: float = opt(0.1, doc="Value loss coefficient.", ge=0)
    entropy_coef: float = opt(0.0, doc="Entropy bonus coefficient.", ge=0)
    epochs: int = opt(2, doc="PPO epochs per batch of rollouts.", ge=1)
    rollout_batch: int = opt(32, doc="Rollouts per PPO update (global).", ge=1)
    minibatch: int = opt(16, doc="Rollouts per optimizer step (global; a multiple of engine.num_workers, split into "
                         "engine.micro_batch rows per forward).", ge=1)
    lr: float = opt(5e-4, doc="Learning rate (sized for the tiny default policy; use ~1e-6..1e-5 for billion-parameter models).", gt=0)
    grad_clip: float = opt(1.0, doc="Gradient clipping norm; 0 = off.", ge=0)
    whiten_advantages: bool = opt(True, doc="Whiten advantages per batch.")
    loss_agg: str = opt("token_mean", doc="Loss aggregation: token_mean, seq_mean (mean of each response's token mean) or token_sum (token sum / (rows x padded length): Dr. GRPO's length-unbiased constant).", choices=("token_mean", "seq_mean", "token_sum"))
    critic: str = opt("value_head", doc="Value function: a head on the policy or a separate critic model.", choices=("value_head", "separate"))
    steps: int = opt(40, doc="PPO iterations of the pipeline.", ge=1)
    critic_model: str = opt("", doc="Backbone of the separate critic (critic=separate); empty = the policy's.")
    weight_decay: float = opt(0.0, doc="AdamW weight decay.", ge=0)
    async_rollout: bool = opt(False, doc="Generate the rollouts of step t+1 while the learner trains on step t (one step off-policy; the behaviour policy's logprobs are PPO's old logprobs). Off = every step generates with the newest policy.")
    use_rollout_logprobs: bool = opt(False, doc="PPO's old logprobs = the rollout engine's sampled ones (right for stale rollouts); off = recomputed by the learner (immune to engine mismatch).")
    advantage: str = opt("gae", doc="Advantage estimator (raydprm.core.advantages): gae (with the critic), or critic-free "
                         "over each prompt's rollout.n_per_prompt responses: grpo (group mean/std), dr_grpo (group mean, "
                         "no std; pair with ppo.loss_agg=token_sum), rloo (leave-one-out mean), reinforce_pp (batch-"
                         "normalised returns), reinforce_pp_baseline (group mean first). Critic-free: no value head, "
                         "no critic optimizer state.", choices=ADVANTAGES)
    policy_loss: str = opt("clip", doc="Policy loss (raydprm.core.ppo_loss.POLICY_LOSSES): clip (PPO), dual_clip (also "
                           "bounds negative-advantage tokens at ppo.dual_clip_c |A|), clip_higher (DAPO: ratio in "
                           "[1 - ppo.clip_ratio, 1 + ppo.clip_ratio_high]).", choices=POLICY_LOSSES)
    clip_ratio_high: float = opt(0.28, doc="clip_higher: the upper clip range eps_high (DAPO); ppo.clip_ratio is the lower.", gt=0)
    dual_clip_c: float = opt(3.0, doc="dual_clip: the bound c > 1 on -A * ratio for A < 0.", gt=1)
    kl_in: str = opt("reward", doc="Where the KL to the reference goes: reward (a per-token penalty -beta kl_t in the "
                     "rewards) or loss (beta * kl_t added to the policy loss, as GRPO).", choices=("reward", "loss"))

    @property
    def uses_critic(self) -> bool:
        """GAE learns a value function; the critic-free estimators build no value head (ppo.critic unused)."""
        return self.advantage == "gae"

    def validate(self) -> None:
        if self.rollout_batch % self.minibatch:
            raise ConfigError(f"config key 'ppo.minibatch' = {self.minibatch} must divide ppo.rollout_batch = {self.rollout_batch}")


ALIGN_ALGOS = ("dpo", "ipo", "slic", "slic_rso", "rrhf", "crowd_dpo")


@dataclass(frozen=True)
class AlignConfig(Section):
    """Direct alignment (DPO family) on pairs built from the preference store; the
    losses are :mod:`raydprm.core.pairwise_loss`'s, the engine (``engine.*``) is the PPO learner's."""

    section: ClassVar[str] = "align"
    algo: str = opt("dpo", doc="Direct-alignment loss (crowd_dpo: DPO with the crowd's preference probability as a soft label).", choices=ALIGN_ALGOS)
    beta: float = opt(0.1, doc="DPO / crowd DPO temperature beta (Eq. 14).", gt=0)
    tau: float = opt(0.1, doc="IPO regularisation tau; the target log-ratio margin is 1 / (2 tau) (Eq. 23).", gt=0)
    delta: float = opt(1.0, doc="Hinge margin delta of SLiC / RSO-SLiC (Eq. 20-21).", ge=0)
    sft_weight: float = opt(0.1, doc="Weight lambda of the SFT term (NLL of the chosen response) of SLiC and RRHF.", ge=0)
    ties: str = opt("half", doc="How equal-reward label draws count in the crowd's P(a > b): half a win each, or dropped.", choices=("half", "drop"))
    min_margin: float = opt(0.0, doc="Hard-label algorithms skip pairs with |P(a > b) - 0.5| <= min_margin (0 skips exact ties only).", ge=0, lt=0.5)
    pairs_per_prompt: int = opt(6, doc="Most response pairs drawn per prompt from the store export.", ge=1)
    max_prompt_tokens: int = opt(64, doc="Prompt tokens kept (the left end is cut).", ge=1)
    max_response_tokens: int = opt(48, doc="Response tokens kept (the right end is cut).", ge=1)
    batch: int = opt(16, doc="Pairs per update (global).", ge=1)
    minibatch: int = opt(8, doc="Pairs per optimizer step (global; a multiple of engine.num_workers, split into "
                         "engine.micro_batch pairs per forward).", ge=1)
    epochs: int = opt(1, doc="Passes over each update's batch.", ge=1)
    steps: int = opt(40, doc="Updates of a training run.", ge=1)
    lr: float = opt(5e-4, doc="Learning rate (sized for the tiny default policy; ~1e-6 for billion-parameter models; "
                    "its own key, as DPO's rate is typically well below PPO's).", gt=0)
    weight_decay: float = opt(0.0, doc="AdamW weight decay.", ge=0)
    grad_clip: float = opt(1.0, doc="Gradient clipping norm; 0 = off.", ge=0)

    def validate(self) -> None:
        if self.batch % self.minibatch:
            raise ConfigError(f"config key 'align.minibatch' = {self.minibatch} must divide align.batch = {self.batch}")


@dataclass(frozen=True)
class ServeConfig(Section):
    section: ClassVar[str] = "serve"
    host: str = opt("127.0.0.1", doc="HTTP host.")
    port: int = opt(8000, doc="HTTP port.", ge=1, le=65535)
    auth_token: str = opt("", secret=True, doc="Bearer token for POST /votes; empty = serve.auth_token_file, else "
                          "$RAYDPRM_SERVE_TOKEN. A secret: refused on the command line (it would show in `ps`), "
                          "masked in `config show` and saved configs.")
    auth_token_file: str = opt("", doc="File whose content (stripped) is the bearer token for POST /votes.")
    num_cpus: float = opt(0.5, doc="CPUs per replica (fractional allowed).", gt=0)
    min_replicas: int = opt(1, doc="Autoscaling minimum replicas.", ge=0)
    max_replicas: int = opt(2, doc="Autoscaling maximum replicas.", ge=1)
    target_ongoing_requests: float = opt(8.0, doc="Autoscaling target of ongoing requests per replica.", gt=0)
    max_batch_size: int = opt(32, doc="serve.batch maximum batch size.", ge=1)
    batch_wait_timeout_s: float = opt(0.005, doc="serve.batch wait timeout.", ge=0)
    max_items: int = opt(256, doc="Most items in one request.", ge=1, le=65536)
    max_text_chars: int = opt(8192, doc="Longest prompt or response accepted.", ge=1, le=1 << 24)
    max_json_depth: int = opt(16, doc="Deepest nesting of JSON arrays/objects accepted in a request body "
                              "(the API needs 3).", ge=3, le=256)
    max_int_digits: int = opt(32, doc="Most digits of a JSON integer accepted in a request body.", ge=1, le=4300)
    upscale_delay_s: float = opt(5.0, doc="Autoscaling: seconds the load must stay above target before a replica "
                                 "is added.", ge=0)
    downscale_delay_s: float = opt(60.0, doc="Autoscaling: seconds the load must stay below target before a "
                                   "replica is removed.", ge=0)

    def validate(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ConfigError(f"config key 'serve.min_replicas' = {self.min_replicas} must be <= "
                              f"serve.max_replicas = {self.max_replicas}")
        if self.auth_token and self.auth_token_file:
            raise ConfigError("config keys 'serve.auth_token' and 'serve.auth_token_file' are both set; give one")
        if self.auth_token == MASK:  # a saved config read back: the token was never written
            object.__setattr__(self, "auth_token", "")


@dataclass(frozen=True)
class RayConfig(Section):
    section: ClassVar[str] = "ray"
    address: str = opt("", doc="Ray address; empty = $RAY_ADDRESS or start a local instance.")
    num_cpus: int = opt(0, doc="CPUs of a local Ray instance; 0 = all.", ge=0)
    namespace: str = opt("raydprm", doc="Ray namespace for named actors.")
    preflight_timeout_s: float = opt(300.0, doc="How long a run waits for the cluster (and its autoscaler) to offer the CPUs/GPUs/memory it reserves before failing with the missing resources named.", ge=0)
    max_restarts: int = opt(2, doc="Restarts each role's actor group may do in one run (a dead generator or reward replica is replaced; a dead learner rank restarts the learner group from its last checkpoint).", ge=0)


# The paper's Table 2 policies trained by PPO, and the reward.loss of the reward model each one is tuned against.
PPO_POLICY_LOSS = {"bt": "bt", "dprm_c": "ce", "dprm_w": "wasserstein", "dprm_ot": "ot"}
# The critic-free policies: (reward.loss, ppo.advantage), tuned on groups of rollout.n_per_prompt responses
# (4 unless set >= 2), the same number of responses per step (ppo.rollout_batch) as PPO.
GROUP_POLICIES = {"bt_grpo": ("bt", "grpo"), "bt_rloo": ("bt", "rloo"), "dprm_ot_grpo": ("ot", "grpo"),
                  "dprm_ot_rloo": ("ot", "rloo")}
# The pluralistic policies (docs/pluralism.md): PPO, with PPO's budget, against a group-conditioned DPRM, each
# made by these reward.* fields (checked against RewardConfig when a comparison names it).
PLURAL_POLICIES = {"dprm_ot_wg": {"loss": "ot", "conditioning": "group", "objective": "worst_group"}}
# What `raydprm run` can train and evaluate: the SFT policy, the PPO policies, the direct-alignment ones.
POLICIES = ("vanilla", *PPO_POLICY_LOSS, *GROUP_POLICIES, *PLURAL_POLICIES, *ALIGN_ALGOS)
COMPARE_POLICIES = ("vanilla", "bt", "dprm_c", "dprm_w", "dprm_ot")


@dataclass(frozen=True)
class PipelineConfig(Section):
    section: ClassVar[str] = "pipeline"
    policies: tuple[str, ...] = opt((), doc="Policies a comparison trains and evaluates on one SFT and one store "
                                    f"(`raydprm run --compare`), among {', '.join(POLICIES)}; empty = one run: "
                                    "vanilla and the PPO policy of reward.loss.")
    seeds: int = opt(3, doc="Seeds per policy of a comparison (run.seed, run.seed + 1, ...: reward model, PPO or "
                     "direct alignment, sampling); a single run uses run.seed only.", ge=1)
    checkpoint_every: int = opt(5, doc="PPO steps between learner checkpoints (policy, critic, optimizer, KL controller, RNG) that `raydprm run --resume` continues from.", ge=1)
    keep_checkpoints: int = opt(2, doc="Newest PPO checkpoints kept in <run_dir>/ppo/ckpt (older ones are deleted).", ge=1)
    eval_prompts: int = opt(64, doc="Held-out prompts the population judges each policy on.", ge=2)
    eval_seeds: int = opt(2, doc="Sampling seeds per held-out prompt (the bootstrap resamples prompts and seeds).", ge=1)
    bootstrap: int = opt(1000, doc="Bootstrap resamples of the 95% intervals.", ge=100)
    tie_margin: float = opt(0.05, doc="Head to head: a difference of expected reward within this margin is a tie.", ge=0)
    layout: str = opt("split", doc="Placement of the PPO roles (docs/pipeline.md, Layouts): split = generators, reward "
                      "actors, learner, reference and store each on bundles of their own; colocate = generator i and "
                      "learner rank i share one bundle (one GPU) and take turns, each side offloading what it can "
                      "while the other works.", choices=("split", "colocate"))
    placement_timeout_s: float = opt(300.0, doc="How long a role's placement group may wait for its bundles before "
                                     "the run fails naming the role and what the cluster has free.", gt=0)
    store_num_cpus: float = opt(0.1, doc="CPUs reserved for the preference-store actor's bundle.", gt=0)
    live_votes: int = opt(0, doc="Live preference shift (docs/pipeline.md): votes the crowd casts on each of the policy's samples after every PPO step, into the store (the run's copy ppo/store.db); 0 = none.", ge=0)
    drift_step: int = opt(0, doc="PPO step (1-based, as in the step records) from which the crowd votes with pipeline.drift_mixture instead of crowd.mixture; 0 = the crowd never changes.", ge=0)
    drift_mixture: dict[str, float] = opt(factory=dict, doc="Persona weights of the crowd from pipeline.drift_step on (personas of crowd.personas_file).")
    refresh_every: int = opt(0, doc="PPO steps between refreshes of the reward model from the store (a fine-tune of the served model on the store's export, then loaded by every reward replica); 0 = never.", ge=0)
    refresh_epochs: int = opt(2, doc="Epochs of each refresh's fine-tune (reward.lr, reward.batch_size; no early stopping).", ge=1)
    step_seconds: float = opt(60.0, doc="Crowd time of one PPO step: live votes of step t carry the timestamp T0 + t * step_seconds (T0 = the end of the collect stage), the clock store.half_life_s forgets by.", gt=0)
    crowd: str = opt("sim", doc="Where the crowd comes from: sim = the simulated personas vote (crowd.*); store = the votes already in the store at store.path (e.g. imported with `raydprm store import`): items are split by item id into a training part (the reward model) and a held-out part (pipeline.gold_fraction) on which a gold judge, a second reward model of the same kind, is trained to evaluate the policies (docs/pluralism.md, Reports).", choices=("sim", "store"))
    gold_fraction: float = opt(0.3, doc="pipeline.crowd = store: share of items (by item id) held out to train the gold judge.", gt=0, lt=1)

    def validate(self) -> None:
        check_mixture("pipeline.drift_mixture", self.drift_mixture)
        if self.drift_step > 0 and not self.drift_mixture:
            raise ConfigError(f"config key 'pipeline.drift_step' = {self.drift_step} needs pipeline.drift_mixture "
                              "(the persona weights of the crowd after the shift)")
        if self.drift_mixture and self.drift_step == 0:
            raise ConfigError("config key 'pipeline.drift_mixture' is set but pipeline.drift_step = 0 (the crowd "
                              "never changes); set the PPO step of the shift")
        for key in ("drift_step", "refresh_every"):
            if getattr(self, key) > 0 and self.live_votes == 0:
                raise ConfigError(f"config key 'pipeline.{key}' = {getattr(self, key)} needs pipeline.live_votes >= 1 "
                                  "(without votes during PPO the store never sees the policy's samples)")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad:
            raise ConfigError(f"config key 'pipeline.policies': unknown polic{'ies' if len(bad) > 1 else 'y'} "
                              f"{', '.join(map(repr, bad))}; choose among {', '.join(POLICIES)}")
        dup = sorted({p for p in self.policies if self.policies.count(p) > 1})
        if dup:
            raise ConfigError(f"config key 'pipeline.policies' names {', '.join(dup)} twice")


@dataclass(frozen=True)
class Config:
    """The root config: one section per component."""

    run: RunConfig = field(default_factory=RunConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    crowd: CrowdConfig = field(default_factory=CrowdConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    engine: EngineSection = field(default_factory=EngineSection)

    def __post_init__(self) -> None:
        """Rules between sections."""
        self.ppo_engine  # noqa: B018  (engine.* against ppo.*: its checks name both)
        if set(self.pipeline.policies) & set(ALIGN_ALGOS):  # direct-alignment arms: engine.* against align.* too
            self.align_engine  # noqa: B018  (a learner group built without them checks it then)
        if self.serve.max_text_chars > self.store.max_text_chars:
            raise ConfigError(f"config key 'serve.max_text_chars' = {self.serve.max_text_chars} must be <= "
                              f"store.max_text_chars = {self.store.max_text_chars} (votes the server accepts "
                              "must fit in the store)")
        if self.rollout.tensor_parallel_size > 1 and self.rollout.engine != "vllm":
            raise ConfigError(f"config key 'rollout.tensor_parallel_size' = {self.rollout.tensor_parallel_size} "
                              "needs rollout.engine = 'vllm'")
        if self.ppo.critic_model and self.ppo.critic != "separate":
            raise ConfigError("config key 'ppo.critic_model' is set but ppo.critic is not 'separate'")
        n = self.rollout.n_per_prompt
        if self.ppo.advantage in GROUP_ADVANTAGES and n < 2:
            raise ConfigError(f"config key 'ppo.advantage' = {self.ppo.advantage} needs a group of responses per "
                              f"prompt: rollout.n_per_prompt = {n}, set it >= 2")
        if self.ppo.rollout_batch % n:
            raise ConfigError(f"config key 'rollout.n_per_prompt' = {n} must divide ppo.rollout_batch = "
                              f"{self.ppo.rollout_batch} (the responses of one step)")
        if self.pipeline.layout == "colocate":
            self._check_colocate()
        if self.pipeline.crowd == "store":
            if not self.store.path:
                raise ConfigError("config key 'pipeline.crowd' = 'store' needs store.path (the store whose votes are "
                                  "the crowd)")
            if self.pipeline.live_votes:
                raise ConfigError("config key 'pipeline.live_votes' needs the simulated crowd; pipeline.crowd = "
                                  "'store' has no one to vote during PPO")
        if self.pipeline.drift_step > self.ppo.steps:
            raise ConfigError(f"config key 'pipeline.drift_step' = {self.pipeline.drift_step} is after the last PPO step "
                              f"(ppo.steps = {self.ppo.steps}): the crowd would never change")

    @property
    def ppo_engine(self) -> EngineConfig:
        """The PPO learner group's engine: ``engine.*`` with ``ppo.minibatch``, ``lr``, ..."""
        return EngineConfig.of(self.engine, self.ppo)

    @property
    def align_engine(self) -> EngineConfig:
        """The direct-alignment learner group's engine: ``engine.*`` with ``align.minibatch``, ``lr``, ..."""
        return EngineConfig.of(self.engine, self.align)

    def _check_colocate(self) -> None:
        """Colocate puts generator i and learner rank i on one bundle (one GPU) that they take turns on."""
        ro, pp, en = self.rollout, self.ppo, self.engine
        why = "config key 'pipeline.layout' = 'colocate' "
        if ro.num_replicas != en.num_workers:
            raise ConfigError(why + f"pairs each generator with one learner rank: rollout.num_replicas = "
                              f"{ro.num_replicas} must equal engine.num_workers = {en.num_workers}")
        if ro.tensor_parallel_size != 1:
            raise ConfigError(why + "shares one GPU per pair: rollout.tensor_parallel_size must be 1, got "
                              f"{ro.tensor_parallel_size}")
        if ro.num_gpus + en.num_gpus_per_worker > 1:
            raise ConfigError(why + "shares one GPU per pair: rollout.num_gpus + engine.num_gpus_per_worker must be "
                              f"<= 1 (e.g. 0.5 each), got {ro.num_gpus:g} + {en.num_gpus_per_worker:g}")
        if pp.async_rollout:
            raise ConfigError(why + "takes turns on the shared GPU, so generation cannot overlap learning: "
                              "set ppo.async_rollout = false")
        if ro.weight_sync == "nccl":
            raise ConfigError(why + "puts sender and receiver on one GPU, which NCCL refuses (duplicate GPU): "
                              "use rollout.weight_sync = object_store or vllm_rpc")

    def to_dict(self, mask_secrets: bool = False) -> dict[str, Any]:
        """The config as nested plain data; ``mask_secrets``: secrets written as ``<redacted>``
        (what ``config show`` and :func:`save_config` print)."""
        out = _plain(dataclasses.asdict(self))
        if mask_secrets:
            for key in secret_keys():
                sec, name = key.split(".")
                if out[sec][name]:
                    out[sec][name] = MASK
        return out

    def override(self, overrides: Sequence[str]) -> Config:
        """A copy with ``key.sub=value`` overrides applied (values parsed as YAML)."""
        data = self.to_dict()
        apply_overrides(data, overrides)
        return from_dict(data)


def secret_keys(cfg_cls: type = None) -> list[str]:
    """Dotted keys of the fields marked secret."""
    out = []
    for sec in dataclasses.fields(cfg_cls or Config):
        for f in dataclasses.fields(typing.get_type_hints(cfg_cls or Config)[sec.name]):
            if f.metadata.get("secret"):
                out.append(f"{sec.name}.{f.name}")
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# --------------------------------------------------------------------------- loading


def _unknown(key: str, allowed: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f"; did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint} (keys of {where}: {', '.join(allowed)})")


def from_dict(data: Mapping[str, Any] | None) -> Config:
    """Build a validated :class:`Config` from a nested mapping (missing keys take defaults)."""
    data = dict(data or {})
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for name, value in data.items():
        if name not in sections:
            raise _unknown(str(name), list(sections), "the root config")
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{name}' must be a mapping of its keys, got {value!r}")
        cls = typing.get_type_hints(Config)[name]
        fields = {f.name for f in dataclasses.fields(cls)}
        for k in value:
            if f"{name}.{k}" in MOVED_KEYS:
                raise ConfigError(f"config key '{name}.{k}' moved to {MOVED_KEYS[f'{name}.{k}']} (one engine section "
                                  "for every learner group)")
            if k not in fields:
                raise _unknown(f"{name}.{k}", sorted(fields), name)
        kwargs[name] = cls(**value)
    return Config(**kwargs)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing duplicate keys in a mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise ConfigError(f"duplicate key '{key}' at line {key_node.start_mark.line + 1} "
                                  f"(first at line {first})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_scalars(loader: _StrictLoader, node: yaml.Node, key: str) -> None:
    """Walk the composed YAML before it is constructed: an integer beyond 64 bits (of any length:
    Python's int() refuses more than 4300 digits with a ValueError) and a lone surrogate (``"\\ud800"``
    is valid YAML but no valid text: writing it as UTF-8 fails later) are refused naming the key and
    the line."""
    where = f"line {node.start_mark.line + 1}" + (f", key '{key}'" if key else "")
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _check_scalars(loader, k, key)
            name = k.value if isinstance(k, yaml.ScalarNode) else "?"
            _check_scalars(loader, v, f"{key}.{name}" if key else str(name))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_scalars(loader, v, f"{key}[{i}]")
    elif isinstance(node, yaml.ScalarNode):
        if _SURROGATE.search(node.value):
            shown = node.value.encode("utf-8", "backslashreplace").decode()
            raise ConfigError(f"{where}: '{shown[:80]}' holds a lone "
                              "surrogate (an escape such as \\ud800 that is no character); give valid text")
        if node.tag == "tag:yaml.org,2002:int":
            digits = sum(c.isdigit() for c in node.value)
            try:
                value = loader.construct_object(node) if digits <= 64 else None
            except ValueError:
                value = None
            if value is None or not INT_MIN <= value <= INT_MAX:
                shown = value if value is not None and abs(value) < 10 ** 30 else f"an integer of {digits} digits"
                raise ConfigError(f"line {node.start_mark.line + 1}: config key '{key or '?'}' = {shown} is out of "
                                  f"range; integers must fit in 64 bits ({INT_MIN}..{INT_MAX})")


def yaml_load(text: str, key: str = "") -> Any:
    """Parse YAML like ``yaml.safe_load``, but a duplicate key in a mapping, an integer beyond 64 bits
    and a lone surrogate are ConfigErrors naming the line (and the key; ``key``: the dotted key the
    whole text is the value of, as in an override)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_scalars(loader, node, key)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    shown = item if len(item) <= 200 else f"{key}=<{len(raw)} characters>"
    try:
        value = yaml_load(raw, key) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{shown}': value is not valid YAML ({e.__class__.__name__})") from None
    except ConfigError as e:
        raise ConfigError(f"override '{shown}': {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings in place to a nested dict; returns it."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load YAML (optional) + overrides into a validated :class:`Config`."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file '{p}': {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file '{p}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                              f"{e.start})") from None
        try:
            loaded = yaml_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {' '.join(str(e).split())}") from None
        except ConfigError as e:
            raise ConfigError(f"config file '{p}': {e}") from None
        except RecursionError:
            raise ConfigError(f"config file '{p}' is nested too deeply") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    apply_overrides(data, overrides)
    return from_dict(data)


def save_config(cfg: Config, run_dir: str | os.PathLike[str], name: str = "config.yaml") -> Path:
    """Write the full resolved config next to a run's outputs (atomically)."""
    d = Path(run_dir)
    out = d / name
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(cfg.to_dict(mask_secrets=True), sort_keys=False))
        os.replace(tmp, out)
    except OSError as e:
        raise ConfigError(f"cannot write the run's config to '{out}' (run.output_dir = '{cfg.run.output_dir}'): "
                          f"{e.strerror or e}") from None
    return out


def describe(cfg_cls: type = Config) -> list[tuple[str, Any, str, str]]:
    """(key, default, allowed, doc) for every field: the source of `raydprm config show --doc`."""
    rows = []
    for sec in dataclasses.fields(cfg_cls):
        cls = typing.get_type_hints(cfg_cls)[sec.name]
        inst = cls()
        for f in dataclasses.fields(cls):
            rows.append((f"{sec.name}.{f.name}", _plain(getattr(inst, f.name)), _allowed(f.metadata), f.metadata["doc"]))
    return rows
