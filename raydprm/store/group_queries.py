"""Rater groups (= personas) as the store records them: which exist, their raters and counts,
and the per-(item, group) posteriors as arrays (the input of :mod:`raydprm.store.groups`).

Functions take the :class:`raydprm.store.PreferenceStore` front. A store's groups are the
groups that exist in it: an imported per-rater dataset makes one group per value of its
mapping's group column (or template), e.g. ``"Woman/gen z"``; a store made by the simulated
pipeline has the simulated crowd's personas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from raydprm.store import reads

__all__ = ["GroupPosteriors", "groups", "rater_groups", "group_counts", "group_posteriors"]


class GroupPosteriors(NamedTuple):
    """Per-(item, group) posteriors as arrays (see :meth:`PreferenceStore.group_posteriors`).

    ``item_ids`` (I,) and ``groups`` (P,) name the axes; ``alpha`` (I, P, L) is prior + evidence
    decayed to the read-out time; ``counts`` (I, P, L) the undecayed weighted vote counts;
    ``n_votes`` (I, P) the number of votes. A group that did not vote on an item has its prior."""

    item_ids: list[str]
    groups: list[str]
    alpha: np.ndarray
    counts: np.ndarray
    n_votes: np.ndarray


def groups(store, with_votes: bool = True) -> list[str]:
    """Groups in registration order; ``with_votes``: only those with a vote."""
    with store._read() as cur:
        rows = cur.execute("SELECT name FROM personas ORDER BY pid").fetchall()
        if not with_votes:
            return [r[0] for r in rows]
        voted = {r[0] for r in cur.execute("SELECT DISTINCT persona FROM votes")}
    return [r[0] for r in rows if r[0] in voted]


def rater_groups(store) -> dict[str, str]:
    with store._read() as cur:
        return dict(cur.execute("SELECT rater, grp FROM raters ORDER BY rater").fetchall())


def group_counts(store) -> dict[str, dict[str, int]]:
    with store._read() as cur:
        votes = dict(cur.execute("SELECT persona, COUNT(*) FROM votes GROUP BY persona").fetchall())
        items = dict(cur.execute("SELECT persona, COUNT(DISTINCT item_id) FROM votes GROUP BY persona").fetchall())
        raters = dict(cur.execute("SELECT grp, COUNT(*) FROM raters GROUP BY grp").fetchall())
    return {g: {"votes": int(votes[g]), "raters": int(raters.get(g, 0)), "items": int(items.get(g, 0))}
            for g in groups(store)}


def group_posteriors(store, names: Sequence[str] | None = None, *, at: float | None = None, min_votes: int = 1,
                     item_ids: Sequence[str] | None = None) -> GroupPosteriors:
    """Arrays of the per-(item, group) posteriors, items in insertion order (see the front)."""
    given = names is not None
    names = groups(store) if names is None else list(names)
    if given:
        reads.weights(store, {g: 1.0 for g in names})  # refuses unknown groups
    col = {g: k for k, g in enumerate(names)}
    keep = None if item_ids is None else set(item_ids)
    ids, alphas, counts, nvs = [], [], [], []
    L = store.num_labels
    for it in reads.all_posteriors(store, None, at, min_votes, rows_only=True):
        if keep is not None and it.item_id not in keep:
            continue
        a = np.full((len(names), L), store.prior)  # (P, L)
        c = np.zeros((len(names), L))
        n = np.zeros(len(names), dtype=np.int64)
        for g, st in it.personas.items():
            if g in col:
                a[col[g]] += reads.decayed(store, st.evidence, st.t_ref, at)
                c[col[g]] = st.counts
                n[col[g]] = st.n_votes
        ids.append(it.item_id)
        alphas.append(a)
        counts.append(c)
        nvs.append(n)
    shape = (0, len(names), L)
    return GroupPosteriors(ids, names, np.stack(alphas) if ids else np.zeros(shape),
                           np.stack(counts) if ids else np.zeros(shape),
                           np.stack(nvs) if ids else np.zeros(shape[:2], dtype=np.int64))
