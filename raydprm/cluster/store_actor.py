"""The preference store as a Ray actor: the same API as :class:`raydprm.store.PreferenceStore`
plus batch calls, for the pipeline and the Serve vote endpoint.

:class:`PreferenceStoreActor` is a thin shell (one SQLite connection; calls serialised by
the actor; several actors or processes on the same file are safe too, through SQLite's
write lock). :class:`StoreClient` runs it as a one-actor
:class:`~raydprm.cluster.group.ActorGroup` (optionally named, for the Serve replicas to
find) and gives the driver typed calls. Errors of the store (e.g.
:class:`~raydprm.store.votes.VoteError`) reach the caller with their own type.

    store = StoreClient.create(cfg.store, cfg.labels, default_path=run_dir / "store.db")
    store.add_votes(votes)                                  # {"added": n, "duplicates": m}
    store.distributions(items, {"scientist": 1.0})          # (B, L) as lists
    store.shutdown()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raydprm.cluster.group import ActorGroup, Placement
from raydprm.store import PreferenceStore

__all__ = ["PreferenceStoreActor", "StoreClient"]


class PreferenceStoreActor:
    """Thin shell over :class:`PreferenceStore`; each method calls one store method."""

    def __init__(self, store_cfg, labels_cfg=None, default_path: str | None = None) -> None:
        self._store = PreferenceStore.from_config(store_cfg, labels_cfg, default_path=default_path)

    def add_votes(self, votes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        return self._store.add_votes(votes)

    def add_persona(self, name: str, description: str = "") -> None:
        self._store.add_persona(name, description)

    def add_items(self, items: Sequence[tuple[str, str]]) -> list[str]:
        return self._store.add_items(items)

    def distribution(self, prompt: str, response: str, persona_weights: Mapping[str, float] | None = None,
                     smoothing: float = 0.0, at: float | None = None) -> list[float]:
        return self._store.distribution(prompt, response, persona_weights, smoothing, at)

    def distributions(self, items: Sequence[tuple[str, str]], persona_weights: Mapping[str, float] | None = None,
                      smoothing: float = 0.0, at: float | None = None) -> list[list[float]]:
        """Batch call: one distribution per (prompt, response)."""
        return self._store.distributions(items, persona_weights, smoothing, at)

    def posterior(self, prompt: str, response: str, persona: str | None = None, at: float | None = None):
        return self._store.posterior(prompt, response, persona, at)

    def variance(self, prompt: str, response: str, persona_weights: Mapping[str, float] | None = None,
                 at: float | None = None) -> list[float]:
        return self._store.variance(prompt, response, persona_weights, at)

    def count_votes(self, persona: str | None = None) -> int:
        return self._store.count_votes(persona)

    def items_needing_votes(self, k: int = 10, persona_weights: Mapping[str, float] | None = None) -> list[dict]:
        return self._store.items_needing_votes(k, persona_weights)

    def export(self, persona_weights: Mapping[str, float] | None = None, smoothing: float = 0.0,
               min_votes: int = 1, at: float | None = None):
        return self._store.export(persona_weights, smoothing, min_votes, at)

    def backup(self, dest: str) -> str:
        return str(self._store.backup(dest))

    def stats(self) -> dict[str, Any]:
        return self._store.stats()

    def labels(self) -> list[str]:
        return list(self._store.labels)

    def personas(self) -> list[str]:
        return self._store.personas


class StoreClient:
    """The driver's handle of the store actor: typed calls, one wait, one shutdown."""

    def __init__(self, group: ActorGroup, timeout_s: float | None = None) -> None:
        self.group, self.timeout_s = group, timeout_s

    @classmethod
    def create(cls, store_cfg, labels_cfg=None, default_path: str | None = None, *, name: str | None = None,
               namespace: str | None = None, placement: Placement | None = None, num_cpus: float = 0.1,
               get_if_exists: bool = False, timeout_s: float | None = 300.0) -> StoreClient:
        """Start the actor on the store of ``store_cfg`` (``store.path`` or ``default_path``);
        ``name`` makes it findable with ``ray.get_actor(name, namespace)`` (the Serve app does);
        ``get_if_exists`` reuses a running actor of that name (which this client then does not own)."""
        group = ActorGroup(PreferenceStoreActor, 1, role="store",
                           init=lambda rank: ((store_cfg, labels_cfg, None if default_path is None else str(default_path)),
                                              {}),
                           resources={"num_cpus": num_cpus}, placement=placement, name=name, namespace=namespace,
                           get_if_exists=get_if_exists, timeout_s=timeout_s)
        return cls(group.start(), timeout_s)

    @property
    def actor(self) -> Any:
        """The Ray actor handle (for code that holds it, e.g. tasks writing votes)."""
        return self.group.actors[0]

    def _call(self, method, *args: Any, **kwargs: Any) -> Any:
        return self.group.rank0(method, *args, **kwargs)

    def add_votes(self, votes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        return self._call(PreferenceStoreActor.add_votes, list(votes))

    def distributions(self, items: Sequence[tuple[str, str]], persona_weights: Mapping[str, float] | None = None,
                      smoothing: float = 0.0, at: float | None = None) -> list[list[float]]:
        return self._call(PreferenceStoreActor.distributions, list(items), persona_weights, smoothing, at)

    def count_votes(self, persona: str | None = None) -> int:
        return self._call(PreferenceStoreActor.count_votes, persona)

    def export(self, persona_weights: Mapping[str, float] | None = None, smoothing: float = 0.0,
               min_votes: int = 1, at: float | None = None):
        """The store's training export; ``at``: the read-out time of forgetting (default: now)."""
        return self._call(PreferenceStoreActor.export, persona_weights, smoothing, min_votes, at)

    def backup(self, dest: str) -> str:
        """A consistent copy of the store in ``dest`` (written by the actor, which holds the connection)."""
        return self._call(PreferenceStoreActor.backup, str(dest))

    def stats(self) -> dict[str, Any]:
        return self._call(PreferenceStoreActor.stats)

    def personas(self) -> list[str]:
        return self._call(PreferenceStoreActor.personas)

    def shutdown(self) -> None:
        self.group.shutdown()
