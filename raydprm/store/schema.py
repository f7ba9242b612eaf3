"""The preference store's tables and recorded parameters (the ``meta`` table).

Tables (the vote log is the source of truth; everything else is derived from it)::

    votes(seq, vote_id UNIQUE, item_id, persona, label, dist, weight, ts, source)   append-only log
    items(seq, item_id = content hash of (prompt, response), prompt, response, created)
    posterior(item_seq, state, n_votes, t_ref)       derived: every persona's posterior of the item
    personas(pid, name, description), labels(idx, name), meta(key, value), pairs(...)
    raters(rater, grp, source)        the group of each imported rater (a rater keeps one group)

The parameters that shape the posteriors (labels and their scale, prior, half-life) are
recorded in ``meta`` when a store is created and are compared, never changed, on opening
(:func:`init_meta`); :func:`read_meta` reads them back as :class:`StoreParams`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from raydprm.core.hh_labels import HH_LABELS
from raydprm.core.label_scale import LabelScale
from raydprm.store.sqlite_db import StoreError

__all__ = ["SCHEMA_VERSION", "DEFAULT_STORE_PERSONAS", "StoreParams", "create_tables", "init_meta", "read_meta",
           "read_personas", "default_scale", "config_scale", "check_prior", "check_half_life", "check_same",
           "check_scale", "check_persona_name", "add_persona", "record_params", "params_version",
           "check_open_args"]

SCHEMA_VERSION = 1
# The paper's six personas plus an id for votes that name no persona (e.g. HTTP votes).
DEFAULT_STORE_PERSONAS = ("scientist", "teacher", "politician", "teenager", "ceo", "artist", "anonymous")

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


class StoreParams(NamedTuple):
    """What the ``meta`` table records: label names and scale, prior, half-life, and the version
    that :meth:`PreferenceStore.reconfigure` bumps (other connections follow a change)."""

    labels: list[str]
    scale: LabelScale
    prior: float
    half_life_s: float
    version: str


def create_tables(cur: sqlite3.Cursor) -> None:
    for stmt in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it COMMITs
        cur.execute(stmt)


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_prior(prior: Any) -> None:
    if prior is not None and not (_positive(prior) and prior > 0):
        raise StoreError(f"prior must be a finite number > 0, got {prior!r}")


def check_half_life(half_life_s: Any) -> None:
    if half_life_s is not None and not (_positive(half_life_s) and half_life_s >= 0):
        raise StoreError(f"half_life_s must be a finite number >= 0, got {half_life_s!r}")


def check_open_args(labels: Sequence[str] | None, label_scale: LabelScale | None, prior: Any, half_life_s: Any,
                    synchronous: Any, max_text_chars: Any) -> list[str] | None:
    """Check the arguments of :class:`PreferenceStore`; returns the label names asked for."""
    check_prior(prior)
    if label_scale is not None:
        if not isinstance(label_scale, LabelScale):
            raise StoreError(f"label_scale must be a LabelScale, got {type(label_scale).__name__}")
        if labels is not None and list(labels) != list(label_scale.names):
            raise StoreError(f"labels {list(labels)} differ from the names of label_scale "
                             f"{list(label_scale.names)}")
        labels = list(label_scale.names)
    check_half_life(half_life_s)
    if not isinstance(synchronous, str) or synchronous.upper() not in ("NORMAL", "FULL"):
        raise StoreError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
    if not isinstance(max_text_chars, int) or max_text_chars < 1:
        raise StoreError(f"max_text_chars must be an integer >= 1, got {max_text_chars!r}")
    return labels


def check_persona_name(name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        raise StoreError(f"persona id must be a non-empty string of at most 128 chars, got {name!r}")


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


def config_scale(labels_cfg: Any) -> LabelScale | None:
    """The :class:`LabelScale` of a ``LabelsConfig`` (None: none given)."""
    if labels_cfg is None:
        return None
    try:
        return LabelScale.from_config(labels_cfg)
    except ValueError as e:
        raise StoreError(f"labels.*: {e}") from None


def check_same(path: Any, labels, prior, half_life_s, have_labels, have_prior, have_half_life) -> None:
    """A caller's value that differs from the store's recorded one is an error naming both."""
    if labels is not None and list(labels) != list(have_labels):
        raise StoreError(f"preference store '{path}' was created with labels {list(have_labels)}, "
                         f"not {list(labels)} (labels.names); a store's labels never change")
    for key, want, have in (("prior", prior, have_prior), ("half_life_s", half_life_s, have_half_life)):
        if want is not None and float(want) != float(have):
            raise StoreError(
                f"preference store '{path}' has store.{key} = {float(have)!r} but store.{key} = "
                f"{float(want)!r} was asked for; opening a store never changes it: leave store.{key} unset "
                f"to use the store's, or change the store with `raydprm store reconfigure --db {path} "
                f"store.{key}={float(want)!r}`")


def check_scale(path: Any, asked: LabelScale | None, have: LabelScale) -> None:
    if asked is not None and not asked.same_labels(have):
        raise StoreError(f"preference store '{path}' has the label scale names {list(have.names)} rewards "
                         f"{list(have.rewards)}, not names {list(asked.names)} rewards {list(asked.rewards)}; "
                         "a store's label scale never changes")


def init_meta(cur: sqlite3.Cursor, path: Any, labels: Sequence[str] | None, scale: LabelScale | None,
              prior: float | None, half_life_s: float | None, personas: Iterable[str],
              default_personas: bool = True) -> None:
    """Record a new store's parameters (and :data:`DEFAULT_STORE_PERSONAS` when
    ``default_personas``), or check an existing store's against the asked ones; then register
    ``personas``. A store written before the prior was recorded records the asked one (1.0)."""
    meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
    if not meta:
        names = list(labels) if labels is not None else list(HH_LABELS)
        if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise StoreError(f"labels must be >= 2 distinct non-empty names, got {names!r}")
        scale = scale or default_scale(names)
        cur.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("label_rewards", json.dumps(list(scale.rewards))),
            ("label_grid", json.dumps(None if scale.grid is None else [list(g) for g in scale.grid])),
            ("schema_version", str(SCHEMA_VERSION)), ("labels", json.dumps(names)),
            ("half_life_s", repr(float(half_life_s or 0.0))), ("prior", repr(float(prior or 1.0))),
            ("params_version", "1"), ("created", repr(time.time()))])
        cur.executemany("INSERT INTO labels VALUES (?, ?)", list(enumerate(names)))
        if default_personas:
            cur.executemany("INSERT OR IGNORE INTO personas(name) VALUES (?)", [(p,) for p in DEFAULT_STORE_PERSONAS])
    else:
        if "labels" not in meta or "half_life_s" not in meta:
            raise StoreError(f"'{path}' is an SQLite file but not a preference store (no labels recorded)")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreError(f"store '{path}' has schema version {meta.get('schema_version')}, "
                             f"this raydprm reads version {SCHEMA_VERSION}")
        if "prior" not in meta:  # written before the prior was recorded
            cur.execute("INSERT INTO meta VALUES ('prior', ?)", (repr(float(prior or 1.0)),))
            meta["prior"] = repr(float(prior or 1.0))
        check_same(path, labels, prior, half_life_s, json.loads(meta["labels"]), float(meta["prior"]),
                   float(meta["half_life_s"]))
        if scale is not None:
            check_scale(path, scale, _scale_of_meta(meta))
    for p in personas:
        check_persona_name(p)
        cur.execute("INSERT OR IGNORE INTO personas(name) VALUES (?)", (p,))


def read_meta(db: sqlite3.Cursor | sqlite3.Connection, path: Any, asked_prior: float | None) -> StoreParams:
    """The recorded parameters (a store from before the prior was recorded, opened read-only:
    ``asked_prior``, else the old default 1.0)."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    try:
        labels = json.loads(meta["labels"])
        half_life_s = float(meta["half_life_s"])
        prior = float(meta.get("prior", asked_prior or 1.0))
    except (KeyError, ValueError, TypeError):
        raise StoreError(f"'{path}' is not a preference store (its meta table is incomplete or corrupt)") from None
    return StoreParams(labels, _scale_of_meta(meta), prior, half_life_s, meta.get("params_version", "0"))


def read_personas(db: sqlite3.Cursor | sqlite3.Connection) -> dict[str, int]:
    """{persona name: pid} in registration order."""
    return dict(db.execute("SELECT name, pid FROM personas ORDER BY pid").fetchall())


def add_persona(cur: sqlite3.Cursor, name: str, description: str = "") -> None:
    """Register a persona (idempotent; a non-empty description replaces the old one)."""
    check_persona_name(name)
    cur.execute("INSERT INTO personas(name, description) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "description = CASE WHEN excluded.description != '' THEN excluded.description "
                "ELSE description END", (name, description))


def params_version(cur: sqlite3.Cursor) -> str:
    row = cur.execute("SELECT value FROM meta WHERE key = 'params_version'").fetchone()
    return row[0] if row else "0"


def record_params(cur: sqlite3.Cursor, prior: float, half_life_s: float) -> str:
    """Record a new prior and half-life and bump ``params_version`` (returned), so that other
    connections reload them."""
    version = str(int(params_version(cur)) + 1)
    cur.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
        ("prior", repr(prior)), ("half_life_s", repr(half_life_s)), ("params_version", version)])
    return version
