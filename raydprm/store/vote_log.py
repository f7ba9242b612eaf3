"""Writing to the store: items, pairs, and votes appended to the log with their posteriors
folded in, in the same transaction.

Per (item, persona) the store keeps the Dirichlet *evidence* of Eq. (D1) of
:mod:`raydprm.core.dirichlet` (the posterior without its prior) and the undecayed weighted
counts; :func:`fold` updates the stored states with :func:`raydprm.store.posterior.fold_votes`
(pure numpy) and :func:`rebuild` re-derives them all from the log. Functions take the
:class:`raydprm.store.PreferenceStore` front and a cursor of its open write transaction (or
open one themselves).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from raydprm.store import schema
from raydprm.store.posterior import fold_votes
from raydprm.store.reads import LOG_COLUMNS, LogRow, chunks, decode
from raydprm.store.sqlite_db import StoreError
from raydprm.store.votes import Vote, VoteError, dedupe, item_id, same_or_raise, validate_votes

__all__ = ["reconfigure", "add_items", "add_votes", "append_votes", "fold", "fold_votes_of", "rebuild", "add_pairs"]

_ITEM_INSERT = "INSERT OR IGNORE INTO items(item_id, prompt, response, created) VALUES (?, ?, ?, ?)"


def reconfigure(store, prior: float | None, half_life_s: float | None) -> dict[str, Any]:
    """Record a new prior and/or half-life (None: keep) and, when the half-life changes, re-derive
    every posterior from the log under it, in one transaction (see :meth:`PreferenceStore.reconfigure`)."""
    schema.check_prior(prior)
    schema.check_half_life(half_life_s)
    old = (store.prior, store.half_life_s)
    new_prior = old[0] if prior is None else float(prior)
    new_hl = old[1] if half_life_s is None else float(half_life_s)
    replayed = 0
    with store._write("the new prior and half-life") as cur:
        version = schema.record_params(cur, new_prior, new_hl)
        store.prior, store.half_life_s = new_prior, new_hl
        if new_hl != old[1]:
            replayed = rebuild(store, cur)  # the log is the truth: re-derive under the new half-life
        store._params_version = version
    return {"path": str(store.path), "prior": new_prior, "half_life_s": new_hl,
            "changed": {k: [a, b] for k, a, b in (("prior", old[0], new_prior), ("half_life_s", old[1], new_hl))
                        if a != b}, "votes_replayed": replayed}


def add_items(store, items: Iterable[tuple[str, str]]) -> list[str]:
    rows, now = [], time.time()
    for i, (prompt, response) in enumerate(items):
        for name, text in (("prompt", prompt), ("response", response)):
            if not isinstance(text, str) or not text.strip() or len(text) > store.max_text_chars:
                raise StoreError(f"item #{i}: {name} must be a non-empty string of at most "
                                 f"{store.max_text_chars} chars")
        rows.append((item_id(prompt, response), prompt, response, now))
    with store._write(f"{len(rows)} items") as cur:
        cur.executemany(_ITEM_INSERT, rows)
    return [r[0] for r in rows]


def add_votes(store, votes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Validate a batch (:func:`raydprm.store.votes.validate_votes`), then append it (see
    :meth:`PreferenceStore.add_votes`)."""
    if isinstance(votes, (Mapping, str, bytes)):
        raise StoreError("add_votes takes a list of vote dicts, not a single vote")
    if not isinstance(votes, (list, tuple)):
        try:
            votes = list(votes)
        except TypeError:
            raise StoreError(f"add_votes takes a list of vote dicts, got {type(votes).__name__}") from None
    if not votes:
        return {"added": 0, "duplicates": 0}
    now = time.time()
    for attempt in range(2):
        try:
            vs = validate_votes(votes, labels=store.labels, label_index=store._label_index,
                                personas=store._personas, max_text_chars=store.max_text_chars, now=now)
            break
        except VoteError as e:
            if e.rule != "known persona" or attempt:
                raise
        store._refresh_personas()  # another process may have registered it since we looked
    batch, dup = dedupe(vs)
    return append_votes(store, vs, batch, dup)


def append_votes(store, vs: Sequence[Vote], batch: dict[str, Vote], dup: int) -> dict[str, int]:
    """Append the deduplicated ``batch`` (of the validated ``vs``) in one transaction."""
    db = store._db
    with store._write(f"a batch of {len(batch)} votes") as cur:
        # Fast path: INSERT OR IGNORE the whole batch, then look only at the ids that
        # were not inserted (already in the log) - none in the common case.
        last = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM votes").fetchone()[0]
        before = db.total_changes
        cur.executemany(f"INSERT OR IGNORE INTO votes({LOG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                        [v.log_row for v in batch.values()])
        if db.total_changes - before == len(batch):
            new = list(batch.values())
        else:
            inserted = {r[0] for r in cur.execute("SELECT vote_id FROM votes WHERE seq > ?", (last,))}
            pos = {v.vote_id: i for i, v in enumerate(vs)}
            old_ids = [vid for vid in batch if vid not in inserted]
            for chunk in chunks(old_ids):
                q = f"SELECT vote_id, item_id, persona, label, dist, weight FROM votes WHERE vote_id IN " \
                    f"({','.join('?' * len(chunk))})"
                for vid, iid, persona, label, dist, weight in cur.execute(q, chunk):
                    d = tuple(json.loads(dist)) if dist is not None else None
                    same_or_raise(pos[vid], batch[vid], (iid, persona, label, d, weight))
            dup += len(old_ids)
            new = [v for vid, v in batch.items() if vid in inserted]
        if new:
            now = time.time()
            items = {v.item_id: (v.item_id, v.prompt, v.response, now) for v in new}
            cur.executemany(_ITEM_INSERT, list(items.values()))
            fold_votes_of(store, cur, new)
    return {"added": len(new), "duplicates": dup}


def fold_votes_of(store, cur: sqlite3.Cursor, rows: Sequence[Vote]) -> None:
    """Fold votes into their items' posteriors, Eq. (D1)."""
    L = store.num_labels
    pid_of = store._personas
    if any(r.persona not in pid_of for r in rows):  # registered by another process since we looked
        pid_of = dict(cur.execute("SELECT name, pid FROM personas").fetchall())
    vp = np.array([pid_of[r.persona] for r in rows], dtype=np.int64)  # (N,) persona id of each vote
    labels = np.array([-1 if r.label is None else r.label for r in rows], dtype=np.int64)
    probs = np.zeros((len(rows), L))  # (N, L) vote as a probability row
    hard = labels >= 0
    probs[np.flatnonzero(hard), labels[hard]] = 1.0
    for k in np.flatnonzero(~hard).tolist():
        probs[k] = rows[k].dist
    fold(store, cur, [r.item_id for r in rows], vp, probs, np.array([r.weight for r in rows], dtype=np.float64),
         np.array([r.ts for r in rows], dtype=np.float64))


def fold(store, cur: sqlite3.Cursor, vote_items: Sequence[str], vp: np.ndarray, probs: np.ndarray,
         w: np.ndarray, ts: np.ndarray) -> None:
    """Fold N votes (item id (N,), persona id vp (N,), probs (N, L), weights, times) into the
    stored states of their items (:func:`raydprm.store.posterior.fold_votes`)."""
    items: dict[str, int] = {}
    vi = np.array([items.setdefault(i, len(items)) for i in vote_items], dtype=np.int64)  # (N,)
    seqs = np.zeros(len(items), dtype=np.int64)
    for chunk in chunks(list(items)):
        q = f"SELECT item_id, seq FROM items WHERE item_id IN ({','.join('?' * len(chunk))})"
        for iid, sq in cur.execute(q, chunk):
            seqs[items[iid]] = sq
    by_seq = {int(sq): j for j, sq in enumerate(seqs.tolist())}
    old = []
    for chunk in chunks(seqs.tolist()):
        q = f"SELECT item_seq, state, t_ref FROM posterior WHERE item_seq IN ({','.join('?' * len(chunk))})"
        for sq, blob, t in cur.execute(q, chunk):
            decode(store, blob)  # a corrupt state is refused with the store's name
            old.append((by_seq[sq], blob, t))
    new = fold_votes(old, len(items), vi, vp, probs, w, ts, store._half_life)
    cur.executemany("INSERT OR REPLACE INTO posterior VALUES (?, ?, ?, ?)",
                    [(sq, new.blobs[j], int(new.n_votes[j]), float(new.t_ref[j]))
                     for j, sq in enumerate(seqs.tolist())])


def rebuild(store, cur: sqlite3.Cursor) -> int:
    """Re-derive every posterior from the vote log; returns the number of votes replayed."""
    cur.execute("DELETE FROM posterior")
    n = 0
    rd = store._db.cursor()  # same connection and transaction
    rd.execute(f"SELECT {LOG_COLUMNS} FROM votes ORDER BY seq")
    while True:
        rows = [LogRow._make(r) for r in rd.fetchmany(20000)]
        if not rows:
            return n
        fold_votes_of(store, cur, [Vote(**r._asdict(), prompt="", response="",
                                        dist=None if r.dist_json is None else tuple(json.loads(r.dist_json)))
                                   for r in rows])
        n += len(rows)


def add_pairs(store, pairs: Sequence[Mapping[str, Any]]) -> int:
    rows, items, now = [], {}, time.time()
    if isinstance(pairs, (Mapping, str, bytes)) or not isinstance(pairs, Iterable):
        raise StoreError(f"add_pairs takes a list of pair dicts, got {type(pairs).__name__}")
    for i, p in enumerate(pairs):
        if not isinstance(p, Mapping):
            raise StoreError(f"pair #{i} must be a dict, got {type(p).__name__}")
        for key in ("pair_id", "prompt", "chosen", "rejected", "annotator"):
            if not isinstance(p.get(key), str) or not p[key].strip():
                raise StoreError(f"pair #{i} ({p.get('pair_id')!r}): '{key}' must be a non-empty string")
        for key in ("prompt", "chosen", "rejected"):
            if len(p[key]) > store.max_text_chars:
                raise StoreError(f"pair #{i} ({p['pair_id']!r}): '{key}' is longer than {store.max_text_chars}")
        a, b = item_id(p["prompt"], p["chosen"]), item_id(p["prompt"], p["rejected"])
        items[a] = (a, p["prompt"], p["chosen"], now)
        items[b] = (b, p["prompt"], p["rejected"], now)
        rows.append((p["pair_id"], a, b, p["annotator"], str(p.get("source", "api")), float(p.get("ts", now))))
    with store._write(f"{len(rows)} pairs") as cur:
        cur.executemany(_ITEM_INSERT, list(items.values()))
        before = cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        cur.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?, ?, ?, ?, ?)", rows)
        return cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - before
