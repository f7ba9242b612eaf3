"""The durable Bayesian preference store (SQLite in WAL mode, one file).

Tables (the vote log is the source of truth; everything else is derived from it)::

    votes(seq, vote_id UNIQUE, item_id, persona, label, dist, weight, ts, source)   append-only log
    items(seq, item_id = content hash of (prompt, response), prompt, response, created)
    posterior(item_seq, state, n_votes, t_ref)       derived: every persona's posterior of the item
    personas(pid, name, description), labels(idx, name), meta(key, value), pairs(...)

Per (item, persona) the store keeps the Dirichlet *evidence* of Eq. (D1) of
:mod:`raydprm.core.dirichlet` (the posterior without its prior),

    evidence(t_ref) = sum_k w_k * 0.5 ** ((t_ref - ts_k) / half_life) * v_k,   t_ref = newest vote of the item

and the undecayed weighted counts (the same numbers without forgetting, then stored once).
One row per item holds all its personas' state, so a batch rewrites one row per item it
touches; rows are keyed by the item's insertion number, so the recent items that votes
arrive for share a few B-tree pages and a commit writes few pages. The state is updated
with :func:`~raydprm.core.dirichlet.dirichlet_update` in the same transaction that appends
the votes, and is always recomputable from the log (:meth:`PreferenceStore.rebuild_posteriors`;
:meth:`PreferenceStore.recount` is the naive twin for one item). A query at time ``at``
reads ``alpha = prior + evidence * 0.5 ** ((at - t_ref) / half_life)`` (no decay when
``half_life_s = 0``). Because forgetting is by vote *time*, the result does not depend on
the order in which votes arrived.

Guarantees: a batch is validated completely before anything is written and is written in
one ``BEGIN IMMEDIATE`` transaction (all or nothing); a vote id already in the log is a
no-op (idempotent retries; the same id with different content is refused);
``add_votes`` returns after COMMIT, which under WAL with ``synchronous=FULL`` (default) is
on disk and with ``NORMAL`` survives a process crash (kill -9) but not a power loss;
concurrent writers in several processes serialise on SQLite's write lock (busy timeout).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raydprm.core.dirichlet import (
    decay_factor,
    dirichlet_mean,
    dirichlet_update,
    dirichlet_variance,
    mix_posteriors,
)
from raydprm.core.hh_labels import HH_LABELS
from raydprm.errors import RaydprmError
from raydprm.store.votes import Vote, VoteError, item_id, validate_votes

__all__ = ["PreferenceStore", "StoreError", "UnknownItemError", "DEFAULT_STORE_PERSONAS", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
# The paper's six personas plus an id for votes that name no persona (e.g. HTTP votes).
DEFAULT_STORE_PERSONAS = ("scientist", "teacher", "politician", "teenager", "ceo", "artist", "anonymous")
_CHUNK = 500  # host parameters per IN (...) query
_PID_SPAN = 1 << 31  # (item, persona) group key = item * span + persona id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels(idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS personas(pid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                                    description TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS items(seq INTEGER PRIMARY KEY, item_id TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL,
                                 response TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS votes(seq INTEGER PRIMARY KEY AUTOINCREMENT, vote_id TEXT NOT NULL UNIQUE,
                                 item_id TEXT NOT NULL, persona TEXT NOT NULL, label INTEGER, dist TEXT,
                                 weight REAL NOT NULL, ts REAL NOT NULL, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS posterior(item_seq INTEGER PRIMARY KEY, state BLOB NOT NULL, n_votes INTEGER NOT NULL,
                                     t_ref REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pairs(pair_id TEXT PRIMARY KEY, chosen_item TEXT NOT NULL, rejected_item TEXT NOT NULL,
                                 annotator TEXT NOT NULL, source TEXT NOT NULL, ts REAL NOT NULL);
"""


class StoreError(RaydprmError):
    """The store cannot do what was asked (bad arguments, incompatible file)."""


class UnknownItemError(StoreError, KeyError):
    """The (prompt, response) item is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class PreferenceStore:
    """Open (or create) the preference store at ``path``.

    Args:
        path: SQLite file (created with its parent directory when missing).
        labels: label names of a new store (default: the paper's six HH labels); an
            existing store keeps its own and refuses different ones.
        personas: extra persona / annotator ids to register (the defaults are always there).
        prior: Dirichlet prior concentration per label, added at read time (any value, any time).
        half_life_s: forgetting half-life in seconds (0 = none). None keeps the store's
            setting; a different value is saved and the posteriors are rebuilt from the log.
        synchronous: "FULL" (durable on power loss) or "NORMAL" (durable on process crash).
        max_text_chars: longest prompt or response accepted.
        busy_timeout_s: how long a writer waits for another writer's lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, labels: Sequence[str] | None = None,
                 personas: Iterable[str] = (), prior: float = 1.0, half_life_s: float | None = None,
                 synchronous: str = "FULL", max_text_chars: int = 16384, busy_timeout_s: float = 60.0) -> None:
        if not (isinstance(prior, (int, float)) and math.isfinite(prior) and prior > 0):
            raise StoreError(f"prior must be a finite number > 0, got {prior!r}")
        if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s >= 0):
            raise StoreError(f"half_life_s must be a finite number >= 0, got {half_life_s!r}")
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        if max_text_chars < 1:
            raise StoreError(f"max_text_chars must be >= 1, got {max_text_chars}")
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"store path '{self.path}' is a directory; give a file path such as {self.path}/store.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prior = float(prior)
        self.synchronous = synchronous.upper()
        self.max_text_chars = int(max_text_chars)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._set_wal(busy_timeout_s)
            self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            # A bigger page cache and fewer, larger WAL checkpoints: each checkpoint syncs the
            # database file, so checkpointing every ~16 MB instead of 4 MB cuts syncs 4x.
            # Durability is unchanged: a COMMIT is durable once it is in the WAL.
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.execute("PRAGMA wal_autocheckpoint=4000")
            with self._write() as cur:
                for stmt in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it COMMITs
                    cur.execute(stmt)
                self._init_meta(cur, labels, half_life_s, personas)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open preference store '{self.path}': {e}") from None
        self._load_meta()

    @classmethod
    def from_config(cls, store_cfg, labels_cfg=None, default_path: str | os.PathLike[str] | None = None
                    ) -> PreferenceStore:
        """Open the store of a :class:`raydprm.config.StoreConfig` (+ optional LabelsConfig)."""
        path = store_cfg.path or default_path
        if not path:
            raise StoreError("store.path is empty and no default path was given")
        return cls(path, labels=labels_cfg.names if labels_cfg is not None else None, prior=store_cfg.prior,
                   half_life_s=store_cfg.half_life_s, synchronous=store_cfg.synchronous,
                   max_text_chars=store_cfg.max_text_chars)

    # ------------------------------------------------------------------ plumbing

    def _set_wal(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:  # several processes creating the file at once may briefly see "locked"
            try:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"cannot put '{self.path}' in WAL mode (got {mode})")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: BEGIN IMMEDIATE (takes the write lock) ... COMMIT, or ROLLBACK."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """A consistent snapshot for multi-statement reads."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    def _init_meta(self, cur: sqlite3.Cursor, labels: Sequence[str] | None, half_life_s: float | None,
                   personas: Iterable[str]) -> None:
        meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            names = list(labels) if labels is not None else list(HH_LABELS)
            if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise StoreError(f"labels must be >= 2 distinct non-empty names, got {names!r}")
            cur.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("labels", json.dumps(names)),
                ("half_life_s", repr(float(half_life_s or 0.0))), ("created", repr(time.time()))])
            cur.executemany("INSERT INTO labels VALUES (?, ?)", list(enumerate(names)))
            cur.executemany("INSERT OR IGNORE INTO personas(name) VALUES (?)", [(p,) for p in DEFAULT_STORE_PERSONAS])
        else:
            if int(meta.get("schema_version", 0)) != SCHEMA_VERSION:
                raise StoreError(f"store '{self.path}' has schema version {meta.get('schema_version')}, "
                                 f"this raydprm reads version {SCHEMA_VERSION}")
            have = json.loads(meta["labels"])
            if labels is not None and list(labels) != have:
                raise StoreError(f"store '{self.path}' was created with labels {have}, not {list(labels)}")
            if half_life_s is not None and float(half_life_s) != float(meta["half_life_s"]):
                cur.execute("UPDATE meta SET value = ? WHERE key = 'half_life_s'", (repr(float(half_life_s)),))
                self.half_life_s = float(half_life_s)
                self.labels = have
                self._personas = dict(cur.execute("SELECT name, pid FROM personas").fetchall())
                self._rebuild(cur)  # the log is the truth: re-derive posteriors under the new half-life
        for p in personas:
            self._check_persona_name(p)
            cur.execute("INSERT OR IGNORE INTO personas(name) VALUES (?)", (p,))

    def _load_meta(self) -> None:
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            self.labels: list[str] = json.loads(meta["labels"])
            self.half_life_s: float = float(meta["half_life_s"])
            self._label_index = {n: i for i, n in enumerate(self.labels)}
            self._personas = dict(self._db.execute("SELECT name, pid FROM personas ORDER BY pid").fetchall())
            self._pid_name = {pid: name for name, pid in self._personas.items()}

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def personas(self) -> list[str]:
        """Registered persona / annotator ids."""
        self._refresh_personas()
        return list(self._personas)

    def _refresh_personas(self) -> None:
        with self._lock:
            self._personas = dict(self._db.execute("SELECT name, pid FROM personas ORDER BY pid").fetchall())
            self._pid_name = {pid: name for name, pid in self._personas.items()}

    @property
    def _half_life(self) -> float | None:
        return self.half_life_s if self.half_life_s > 0 else None

    @staticmethod
    def _check_persona_name(name: Any) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise StoreError(f"persona id must be a non-empty string of at most 128 chars, got {name!r}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore('{self.path}', labels={len(self.labels)}, half_life_s={self.half_life_s})"

    # ------------------------------------------------------------------ writing

    def add_persona(self, name: str, description: str = "") -> None:
        """Register a persona or annotator id (idempotent)."""
        self._check_persona_name(name)
        with self._write() as cur:
            cur.execute("INSERT INTO personas(name, description) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET description = "
                        "CASE WHEN excluded.description != '' THEN excluded.description ELSE description END",
                        (name, description))
        self._refresh_personas()

    def add_items(self, items: Iterable[tuple[str, str]]) -> list[str]:
        """Register (prompt, response) items without votes (e.g. for active collection); returns their ids."""
        rows, now = [], time.time()
        for i, (prompt, response) in enumerate(items):
            for name, text in (("prompt", prompt), ("response", response)):
                if not isinstance(text, str) or not text.strip() or len(text) > self.max_text_chars:
                    raise StoreError(f"item #{i}: {name} must be a non-empty string of at most "
                                     f"{self.max_text_chars} chars")
            rows.append((item_id(prompt, response), prompt, response, now))
        with self._write() as cur:
            cur.executemany("INSERT OR IGNORE INTO items(item_id, prompt, response, created) VALUES (?, ?, ?, ?)", rows)
        return [r[0] for r in rows]

    def add_votes(self, votes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Append a batch of votes atomically; returns ``{"added", "duplicates"}`` after COMMIT.

        Every vote is validated first (see :mod:`raydprm.store.votes`); one bad vote
        refuses the whole batch with a :class:`VoteError` naming it and the rule.
        Vote ids already in the log (or repeated in the batch) are skipped, unless the
        content differs, which is refused.
        """
        if isinstance(votes, (Mapping, str, bytes)):
            raise StoreError("add_votes takes a list of vote dicts, not a single vote")
        votes = list(votes) if not isinstance(votes, (list, tuple)) else votes
        if not votes:
            return {"added": 0, "duplicates": 0}
        now = time.time()
        vs = None
        for attempt in range(2):
            try:
                vs = validate_votes(votes, labels=self.labels, label_index=self._label_index,
                                    personas=self._personas, max_text_chars=self.max_text_chars, now=now)
                break
            except VoteError as e:
                if e.rule != "known persona" or attempt:
                    raise
            self._refresh_personas()  # another process may have registered it since we looked
        batch: dict[str, Vote] = {v.vote_id: v for v in vs}
        dup = len(vs) - len(batch)
        if dup:  # an id repeated inside the batch: keep the first, the others must be identical
            batch = {}
            for i, v in enumerate(vs):
                first = batch.setdefault(v.vote_id, v)
                if first is not v:
                    self._same_or_raise(i, v, (first.item_id, first.persona, first.label, first.dist, first.weight))
        with self._write() as cur:
            # Fast path: INSERT OR IGNORE the whole batch, then look only at the ids that
            # were not inserted (already in the log) - none in the common case.
            last = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM votes").fetchone()[0]
            before = self._db.total_changes
            cur.executemany(
                "INSERT OR IGNORE INTO votes(vote_id, item_id, persona, label, dist, weight, ts, source) "
                "VALUES (?,?,?,?,?,?,?,?)", [v[:8] for v in batch.values()])
            if self._db.total_changes - before == len(batch):
                new = list(batch.values())
            else:
                inserted = {r[0] for r in cur.execute("SELECT vote_id FROM votes WHERE seq > ?", (last,))}
                pos = {v.vote_id: i for i, v in enumerate(vs)}
                old_ids = [vid for vid in batch if vid not in inserted]
                for chunk in _chunks(old_ids):
                    q = f"SELECT vote_id, item_id, persona, label, dist, weight FROM votes WHERE vote_id IN " \
                        f"({','.join('?' * len(chunk))})"
                    for row in cur.execute(q, chunk):
                        d = tuple(json.loads(row[4])) if row[4] is not None else None
                        self._same_or_raise(pos[row[0]], batch[row[0]], (row[1], row[2], row[3], d, row[5]))
                dup += len(old_ids)
                new = [v for vid, v in batch.items() if vid in inserted]
            if new:
                now = time.time()
                items = {v.item_id: (v.item_id, v.prompt, v.response, now) for v in new}
                cur.executemany("INSERT OR IGNORE INTO items(item_id, prompt, response, created) VALUES (?, ?, ?, ?)", list(items.values()))
                self._update_posteriors(cur, new)
        return {"added": len(new), "duplicates": dup}

    @staticmethod
    def _same_or_raise(index: int, v: Vote, old: tuple) -> None:
        if (v.item_id, v.persona, v.label, v.dist, v.weight) != tuple(old):
            raise VoteError(v.vote_id, index, "vote ids are immutable",
                            "this vote id is already used by a vote with different content")

    @property
    def _state_width(self) -> int:
        """Columns of a persona's row in an item state: [pid, n_votes, evidence (L), counts (L)];
        without forgetting the evidence *is* the counts and is stored once."""
        return 2 + self.num_labels * (1 if self._half_life is None else 2)

    def _decode(self, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """An item's state -> persona ids (k,), vote counts (k,), evidence (k, L), counts (k, L)."""
        L = self.num_labels
        m = np.frombuffer(blob).reshape(-1, self._state_width)  # (k, W) one row per persona
        ev = m[:, 2:2 + L]
        return m[:, 0].astype(np.int64), m[:, 1].astype(np.int64), ev, (ev if self._half_life is None else m[:, 2 + L:])

    def _update_posteriors(self, cur: sqlite3.Cursor, rows: Sequence[Vote]) -> None:
        """Fold votes into their items' posteriors, Eq. (D1)."""
        L = self.num_labels
        n = len(rows)
        pid_of = self._personas
        if any(r.persona not in pid_of for r in rows):  # registered by another process since we looked
            pid_of = dict(cur.execute("SELECT name, pid FROM personas").fetchall())
        items: dict[str, int] = {}
        vi = np.array([items.setdefault(r[1], len(items)) for r in rows], dtype=np.int64)  # (N,) item of each vote
        vp = np.array([pid_of[r[2]] for r in rows], dtype=np.int64)  # (N,) persona id of each vote
        labels = np.array([-1 if r[3] is None else r[3] for r in rows], dtype=np.int64)
        w = np.array([r[5] for r in rows], dtype=np.float64)
        ts = np.array([r[6] for r in rows], dtype=np.float64)
        probs = np.zeros((n, L))  # (N, L) vote as a probability row
        hard = labels >= 0
        probs[np.flatnonzero(hard), labels[hard]] = 1.0
        for k in np.flatnonzero(~hard).tolist():
            probs[k] = rows[k].dist
        item_ids = list(items)
        n_items = len(items)
        seqs = np.zeros(n_items, dtype=np.int64)
        for chunk in _chunks(item_ids):
            q = f"SELECT item_id, seq FROM items WHERE item_id IN ({','.join('?' * len(chunk))})"
            for iid, sq in cur.execute(q, chunk):
                seqs[items[iid]] = sq
        by_seq = {int(sq): j for j, sq in enumerate(seqs.tolist())}
        t_ref = np.full(n_items, -np.inf)  # (I,)
        old_keys, old_ev, old_cnt, old_nv = [], [], [], []
        for chunk in _chunks(seqs.tolist()):
            q = f"SELECT item_seq, state, t_ref FROM posterior WHERE item_seq IN ({','.join('?' * len(chunk))})"
            for sq, blob, t in cur.execute(q, chunk):
                j = by_seq[sq]
                t_ref[j] = t
                pids, nv, e, c = self._decode(blob)
                old_keys.append(j * _PID_SPAN + pids)
                old_ev.append(e)
                old_cnt.append(c)
                old_nv.append(nv)
        # groups = every (item, persona) of the touched items, keyed j * span + pid and sorted,
        # so each item's personas are contiguous: old rows and the new votes map onto them
        n_old = sum(len(k) for k in old_keys)
        all_keys = np.concatenate(old_keys + [vi * _PID_SPAN + vp])
        keys, inv = np.unique(all_keys, return_inverse=True)
        G = len(keys)
        ev = np.zeros((G, L))  # (G, L) decayed evidence at the item's t_ref
        cnt = np.zeros((G, L))  # (G, L) undecayed weighted counts
        nvs = np.zeros(G, dtype=np.int64)
        if n_old:
            at = inv[:n_old]
            ev[at], cnt[at], nvs[at] = np.concatenate(old_ev), np.concatenate(old_cnt), np.concatenate(old_nv)
        g = inv[n_old:]  # (N,) group of each vote
        g_item, g_pid = keys // _PID_SPAN, keys % _PID_SPAN  # (G,)
        now = t_ref.copy()
        np.maximum.at(now, vi, ts)  # (I,) new reference time = newest vote of the item
        hl = self._half_life
        w_eff = w
        if hl is not None:
            age = np.where(np.isinf(t_ref), 0.0, now - t_ref)
            ev = ev * decay_factor(age, hl)[g_item][:, None]  # old evidence ages to the new t_ref
            w_eff = w * decay_factor(now[vi] - ts, hl)  # each vote aged to its item's t_ref
        if hl is None:  # evidence == counts: one accumulator, Eq. (D1) (prior added at read time)
            ev = cnt = dirichlet_update(ev, probs, w, index=g)
        else:
            # One call updates both (Eq. D1) accumulators, stacked as rows [evidence; counts] (2G, L):
            # the decayed evidence (prior excluded, added at read time) and the undecayed counts.
            both = dirichlet_update(np.concatenate([ev, cnt]), np.concatenate([probs, probs]),
                                    np.concatenate([w_eff, w]), index=np.concatenate([g, g + G]))
            ev, cnt = both[:G], both[G:]
        nvs += np.bincount(g, minlength=G)
        cols = [g_pid[:, None], nvs[:, None], ev] + ([] if hl is None else [cnt])
        state = np.ascontiguousarray(np.concatenate(cols, axis=1, dtype=np.float64))  # (G, W) rows by item
        bounds = np.searchsorted(g_item, np.arange(n_items + 1)).tolist()  # groups are sorted by item
        tot = np.add.reduceat(nvs, bounds[:-1])  # (I,) votes per item (every item has >= 1 group)
        out = [(sq, state[bounds[j]:bounds[j + 1]].tobytes(), int(tot[j]), float(now[j]))
               for j, sq in enumerate(seqs.tolist())]
        cur.executemany("INSERT OR REPLACE INTO posterior VALUES (?, ?, ?, ?)", out)

    def rebuild_posteriors(self) -> int:
        """Re-derive every posterior from the vote log; returns the number of votes replayed."""
        with self._write() as cur:
            return self._rebuild(cur)

    def _rebuild(self, cur: sqlite3.Cursor) -> int:
        cur.execute("DELETE FROM posterior")
        n = 0
        rd = self._db.cursor()  # same connection and transaction
        rd.execute("SELECT vote_id, item_id, persona, label, dist, weight, ts, source FROM votes ORDER BY seq")
        while True:
            rows = rd.fetchmany(20000)
            if not rows:
                return n
            self._update_posteriors(cur, [Vote(*r, "", "", None if r[4] is None else tuple(json.loads(r[4])))
                                          for r in rows])
            n += len(rows)

    def add_pairs(self, pairs: Sequence[Mapping[str, Any]]) -> int:
        """Record pairwise comparisons ``{pair_id, prompt, chosen, rejected, annotator, source?, ts?}``
        (responses, not transcripts). Items are registered; existing pair ids are skipped."""
        rows, items, now = [], {}, time.time()
        for i, p in enumerate(pairs):
            for key in ("pair_id", "prompt", "chosen", "rejected", "annotator"):
                if not isinstance(p.get(key), str) or not p[key].strip():
                    raise StoreError(f"pair #{i} ({p.get('pair_id')!r}): '{key}' must be a non-empty string")
            for key in ("prompt", "chosen", "rejected"):
                if len(p[key]) > self.max_text_chars:
                    raise StoreError(f"pair #{i} ({p['pair_id']!r}): '{key}' is longer than {self.max_text_chars}")
            a, b = item_id(p["prompt"], p["chosen"]), item_id(p["prompt"], p["rejected"])
            items[a] = (a, p["prompt"], p["chosen"], now)
            items[b] = (b, p["prompt"], p["rejected"], now)
            rows.append((p["pair_id"], a, b, p["annotator"], str(p.get("source", "api")), float(p.get("ts", now))))
        with self._write() as cur:
            cur.executemany("INSERT OR IGNORE INTO items(item_id, prompt, response, created) VALUES (?, ?, ?, ?)", list(items.values()))
            before = cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            cur.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?, ?, ?, ?, ?)", rows)
            return cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - before

    # ------------------------------------------------------------------ reading

    def _rows(self, blob: bytes, t_ref: float) -> dict[str, tuple[np.ndarray, np.ndarray, int, float]]:
        """{persona: (evidence (L,), counts (L,), n_votes, t_ref)} of an item's state."""
        pids, nv, ev, cnt = self._decode(blob)
        if any(p not in self._pid_name for p in pids.tolist()):
            self._refresh_personas()
        return {self._pid_name[p]: (ev[i], cnt[i], int(nv[i]), t_ref) for i, p in enumerate(pids.tolist())}

    def _item_rows(self, cur: sqlite3.Cursor, iid: str) -> dict[str, tuple[np.ndarray, np.ndarray, int, float]]:
        row = cur.execute("SELECT p.state, p.t_ref FROM items i JOIN posterior p ON p.item_seq = i.seq "
                          "WHERE i.item_id = ?", (iid,)).fetchone()
        return {} if row is None else self._rows(*row)

    def _lookup(self, prompt: str, response: str) -> tuple[str, dict]:
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise StoreError("prompt and response must be strings")
        iid = item_id(prompt, response)
        with self._lock:  # one statement: a consistent snapshot without an explicit transaction
            row = self._db.execute("SELECT i.seq, p.state, p.t_ref FROM items i LEFT JOIN posterior p "
                                   "ON p.item_seq = i.seq WHERE i.item_id = ?", (iid,)).fetchone()
            if row is None:
                raise UnknownItemError(f"item {iid} (prompt {prompt[:40]!r}..., response {response[:40]!r}...) "
                                       "is not in the store")
            return iid, ({} if row[1] is None else self._rows(row[1], row[2]))

    def _decayed(self, ev: np.ndarray, t_ref: float, at: float | None) -> np.ndarray:
        hl = self._half_life
        if hl is None:
            return ev
        t = time.time() if at is None else float(at)
        return ev * decay_factor(max(t - t_ref, 0.0), hl)  # read-out at time `at`

    def _weights(self, persona_weights: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
        if not isinstance(persona_weights, Mapping) or not persona_weights:
            raise StoreError("persona_weights must be a non-empty mapping {persona: weight}")
        unknown = [p for p in persona_weights if p not in self._personas]
        if unknown:  # maybe registered by another process since we looked
            self._refresh_personas()
            unknown = [p for p in persona_weights if p not in self._personas]
        if unknown:
            raise StoreError(f"persona_weights names unknown personas {unknown}; known: {', '.join(self._personas)}")
        names = list(persona_weights)
        w = np.array([float(persona_weights[p]) for p in names])
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise StoreError(f"persona_weights must be finite, >= 0 and not all zero, got {dict(persona_weights)}")
        return names, w

    def _alphas(self, rows: dict, persona_weights: Mapping[str, float] | None, at: float | None,
                names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(P, L) alphas and weights (P,) for a mixture, or (L,) pooled alpha and None."""
        L = self.num_labels
        if persona_weights is None:
            ev = sum((self._decayed(e, t, at) for e, _, _, t in rows.values()), np.zeros(L))
            return self.prior + ev, None  # pooled crowd: every vote of every persona
        if names is None:
            names, w = self._weights(persona_weights)
        else:
            w = None
        alphas = np.stack([self.prior + (self._decayed(rows[p][0], rows[p][3], at) if p in rows else np.zeros(L))
                           for p in names])  # (P, L)
        return alphas, w

    def distribution(self, prompt: str, response: str, persona_weights: Mapping[str, float] | None = None,
                     smoothing: float = 0.0, at: float | None = None) -> list[float]:
        """Posterior-mean label distribution (L,) of an item.

        ``persona_weights=None``: the pooled posterior of all its votes; a mapping: the
        mixture sum_p w_p Dir(alpha_p) of per-persona posteriors (personas that have not
        voted contribute their prior). ``smoothing`` > 0 applies targeted label smoothing.
        ``at`` is the read-out time for forgetting (default: now).
        """
        return self.distributions([(prompt, response)], persona_weights, smoothing, at)[0]

    def distributions(self, items: Sequence[tuple[str, str]], persona_weights: Mapping[str, float] | None = None,
                      smoothing: float = 0.0, at: float | None = None) -> list[list[float]]:
        """Batched :meth:`distribution`: one SQL pass and one posterior computation for all
        ``items`` (B, L). Unknown items raise :class:`UnknownItemError` naming the first one."""
        rows = self._lookup_many(items)
        if persona_weights is None:
            alphas = np.stack([self._alphas(r, None, at)[0] for r in rows]) if rows else np.zeros((0, self.num_labels))
            mean = dirichlet_mean(alphas) if rows else alphas  # (B, L)
        else:
            names, w = self._weights(persona_weights)
            if not rows:
                return []
            alphas = np.stack([self._alphas(r, persona_weights, at, names)[0] for r in rows], axis=1)  # (P, B, L)
            mean = mix_posteriors(alphas, w)[0]  # (B, L)
        return self._smooth(np.asarray(mean), smoothing).tolist()

    def _lookup_many(self, items: Sequence[tuple[str, str]]) -> list[dict]:
        ids = []
        for i, it in enumerate(items):
            if not (isinstance(it, (tuple, list)) and len(it) == 2 and all(isinstance(x, str) for x in it)):
                raise StoreError(f"item #{i} must be a (prompt, response) pair of strings")
            ids.append(item_id(*it))
        found: dict[str, dict] = {}
        uniq = list(dict.fromkeys(ids))
        with self._read() as cur:
            for chunk in _chunks(uniq):
                q = f"SELECT i.item_id, p.state, p.t_ref FROM items i LEFT JOIN posterior p " \
                    f"ON p.item_seq = i.seq WHERE i.item_id IN ({','.join('?' * len(chunk))})"
                for iid, blob, t in cur.execute(q, chunk):
                    found[iid] = {} if blob is None else self._rows(blob, t)
        for (p, r), iid in zip(items, ids):
            if iid not in found:
                raise UnknownItemError(f"item {iid} (prompt {p[:40]!r}..., response {r[:40]!r}...) "
                                       "is not in the store")
        return [found[iid] for iid in ids]

    def _smooth(self, mean: np.ndarray, smoothing: float) -> np.ndarray:
        if not smoothing:
            return mean
        if not (0 <= smoothing < 1):
            raise StoreError(f"smoothing must lie in [0, 1), got {smoothing!r}")
        import torch

        from raydprm.core.smoothing import targeted_smoothing

        return targeted_smoothing(torch.as_tensor(np.asarray(mean, dtype=np.float64)), smoothing).numpy()  # (Eq. T1)

    def posterior(self, prompt: str, response: str, persona: str | None = None, at: float | None = None
                  ) -> dict[str, Any]:
        """``{"alpha", "mean", "variance", "n_votes"}`` of one persona's (or the pooled) posterior."""
        _, rows = self._lookup(prompt, response)
        if persona is not None:
            self._weights({persona: 1.0})
            rows = {persona: rows[persona]} if persona in rows else {}
        alpha, _ = self._alphas(rows, None, at)
        return {"alpha": alpha.tolist(), "mean": dirichlet_mean(alpha).tolist(),
                "variance": dirichlet_variance(alpha).tolist(), "n_votes": int(sum(r[2] for r in rows.values()))}

    def variance(self, prompt: str, response: str, persona_weights: Mapping[str, float] | None = None,
                 at: float | None = None) -> list[float]:
        """Marginal posterior variances (L,) (pooled, or of the persona mixture)."""
        _, rows = self._lookup(prompt, response)
        alphas, w = self._alphas(rows, persona_weights, at)
        return (dirichlet_variance(alphas) if w is None else mix_posteriors(alphas, w)[1]).tolist()

    def counts(self, prompt: str, response: str) -> dict[str, list[float]]:
        """Undecayed weighted vote counts (L,) per persona that voted on the item."""
        _, rows = self._lookup(prompt, response)
        return {p: r[1].tolist() for p, r in rows.items()}

    def recount(self, prompt: str, response: str, persona: str | None = None, at: float | None = None
                ) -> list[float]:
        """Posterior alpha recomputed directly from the vote log (the naive twin of the
        incremental upkeep): prior + sum_k w_k decay(at - ts_k) v_k."""
        iid = item_id(prompt, response)
        q = "SELECT label, dist, weight, ts FROM votes WHERE item_id = ?" + (" AND persona = ?" if persona else "")
        with self._read() as cur:
            rows = cur.execute(q, (iid, persona) if persona else (iid,)).fetchall()
        alpha = np.full(self.num_labels, self.prior)
        if not rows:
            return alpha.tolist()
        t_ref = max(r[3] for r in rows)
        t = t_ref if self._half_life is None else (time.time() if at is None else float(at))
        for label, dist, weight, ts in rows:
            v = np.zeros(self.num_labels)
            if dist is None:
                v[label] = 1.0
            else:
                v[:] = json.loads(dist)
            d = 1.0 if self._half_life is None else float(decay_factor(max(t - ts, 0.0), self._half_life))
            alpha += weight * d * v
        return alpha.tolist()

    def count_votes(self, persona: str | None = None) -> int:
        """Number of distinct votes in the log (optionally of one persona)."""
        with self._lock:
            if persona is None:
                return int(self._db.execute("SELECT COUNT(*) FROM votes").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM votes WHERE persona = ?", (persona,)).fetchone()[0])

    def count_items(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def _all_posteriors(self, persona_weights: Mapping[str, float] | None, at: float | None,
                        min_votes: int = 0) -> Iterator[tuple[str, str, str, np.ndarray, np.ndarray, int, dict]]:
        """(item_id, prompt, response, mean, variance, n_votes, rows) for every item."""
        with self._read() as cur:
            items = cur.execute("SELECT i.item_id, i.prompt, i.response, p.state, p.t_ref FROM items i "
                                "LEFT JOIN posterior p ON p.item_seq = i.seq ORDER BY i.seq").fetchall()
        for iid, prompt, response, blob, t in items:
            rows = {} if blob is None else self._rows(blob, t)
            n = sum(r[2] for r in rows.values())
            if n < min_votes:
                continue
            alphas, w = self._alphas(rows, persona_weights, at)
            if w is None:
                mean, var = dirichlet_mean(alphas), dirichlet_variance(alphas)
            else:
                mean, var = mix_posteriors(alphas, w)
            yield iid, prompt, response, np.asarray(mean), np.asarray(var), n, rows

    def items_needing_votes(self, k: int = 10, persona_weights: Mapping[str, float] | None = None,
                            at: float | None = None) -> list[dict[str, Any]]:
        """Active collection: the ``k`` items with the highest total posterior variance
        (sum over labels), i.e. where another vote teaches the most."""
        if k < 1:
            raise StoreError(f"k must be >= 1, got {k}")
        scored = [{"item_id": iid, "prompt": p, "response": r, "variance": float(var.sum()), "n_votes": n}
                  for iid, p, r, _, var, n, _ in self._all_posteriors(persona_weights, at)]
        scored.sort(key=lambda d: (-d["variance"], d["item_id"]))
        return scored[:k]

    def export(self, persona_weights: Mapping[str, float] | None = None, smoothing: float = 0.0,
               min_votes: int = 1, at: float | None = None):
        """A ``datasets.Dataset`` for DPRM training, one row per item with >= ``min_votes`` votes:
        ``item_id, prompt, response, target`` (posterior mean (L,)), ``variance`` (L,),
        ``n_votes`` and ``persona_counts`` ({persona: undecayed counts (L,)} over all personas)."""
        import datasets

        names = self.personas
        zero = [0.0] * self.num_labels
        rows: dict[str, list] = {k: [] for k in ("item_id", "prompt", "response", "target", "variance", "n_votes",
                                                 "persona_counts")}
        for iid, p, r, mean, var, n, prow in self._all_posteriors(persona_weights, at, min_votes):
            rows["item_id"].append(iid)
            rows["prompt"].append(p)
            rows["response"].append(r)
            rows["target"].append(self._smooth(mean, smoothing).tolist())
            rows["variance"].append(var.tolist())
            rows["n_votes"].append(int(n))
            rows["persona_counts"].append({q: (prow[q][1].tolist() if q in prow else zero) for q in names})
        L = self.num_labels
        feats = datasets.Features({
            "item_id": datasets.Value("string"), "prompt": datasets.Value("string"),
            "response": datasets.Value("string"), "target": datasets.Sequence(datasets.Value("float64"), length=L),
            "variance": datasets.Sequence(datasets.Value("float64"), length=L), "n_votes": datasets.Value("int64"),
            "persona_counts": {q: datasets.Sequence(datasets.Value("float64"), length=L) for q in names}})
        return datasets.Dataset.from_dict(rows, features=feats)

    def export_pairs(self):
        """Recorded pairwise comparisons as a ``datasets.Dataset`` (prompt, chosen, rejected, annotator)."""
        import datasets

        with self._read() as cur:
            rows = cur.execute(
                "SELECT a.prompt, a.response, b.response, p.annotator, p.source FROM pairs p "
                "JOIN items a ON a.item_id = p.chosen_item JOIN items b ON b.item_id = p.rejected_item "
                "ORDER BY p.ts, p.pair_id").fetchall()
        cols = ("prompt", "chosen", "rejected", "annotator", "source")
        return datasets.Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(cols)},
                                          features=datasets.Features({c: datasets.Value("string") for c in cols}))

    def stats(self) -> dict[str, Any]:
        """Counts and settings of the store."""
        with self._read() as cur:
            per = dict(cur.execute("SELECT persona, COUNT(*) FROM votes GROUP BY persona").fetchall())
            n_votes = sum(per.values())
            n_items = cur.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            voted = cur.execute("SELECT COUNT(*) FROM posterior").fetchone()[0]
            n_pairs = cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            sync = cur.execute("PRAGMA synchronous").fetchone()[0]
        self._refresh_personas()
        return {"path": str(self.path), "votes": n_votes, "items": n_items, "items_with_votes": voted,
                "pairs": n_pairs, "votes_per_persona": {p: per.get(p, 0) for p in self._personas},
                "labels": list(self.labels), "prior": self.prior, "half_life_s": self.half_life_s,
                "journal_mode": "wal", "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)}
