"""The durable Bayesian preference store (SQLite in WAL mode, one file): its public front.

:class:`PreferenceStore` is a thin front; the work is done by modules named after what they are:
:mod:`~raydprm.store.sqlite_db` (the file, transactions, errors; the front holds one
``SQLiteFile``), :mod:`~raydprm.store.schema` (tables, recorded parameters),
:mod:`~raydprm.store.votes` (validation), :mod:`~raydprm.store.vote_log` (writes, with the
posteriors folded in by the pure-numpy :mod:`~raydprm.store.posterior`),
:mod:`~raydprm.store.reads` (posteriors out), :mod:`~raydprm.store.group_queries` (rater
groups), :mod:`~raydprm.store.importer` / :mod:`~raydprm.store.export` (datasets in and out).
The vote log is the source of truth: every posterior is recomputable from it
(:meth:`PreferenceStore.rebuild_posteriors`; :meth:`PreferenceStore.recount` is the naive twin).

Guarantees: a batch is validated completely before anything is written and is written in
one ``BEGIN IMMEDIATE`` transaction (all or nothing); a vote id already in the log is a
no-op (idempotent retries; the same id with different content is refused);
``add_votes`` returns after COMMIT, which under WAL with ``synchronous=FULL`` (default) is
on disk and with ``NORMAL`` survives a process crash (kill -9) but not a power loss;
concurrent writers in several processes serialise on SQLite's write lock (busy timeout).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from raydprm.core.label_scale import LabelScale
from raydprm.errors import DiskFull
from raydprm.store import group_queries, reads, schema, vote_log
from raydprm.store.group_queries import GroupPosteriors
from raydprm.store.reads import ItemPosterior, LogRow, PersonaState, UnknownItemError
from raydprm.store.schema import DEFAULT_STORE_PERSONAS, SCHEMA_VERSION, default_scale
from raydprm.store.sqlite_db import NEW, SQLiteFile, StoreDiskFull, StoreError

__all__ = ["PreferenceStore", "StoreError", "StoreDiskFull", "UnknownItemError", "DEFAULT_STORE_PERSONAS", "SCHEMA_VERSION",
           "PersonaState", "ItemPosterior", "LogRow", "GroupPosteriors", "default_scale"]


class PreferenceStore:
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
        personas: extra persona / annotator ids to register.
        default_personas: register :data:`DEFAULT_STORE_PERSONAS` (the simulated crowd's six
            personas and ``anonymous``) when the store is created; an import creates its store
            without them, so that its groups are the groups of its data.
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
                 label_scale: LabelScale | None = None, default_personas: bool = True) -> None:
        labels = schema.check_open_args(labels, label_scale, prior, half_life_s, synchronous, max_text_chars)
        self.max_text_chars = int(max_text_chars)
        self._params_version = ""
        self._asked_prior = prior
        self.db = SQLiteFile(path, readonly=readonly, create=create, check=check, busy_timeout_s=busy_timeout_s,
                             synchronous=synchronous.upper(), on_begin=self._follow_reconfigure,
                             on_rollback=self._after_rollback)
        try:
            with self.db.sql_errors():
                if not self.readonly:
                    with self._write(NEW if not self.db.existed else "its parameters") as cur:
                        schema.create_tables(cur)
                        schema.init_meta(cur, self.path, labels, label_scale, prior, half_life_s, personas,
                                         default_personas)
                self._load_meta()
        except BaseException as e:
            self.db.conn.close()
            if isinstance(e, DiskFull):
                self.db.discard_new()  # a store whose creation failed leaves nothing behind
            raise
        if self.readonly:  # nothing was recorded: compare what the caller asked for with the file
            schema.check_same(self.path, labels, prior, half_life_s, self.labels, self.prior, self.half_life_s)
            schema.check_scale(self.path, label_scale, self._scale)
            unknown = [p for p in personas if p not in self._personas]
            if unknown:
                raise StoreError(f"preference store '{self.path}' is open read-only and has no personas {unknown}")

    @classmethod
    def from_config(cls, store_cfg, labels_cfg=None, default_path: str | os.PathLike[str] | None = None,
                    **overrides: Any) -> PreferenceStore:
        """Open the store of a :class:`raydprm.config.StoreConfig` (+ optional LabelsConfig): the one
        conversion from config to store. ``store.path`` (else ``default_path``); ``store.prior`` and
        ``store.half_life_s`` (None = the store's own; another value is an error); ``labels_cfg``
        shapes a new store, an existing one must have the same names (its rewards are checked by
        :func:`raydprm.store.scale.check_labels_config`). ``overrides``: keyword arguments."""
        path = overrides.pop("path", None) or store_cfg.path or default_path
        if not path:
            raise StoreError("store.path is empty and no default path was given")
        kw: dict[str, Any] = dict(labels=list(labels_cfg.names) if labels_cfg is not None else None,
                                  # the whole scale shapes a new store only (an existing one keeps its own)
                                  label_scale=None if Path(path).is_file() else schema.config_scale(labels_cfg),
                                  prior=store_cfg.prior, half_life_s=store_cfg.half_life_s,
                                  synchronous=store_cfg.synchronous, max_text_chars=store_cfg.max_text_chars)
        kw.update(overrides)
        return cls(path, **kw)

    # ------------------------------------------------------------------ the file (sqlite_db)

    path = property(lambda self: self.db.path)
    readonly = property(lambda self: self.db.readonly)
    synchronous = property(lambda self: self.db.synchronous)
    _db = property(lambda self: self.db.conn)  # the connection (the importer's bulk path, tests)

    def _write(self, what: str = "to it") -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """One write transaction (``what``: what it writes, named if the disk is full)."""
        return self.db.write(what)

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        return self.db.read()

    @contextlib.contextmanager
    def atomic(self, what: str = "a batch of writes") -> Iterator[PreferenceStore]:
        """All writes inside the block (add_votes, add_pairs, add_persona, ...) form one
        transaction: they are all committed at the end, or none of them if it raises (``what``:
        what the block writes, named if the disk fills up)."""
        with self._write(what):
            yield self

    def close(self) -> None:
        """Close the store (a writer first checkpoints its WAL into the main file)."""
        self.db.close()

    def backup(self, dest: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the store to ``dest`` (SQLite's online backup)."""
        return self.db.backup(dest)

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ parameters (schema)

    def _after_rollback(self) -> None:
        """Caches that a rolled-back transaction may have filled (personas, parameters)."""
        with contextlib.suppress(sqlite3.Error, StoreError):
            self._load_meta()

    def _follow_reconfigure(self, cur: sqlite3.Cursor) -> None:
        """Follow a :meth:`reconfigure` done by another connection since we last looked."""
        if not self._params_version:  # still opening: nothing loaded to compare with
            return
        if schema.params_version(cur) != self._params_version:
            self._load_meta(cur)

    def _load_meta(self, cur: sqlite3.Cursor | None = None) -> None:
        with self.db.lock:
            db = cur if cur is not None else self.db.conn
            p = schema.read_meta(db, self.path, self._asked_prior)
            self.labels: list[str] = p.labels
            self.half_life_s: float = p.half_life_s
            self.prior: float = p.prior
            self._scale, self._params_version = p.scale, p.version
            self._label_index = {n: i for i, n in enumerate(self.labels)}
            self._set_personas(schema.read_personas(db))

    def _set_personas(self, personas: dict[str, int]) -> None:
        self._personas = personas
        self._pid_name = {pid: name for name, pid in personas.items()}

    def _refresh_personas(self) -> None:
        with self._read() as cur:
            self._set_personas(schema.read_personas(cur))

    def label_scale(self) -> LabelScale:
        """The store's label scale (names, rewards, grid), recorded when the store was created
        (stores from before it was recorded: :func:`default_scale` of their names)."""
        return self._scale

    def reconfigure(self, *, prior: float | None = None, half_life_s: float | None = None) -> dict[str, Any]:
        """Change the store's recorded prior and/or half-life (None: keep), in one transaction
        that re-derives every posterior from the vote log under the new half-life. The prior
        is added at read time, so changing only the prior replays nothing. Other connections
        to the file follow the change on their next call."""
        return vote_log.reconfigure(self, prior, half_life_s)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def personas(self) -> list[str]:
        """Registered persona / annotator ids."""
        self._refresh_personas()
        return list(self._personas)

    @property
    def _half_life(self) -> float | None:
        return self.half_life_s if self.half_life_s > 0 else None

    def __repr__(self) -> str:
        return (f"PreferenceStore('{self.path}', labels={len(self.labels)}, prior={self.prior}, "
                f"half_life_s={self.half_life_s}{', readonly' if self.readonly else ''})")

    # ------------------------------------------------------------------ writing (votes, vote_log)

    def add_persona(self, name: str, description: str = "") -> None:
        """Register a persona or annotator id (idempotent)."""
        with self._write(f"persona '{name}'") as cur:
            schema.add_persona(cur, name, description)
        self._refresh_personas()

    def add_items(self, items: Iterable[tuple[str, str]]) -> list[str]:
        """Register (prompt, response) items without votes (e.g. for active collection); returns their ids."""
        return vote_log.add_items(self, items)

    def add_votes(self, votes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Append a batch of votes atomically; returns ``{"added", "duplicates"}`` after COMMIT.

        Every vote is validated first (see :mod:`raydprm.store.votes`); one bad vote
        refuses the whole batch with a :class:`VoteError` naming it and the rule.
        Vote ids already in the log (or repeated in the batch) are skipped, unless the
        content differs, which is refused.
        """
        return vote_log.add_votes(self, votes)

    def rebuild_posteriors(self) -> int:
        """Re-derive every posterior from the vote log; returns the number of votes replayed."""
        with self._write("the posteriors rebuilt from the vote log") as cur:
            return vote_log.rebuild(self, cur)

    def add_pairs(self, pairs: Sequence[Mapping[str, Any]]) -> int:
        """Record pairwise comparisons ``{pair_id, prompt, chosen, rejected, annotator, source?, ts?}``
        (responses, not transcripts). Items are registered; existing pair ids are skipped."""
        return vote_log.add_pairs(self, pairs)

    # ------------------------------------------------------------------ reading (reads)

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
        return reads.distributions(self, items, persona_weights, smoothing, at)

    def posterior(self, prompt: str, response: str, persona: str | None = None, at: float | None = None
                  ) -> dict[str, Any]:
        """``{"alpha", "mean", "variance", "n_votes"}`` of one persona's (or the pooled) posterior."""
        return reads.posterior(self, prompt, response, persona, at)

    def variance(self, prompt: str, response: str, persona_weights: Mapping[str, float] | None = None,
                 at: float | None = None) -> list[float]:
        """Marginal posterior variances (L,) (pooled, or of the persona mixture)."""
        return reads.variance(self, prompt, response, persona_weights, at)

    def counts(self, prompt: str, response: str) -> dict[str, list[float]]:
        """Undecayed weighted vote counts (L,) per persona that voted on the item."""
        return {p: r.counts.tolist() for p, r in reads.lookup(self, prompt, response)[1].items()}

    def recount(self, prompt: str, response: str, persona: str | None = None, at: float | None = None
                ) -> list[float]:
        """Posterior alpha recomputed directly from the vote log (the naive twin of the
        incremental upkeep): prior + sum_k w_k decay(at - ts_k) v_k."""
        return reads.recount(self, prompt, response, persona, at)

    def count_votes(self, persona: str | None = None) -> int:
        """Number of distinct votes in the log (optionally of one persona)."""
        return reads.count_votes(self, persona)

    def count_items(self) -> int:
        return reads.count_items(self)

    def items_needing_votes(self, k: int = 10, persona_weights: Mapping[str, float] | None = None,
                            at: float | None = None) -> list[dict[str, Any]]:
        """Active collection: the ``k`` items with the highest total posterior variance
        (sum over labels), i.e. where another vote teaches the most."""
        return reads.items_needing_votes(self, k, persona_weights, at)

    # ------------------------------------------------------------------ rater groups (group_queries)

    def groups(self, with_votes: bool = True) -> list[str]:
        """Rater groups (= personas) in registration order; ``with_votes``: only those with a vote.

        An imported per-rater dataset makes one group per value of its mapping's group column
        (or template), e.g. ``"Woman/gen z"``; the simulated crowd's personas are groups too."""
        return group_queries.groups(self, with_votes)

    def rater_groups(self) -> dict[str, str]:
        """{rater id: group} of the raters that imports recorded (a rater keeps one group)."""
        return group_queries.rater_groups(self)

    def group_counts(self) -> dict[str, dict[str, int]]:
        """Per group with votes: ``{"votes", "raters", "items"}`` (raters: recorded by imports)."""
        return group_queries.group_counts(self)

    def group_posteriors(self, groups: Sequence[str] | None = None, *, at: float | None = None,
                         min_votes: int = 1, item_ids: Sequence[str] | None = None) -> GroupPosteriors:
        """Per-(item, group) posteriors as arrays, items in insertion order.

        ``groups``: which groups, in this order (default :meth:`groups`, those with votes);
        ``min_votes``: skip items with fewer votes in all; ``item_ids``: only these items
        (e.g. one side of :func:`raydprm.store.split.split_items`); ``at``: read-out time
        for forgetting (default now). Returns :class:`GroupPosteriors` with ``alpha`` (I, P, L)
        = prior + decayed evidence, ``counts`` (I, P, L) and ``n_votes`` (I, P)."""
        return group_queries.group_posteriors(self, groups, at=at, min_votes=min_votes, item_ids=item_ids)

    def group_disagreement(self) -> dict:
        """How much the groups with votes disagree (:func:`raydprm.store.groups.group_disagreement`):
        pairwise Jensen-Shannon divergences and each group's share of items whose modal label
        differs from the pooled crowd's."""
        from raydprm.store.groups import group_disagreement

        gp = self.group_posteriors()
        return group_disagreement(gp.counts, gp.groups)

    # ------------------------------------------------------------------ datasets out (export)

    def export(self, persona_weights: Mapping[str, float] | None = None, smoothing: float = 0.0,
               min_votes: int = 1, at: float | None = None, *, split: str | None = None,
               heldout_fraction: float = 0.2, split_seed: int = 0):
        """A ``datasets.Dataset`` for DPRM training, one row per item with >= ``min_votes`` votes,
        optionally re-weighted to a target population and limited to one side of the split by item
        id: :func:`raydprm.store.export.export_items` documents every argument."""
        from raydprm.store.export import export_items

        return export_items(self, persona_weights, smoothing, min_votes, at, split=split,
                            heldout_fraction=heldout_fraction, split_seed=split_seed)

    def export_pairs(self):
        """Recorded pairwise comparisons as a ``datasets.Dataset`` (prompt, chosen, rejected, annotator)."""
        from raydprm.store.export import export_pairs

        return export_pairs(self)

    def stats(self) -> dict[str, Any]:
        """Counts and settings of the store."""
        return reads.stats(self)
