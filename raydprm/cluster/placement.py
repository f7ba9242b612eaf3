"""Placement per role for ``raydprm run``: one placement group per role, from the config.

A run that is not given a placement by its caller (a Tune trial passes its own) places each
role on a placement group of its own (:class:`RolePlacements`), created when a stage first
asks for the role and removed when the stage ends (every actor of a stage is gone by then),
so a run never holds the bundles of a stage that is not running::

    placements = RolePlacements(cfg)
    pool = RolloutPool.create(cfg.rollout, model, placement=placements.get("rollout"))
    ...
    placements.release()                    # end of the stage: every group removed

Roles and their bundles (one bundle per actor; a bundle's CPUs/GPUs are its actor's):

==========  ===========================================  ==============================
role        bundles                                      stages that use it
==========  ===========================================  ==============================
rollout     ``rollout.num_replicas`` x rollout.*         collect, ppo, evaluate (policy)
reward      ``reward.num_replicas`` x reward.actor_*     ppo
learner     ``engine.num_workers`` x engine.*_worker     sft, reward (tasks), ppo, align
store       1 x ``pipeline.store_num_cpus``              collect, ppo
reference   ``rollout.num_replicas`` x rollout.*         evaluate (the SFT policy's pool)
==========  ===========================================  ==============================

A comparison with direct-alignment policies (``pipeline.policies``) trains them on the
learner's bundles too, so those bundles are as many and as large as the larger of ``ppo.*``
and ``align.*`` asks for.

Layouts (``pipeline.layout``):

- ``split``: every role above has a group of its own.
- ``colocate``: generators and learner share one group, ``policy``: bundle ``i`` holds
  generator ``i`` and learner rank ``i`` (``{CPU: rollout.num_cpus + engine.num_cpus_per_worker,
  GPU: rollout.num_gpus + engine.num_gpus_per_worker}``, at most one GPU, so both actors get
  the same device); they take turns (:class:`~raydprm.cluster.ppo_loop.PPOLoop` with
  ``colocate``): the generators sleep while the learner trains, the learner offloads while
  the generators sample.

Waiting: each group is waited for with ``pipeline.placement_timeout_s``; a group that is not
placed by then is removed and :class:`PlacementTimeout` names the role, its bundles and what
the cluster has free. The pre-flight (:func:`peak_resources`) asks for the largest stage's
bundles before any group is created.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from raydprm.cluster.group import Placement
from raydprm.cluster.runtime import Resources
from raydprm.errors import RaydprmError

__all__ = ["LAYOUTS", "STAGE_ROLES", "PlacementTimeout", "RolePlacements", "group_of", "layout_groups",
           "peak_resources", "fmt_bundles", "check_sizes", "model_positions"]

log = logging.getLogger(__name__)

LAYOUTS = ("split", "colocate")
# which roles each stage places (the store is counted in ppo too: the drift hook writes votes during PPO)
STAGE_ROLES: dict[str, tuple[str, ...]] = {
    "sft": ("learner",), "collect": ("rollout", "store"), "reward": ("learner",),
    "ppo": ("rollout", "reward", "learner", "store"), "align": ("learner",), "evaluate": ("rollout", "reference")}
COLOCATED = ("rollout", "learner")  # the roles that share the "policy" group under colocate


class PlacementTimeout(RaydprmError):
    """A role's placement group was not placed within pipeline.placement_timeout_s."""


def _bundle(cpu: float, gpu: float = 0.0) -> dict[str, float]:
    return {"CPU": float(cpu), **({"GPU": float(gpu)} if gpu > 0 else {})}


def group_of(layout: str, role: str) -> str:
    """The placement group a role lives in: its own, or ``policy`` for colocated roles."""
    return "policy" if layout == "colocate" and role in COLOCATED else role


def layout_groups(cfg: Any) -> dict[str, list[dict[str, float]]]:
    """Group name -> its bundles, for ``cfg.pipeline.layout`` (see the module docstring)."""
    ro, rw, en, pc = cfg.rollout, cfg.reward, cfg.engine, cfg.pipeline
    # PPO's and direct alignment's ranks (one engine section) run on the same learner bundles
    n, cpu, gpu = en.num_workers, en.num_cpus_per_worker, en.num_gpus_per_worker
    groups = {"rollout": [_bundle(ro.num_cpus, ro.num_gpus)] * ro.num_replicas,
              "reward": [_bundle(rw.actor_num_cpus)] * rw.num_replicas,
              "learner": [_bundle(cpu, gpu)] * n,
              "store": [_bundle(pc.store_num_cpus)],
              "reference": [_bundle(ro.num_cpus, ro.num_gpus)] * ro.num_replicas}
    if pc.layout == "colocate":
        # one bundle per pair: both actors' CPUs (they are cheap and are not time-shared), and
        # g_r + g_l <= 1 GPUs (Config checks it), so Ray gives the pair one and the same device
        del groups["rollout"], groups["learner"]
        groups["policy"] = [_bundle(ro.num_cpus + cpu, ro.num_gpus + gpu)] * n
    return {g: [dict(b) for b in bs] for g, bs in groups.items()}


def fmt_bundles(bundles: Sequence[Mapping[str, float]]) -> str:
    """``2 x {CPU 1, GPU 0.5}`` (equal bundles counted once)."""
    if not bundles:
        return "nothing"
    one = "{" + ", ".join(f"{k} {v:g}" for k, v in bundles[0].items()) + "}"
    same = all(dict(b) == dict(bundles[0]) for b in bundles)
    return f"{len(bundles)} x {one}" if same else " + ".join(fmt_bundles([b]) for b in bundles)


_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


def model_positions(ref: str) -> int | None:
    """The positions (longest sequence) of a model: a kit name from its spec, a local directory from its
    ``config.json``; ``None`` when it cannot be known without loading (a hub name, an odd config)."""
    import json
    from pathlib import Path

    from raydprm.models.tiny import TINY_MODELS

    if ref in TINY_MODELS:
        conf = TINY_MODELS[ref].kwargs
    else:
        f = Path(ref).expanduser() / "config.json"
        try:
            conf = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
    for k in _POSITION_KEYS:
        if isinstance(conf.get(k), int) and conf[k] > 0:
            return conf[k]
    return None


def check_sizes(cfg: Any, *, max_new_tokens: int | None = None, model: str | None = None) -> None:
    """Refuse, before any work, a prompt + response that cannot fit the policy's positions: the
    generator would fail minutes in with ``IndexError: index out of range`` in the position embedding.

    rollout.max_prompt_tokens + max_new_tokens <= positions(policy), and the same for the reference
    policy; ``max_new_tokens`` / ``model``: a command's own flags (default the config's)."""
    from raydprm.errors import ConfigError

    new = cfg.rollout.max_new_tokens if max_new_tokens is None else max_new_tokens
    prompt = cfg.rollout.max_prompt_tokens
    refs = [("--model" if model else "models.policy", model or cfg.models.policy)]
    if not model and cfg.engine.reference:
        refs.append(("engine.reference", cfg.engine.reference))
    for key, ref in refs:
        n = model_positions(ref)
        if n is not None and prompt + new > n:
            what = "--max-new-tokens" if max_new_tokens is not None else "rollout.max_new_tokens"
            fix = (f"lower {what} to at most {n - prompt}, or rollout.max_prompt_tokens" if n > prompt else
                   "lower rollout.max_prompt_tokens")
            raise ConfigError(f"rollout.max_prompt_tokens ({prompt}) + {what} ({new}) = {prompt + new} tokens do not "
                              f"fit the {n} positions of the policy '{ref}' ({key}); {fix}")


def peak_resources(cfg: Any) -> Resources:
    """What the run reserves at its largest stage under ``cfg.pipeline.layout`` (the pre-flight's need).

    need = max over stages s of sum over the groups g used by s of sum_b g's bundles b, per resource
    (stages run one after another; their groups are removed in between). The pre-flight starts here,
    so sizes that cannot fit the policy (:func:`check_sizes`) are refused first, before Ray starts."""
    check_sizes(cfg)
    groups = layout_groups(cfg)
    layout = cfg.pipeline.layout
    best: tuple[float, float, str, list[dict[str, float]]] = (-1.0, -1.0, "", [])
    for stage, roles in STAGE_ROLES.items():
        used = sorted({group_of(layout, r) for r in roles})
        bundles = [b for g in used for b in groups[g]]
        gpu = sum(b.get("GPU", 0.0) for b in bundles)
        cpu = sum(b["CPU"] for b in bundles)
        if (gpu, cpu) > best[:2]:
            parts = ", ".join(f"{g} {fmt_bundles(groups[g])}" for g in used)
            best = (gpu, cpu, f"pipeline.layout = {layout}; its largest stage ({stage}) places {parts}", bundles)
    gpu, cpu, detail, bundles = best
    return Resources(cpu=cpu, gpu=gpu, bundles=tuple(bundles), detail=detail)


class RolePlacements:
    """The run's own placement groups, one per role (``colocate``: generators and learner share
    ``policy``), created on first :meth:`get` and waited for with a deadline; :meth:`release`
    removes them. Quacks like the ``{role: Placement}`` dict a Tune trial passes."""

    def __init__(self, cfg: Any, timeout_s: float | None = None, strategy: str = "PACK") -> None:
        self.layout = cfg.pipeline.layout
        self.groups = layout_groups(cfg)
        self.timeout_s = cfg.pipeline.placement_timeout_s if timeout_s is None else timeout_s
        self.strategy = strategy
        self._tag = f"{cfg.run.name}-{uuid.uuid4().hex[:6]}"
        self._pgs: dict[str, Any] = {}  # group name -> placement group, while it exists
        self.created: list[str] = []  # every group created so far, in order (for logs and tests)

    def group(self, role: str) -> str:
        return group_of(self.layout, role)

    def get(self, role: str, default: Any = None) -> Placement | None:
        """The role's placement (bundle 0 of its group), creating and waiting for the group if needed."""
        name = self.group(role)
        if name not in self.groups:
            return default
        if name not in self._pgs:
            self._pgs[name] = self._create(name)
        return Placement(self._pgs[name], 0)

    def __getitem__(self, role: str) -> Placement:
        got = self.get(role)
        if got is None:
            raise KeyError(role)
        return got

    def _create(self, name: str) -> Any:
        from ray.util.placement_group import placement_group, remove_placement_group

        bundles = self.groups[name]
        pg = placement_group(bundles, strategy=self.strategy, name=f"raydprm-{self._tag}-{name}")
        t0 = time.monotonic()
        ready, _ = ray.wait([pg.ready()], timeout=self.timeout_s)
        if not ready:
            remove_placement_group(pg)
            free = ray.available_resources()
            have = ", ".join(f"{k} {free.get(k, 0.0):g}" for k in sorted({k for b in bundles for k in b}))
            roles = " + ".join(r for r in ("rollout", "learner") if self.group(r) == name) or name
            raise PlacementTimeout(
                f"placement group of {roles} (pipeline.layout = {self.layout}: {fmt_bundles(bundles)}) was not "
                f"placed within pipeline.placement_timeout_s = {self.timeout_s:g} s; the cluster has {have} free")
        self.created.append(name)
        log.debug("placement group %s (%s) ready in %.2f s", name, fmt_bundles(bundles), time.monotonic() - t0)
        return pg

    @property
    def live(self) -> list[str]:
        """Names of the groups that exist now, in creation order."""
        return list(self._pgs)

    def table(self) -> dict[str, dict[str, Any]]:
        """Group name -> Ray's placement-group table entry (state, bundles) of the live groups."""
        from ray.util.placement_group import placement_group_table

        return {name: placement_group_table(pg) for name, pg in self._pgs.items()}

    def release(self) -> None:
        """Remove every live group (their actors must already be shut down). Idempotent."""
        from ray.util.placement_group import remove_placement_group

        pgs, self._pgs = self._pgs, {}
        for name, pg in pgs.items():
            try:
                remove_placement_group(pg)
            except Exception as e:  # noqa: BLE001 - a cluster already gone has removed it too
                log.debug("removing placement group %s failed: %s", name, e)
