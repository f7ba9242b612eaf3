"""The SQLite layer of the preference store: one file in WAL mode, opened (read-only, immutable or
writable), checked, and used through one write transaction at a time (``BEGIN IMMEDIATE`` ...
``COMMIT``, nested calls join the outer one) and snapshot reads; every SQLite error becomes one
:class:`StoreError` line naming the file. No knowledge of votes or posteriors lives here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raydprm.errors import RaydprmError

__all__ = ["SQLiteFile", "StoreError"]


class StoreError(RaydprmError):
    """The store cannot do what was asked (bad arguments, incompatible, read-only or corrupt file)."""


class SQLiteFile:
    """The store's SQLite file (the base of :class:`raydprm.store.PreferenceStore`)."""

    path: Path
    readonly: bool
    synchronous: str

    def _open_file(self, path: str | os.PathLike[str], *, readonly: bool, create: bool, check: bool | None,
                   busy_timeout_s: float) -> bool:
        """Open ``path`` (creating its directory for a writer); returns whether it existed.

        ``check``: run ``quick_check`` on an existing file (default: when writable)."""
        self.path = Path(path)
        self.readonly = bool(readonly)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of write transactions (atomic() around add_votes, ...)
        self._closed = False
        if self.path.is_dir():
            raise StoreError(f"store path '{self.path}' is a directory; give a file path such as {self.path}/store.db")
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if not exists and (self.readonly or not create):
            raise StoreError(f"preference store '{self.path}' does not exist"
                             + ("" if self.readonly else " (create it with `raydprm store init`)"))
        if not self.readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise StoreError(f"cannot create preference store '{self.path}': a part of its directory "
                                 f"'{self.path.parent}' is a regular file") from None
            except OSError as e:
                raise StoreError(f"cannot create the directory of preference store '{self.path}': "
                                 f"{e.strerror or e}") from None
        self._db = None
        try:
            self._connect(busy_timeout_s)
            if exists and (not self.readonly if check is None else check):
                self._quick_check()
            with self._sql_errors():
                if exists:
                    self._check_is_store()
                if not self.readonly:
                    self._set_wal(busy_timeout_s)
                    self._db.execute(f"PRAGMA synchronous={self.synchronous}")
                    # A bigger page cache and fewer, larger WAL checkpoints: each checkpoint syncs the
                    # database file, so checkpointing every ~16 MB instead of 4 MB cuts syncs 4x.
                    # Durability is unchanged: a COMMIT is durable once it is in the WAL.
                    self._db.execute("PRAGMA cache_size=-65536")
                    self._db.execute("PRAGMA wal_autocheckpoint=4000")
        except BaseException:
            if self._db is not None:
                self._db.close()
            raise
        return exists


    def _connect(self, busy_timeout_s: float) -> None:
        with self._sql_errors("cannot open"):
            if self.readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                try:
                    self._db = self._open_uri(uri, busy_timeout_s)
                    self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                except sqlite3.OperationalError:
                    # A WAL store in a directory we cannot write: SQLite cannot create the
                    # shared-memory file next to it. Nobody can write there either, so the
                    # file is immutable for as long as we read it.
                    if self._db is not None:
                        self._db.close()
                    if os.access(self.path.parent, os.W_OK):
                        raise
                    self._db = self._open_uri(uri + "&immutable=1", busy_timeout_s)
            else:
                self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                           check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")

    @staticmethod
    def _open_uri(uri: str, busy_timeout_s: float) -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)

    def _quick_check(self) -> None:
        """Refuse a corrupt file before anything is written to it (SQLite's page-level check:
        every B-tree page, record format and free list; not the index contents)."""
        with self._sql_errors():
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise StoreError(f"preference store '{self.path}' is corrupt (SQLite quick_check: {problems[0]}); "
                             "nothing was written to it; restore it from a backup, or rebuild it from its vote "
                             "log export")

    def _check_is_store(self) -> None:
        """Refuse an SQLite file of something else (never add our tables to it). A file with
        no tables at all is a store whose creation was interrupted: it is created again."""
        with self._sql_errors():
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if (tables or self.readonly) and not {"meta", "votes", "items", "posterior"} <= tables:
            raise StoreError(f"'{self.path}' is an SQLite file but not a preference store (tables: "
                             f"{', '.join(sorted(tables)) or 'none'})")

    def _sql_error(self, e: sqlite3.Error, doing: str = "") -> StoreError:
        """One line naming the file for any SQLite error."""
        msg = str(e)
        low = msg.lower()
        if "malformed" in low or "not a database" in low or "corrupt" in low:
            what = f"is corrupt or not an SQLite file ({msg})"
        elif "readonly" in low or "read-only" in low:
            what = (f"is read-only ({msg}); read it with a read-only command (stats, export) or make the file "
                    "and its directory writable")
        elif "locked" in low or "busy" in low:
            what = f"is locked by another writer for longer than the busy timeout ({msg})"
        elif "unable to open" in low:
            what = f"cannot be opened ({msg}; is its directory readable, and writable for a writer?)"
        elif "disk" in low and "full" in low:
            what = f"cannot grow: the disk is full ({msg})"
        else:
            what = f"failed: {type(e).__name__}: {msg}"
        return StoreError(f"{doing + ' ' if doing else ''}preference store '{self.path}' {what}".strip())

    @contextlib.contextmanager
    def _sql_errors(self, doing: str = "") -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise self._sql_error(e, doing) from None

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
                    raise self._sql_error(e) from None
                time.sleep(0.05)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: BEGIN IMMEDIATE (takes the write lock) ... COMMIT, or ROLLBACK.

        Nested calls (inside :meth:`atomic`) join the outer transaction: what they write
        commits or rolls back with it."""
        if self.readonly:
            raise StoreError(f"preference store '{self.path}' is open read-only")
        with self._lock:
            cur = self._db.cursor()
            if self._depth:
                self._depth += 1
                try:
                    yield cur
                finally:
                    self._depth -= 1
                return
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._sql_error(e) from None
            self._depth = 1
            try:
                self._check_params(cur)
                yield cur
                cur.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                self._after_rollback()
                if isinstance(e, sqlite3.Error):
                    raise self._sql_error(e) from None
                raise
            finally:
                self._depth = 0

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:
        """All writes inside the block (add_votes, add_pairs, add_persona, ...) form one
        transaction: they are all committed at the end, or none of them if it raises."""
        with self._write():
            yield self

    def _after_rollback(self) -> None:
        """Hook: refresh caches that a rolled-back transaction may have filled."""

    def _check_params(self, cur: sqlite3.Cursor) -> None:
        """Hook: run first in every transaction (follow another connection's changes)."""

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """A consistent snapshot for multi-statement reads (inside a write: its view)."""
        with self._lock:
            cur = self._db.cursor()
            if self._depth:
                yield cur
                return
            try:
                cur.execute("BEGIN")
                try:
                    self._check_params(cur)
                    yield cur
                finally:
                    cur.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._sql_error(e) from None


    def close(self) -> None:
        """Close the store. A writable store first checkpoints its WAL into the main file
        (``wal_checkpoint(TRUNCATE)``), so that ``store.db`` alone holds every committed vote
        (when another connection still reads, SQLite copies what it can; ``raydprm store backup``
        is the way to copy a live store)."""
        with self._lock:
            if self._db is not None and not getattr(self, "_closed", False):
                if not self.readonly and not self._depth:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._closed = True
                self._db.close()

    def backup(self, dest: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the store to ``dest`` (one self-contained file; an existing
        file there and its -wal/-shm are replaced) with SQLite's online backup, which copies a
        snapshot of the pages while other connections may keep reading and writing."""
        d = Path(dest)
        if d.resolve() == self.path.resolve():
            raise StoreError(f"cannot back up the store '{self.path}' onto itself")
        tmp = d.with_name(f".{d.name}.partial")
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            with self._lock, self._sql_errors(f"cannot back up to '{d}':"):
                target = sqlite3.connect(str(tmp))
                try:
                    self._db.backup(target)
                finally:
                    target.close()
            for suffix in ("-wal", "-shm"):  # stale companions of an old file at dest
                Path(str(d) + suffix).unlink(missing_ok=True)
            os.replace(tmp, d)  # all or nothing: a failed backup leaves no partial file at dest
        except OSError as e:
            raise StoreError(f"cannot back up the store '{self.path}' to '{d}': {e.strerror or e}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return d

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
