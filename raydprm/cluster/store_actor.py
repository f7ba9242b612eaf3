"""The preference store as a Ray actor: the same API as :class:`raydprm.store.PreferenceStore`
plus batch calls, for the pipeline and the Serve vote endpoint.

One actor owns one SQLite connection; calls are serialised by the actor, and several
actors (or processes) on the same file are safe too (SQLite's write lock). Errors of the
store (e.g. :class:`~raydprm.store.votes.VoteError`) reach the caller as ``RayTaskError``
wrapping the original exception (``except VoteError`` works on ``ray.get``).

    store = PreferenceStoreActor.remote("runs/demo/store.db")
    ray.get(store.add_votes.remote(votes))                  # {"added": n, "duplicates": m}
    ray.get(store.distributions.remote(items, {"scientist": 1.0}))   # (B, L) as lists
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from raydprm.store import PreferenceStore, StoreError

__all__ = ["PreferenceStoreActor", "store_actor_from_config"]


@ray.remote(num_cpus=0.1)
class PreferenceStoreActor:
    """Thin shell over :class:`PreferenceStore`; each method calls one store method."""

    def __init__(self, path: str, **store_kwargs: Any) -> None:
        self._store = PreferenceStore(path, **store_kwargs)

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
               min_votes: int = 1):
        return self._store.export(persona_weights, smoothing, min_votes)

    def stats(self) -> dict[str, Any]:
        return self._store.stats()

    def labels(self) -> list[str]:
        return list(self._store.labels)

    def personas(self) -> list[str]:
        return self._store.personas


def store_actor_from_config(store_cfg, labels_cfg=None, default_path: str | None = None, **actor_options: Any):
    """A :class:`PreferenceStoreActor` handle opened like :meth:`PreferenceStore.from_config`."""
    path = store_cfg.path or default_path
    if not path:
        raise StoreError("store.path is empty and no default path was given")
    kw = dict(labels=list(labels_cfg.names) if labels_cfg is not None else None, prior=store_cfg.prior,
              half_life_s=store_cfg.half_life_s, synchronous=store_cfg.synchronous,
              max_text_chars=store_cfg.max_text_chars)
    return PreferenceStoreActor.options(**actor_options).remote(str(path), **kw)
