"""The durable Bayesian preference store (SQLite in WAL mode, one file).

Tables (the vote log is the source of truth; everything else is derived from it)::

    votes(seq, vote_id UNIQUE, item_id, persona, label, dist, weight, ts, source)   append-only log
    items(seq, item_id = content hash of (prompt, response), prompt, response, created)
    posterior(item_seq, state, n_votes, t_ref)       derived: every persona's posterior of the item
    personas(pid, name, description), labels(idx, name), meta(key, value), pairs(...)
    raters(rater, grp, source)        the group of each imported rater (a rater keeps one group)

The store is four layers: :mod:`raydprm.store.sqlite_db` (the file, transactions, errors),
:mod:`raydprm.store.posterior` (the per-(item, group) state math, pure numpy),
:mod:`raydprm.store.importer` / :mod:`raydprm.store.export` (datasets in and out), and this
front, :class:`PreferenceStore` (the schema, votes, reads and the public API).

Per (item, persona) the store keeps the Dirichlet *evidence* of Eq. (D1) of
:mod:`raydprm.core.dirichlet` (the posterior without its prior),

    evidence(t_ref) = sum_k w_k * 0.5 ** ((t_ref - ts_k) / half_life) * v_k,   t_ref = newest vote of the item

and the undecayed weighted counts (the same numbers without forgetting, then stored once).
One row per item holds all its personas' state, so a batch rewrites one row per item it
touches; rows are keyed by the item's insertion number, so the recent items that votes
arrive for share a few B-tree pages and a commit writes few pages. The state is updated
by :func:`raydprm.store.posterior.fold_votes` (pure numpy) in the same transaction that appends
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
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from raydprm.core.dirichlet import (
    decay_factor,
    dirichlet_mean,
    dirichlet_variance,
    mix_posteriors,
)
from raydprm.core.hh_labels import HH_LABELS
from raydprm.core.label_scale import LabelScale
from raydprm.errors import one_line
from raydprm.store.posterior import decode_state, fold_votes, state_width
from raydprm.store.sqlite_db import SQLiteFile, StoreError
from raydprm.store.votes import Vote, VoteError, item_id, validate_votes

__all__ = ["PreferenceStore", "StoreError", "UnknownItemError", "DEFAULT_STORE_PERSONAS", "SCHEMA_VERSION",
           "PersonaState", "ItemPosterior", "LogRow", "GroupPosteriors"]

SCHEMA_VERSION = 1
# The paper's six personas plus an id for votes that name no persona (e.g. HTTP votes).
DEFAULT_STORE_PERSONAS = ("scientist", "teacher", "politician", "teenager", "ceo", "artist", "anonymous")
_CHUNK = 500  # host parameters per IN (...) query

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
CREATE TABLE IF NOT EXISTS raters(rater TEXT PRIMARY KEY, grp TEXT NOT NULL, source TEXT NOT NULL);
"""


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


_LOG_COLUMNS = "vote_id, item_id, persona, label, dist, weight, ts, source"


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _check_prior(prior: Any) -> None:
    if prior is not None and not (isinstance(prior, (int, float)) and not isinstance(prior, bool)
                                  and math.isfinite(prior) and prior > 0):
        raise StoreError(f"prior must be a finite number > 0, got {prior!r}")


def _check_half_life(half_life_s: Any) -> None:
    if half_life_s is not None and not (isinstance(half_life_s, (int, float)) and not isinstance(half_life_s, bool)
                                        and math.isfinite(half_life_s) and half_life_s >= 0):
        raise StoreError(f"half_life_s must be a finite number >= 0, got {half_life_s!r}")


def default_scale(names: Sequence[str]) -> LabelScale:
    """The scale of a store that recorded only label names: the HH scale for the HH names, else
    rewards spread evenly from 1 (first label, best by convention) to 0 (last)."""
    names = list(names)
    if names == list(HH_LABELS):
        return LabelScale.hh()
    n = len(names)
    return LabelScale(names=tuple(names), rewards=tuple(1.0 - i / (n - 1) for i in range(n)))


def _scale_of_meta(meta: Mapping[str, str]) -> LabelScale:
    try:
        names = json.loads(meta["labels"])
        if "label_rewards" not in meta:  # written before the scale was recorded
            return default_scale(names)
        grid = json.loads(meta.get("label_grid", "null"))
        scale = LabelScale(names=tuple(names), rewards=tuple(json.loads(meta["label_rewards"])),
                           grid=None if grid is None else tuple(tuple(g) for g in grid))
        hh = LabelScale.hh()
        return hh if scale.same_labels(hh) and scale.grid == hh.grid else scale  # with its descriptions
    except (KeyError, ValueError, TypeError) as e:
        raise StoreError(f"the store's recorded label scale is corrupt ({e})") from None


def _config_scale(labels_cfg: Any) -> LabelScale | None:
    if labels_cfg is None:
        return None
    try:
        return LabelScale.from_config(labels_cfg)
    except ValueError as e:
        raise StoreError(f"labels.*: {e}") from None


class PreferenceStore(SQLiteFile):
    """Open (or create) the preference store at ``path``.

    The parameters that shape the posteriors (``labels``, ``prior``, ``half_life_s``) belong
    to the store: they are recorded in the file when it is created, and opening it never
    changes them. Passing a value that differs from the recorded one raises
    :class:`StoreError` naming both; :meth:`reconfigure` (``raydprm store reconfigure``)
    changes them explicitly. ``None`` means "the store's own" (for a new store: the paper's
    six HH labels, prior 1.0, no forgetting). Stores written before the prior was recorded
    (it used to be applied at read time only) take the prior of the first open, 1.0 by
    default, and record it on the first writable open.

    Args:
        path: SQLite file (created with its parent directory when missing, unless
            ``readonly`` or ``create=False``).
        labels: label names of a new store; an existing store refuses different ones.
        label_scale: the whole label scale (names, rewards, optional grid) of a new store,
            recorded in it (:meth:`label_scale` reads it back); an existing store refuses
            other names or rewards. Default: the HH scale, or ``labels`` with rewards spread
            evenly from 1 (first label) to 0 (last).
        personas: extra persona / annotator ids to register (the defaults are always there).
        prior: Dirichlet prior concentration per label (None: the store's).
        half_life_s: forgetting half-life in seconds, 0 = none (None: the store's).
        synchronous: "FULL" (durable on power loss) or "NORMAL" (durable on process crash).
        max_text_chars: longest prompt or response accepted.
        busy_timeout_s: how long a writer waits for another writer's lock.
        readonly: open for reading only: never creates the file or its directory, never
            writes (works on read-only files and directories).
        create: create the store when the file is missing (else StoreError).
        check: run SQLite's ``quick_check`` on opening an existing file (default: when
            opening for writing), so that a corrupt store is refused before anything is
            written to it (a read of the whole file: ~10 ms per 5 MB).
    """

    def __init__(self, path: str | os.PathLike[str], *, labels: Sequence[str] | None = None,
                 personas: Iterable[str] = (), prior: float | None = None, half_life_s: float | None = None,
                 synchronous: str = "FULL", max_text_chars: int = 16384, busy_timeout_s: float = 60.0,
                 readonly: bool = False, create: bool = True, check: bool | None = None,
                 label_scale: LabelScale | None = None) -> None:
        _check_prior(prior)
        if label_scale is not None:
            if not isinstance(label_scale, LabelScale):
                raise StoreError(f"label_scale must be a LabelScale, got {type(label_scale).__name__}")
            if labels is not None and list(labels) != list(label_scale.names):
                raise StoreError(f"labels {list(labels)} differ from the names of label_scale "
                                 f"{list(label_scale.names)}")
            labels = list(label_scale.names)
        self._asked_scale = label_scale
        _check_half_life(half_life_s)
        if not isinstance(synchronous, str) or synchronous.upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        if not isinstance(max_text_chars, int) or max_text_chars < 1:
            raise StoreError(f"max_text_chars must be an integer >= 1, got {max_text_chars!r}")
        self.synchronous = synchronous.upper()
        self.max_text_chars = int(max_text_chars)
        self._params_version = ""
        self._asked_prior = prior
        self._open_file(path, readonly=readonly, create=create, check=check, busy_timeout_s=busy_timeout_s)
        try:
            with self._sql_errors():
                if not self.readonly:
                    with self._write() as cur:
                        for stmt in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it COMMITs
                            cur.execute(stmt)
                        self._init_meta(cur, labels, prior, half_life_s, personas)
                self._load_meta()
        except BaseException:
            if self._db is not None:
                self._db.close()
            raise
        if self.readonly:  # nothing was recorded: compare what the caller asked for with the file
            self._check_same(labels, prior, half_life_s, self.labels, self.prior, self.half_life_s)
            self._check_scale(label_scale)
            unknown = [p for p in personas if p not in self._personas]
            if unknown:
                raise StoreError(f"preference store '{self.path}' is open read-only and has no personas {unknown}")

    @classmethod
    def from_config(cls, store_cfg, labels_cfg=None, default_path: str | os.PathLike[str] | None = None,
                    **overrides: Any) -> PreferenceStore:
        """Open the store of a :class:`raydprm.config.StoreConfig` (+ optional LabelsConfig).

        The one conversion from config to store: ``store.path`` (else ``default_path``),
        ``store.prior`` and ``store.half_life_s`` (None = the store's own; a value that
        differs from the store's is an error), ``store.synchronous`` and
        ``store.max_text_chars``; ``labels_cfg`` (names, rewards, grid) shapes a new store;
        an existing one must have the same names (its rewards are checked by
        :func:`raydprm.store.scale.check_labels_config`, not here). ``overrides`` are passed on as keyword arguments (``readonly=True``,
        ``personas=...``, ``create=False``, ``path=...``).
        """
        path = overrides.pop("path", None) or store_cfg.path or default_path
        if not path:
            raise StoreError("store.path is empty and no default path was given")
        kw: dict[str, Any] = dict(labels=list(labels_cfg.names) if labels_cfg is not None else None,
                                  # the whole scale shapes a new store only (an existing one keeps its own)
                                  label_scale=None if Path(path).is_file() else _config_scale(labels_cfg),
                                  prior=store_cfg.prior, half_life_s=store_cfg.half_life_s,
                                  synchronous=store_cfg.synchronous, max_text_chars=store_cfg.max_text_chars)
        kw.update(overrides)
        return cls(path, **kw)

    def _after_rollback(self) -> None:
        """Caches that a rolled-back transaction may have filled (personas, parameters)."""
        with contextlib.suppress(sqlite3.Error, StoreError):
            self._load_meta()

    def _check_params(self, cur: sqlite3.Cursor) -> None:
        """Follow a :meth:`reconfigure` done by another connection since we last looked."""
        if not self._params_version:  # still opening: nothing loaded to compare with
            return
        row = cur.execute("SELECT value FROM meta WHERE key = 'params_version'").fetchone()
        if (row[0] if row else "0") != self._params_version:
            self._load_meta(cur)

    def _check_same(self, labels, prior, half_life_s, have_labels, have_prior, have_half_life) -> None:
        """A caller's value that differs from the store's recorded one is an error naming both."""
        if labels is not None and list(labels) != list(have_labels):
            raise StoreError(f"preference store '{self.path}' was created with labels {list(have_labels)}, "
                             f"not {list(labels)} (labels.names); a store's labels never change")
        for key, want, have in (("prior", prior, have_prior), ("half_life_s", half_life_s, have_half_life)):
            if want is not None and float(want) != float(have):
                raise StoreError(
                    f"preference store '{self.path}' has store.{key} = {float(have)!r} but store.{key} = "
                    f"{float(want)!r} was asked for; opening a store never changes it: leave store.{key} unset "
                    f"to use the store's, or change the store with `raydprm store reconfigure --db {self.path} "
                    f"store.{key}={float(want)!r}`")

    def _init_meta(self, cur: sqlite3.Cursor, labels: Sequence[str] | None, prior: float | None,
                   half_life_s: float | None, personas: Iterable[str]) -> None:
        meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            names = list(labels) if labels is not None else list(HH_LABELS)
            if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise StoreError(f"labels must be >= 2 distinct non-empty names, got {names!r}")
            scale = self._asked_scale or default_scale(names)
            cur.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("label_rewards", json.dumps(list(scale.rewards))),
                ("label_grid", json.dumps(None if scale.grid is None else [list(g) for g in scale.grid])),
                ("schema_version", str(SCHEMA_VERSION)), ("labels", json.dumps(names)),
                ("half_life_s", repr(float(half_life_s or 0.0))), ("prior", repr(float(prior or 1.0))),
                ("params_version", "1"), ("created", repr(time.time()))])
            cur.executemany("INSERT INTO labels VALUES (?, ?)", list(enumerate(names)))
            cur.executemany("INSERT OR IGNORE INTO personas(name) VALUES (?)", [(p,) for p in DEFAULT_STORE_PERSONAS])
        else:
            if "labels" not in meta or "half_life_s" not in meta:
                raise StoreError(f"'{self.path}' is an SQLite file but not a preference store (no labels recorded)")
            if meta.get("schema_version") != str(SCHEMA_VERSION):
                raise StoreError(f"store '{self.path}' has schema version {meta.get('schema_version')}, "
                                 f"this raydprm reads version {SCHEMA_VERSION}")
            if "prior" not in meta:  # written before the prior was recorded: see the class docstring
                cur.execute("INSERT INTO meta VALUES ('prior', ?)", (repr(float(prior or 1.0)),))
                meta["prior"] = repr(float(prior or 1.0))
            self._check_same(labels, prior, half_life_s, json.loads(meta["labels"]), float(meta["prior"]),
                             float(meta["half_life_s"]))
            if self._asked_scale is not None:
                self._check_scale(self._asked_scale, _scale_of_meta(meta))
        for p in personas:
            self._check_persona_name(p)
            cur.execute("INSERT OR IGNORE INTO personas(name) VALUES (?)", (p,))

    def _load_meta(self, cur: sqlite3.Cursor | Any = None) -> None:
        with self._lock:
            db = cur if cur is not None else self._db
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            try:
                self.labels: list[str] = json.loads(meta["labels"])
                self.half_life_s: float = float(meta["half_life_s"])
                # a store written before the prior was recorded, opened read-only: the old default
                self.prior: float = float(meta.get("prior", self._asked_prior or 1.0))
            except (KeyError, ValueError, TypeError):
                raise StoreError(f"'{self.path}' is not a preference store (its meta table is incomplete or "
                                 "corrupt)") from None
            self._scale = _scale_of_meta(meta)
            self._params_version = meta.get("params_version", "0")
            self._label_index = {n: i for i, n in enumerate(self.labels)}
            self._personas = dict(db.execute("SELECT name, pid FROM personas ORDER BY pid").fetchall())
            self._pid_name = {pid: name for name, pid in self._personas.items()}

    def _check_scale(self, asked: LabelScale | None, have: LabelScale | None = None) -> None:
        have = self._scale if have is None else have
        if asked is not None and not asked.same_labels(have):
            raise StoreError(f"preference store '{self.path}' has the label scale names {list(have.names)} rewards "
                             f"{list(have.rewards)}, not names {list(asked.names)} rewards {list(asked.rewards)}; "
                             "a store's label scale never changes")

    def label_scale(self) -> LabelScale:
        """The store's label scale (names, rewards, grid), recorded when the store was created
        (stores from before it was recorded: :func:`default_scale` of their names)."""
        return self._scale

    def reconfigure(self, *, prior: float | None = None, half_life_s: float | None = None) -> dict[str, Any]:
        """Change the store's recorded prior and/or half-life (None: keep), in one transaction
        that re-derives every posterior from the vote log under the new half-life. The prior
        is added at read time, so changing only the prior replays nothing. Other connections
        to the file follow the change on their next call."""
        _check_prior(prior)
        _check_half_life(half_life_s)
        old = (self.prior, self.half_life_s)
        new_prior = old[0] if prior is None else float(prior)
        new_hl = old[1] if half_life_s is None else float(half_life_s)
        replayed = 0
        with self._write() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'params_version'").fetchone()
            version = str(int(row[0]) + 1 if row else 1)
            cur.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("prior", repr(new_prior)), ("half_life_s", repr(new_hl)), ("params_version", version)])
            self.prior, self.half_life_s = new_prior, new_hl
            if new_hl != old[1]:
                replayed = self._rebuild(cur)  # the log is the truth: re-derive under the new half-life
            self._params_version = version
        return {"path": str(self.path), "prior": new_prior, "half_life_s": new_hl,
                "changed": {k: [a, b] for k, a, b in (("prior", old[0], new_prior), ("half_life_s", old[1], new_hl))
                            if a != b}, "votes_replayed": replayed}

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def personas(self) -> list[str]:
        """Registered persona / annotator ids."""
        self._refresh_personas()
        return list(self._personas)

    def _refresh_personas(self) -> None:
        with self._read() as cur:
            self._personas = dict(cur.execute("SELECT name, pid FROM personas ORDER BY pid").fetchall())
            self._pid_name = {pid: name for name, pid in self._personas.items()}

    @property
    def _half_life(self) -> float | None:
        return self.half_life_s if self.half_life_s > 0 else None

    @staticmethod
    def _check_persona_name(name: Any) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise StoreError(f"persona id must be a non-empty string of at most 128 chars, got {name!r}")

    def __repr__(self) -> str:
        return (f"PreferenceStore('{self.path}', labels={len(self.labels)}, prior={self.prior}, "
                f"half_life_s={self.half_life_s}{', readonly' if self.readonly else ''})")

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
        if not isinstance(votes, (list, tuple)):
            try:
                votes = list(votes)
            except TypeError:
                raise StoreError(f"add_votes takes a list of vote dicts, got {type(votes).__name__}") from None
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
                "VALUES (?,?,?,?,?,?,?,?)", [v.log_row for v in batch.values()])
            if self._db.total_changes - before == len(batch):
                new = list(batch.values())
            else:
                inserted = {r[0] for r in cur.execute("SELECT vote_id FROM votes WHERE seq > ?", (last,))}
                pos = {v.vote_id: i for i, v in enumerate(vs)}
                old_ids = [vid for vid in batch if vid not in inserted]
                for chunk in _chunks(old_ids):
                    q = f"SELECT vote_id, item_id, persona, label, dist, weight FROM votes WHERE vote_id IN " \
                        f"({','.join('?' * len(chunk))})"
                    for vid, iid, persona, label, dist, weight in cur.execute(q, chunk):
                        d = tuple(json.loads(dist)) if dist is not None else None
                        self._same_or_raise(pos[vid], batch[vid], (iid, persona, label, d, weight))
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
        """Columns of a persona's row in an item state (see :mod:`raydprm.store.posterior`)."""
        return state_width(self.num_labels, self._half_life is not None)

    def _decode(self, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """An item's state -> persona ids (k,), vote counts (k,), evidence (k, L), counts (k, L)."""
        try:
            return decode_state(blob, self.num_labels, self._half_life is not None)
        except ValueError as e:
            raise StoreError(f"preference store '{self.path}' holds a corrupt posterior state ({e}); rebuild the "
                             "posteriors from the vote log (PreferenceStore.rebuild_posteriors)") from None

    def _update_posteriors(self, cur: sqlite3.Cursor, rows: Sequence[Vote]) -> None:
        """Fold votes into their items' posteriors, Eq. (D1)."""
        L = self.num_labels
        pid_of = self._personas
        if any(r.persona not in pid_of for r in rows):  # registered by another process since we looked
            pid_of = dict(cur.execute("SELECT name, pid FROM personas").fetchall())
        vp = np.array([pid_of[r.persona] for r in rows], dtype=np.int64)  # (N,) persona id of each vote
        labels = np.array([-1 if r.label is None else r.label for r in rows], dtype=np.int64)
        probs = np.zeros((len(rows), L))  # (N, L) vote as a probability row
        hard = labels >= 0
        probs[np.flatnonzero(hard), labels[hard]] = 1.0
        for k in np.flatnonzero(~hard).tolist():
            probs[k] = rows[k].dist
        self._fold(cur, [r.item_id for r in rows], vp, probs, np.array([r.weight for r in rows], dtype=np.float64),
                   np.array([r.ts for r in rows], dtype=np.float64))

    def _fold(self, cur: sqlite3.Cursor, vote_items: Sequence[str], vp: np.ndarray, probs: np.ndarray,
              w: np.ndarray, ts: np.ndarray) -> None:
        """Fold N votes (item id (N,), persona id vp (N,), probs (N, L), weights, times) into the
        stored states of their items (:func:`raydprm.store.posterior.fold_votes`)."""
        items: dict[str, int] = {}
        vi = np.array([items.setdefault(i, len(items)) for i in vote_items], dtype=np.int64)  # (N,)
        seqs = np.zeros(len(items), dtype=np.int64)
        for chunk in _chunks(list(items)):
            q = f"SELECT item_id, seq FROM items WHERE item_id IN ({','.join('?' * len(chunk))})"
            for iid, sq in cur.execute(q, chunk):
                seqs[items[iid]] = sq
        by_seq = {int(sq): j for j, sq in enumerate(seqs.tolist())}
        old = []
        for chunk in _chunks(seqs.tolist()):
            q = f"SELECT item_seq, state, t_ref FROM posterior WHERE item_seq IN ({','.join('?' * len(chunk))})"
            for sq, blob, t in cur.execute(q, chunk):
                self._decode(blob)  # a corrupt state is refused with the store's name
                old.append((by_seq[sq], blob, t))
        new = fold_votes(old, len(items), vi, vp, probs, w, ts, self._half_life)
        cur.executemany("INSERT OR REPLACE INTO posterior VALUES (?, ?, ?, ?)",
                        [(sq, new.blobs[j], int(new.n_votes[j]), float(new.t_ref[j]))
                         for j, sq in enumerate(seqs.tolist())])

    def rebuild_posteriors(self) -> int:
        """Re-derive every posterior from the vote log; returns the number of votes replayed."""
        with self._write() as cur:
            return self._rebuild(cur)

    def _rebuild(self, cur: sqlite3.Cursor) -> int:
        cur.execute("DELETE FROM posterior")
        n = 0
        rd = self._db.cursor()  # same connection and transaction
        rd.execute(f"SELECT {_LOG_COLUMNS} FROM votes ORDER BY seq")
        while True:
            rows = [LogRow._make(r) for r in rd.fetchmany(20000)]
            if not rows:
                return n
            self._update_posteriors(cur, [Vote(**r._asdict(), prompt="", response="",
                                               dist=None if r.dist_json is None else tuple(json.loads(r.dist_json)))
                                          for r in rows])
            n += len(rows)

    def add_pairs(self, pairs: Sequence[Mapping[str, Any]]) -> int:
        """Record pairwise comparisons ``{pair_id, prompt, chosen, rejected, annotator, source?, ts?}``
        (responses, not transcripts). Items are registered; existing pair ids are skipped."""
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

    def _rows(self, blob: bytes, t_ref: float) -> dict[str, PersonaState]:
        """{persona: PersonaState} of an item's state."""
        pids, nv, ev, cnt = self._decode(blob)
        if any(p not in self._pid_name for p in pids.tolist()):
            self._refresh_personas()
        return {self._pid_name[p]: PersonaState(ev[i], cnt[i], int(nv[i]), t_ref) for i, p in enumerate(pids.tolist())}

    def _lookup(self, prompt: str, response: str) -> tuple[str, dict]:
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise StoreError("prompt and response must be strings")
        iid = item_id(prompt, response)
        with self._read() as cur:
            row = cur.execute("SELECT p.state, p.t_ref FROM items i LEFT JOIN posterior p "
                              "ON p.item_seq = i.seq WHERE i.item_id = ?", (iid,)).fetchone()
            if row is None:
                raise UnknownItemError(f"item {iid} (prompt {prompt[:40]!r}..., response {response[:40]!r}...) "
                                       "is not in the store")
            state, t_ref = row
            return iid, ({} if state is None else self._rows(state, t_ref))

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
            ev = sum((self._decayed(r.evidence, r.t_ref, at) for r in rows.values()), np.zeros(L))
            return self.prior + ev, None  # pooled crowd: every vote of every persona
        if names is None:
            names, w = self._weights(persona_weights)
        else:
            w = None
        alphas = np.stack([self.prior + (self._decayed(rows[p].evidence, rows[p].t_ref, at) if p in rows
                                         else np.zeros(L)) for p in names])  # (P, L)
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
                "variance": dirichlet_variance(alpha).tolist(), "n_votes": int(sum(r.n_votes for r in rows.values()))}

    def variance(self, prompt: str, response: str, persona_weights: Mapping[str, float] | None = None,
                 at: float | None = None) -> list[float]:
        """Marginal posterior variances (L,) (pooled, or of the persona mixture)."""
        _, rows = self._lookup(prompt, response)
        alphas, w = self._alphas(rows, persona_weights, at)
        return (dirichlet_variance(alphas) if w is None else mix_posteriors(alphas, w)[1]).tolist()

    def counts(self, prompt: str, response: str) -> dict[str, list[float]]:
        """Undecayed weighted vote counts (L,) per persona that voted on the item."""
        _, rows = self._lookup(prompt, response)
        return {p: r.counts.tolist() for p, r in rows.items()}

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
        t_ref = max(ts for *_, ts in rows)
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
        with self._read() as cur:
            if persona is None:
                return int(cur.execute("SELECT COUNT(*) FROM votes").fetchone()[0])
            return int(cur.execute("SELECT COUNT(*) FROM votes WHERE persona = ?", (persona,)).fetchone()[0])

    def count_items(self) -> int:
        with self._read() as cur:
            return int(cur.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    # ------------------------------------------------------------------ rater groups

    def groups(self, with_votes: bool = True) -> list[str]:
        """Rater groups (= personas) in registration order; ``with_votes``: only those with a vote.

        An imported per-rater dataset makes one group per value of its mapping's group column
        (or template), e.g. ``"Woman/gen z"``; the simulated crowd's personas are groups too."""
        with self._read() as cur:
            rows = cur.execute("SELECT name FROM personas ORDER BY pid").fetchall()
            if not with_votes:
                return [r[0] for r in rows]
            voted = {r[0] for r in cur.execute("SELECT DISTINCT persona FROM votes")}
        return [r[0] for r in rows if r[0] in voted]

    def rater_groups(self) -> dict[str, str]:
        """{rater id: group} of the raters that imports recorded (a rater keeps one group)."""
        with self._read() as cur:
            return dict(cur.execute("SELECT rater, grp FROM raters ORDER BY rater").fetchall())

    def group_counts(self) -> dict[str, dict[str, int]]:
        """Per group with votes: ``{"votes", "raters", "items"}`` (raters: recorded by imports)."""
        with self._read() as cur:
            votes = dict(cur.execute("SELECT persona, COUNT(*) FROM votes GROUP BY persona").fetchall())
            items = dict(cur.execute("SELECT persona, COUNT(DISTINCT item_id) FROM votes GROUP BY persona").fetchall())
            raters = dict(cur.execute("SELECT grp, COUNT(*) FROM raters GROUP BY grp").fetchall())
        return {g: {"votes": int(votes[g]), "raters": int(raters.get(g, 0)), "items": int(items.get(g, 0))}
                for g in self.groups()}

    def group_posteriors(self, groups: Sequence[str] | None = None, *, at: float | None = None,
                         min_votes: int = 1, item_ids: Sequence[str] | None = None) -> GroupPosteriors:
        """Per-(item, group) posteriors as arrays, items in insertion order.

        ``groups``: which groups, in this order (default :meth:`groups`, those with votes);
        ``min_votes``: skip items with fewer votes in all; ``item_ids``: only these items
        (e.g. one side of :func:`raydprm.store.split.split_items`); ``at``: read-out time
        for forgetting (default now). Returns :class:`GroupPosteriors` with ``alpha`` (I, P, L)
        = prior + decayed evidence, ``counts`` (I, P, L) and ``n_votes`` (I, P)."""
        names = self.groups() if groups is None else list(groups)
        if groups is not None:
            self._weights({g: 1.0 for g in names})  # refuses unknown groups
        col = {g: k for k, g in enumerate(names)}
        keep = None if item_ids is None else set(item_ids)
        ids, alphas, counts, nvs = [], [], [], []
        L = self.num_labels
        for it in self._all_posteriors(None, at, min_votes, rows_only=True):
            if keep is not None and it.item_id not in keep:
                continue
            a = np.full((len(names), L), self.prior)  # (P, L)
            c = np.zeros((len(names), L))
            n = np.zeros(len(names), dtype=np.int64)
            for g, st in it.personas.items():
                if g in col:
                    a[col[g]] += self._decayed(st.evidence, st.t_ref, at)
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

    def group_disagreement(self) -> dict:
        """How much the groups with votes disagree (:func:`raydprm.store.groups.group_disagreement`):
        pairwise Jensen-Shannon divergences and each group's share of items whose modal label
        differs from the pooled crowd's."""
        from raydprm.store.groups import group_disagreement

        gp = self.group_posteriors()
        return group_disagreement(gp.counts, gp.groups)

    def _all_posteriors(self, persona_weights: Mapping[str, float] | None, at: float | None,
                        min_votes: int = 0, rows_only: bool = False) -> Iterator[ItemPosterior]:
        """The posterior of every item with at least ``min_votes`` votes, in insertion order
        (``rows_only``: without texts, mean and variance)."""
        with self._read() as cur:
            if rows_only:
                items = cur.execute("SELECT i.item_id, '', '', p.state, p.t_ref FROM items i "
                                    "JOIN posterior p ON p.item_seq = i.seq ORDER BY i.seq").fetchall()
            else:
                items = cur.execute("SELECT i.item_id, i.prompt, i.response, p.state, p.t_ref FROM items i "
                                    "LEFT JOIN posterior p ON p.item_seq = i.seq ORDER BY i.seq").fetchall()
        for iid, prompt, response, blob, t in items:
            rows = {} if blob is None else self._rows(blob, t)
            n = sum(r.n_votes for r in rows.values())
            if n < min_votes:
                continue
            if rows_only:
                yield ItemPosterior(iid, prompt, response, None, None, n, rows)
                continue
            alphas, w = self._alphas(rows, persona_weights, at)
            if w is None:
                mean, var = dirichlet_mean(alphas), dirichlet_variance(alphas)
            else:
                mean, var = mix_posteriors(alphas, w)
            yield ItemPosterior(iid, prompt, response, np.asarray(mean), np.asarray(var), n, rows)

    def items_needing_votes(self, k: int = 10, persona_weights: Mapping[str, float] | None = None,
                            at: float | None = None) -> list[dict[str, Any]]:
        """Active collection: the ``k`` items with the highest total posterior variance
        (sum over labels), i.e. where another vote teaches the most."""
        if k < 1:
            raise StoreError(f"k must be >= 1, got {k}")
        scored = [{"item_id": it.item_id, "prompt": it.prompt, "response": it.response,
                   "variance": float(it.variance.sum()), "n_votes": it.n_votes}
                  for it in self._all_posteriors(persona_weights, at)]
        scored.sort(key=lambda d: (-d["variance"], d["item_id"]))
        return scored[:k]

    def export(self, persona_weights: Mapping[str, float] | None = None, smoothing: float = 0.0,
               min_votes: int = 1, at: float | None = None, *, split: str | None = None,
               heldout_fraction: float = 0.2, split_seed: int = 0):
        """A ``datasets.Dataset`` for DPRM training, one row per item with >= ``min_votes`` votes:
        ``item_id, prompt, response, target`` (posterior mean (L,)), ``variance`` (L,),
        ``n_votes`` and ``persona_counts`` ({persona: undecayed counts (L,)} over all personas).

        ``persona_weights`` re-weights groups (a mixture; post-stratification to a target
        population). ``split="train"`` / ``"heldout"`` keeps one side of the deterministic
        split by item id (:func:`raydprm.store.split.heldout_mask` with ``heldout_fraction``
        and ``split_seed``); None keeps every item. See :mod:`raydprm.store.export`."""
        from raydprm.store.export import export_items

        return export_items(self, persona_weights, smoothing, min_votes, at, split=split,
                            heldout_fraction=heldout_fraction, split_seed=split_seed)

    def export_pairs(self):
        """Recorded pairwise comparisons as a ``datasets.Dataset`` (prompt, chosen, rejected, annotator)."""
        from raydprm.store.export import export_pairs

        return export_pairs(self)

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
                "groups": self.group_counts(), "rewards": list(self._scale.rewards),
                "labels": list(self.labels), "prior": self.prior, "half_life_s": self.half_life_s,
                "readonly": self.readonly, "journal_mode": "wal", "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)}
