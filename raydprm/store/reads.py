"""Reading posteriors out of the store: an item's per-persona states, pooled and mixture
posteriors at a read-out time, the naive recount from the vote log, and active collection.

Functions take the :class:`raydprm.store.PreferenceStore` front (its SQLite file, parameters
and persona cache); the math is :mod:`raydprm.core.dirichlet`. A query at time ``at`` reads
``alpha = prior + evidence * 0.5 ** ((at - t_ref) / half_life)`` (no decay when
``half_life_s = 0``); the pooled crowd sums every persona's evidence, a mixture is
sum_p w_p Dir(alpha_p) (a persona that did not vote contributes its prior).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from raydprm.core.dirichlet import decay_factor, dirichlet_mean, dirichlet_variance, mix_posteriors
from raydprm.errors import one_line
from raydprm.store.posterior import decode_state
from raydprm.store.sqlite_db import StoreError
from raydprm.store.votes import item_id

__all__ = ["UnknownItemError", "PersonaState", "ItemPosterior", "LogRow", "LOG_COLUMNS", "chunks", "decode",
           "item_states", "lookup", "lookup_many", "decayed", "weights", "alphas", "smooth", "distributions",
           "posterior", "variance", "recount", "all_posteriors", "items_needing_votes", "count_votes",
           "count_items", "stats"]

CHUNK = 500  # host parameters per IN (...) query
LOG_COLUMNS = "vote_id, item_id, persona, label, dist, weight, ts, source"


class UnknownItemError(StoreError, KeyError):
    """The (prompt, response) item is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain (and one line)
        return one_line(str(self.args[0]))


class PersonaState(NamedTuple):
    """One persona's state of one item: the Dirichlet evidence of Eq. (D1) at ``t_ref`` (prior
    excluded), the undecayed weighted counts (both (L,)), its number of votes, and ``t_ref``
    (the newest vote of the item)."""

    evidence: np.ndarray
    counts: np.ndarray
    n_votes: int
    t_ref: float


class ItemPosterior(NamedTuple):
    """An item with its (pooled or mixture) posterior mean and variance (L,) and the states
    of the personas that voted on it."""

    item_id: str
    prompt: str
    response: str
    mean: np.ndarray
    variance: np.ndarray
    n_votes: int
    personas: dict[str, PersonaState]


class LogRow(NamedTuple):
    """A row of the vote log, in the column order of the ``votes`` table (without ``seq``)."""

    vote_id: str
    item_id: str
    persona: str
    label: int | None
    dist_json: str | None
    weight: float
    ts: float
    source: str


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def decode(store, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An item's state -> persona ids (k,), vote counts (k,), evidence (k, L), counts (k, L)."""
    try:
        return decode_state(blob, store.num_labels, store._half_life is not None)
    except ValueError as e:
        raise StoreError(f"preference store '{store.path}' holds a corrupt posterior state ({e}); rebuild the "
                         "posteriors from the vote log (PreferenceStore.rebuild_posteriors)") from None


def item_states(store, blob: bytes, t_ref: float) -> dict[str, PersonaState]:
    """{persona: PersonaState} of an item's state."""
    pids, nv, ev, cnt = decode(store, blob)
    if any(p not in store._pid_name for p in pids.tolist()):
        store._refresh_personas()
    return {store._pid_name[p]: PersonaState(ev[i], cnt[i], int(nv[i]), t_ref) for i, p in enumerate(pids.tolist())}


def _unknown(iid: str, prompt: str, response: str) -> UnknownItemError:
    return UnknownItemError(f"item {iid} (prompt {prompt[:40]!r}..., response {response[:40]!r}...) "
                            "is not in the store")


def lookup(store, prompt: str, response: str) -> tuple[str, dict[str, PersonaState]]:
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise StoreError("prompt and response must be strings")
    iid = item_id(prompt, response)
    with store._read() as cur:
        row = cur.execute("SELECT p.state, p.t_ref FROM items i LEFT JOIN posterior p "
                          "ON p.item_seq = i.seq WHERE i.item_id = ?", (iid,)).fetchone()
        if row is None:
            raise _unknown(iid, prompt, response)
        state, t_ref = row
        return iid, ({} if state is None else item_states(store, state, t_ref))


def lookup_many(store, items: Sequence[tuple[str, str]]) -> list[dict[str, PersonaState]]:
    ids = []
    for i, it in enumerate(items):
        if not (isinstance(it, (tuple, list)) and len(it) == 2 and all(isinstance(x, str) for x in it)):
            raise StoreError(f"item #{i} must be a (prompt, response) pair of strings")
        ids.append(item_id(*it))
    found: dict[str, dict] = {}
    with store._read() as cur:
        for chunk in chunks(list(dict.fromkeys(ids))):
            q = f"SELECT i.item_id, p.state, p.t_ref FROM items i LEFT JOIN posterior p " \
                f"ON p.item_seq = i.seq WHERE i.item_id IN ({','.join('?' * len(chunk))})"
            for iid, blob, t in cur.execute(q, chunk):
                found[iid] = {} if blob is None else item_states(store, blob, t)
    for (p, r), iid in zip(items, ids):
        if iid not in found:
            raise _unknown(iid, p, r)
    return [found[iid] for iid in ids]


def decayed(store, ev: np.ndarray, t_ref: float, at: float | None) -> np.ndarray:
    hl = store._half_life
    if hl is None:
        return ev
    t = time.time() if at is None else float(at)
    return ev * decay_factor(max(t - t_ref, 0.0), hl)  # read-out at time `at`


def weights(store, persona_weights: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    """Names and weights (P,) of a persona mixture; refuses unknown personas and bad weights."""
    if not isinstance(persona_weights, Mapping) or not persona_weights:
        raise StoreError("persona_weights must be a non-empty mapping {persona: weight}")
    unknown = [p for p in persona_weights if p not in store._personas]
    if unknown:  # maybe registered by another process since we looked
        store._refresh_personas()
        unknown = [p for p in persona_weights if p not in store._personas]
    if unknown:
        raise StoreError(f"persona_weights names unknown personas {unknown}; known: {', '.join(store._personas)}")
    names = list(persona_weights)
    w = np.array([float(persona_weights[p]) for p in names])
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise StoreError(f"persona_weights must be finite, >= 0 and not all zero, got {dict(persona_weights)}")
    return names, w


def alphas(store, rows: dict, persona_weights: Mapping[str, float] | None, at: float | None,
           names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(P, L) alphas and weights (P,) for a mixture, or (L,) pooled alpha and None."""
    L = store.num_labels
    if persona_weights is None:
        ev = sum((decayed(store, r.evidence, r.t_ref, at) for r in rows.values()), np.zeros(L))
        return store.prior + ev, None  # pooled crowd: every vote of every persona
    w = None
    if names is None:
        names, w = weights(store, persona_weights)
    a = np.stack([store.prior + (decayed(store, rows[p].evidence, rows[p].t_ref, at) if p in rows
                                 else np.zeros(L)) for p in names])  # (P, L)
    return a, w


def smooth(mean: np.ndarray, smoothing: float) -> np.ndarray:
    if not smoothing:
        return mean
    if not (0 <= smoothing < 1):
        raise StoreError(f"smoothing must lie in [0, 1), got {smoothing!r}")
    import torch

    from raydprm.core.smoothing import targeted_smoothing

    return targeted_smoothing(torch.as_tensor(np.asarray(mean, dtype=np.float64)), smoothing).numpy()  # (Eq. T1)


def distributions(store, items: Sequence[tuple[str, str]], persona_weights: Mapping[str, float] | None,
                  smoothing: float, at: float | None) -> list[list[float]]:
    rows = lookup_many(store, items)
    if persona_weights is None:
        a = np.stack([alphas(store, r, None, at)[0] for r in rows]) if rows else np.zeros((0, store.num_labels))
        mean = dirichlet_mean(a) if rows else a  # (B, L)
    else:
        names, w = weights(store, persona_weights)
        if not rows:
            return []
        a = np.stack([alphas(store, r, persona_weights, at, names)[0] for r in rows], axis=1)  # (P, B, L)
        mean = mix_posteriors(a, w)[0]  # (B, L)
    return smooth(np.asarray(mean), smoothing).tolist()


def posterior(store, prompt: str, response: str, persona: str | None, at: float | None) -> dict[str, Any]:
    _, rows = lookup(store, prompt, response)
    if persona is not None:
        weights(store, {persona: 1.0})
        rows = {persona: rows[persona]} if persona in rows else {}
    alpha, _ = alphas(store, rows, None, at)
    return {"alpha": alpha.tolist(), "mean": dirichlet_mean(alpha).tolist(),
            "variance": dirichlet_variance(alpha).tolist(), "n_votes": int(sum(r.n_votes for r in rows.values()))}


def variance(store, prompt: str, response: str, persona_weights: Mapping[str, float] | None,
             at: float | None) -> list[float]:
    _, rows = lookup(store, prompt, response)
    a, w = alphas(store, rows, persona_weights, at)
    return (dirichlet_variance(a) if w is None else mix_posteriors(a, w)[1]).tolist()


def recount(store, prompt: str, response: str, persona: str | None, at: float | None) -> list[float]:
    """prior + sum_k w_k decay(at - ts_k) v_k over the item's votes in the log (the naive twin)."""
    iid = item_id(prompt, response)
    q = "SELECT label, dist, weight, ts FROM votes WHERE item_id = ?" + (" AND persona = ?" if persona else "")
    with store._read() as cur:
        rows = cur.execute(q, (iid, persona) if persona else (iid,)).fetchall()
    alpha = np.full(store.num_labels, store.prior)
    if not rows:
        return alpha.tolist()
    t_ref = max(ts for *_, ts in rows)
    hl = store._half_life
    t = t_ref if hl is None else (time.time() if at is None else float(at))
    for label, dist, weight, ts in rows:
        v = np.zeros(store.num_labels)
        if dist is None:
            v[label] = 1.0
        else:
            v[:] = json.loads(dist)
        d = 1.0 if hl is None else float(decay_factor(max(t - ts, 0.0), hl))
        alpha += weight * d * v
    return alpha.tolist()


def all_posteriors(store, persona_weights: Mapping[str, float] | None, at: float | None,
                   min_votes: int = 0, rows_only: bool = False) -> Iterator[ItemPosterior]:
    """The posterior of every item with at least ``min_votes`` votes, in insertion order
    (``rows_only``: without texts, mean and variance)."""
    with store._read() as cur:
        if rows_only:
            items = cur.execute("SELECT i.item_id, '', '', p.state, p.t_ref FROM items i "
                                "JOIN posterior p ON p.item_seq = i.seq ORDER BY i.seq").fetchall()
        else:
            items = cur.execute("SELECT i.item_id, i.prompt, i.response, p.state, p.t_ref FROM items i "
                                "LEFT JOIN posterior p ON p.item_seq = i.seq ORDER BY i.seq").fetchall()
    for iid, prompt, response, blob, t in items:
        rows = {} if blob is None else item_states(store, blob, t)
        n = sum(r.n_votes for r in rows.values())
        if n < min_votes:
            continue
        if rows_only:
            yield ItemPosterior(iid, prompt, response, None, None, n, rows)
            continue
        a, w = alphas(store, rows, persona_weights, at)
        mean, var = (dirichlet_mean(a), dirichlet_variance(a)) if w is None else mix_posteriors(a, w)
        yield ItemPosterior(iid, prompt, response, np.asarray(mean), np.asarray(var), n, rows)


def items_needing_votes(store, k: int, persona_weights: Mapping[str, float] | None,
                        at: float | None) -> list[dict[str, Any]]:
    if k < 1:
        raise StoreError(f"k must be >= 1, got {k}")
    scored = [{"item_id": it.item_id, "prompt": it.prompt, "response": it.response,
               "variance": float(it.variance.sum()), "n_votes": it.n_votes}
              for it in all_posteriors(store, persona_weights, at)]
    scored.sort(key=lambda d: (-d["variance"], d["item_id"]))
    return scored[:k]


def count_votes(store, persona: str | None = None) -> int:
    with store._read() as cur:
        if persona is None:
            return int(cur.execute("SELECT COUNT(*) FROM votes").fetchone()[0])
        return int(cur.execute("SELECT COUNT(*) FROM votes WHERE persona = ?", (persona,)).fetchone()[0])


def count_items(store) -> int:
    with store._read() as cur:
        return int(cur.execute("SELECT COUNT(*) FROM items").fetchone()[0])


def stats(store) -> dict[str, Any]:
    """Counts and settings of the store (``raydprm store stats``)."""
    with store._read() as cur:
        per = dict(cur.execute("SELECT persona, COUNT(*) FROM votes GROUP BY persona").fetchall())
        n_items = cur.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        voted = cur.execute("SELECT COUNT(*) FROM posterior").fetchone()[0]
        n_pairs = cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        sync = cur.execute("PRAGMA synchronous").fetchone()[0]
    store._refresh_personas()
    return {"path": str(store.path), "votes": sum(per.values()), "items": n_items, "items_with_votes": voted,
            "pairs": n_pairs, "votes_per_persona": {p: per.get(p, 0) for p in store._personas},
            "groups": store.group_counts(), "rewards": list(store._scale.rewards),
            "labels": list(store.labels), "prior": store.prior, "half_life_s": store.half_life_s,
            "readonly": store.readonly, "journal_mode": "wal",
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)}
