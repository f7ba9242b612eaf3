"""One actor group for every role: N actors of one class, one wait, one restart policy, one shutdown.

Every Ray role of raydprm (rollout generators, reward replicas, learner ranks, the
preference store) is an :class:`ActorGroup` of a plain Python class::

    group = ActorGroup(RolloutGenerator, 2, role="rollout", resources={"num_cpus": 1},
                       init=lambda rank: ((engine, model, kwargs, rank), {}))
    group.start(timeout_s=600)                      # every rank constructed, or a clear error
    outs = group.all(RolloutGenerator.info)         # call every rank, answers in rank order
    out0 = group.rank0(RolloutGenerator.info)
    outs = group.each(RolloutGenerator.generate, [((p0, s, 0), {}), ((p1, s, 4), {})])
    group.shutdown()

Methods are named by the class's own function object (``RolloutGenerator.generate``), never
by a string, so a renamed method fails at the call site and every error names the role,
the method and the ranks. The function must be the group's class's own (or inherited)
method: ``RewardActor.score`` passed to a learner group is refused, although the learner
has a ``score`` too.

Placement: with a placement group, rank ``i`` lives on bundle ``bundle_offset + i``.

Waiting: :meth:`wait` has one deadline for all ranks and fails fast: the first rank that
raises ends the wait (its peers could otherwise sit in a collective until a process-group
timeout), and a deadline names the ranks that did not answer.

Restarts (``max_restarts`` > 0): a rank whose process died is replaced on the same bundle
with the same constructor arguments, ``on_restart(group, ranks)`` brings it up to date
(e.g. the rollout pool re-sends the current weights), and the call is retried. For ranks
that share a torch process group (``restart="group"``) every rank is replaced, the
``on_restart`` hook restores them from the last checkpoint, and :class:`GroupRestarted` tells
the caller that the group's state went back to that checkpoint. Each restart is counted in
:attr:`restarts`.

Callers that :meth:`submit` and :meth:`wait` themselves (asynchronous rollout) see a dead
rank as :class:`RankDied` (an :class:`ActorGroupError`) and may hand it to :meth:`recover`,
which restarts as :meth:`each` would (or raises :class:`GroupRestarted`, or an
:class:`ActorGroupError` when the budget is spent); then they submit again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raydprm.errors import RaydprmError

__all__ = ["ActorGroup", "ActorGroupError", "GroupTimeout", "GroupRestarted", "RankDied", "Placement",
           "method_name", "peak_rss_mb"]

log = logging.getLogger(__name__)

InitArgs = Callable[[int], "tuple[tuple[Any, ...], dict[str, Any]]"]


class ActorGroupError(RaydprmError):
    """A rank of a group failed (and could not be restarted)."""


class GroupTimeout(ActorGroupError, TimeoutError):
    """Some ranks did not answer before the deadline."""


class GroupRestarted(ActorGroupError):
    """The whole group was restarted from its last checkpoint; the caller must redo work since then."""


class RankDied(ActorGroupError):
    """A rank's process died during a call (:meth:`ActorGroup.wait`); :meth:`ActorGroup.recover`
    restarts it while the budget allows."""

    def __init__(self, role: str, rank: int, what: str, error: BaseException) -> None:
        why = next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:200]
        super().__init__(f"{role}: rank {rank} died during '{what}': {type(error).__name__}" + (f" ({why})" if why else ""))
        self.role, self.rank, self.what, self.error = role, rank, what, error


_RankDied = RankDied  # the old private name (callers must catch RankDied or ActorGroupError)


@dataclass(frozen=True)
class Placement:
    """Where a group's ranks go: bundle ``bundle_offset + rank`` of ``placement_group``."""

    placement_group: Any
    bundle_offset: int = 0

    def strategy(self, rank: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(self.placement_group,
                                                placement_group_bundle_index=self.bundle_offset + rank,
                                                placement_group_capture_child_tasks=False)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def method_name(method: Callable[..., Any]) -> str:
    """``RolloutGenerator.generate`` -> ``'generate'`` (the name the actor handle knows)."""
    name = getattr(method, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"pass the actor class's method (e.g. Cls.run), not {method!r}")
    return name


@dataclass
class _Call:
    """What a pending call was, so a restarted rank can be asked again."""

    method: Callable[..., Any]
    args: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)


class ActorGroup:
    """``num_actors`` Ray actors of ``cls`` for one role (see the module docstring)."""

    def __init__(self, cls: type, num_actors: int, *, role: str, init: InitArgs | None = None,
                 resources: dict[str, Any] | None = None, placement: Placement | None = None,
                 max_restarts: int = 0, restart: str = "actor",
                 on_restart: Callable[[ActorGroup, list[int]], None] | None = None,
                 timeout_s: float | None = None, name: str | None = None, namespace: str | None = None,
                 get_if_exists: bool = False, restart_timeout_s: float = 300.0) -> None:
        if num_actors < 1:
            raise ActorGroupError(f"{role}: an actor group needs at least one actor, got {num_actors}")
        if restart not in ("actor", "group"):
            raise ActorGroupError(f"{role}: restart must be 'actor' or 'group', got {restart!r}")
        if name is not None and num_actors != 1:
            raise ActorGroupError(f"{role}: only a single-actor group can be named")
        self.cls, self.role, self.num_actors = cls, role, num_actors
        self._init = init or (lambda rank: ((), {}))
        self._resources = dict(resources or {})
        self.placement = placement
        self.max_restarts, self.restart_mode, self.on_restart = max_restarts, restart, on_restart
        self.timeout_s = timeout_s
        self.restart_timeout_s = restart_timeout_s  # a restart waits this long for room (a node lost) unless timeout_s
        self._name, self._namespace, self._get_if_exists = name, namespace, get_if_exists
        self.owned = True  # False when a named actor that already ran was reused: shutdown leaves it
        self.restarts = 0
        self.actors: list[Any] = []
        self._remote_cls = ray.remote(cls)

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, rank: int) -> Any:
        opts = dict(self._resources)
        if self.placement is not None:
            opts["scheduling_strategy"] = self.placement.strategy(rank)
        if self._name is not None:
            opts.update(name=self._name, namespace=self._namespace, get_if_exists=False)
        args, kwargs = self._init(rank)
        return self._remote_cls.options(**opts).remote(*args, **kwargs)

    def start(self, timeout_s: float | None = None) -> ActorGroup:
        """Create every rank and wait until all are constructed (their ``__init__`` ran).

        A named group with ``get_if_exists`` reuses a running actor of that name (and then
        does not own it: :meth:`shutdown` leaves it running)."""
        if self._name is not None and self._get_if_exists:
            try:
                self.actors, self.owned = [ray.get_actor(self._name, namespace=self._namespace)], False
                return self
            except ValueError:  # no such actor yet: create it
                pass
        self.actors = [self._spawn(r) for r in range(self.num_actors)]
        try:
            self.wait([a.__ray_ready__.remote() for a in self.actors], "__init__", timeout_s=timeout_s)
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self, method: Callable[..., Any] | None = None, timeout_s: float = 30.0) -> None:
        """Call ``method`` on every rank (best effort, bounded), then kill every actor. Idempotent."""
        actors, self.actors = self.actors, []
        if not actors or not self.owned:
            return
        if method is not None:
            refs = [getattr(a, self._method_name(method)).remote() for a in actors]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for r in ready:  # surface nothing: shutting down is best effort, but do not leak errors
                try:
                    ray.get(r)
                except Exception as e:  # noqa: BLE001 - a rank that fails to shut down is killed below
                    log.debug("%s: shutdown call failed: %s", self.role, e)
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass

    def __enter__(self) -> ActorGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __len__(self) -> int:
        return self.num_actors

    # ------------------------------------------------------------------ calls
    def _method_name(self, method: Callable[..., Any]) -> str:
        """The name the actor handle knows ``method`` by, once it is sure to be this group's class's."""
        name = method_name(method)
        own = getattr(self.cls, name, None)
        if own is None or getattr(own, "__func__", own) is not getattr(method, "__func__", method):
            where = getattr(method, "__qualname__", name)
            raise ActorGroupError(f"{self.role}: '{where}' is not a method of {self.cls.__name__} (the group's "
                                  f"actor class); pass {self.cls.__name__}.<method>")
        return name

    def submit(self, method: Callable[..., Any], per_rank: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
               ranks: Sequence[int] | None = None) -> list[Any]:
        """Object refs of ``method(*args, **kwargs)`` on ``ranks`` (default all), one per entry of ``per_rank``."""
        ranks = list(range(len(per_rank))) if ranks is None else list(ranks)
        name = self._method_name(method)
        return [getattr(self.actors[r], name).remote(*a, **kw) for r, (a, kw) in zip(ranks, per_rank)]

    def all(self, method: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> list[Any]:
        """``method(*args, **kwargs)`` on every rank; answers in rank order."""
        return self.each(method, [(args, kwargs)] * self.num_actors, timeout_s=timeout_s)

    def rank0(self, method: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """``method`` on rank 0 only (ranks that must join a collective use :meth:`all`)."""
        return self.each(method, [(args, kwargs)], ranks=[0], timeout_s=timeout_s)[0]

    def each(self, method: Callable[..., Any], per_rank: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
             ranks: Sequence[int] | None = None, timeout_s: float | None = None) -> list[Any]:
        """One call per entry of ``per_rank`` (rank ``ranks[i]``, default ``i``); answers in that order.

        A rank whose actor died is restarted and asked again while ``max_restarts`` allows
        (``restart='group'``: the whole group restarts and :class:`GroupRestarted` is raised)."""
        ranks = list(range(len(per_rank))) if ranks is None else list(ranks)
        per_rank = list(per_rank)
        while True:
            refs = self.submit(method, per_rank, ranks)
            try:
                return self.wait(refs, method_name(method), ranks=ranks, timeout_s=timeout_s)
            except RankDied as died:
                self.recover(died)

    def gather(self, method: Callable[..., Any], per_rank: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
               refs: Sequence[Any], ranks: Sequence[int] | None = None, timeout_s: float | None = None) -> list[Any]:
        """The answers of calls already made (``refs = submit(method, per_rank, ranks)``), with the
        restart policy of :meth:`each`: a rank that died is restarted and the calls asked again."""
        ranks = list(range(len(per_rank))) if ranks is None else list(ranks)
        while True:
            try:
                return self.wait(refs, method_name(method), ranks=ranks, timeout_s=timeout_s)
            except RankDied as died:
                self.recover(died)
            refs = self.submit(method, per_rank, ranks)

    def wait(self, refs: Sequence[Any], what: str, ranks: Sequence[int] | None = None,
             timeout_s: float | None = None) -> list[Any]:
        """``ray.get`` of ``refs`` with one deadline (default the group's ``timeout_s``), failing fast.

        Raises :class:`GroupTimeout` naming the role, ``what`` and the ranks that did not
        answer; :class:`RankDied` when a rank's process died; re-raises a rank's own :class:`~raydprm.errors.RaydprmError` as is; wraps
        any other rank error in :class:`ActorGroupError` naming the rank."""
        refs = list(refs)
        ranks = list(range(len(refs))) if ranks is None else list(ranks)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        rank_of = {r: rank for r, rank in zip(refs, ranks)}
        pending = list(refs)
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                late = sorted(rank_of[r] for r in pending)
                for r in pending:
                    ray.cancel(r, force=False)
                raise GroupTimeout(f"{self.role}: '{what}' timed out after {timeout_s:g} s; "
                                   f"no answer from rank(s) {late} of {self.num_actors}")
            self._get_one(ready[0], what, rank_of[ready[0]])
        return [self._get_one(r, what, rank_of[r]) for r in refs]

    def _get_one(self, ref: Any, what: str, rank: int) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise RankDied(self.role, rank, what, e) from None
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, RaydprmError):  # a clear error from the rank: keep its type and words
                raise cause from None
            raise ActorGroupError(f"{self.role}: '{what}' failed on rank {rank}: "
                                  f"{type(cause).__name__ if cause else 'error'}: {cause or e}") from e

    # ------------------------------------------------------------------ restarts
    def recover(self, died: RankDied) -> None:
        """Restart after ``died`` (from :meth:`wait`): the dead ranks (``on_restart`` brings them up to
        date), or the whole group (then :class:`GroupRestarted`); :class:`ActorGroupError` when
        ``max_restarts`` is spent. The caller then submits its call again."""
        if not isinstance(died, RankDied) or died.role != self.role:
            raise ActorGroupError(f"{self.role}: recover() takes a RankDied of this group, not {died!r}")
        if self.restarts >= self.max_restarts:
            raise ActorGroupError(f"{self.role}: rank {died.rank} died during '{died.what}' and the restart "
                                  f"budget ({self.max_restarts}) is spent: {died.error}") from None
        self.restarts += 1
        if self.restart_mode == "group":
            log.warning("%s: rank %d died during '%s'; restarting the whole group (%d/%d)", self.role, died.rank,
                        died.what, self.restarts, self.max_restarts)
            self._respawn(list(range(self.num_actors)), whole=True)
            if self.on_restart is not None:
                self.on_restart(self, list(range(self.num_actors)))
            raise GroupRestarted(f"{self.role}: rank {died.rank} died during '{died.what}'; the group restarted "
                                 f"from its last checkpoint (restart {self.restarts}/{self.max_restarts})")
        dead = [r for r in range(self.num_actors) if not self._alive(r)] or [died.rank]
        log.warning("%s: rank(s) %s died during '%s'; restarting them (%d/%d)", self.role, dead, died.what,
                    self.restarts, self.max_restarts)
        self._respawn(dead)
        if self.on_restart is not None:
            self.on_restart(self, dead)

    def _respawn(self, ranks: list[int], whole: bool = False) -> None:
        """New actors for ``ranks`` (``whole``: the group), constructed within the restart deadline.

        A replacement that dies before its ``__init__`` ran, of a system cause (it was placed on a
        node that is dying but not yet known dead: a lost node's bundles are rescheduled only once
        the GCS has marked it dead), is placed again until the deadline; one whose ``__init__``
        raised is not (that error is the answer)."""
        deadline = time.monotonic() + self._restart_timeout()
        while True:
            if whole:
                self.shutdown()
                self.actors = [self._spawn(r) for r in range(self.num_actors)]
            else:
                for r in ranks:
                    try:
                        ray.kill(self.actors[r], no_restart=True)
                    except Exception:  # noqa: BLE001 - already gone
                        pass
                    self.actors[r] = self._spawn(r)
            try:
                self.wait([self.actors[r].__ray_ready__.remote() for r in ranks], "__init__ (restart)", ranks=ranks,
                          timeout_s=max(1.0, deadline - time.monotonic()))
                return
            except GroupTimeout:
                raise self._unplaceable(ranks) from None
            except RankDied as again:
                if getattr(again.error, "actor_init_failed", False):
                    raise
                if time.monotonic() >= deadline:
                    raise self._unplaceable(ranks) from None
                log.warning("%s: the replacement of rank %d died before it started (%s); placing it again",
                            self.role, again.rank, type(again.error).__name__)
                time.sleep(1.0)

    def _restart_timeout(self) -> float:
        return self.timeout_s if self.timeout_s is not None else self.restart_timeout_s

    def _unplaceable(self, ranks: list[int]) -> ActorGroupError:
        """The error of a restart that found no room: what each rank needs, what the cluster has left."""
        need = dict(self._resources) or {"num_cpus": 1}
        where = (f"bundle(s) {[self.placement.bundle_offset + r for r in ranks]} of its placement group"
                 if self.placement is not None else "any node")
        try:
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            free = {k: round(v, 2) for k, v in sorted(ray.available_resources().items())
                    if not k.startswith(("node:", "object_store_memory", "bundle_group_", "CPU_group_", "GPU_group_"))
                    and "_group_" not in k}
        except Exception:  # noqa: BLE001 - the cluster itself may be going away
            alive, free = -1, {}
        return ActorGroupError(f"{self.role}: rank(s) {ranks} could not be restarted within "
                               f"{self._restart_timeout():g} s: each needs {need} on {where}, and the cluster "
                               f"({alive} node(s) alive) has {free or 'nothing'} free; add a node with those "
                               f"resources, then `raydprm run --resume RUN_DIR`")

    def _alive(self, rank: int) -> bool:
        ref = self.actors[rank].__ray_ready__.remote()
        try:
            ray.get(ref, timeout=10)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False


