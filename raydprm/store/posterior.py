"""The store's posterior math, pure numpy (no SQLite): the per-(item, group) state rows and the
vectorised fold of a batch of votes into them, Eq. (D1) of :mod:`raydprm.core.dirichlet`.

An item's state is a float64 matrix with one row per group (persona) that voted on it,

    [pid, n_votes, evidence (L), counts (L)]     (counts omitted without forgetting: evidence == counts)

where ``evidence`` is the decayed Dirichlet evidence at the item's reference time ``t_ref``
(the newest vote of the item, prior excluded) and ``counts`` the undecayed weighted counts:

    evidence(t_ref) = sum_k w_k * 0.5 ** ((t_ref - ts_k) / half_life) * v_k          (Eq. D1)

The SQLite layer stores the matrix of an item as one BLOB; :func:`fold_votes` is the only place
that updates states, and :func:`naive_alpha` its naive twin (a recount from the votes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from raydprm.core.dirichlet import decay_factor

__all__ = ["state_width", "decode_state", "StateRows", "fold_votes", "scatter_votes", "naive_alpha", "PID_SPAN"]

PID_SPAN = 1 << 31  # (item, persona) group key = item * span + persona id


def state_width(num_labels: int, forgetting: bool) -> int:
    """Columns of one group's row: [pid, n_votes, evidence (L), counts (L) if forgetting]."""
    return 2 + num_labels * (2 if forgetting else 1)


def decode_state(blob: bytes, num_labels: int, forgetting: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An item's state -> persona ids (k,), vote counts (k,), evidence (k, L), counts (k, L).

    Raises ValueError when the blob's size is no multiple of a row."""
    width = state_width(num_labels, forgetting)
    if not isinstance(blob, bytes) or len(blob) % (8 * width):
        raise ValueError(f"{len(blob or b'')} bytes is no multiple of {8 * width}")
    m = np.frombuffer(blob).reshape(-1, width)  # (k, W) one row per persona
    ev = m[:, 2:2 + num_labels]
    return (m[:, 0].astype(np.int64), m[:, 1].astype(np.int64), ev,
            ev if not forgetting else m[:, 2 + num_labels:])


class StateRows(NamedTuple):
    """New states of the items a batch touched: ``blobs[j]`` (bytes), ``n_votes[j]`` (total votes)
    and ``t_ref[j]`` (newest vote) of touched item j."""

    blobs: list[bytes]
    n_votes: np.ndarray
    t_ref: np.ndarray


def fold_votes(old: list[tuple[int, bytes, float]], num_items: int, vi: np.ndarray, vp: np.ndarray,
               probs: np.ndarray, w: np.ndarray, ts: np.ndarray, half_life: float | None) -> StateRows:
    """Fold N votes into the states of ``num_items`` touched items, Eq. (D1).

    old:   (j, state blob, t_ref) of the touched items that already have a state.
    vi:    (N,) touched-item index j of each vote; vp: (N,) persona id of each vote.
    probs: (N, L) each vote as a probability row; w: (N,) weights; ts: (N,) vote times.
    half_life: forgetting half-life in seconds, None = no forgetting.

    Forgetting is by vote time, so the result does not depend on the order of the votes.
    """
    L = probs.shape[1]
    forgetting = half_life is not None
    t_ref = np.full(num_items, -np.inf)  # (I,)
    old_keys, old_ev, old_cnt, old_nv = [], [], [], []
    for j, blob, t in old:
        t_ref[j] = t
        pids, nv, e, c = decode_state(blob, L, forgetting)
        old_keys.append(j * PID_SPAN + pids)
        old_ev.append(e)
        old_cnt.append(c)
        old_nv.append(nv)
    # groups = every (item, persona) of the touched items, keyed j * span + pid and sorted,
    # so each item's personas are contiguous: old rows and the new votes map onto them
    n_old = sum(len(k) for k in old_keys)
    keys, inv = np.unique(np.concatenate(old_keys + [vi * PID_SPAN + vp]), return_inverse=True)
    G = len(keys)
    ev = np.zeros((G, L))  # (G, L) decayed evidence at the item's t_ref
    cnt = np.zeros((G, L))  # (G, L) undecayed weighted counts
    nvs = np.zeros(G, dtype=np.int64)
    if n_old:
        at = inv[:n_old]
        ev[at], cnt[at], nvs[at] = np.concatenate(old_ev), np.concatenate(old_cnt), np.concatenate(old_nv)
    g = inv[n_old:]  # (N,) group of each vote
    g_item, g_pid = keys // PID_SPAN, keys % PID_SPAN  # (G,)
    now = t_ref.copy()
    np.maximum.at(now, vi, ts)  # (I,) new reference time = newest vote of the item
    if not forgetting:  # evidence == counts: one accumulator, Eq. (D1) (prior added at read time)
        ev = cnt = scatter_votes(ev, probs, w, g)
    else:
        age = np.where(np.isinf(t_ref), 0.0, now - t_ref)
        ev = ev * decay_factor(age, half_life)[g_item][:, None]  # old evidence ages to the new t_ref
        w_eff = w * decay_factor(now[vi] - ts, half_life)  # each vote aged to its item's t_ref
        ev = scatter_votes(ev, probs, w_eff, g)  # decayed evidence (Eq. D1)
        cnt = scatter_votes(cnt, probs, w, g)  # undecayed counts
    nvs += np.bincount(g, minlength=G)
    cols = [g_pid[:, None], nvs[:, None], ev] + ([cnt] if forgetting else [])
    state = np.ascontiguousarray(np.concatenate(cols, axis=1, dtype=np.float64))  # (G, W) rows by item
    bounds = np.searchsorted(g_item, np.arange(num_items + 1)).tolist()  # groups are sorted by item
    tot = np.add.reduceat(nvs, bounds[:-1])  # (I,) votes per item (every item has >= 1 group)
    return StateRows([state[bounds[j]:bounds[j + 1]].tobytes() for j in range(num_items)], tot, now)


def scatter_votes(acc: np.ndarray, probs: np.ndarray, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """acc (G, L) + sum over votes k of group g_k of w_k v_k (Eq. D1 without decay): one
    ``bincount`` per label, the same sums as :func:`raydprm.core.dirichlet.dirichlet_update`
    with ``index=g`` (its index_add) without converting to torch and re-validating the votes."""
    G, L = acc.shape
    out = acc.copy()
    for lab in range(L):  # (Eq. D1) per label
        out[:, lab] += np.bincount(g, weights=w * probs[:, lab], minlength=G)
    return out


def naive_alpha(prior: float, probs: np.ndarray, w: np.ndarray, ts: np.ndarray, at: float | None,
                half_life: float | None) -> np.ndarray:
    """The naive twin of :func:`fold_votes` for one (item, group): prior + sum_k w_k decay(at - ts_k) v_k,
    vote by vote (``at`` = newest vote when None). probs (N, L) -> alpha (L,)."""
    alpha = np.full(probs.shape[1], float(prior))
    if len(w) == 0:
        return alpha
    t = float(np.max(ts)) if (at is None or half_life is None) else float(at)
    for v, wk, tk in zip(probs, w, ts):
        d = 1.0 if half_life is None else float(decay_factor(max(t - tk, 0.0), half_life))
        alpha += wk * d * v
    return alpha
