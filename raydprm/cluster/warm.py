"""Warm actors: a run starts each role's pool once and reuses it across stages and arms.

Starting a pool imports torch and transformers and loads a model in every new process (about
20 s each on 2 cores, bench/warm_reset.py); loading another model into a live one is a fraction
of that. :class:`WarmPools` holds one pool per role (``rollout``: collect -> PPO -> evaluate's
policy pool; ``reward``; ``learner``: the PPO learner, or the direct-alignment one) with the
*shape* it was started with (what only a new process can change: replicas, resources, the
engine's constructor arguments, the learner's kind)::

    warm = WarmPools(cfg.pipeline.warm_actors, say, track, untrack)
    pool = warm.get("rollout", shape, create=lambda: RolloutPool.create(...),
                    reuse=lambda p: p.load_checkpoint(policy_dir, version=0))
    ...
    warm.done(pool)        # end of its use in a stage: kept when warm, shut down when not
    warm.drop("learner")   # no later stage uses it (its placement group can go)

A pool whose shape differs from the one asked for is shut down and started anew, with one
console line naming what differs. ``enabled=False`` (``pipeline.warm_actors = false``) starts
every pool afresh and shuts it down after its stage, as before warm actors. A pool's restart
budget (``ray.max_restarts``) is that of its group, so the stages and arms that reuse a group
share it; a group started anew has a budget of its own.

Across a sweep's trials (:mod:`raydprm.tune.sweep`): a trial's process whose Tune actor is reused
for the next trial keeps its pools in a ``persistent`` :class:`WarmPools` (``fit``'s clean-up and the
evaluate stage leave them alive), and the next trial's :class:`~raydprm.cluster.pipeline.Pipeline`
takes them over with :meth:`WarmPools.adopt` (its restart log, a restart budget of its own);
:meth:`WarmPools.close` shuts them down when the process is through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["WarmPools", "learner_shape", "pool_pids", "reuse_generators", "reward_shape", "rollout_shape",
           "warm_enabled"]


def warm_enabled(cfg: Any) -> bool:
    """Whether a run keeps warm actors: ``pipeline.warm_actors``, but never under nccl weight sync
    (it forms a broadcast group per PPO stage: its generators and learner start afresh)."""
    return bool(cfg.pipeline.warm_actors) and cfg.rollout.weight_sync != "nccl"


def rollout_shape(cfg: Any) -> dict[str, Any]:
    """What only new generators can change: engine, its constructor arguments, replicas, resources, probe,
    transport, and sleep mode (asked by every stage under ``pipeline.layout = colocate``, so one pool serves
    collect, PPO and evaluate)."""
    from raydprm.rollout.engine import engine_kwargs

    ro = cfg.rollout
    return {"engine": ro.engine, "engine_kwargs": engine_kwargs(ro, cfg.models.dtype), "replicas": ro.num_replicas,
            "num_cpus": ro.num_cpus, "num_gpus": ro.num_gpus, "probe_length": ro.probe_length,
            "weight_sync": ro.weight_sync, "sleep_mode": cfg.pipeline.layout == "colocate"}


def reuse_generators(pool: Any, policy_dir: str, rollout_cfg: Any) -> None:
    """Warm generators become a pool started on ``policy_dir``: awake, its weights, versions from 0,
    the ``rollout`` section's sampling defaults."""
    pool.wake()  # a colocated PPO stage may have left them asleep
    pool.load_checkpoint(policy_dir, version=0)
    pool.use_config(rollout_cfg)


def reward_shape(reward_cfg: Any) -> dict[str, Any]:
    """What :meth:`RewardPool.reload` cannot change (any kind of reward model and ``reward.*`` it can)."""
    return {"replicas": reward_cfg.num_replicas, "num_cpus": reward_cfg.actor_num_cpus}


def learner_shape(kind: str, section: Any) -> dict[str, Any]:
    """What :meth:`LearnerGroup.reset` cannot change: the learner's kind (``ppo``: with or without a critic,
    reset builds either; ``align``), its ranks, their resources and engine (of the ``engine`` section)."""
    keys = ("num_workers", "num_cpus_per_worker", "num_gpus_per_worker", "engine")
    return {"kind": kind, **{k: getattr(section, k) for k in keys}}


def pool_pids(pool: Any) -> list[int]:
    """The process ids of a pool's actors, in rank order (every role's ``info()`` names its pid)."""
    return [int(i["pid"]) for i in pool.info()]


def _hook(pool: Any) -> Any:
    """A pool's own restart catch-up (what its group calls before a run's tracking wraps it)."""
    return getattr(getattr(pool, "group", None), "on_restart", None)


class WarmPools:
    """One warm pool per role, with the shape it was started with (see the module docstring).
    ``persistent``: the pools outlive the run (a sweep trial's process holds them for the next trial)."""

    def __init__(self, enabled: bool, say: Callable[[str], None], track: Callable[[Any, str], Any],
                 untrack: Callable[[Any], None], *, persistent: bool = False) -> None:
        self.enabled, self._say, self._track, self._untrack = enabled, say, track, untrack
        self.persistent = persistent
        self._held: dict[str, tuple[dict[str, Any], Any]] = {}  # role -> (shape, pool)
        self._hooks: dict[str, Any] = {}  # role -> its pool's own on_restart (before tracking wrapped it)

    def get(self, role: str, shape: dict[str, Any], create: Callable[[], Any],
            reuse: Callable[[Any], None]) -> Any:
        """The role's live pool with ``reuse(pool)`` applied when its shape equals ``shape``;
        otherwise a pool from ``create()`` (the held one, if any, shut down first)."""
        if self.enabled and role in self._held:
            old, pool = self._held[role]
            if old == shape:
                reuse(pool)
                return pool
            diff = "; ".join(f"{k} {old.get(k)!r} -> {shape.get(k)!r}" for k in sorted(set(old) | set(shape))
                             if old.get(k) != shape.get(k))
            self._say(f"  {role}: new actors, the warm ones cannot take this shape ({diff})")
            self.drop(role)
        pool = create()
        hook = _hook(pool)
        pool = self._track(pool, role)
        if self.enabled:
            self._held[role], self._hooks[role] = (dict(shape), pool), hook
        return pool

    def done(self, pool: Any) -> None:
        """A stage is through with ``pool``: kept for the next one when warm, else shut down."""
        if not any(p is pool for _, p in self._held.values()):
            self._untrack(pool)

    def drop(self, *roles: str) -> None:
        """Shut the warm pools of ``roles`` down (no later stage uses them)."""
        for role in roles:
            held = self._held.pop(role, None)
            self._hooks.pop(role, None)
            if held is not None:
                self._untrack(held[1])

    def forget(self) -> None:
        """The pools were shut down elsewhere (:meth:`Pipeline.shutdown_workers`); persistent ones were not."""
        if not self.persistent:
            self._held.clear()
            self._hooks.clear()

    def kept(self) -> list[Any]:
        """The pools a run's clean-up must leave alive (persistent ones)."""
        return [pool for _, pool in self._held.values()] if self.persistent else []

    def adopt(self, enabled: bool, say: Callable[[str], None], track: Callable[[Any, str], Any],
              untrack: Callable[[Any], None]) -> None:
        """A new run takes the held pools over (the next sweep trial in the same process): its callbacks,
        each pool tracked by it (restarts logged in its run directory, a restart budget of its own).
        A run that wants no warm actors (``enabled`` false) gets none: the held pools are shut down."""
        if not enabled:
            self.close()
        self.enabled, self._say, self._track, self._untrack = enabled, say, track, untrack
        for role, (_, pool) in self._held.items():
            group = getattr(pool, "group", None)
            if group is not None:
                group.on_restart, group.restarts = self._hooks.get(role), 0
            self._track(pool, role)

    def close(self) -> None:
        """Shut every held pool down (a persistent holder's process is through, or failed)."""
        self.drop(*self._held)

    @property
    def roles(self) -> list[str]:
        """The roles whose pools are warm now (their placement groups must stay)."""
        return list(self._held)

    def pids(self) -> dict[str, list[int]]:
        """Role -> the pids of its warm pool's actors."""
        return {role: pool_pids(pool) for role, (_, pool) in self._held.items()}
