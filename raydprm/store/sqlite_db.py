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
from collections.abc import Callable, Iterator
from pathlib import Path

from raydprm.errors import DiskFull, RaydprmError, disk_full, is_disk_full

__all__ = ["SQLiteFile", "StoreError", "StoreDiskFull"]

# An SQLite I/O error with less than this free where the store lives is the disk filling up (SQLite
# reports ENOSPC as SQLITE_FULL for its files, but as a bare SQLITE_IOERR_* for the WAL index).
FULL_BYTES = 1 << 20
NEW = "a new store"  # what creating a store writes (a failed creation leaves no file)


class StoreError(RaydprmError):
    """The store cannot do what was asked (bad arguments, incompatible, read-only or corrupt file)."""


class StoreDiskFull(StoreError, DiskFull):
    """The store's file system is full: one line naming the store's path and what was being written;
    the transaction was rolled back, so the store is as it was before (a store being created is
    removed)."""


class SQLiteFile:
    """The store's SQLite file, held by :class:`raydprm.store.PreferenceStore` (composition: the
    front owns one and knows nothing of SQLite's pragmas, locks or error texts).

    Opening ``path`` creates its directory for a writer; ``check`` runs ``quick_check`` on an
    existing file (default: when writable). ``on_begin(cur)`` runs first in every transaction
    (the front follows another connection's reconfigure there); ``on_rollback()`` runs after a
    rollback (the front reloads caches that the transaction may have filled).
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True,
                 check: bool | None = None, busy_timeout_s: float = 60.0, synchronous: str = "FULL",
                 on_begin: Callable[[sqlite3.Cursor], None] | None = None,
                 on_rollback: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.readonly = bool(readonly)
        self.synchronous = synchronous
        self.on_begin = on_begin or (lambda cur: None)
        self.on_rollback = on_rollback or (lambda: None)
        self.lock = threading.RLock()
        self.depth = 0  # nesting of write transactions (atomic() around add_votes, ...)
        self._closed = False
        if self.path.is_dir():
            raise StoreError(f"store path '{self.path}' is a directory; give a file path such as {self.path}/store.db")
        self.existed = self.path.is_file() and self.path.stat().st_size > 0
        if not self.existed and (self.readonly or not create):
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
        self.conn: sqlite3.Connection | None = None
        try:
            self._connect(busy_timeout_s)
            if self.existed and (not self.readonly if check is None else check):
                self._quick_check()
            with self.sql_errors(what=NEW if not self.existed else "its write-ahead log"):
                if self.existed:
                    self._check_is_store()
                if not self.readonly:
                    self._set_wal(busy_timeout_s)
                    self.conn.execute(f"PRAGMA synchronous={self.synchronous}")
                    # A bigger page cache and fewer, larger WAL checkpoints: each checkpoint syncs the
                    # database file, so checkpointing every ~16 MB instead of 4 MB cuts syncs 4x.
                    # Durability is unchanged: a COMMIT is durable once it is in the WAL.
                    self.conn.execute("PRAGMA cache_size=-65536")
                    self.conn.execute("PRAGMA wal_autocheckpoint=4000")
        except BaseException as e:
            if self.conn is not None:
                self.conn.close()
            if isinstance(e, DiskFull):
                self.discard_new()
            raise

    def discard_new(self) -> None:
        """Close, and remove the file (and its -wal/-shm) if this open created it: a store whose creation
        failed (a full disk) leaves nothing behind."""
        with contextlib.suppress(sqlite3.Error):
            if self.conn is not None:
                self.conn.close()
        if not self.existed and not self.readonly:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(OSError):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)

    def _connect(self, busy_timeout_s: float) -> None:
        with self.sql_errors("cannot open", what=NEW if not self.existed else "its write-ahead log"):
            if self.readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                try:
                    self.conn = self._open_uri(uri, busy_timeout_s)
                    self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                except sqlite3.OperationalError:
                    # A WAL store in a directory we cannot write: SQLite cannot create the
                    # shared-memory file next to it. Nobody can write there either, so the
                    # file is immutable for as long as we read it.
                    if self.conn is not None:
                        self.conn.close()
                    if os.access(self.path.parent, os.W_OK):
                        raise
                    self.conn = self._open_uri(uri + "&immutable=1", busy_timeout_s)
            else:
                self.conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                           check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")

    @staticmethod
    def _open_uri(uri: str, busy_timeout_s: float) -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)

    def _quick_check(self) -> None:
        """Refuse a corrupt file before anything is written to it (SQLite's page-level check:
        every B-tree page, record format and free list; not the index contents)."""
        with self.sql_errors():
            problems = [r[0] for r in self.conn.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise StoreError(f"preference store '{self.path}' is corrupt (SQLite quick_check: {problems[0]}); "
                             "nothing was written to it; restore it from a backup, or rebuild it from its vote "
                             "log export")

    def _check_is_store(self) -> None:
        """Refuse an SQLite file of something else (never add our tables to it). A file with
        no tables at all is a store whose creation was interrupted: it is created again."""
        with self.sql_errors():
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if (tables or self.readonly) and not {"meta", "votes", "items", "posterior"} <= tables:
            raise StoreError(f"'{self.path}' is an SQLite file but not a preference store (tables: "
                             f"{', '.join(sorted(tables)) or 'none'})")

    def disk_is_full(self, e: sqlite3.Error) -> bool:
        """SQLite's SQLITE_FULL, or an I/O error while the store's file system has (almost) no room left."""
        name, low = getattr(e, "sqlite_errorname", "") or "", str(e).lower()
        if name == "SQLITE_FULL" or ("disk" in low and "full" in low):
            return True
        if name.startswith("SQLITE_IOERR") or "disk i/o error" in low:
            try:
                st = os.statvfs(self.path.parent)
            except OSError:
                return False
            return st.f_bavail * st.f_frsize < FULL_BYTES
        return False

    def _sql_error(self, e: sqlite3.Error, doing: str = "", what: str = "") -> StoreError:
        """One line naming the file for any SQLite error (``what``: what was being written, named when
        the disk is full)."""
        msg = str(e)
        low = msg.lower()
        if self.disk_is_full(e):
            return StoreDiskFull(f"no space left on the device of preference store '{self.path}' while writing "
                                 f"{what or 'to it'} (SQLite: {msg}); nothing of it was written ("
                                 f"{'no file is left' if what == NEW else 'the store is as it was'}); free space "
                                 "there and run again")
        if "malformed" in low or "not a database" in low or "corrupt" in low:
            what = f"is corrupt or not an SQLite file ({msg})"
        elif "readonly" in low or "read-only" in low:
            what = (f"is read-only ({msg}); read it with a read-only command (stats, export) or make the file "
                    "and its directory writable")
        elif "locked" in low or "busy" in low:
            what = f"is locked by another writer for longer than the busy timeout ({msg})"
        elif "unable to open" in low:
            what = f"cannot be opened ({msg}; is its directory readable, and writable for a writer?)"
        else:
            what = f"failed: {type(e).__name__}: {msg}"
        return StoreError(f"{doing + ' ' if doing else ''}preference store '{self.path}' {what}".strip())

    @contextlib.contextmanager
    def sql_errors(self, doing: str = "", what: str = "") -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise self._sql_error(e, doing, what) from None

    def _set_wal(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:  # several processes creating the file at once may briefly see "locked"
            try:
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"cannot put '{self.path}' in WAL mode (got {mode})")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise self._sql_error(e, what="its write-ahead log") from None
                time.sleep(0.05)

    @contextlib.contextmanager
    def write(self, what: str = "to it") -> Iterator[sqlite3.Cursor]:
        """One write transaction: BEGIN IMMEDIATE (takes the write lock) ... COMMIT, or ROLLBACK.

        Nested calls (inside :meth:`PreferenceStore.atomic`) join the outer transaction: what they write
        commits or rolls back with it. ``what`` (e.g. "a batch of 3 votes") is named when the disk is
        full; in a nested call the outermost transaction's ``what`` is named."""
        if self.readonly:
            raise StoreError(f"preference store '{self.path}' is open read-only")
        with self.lock:
            cur = self.conn.cursor()
            if self.depth:
                self.depth += 1
                try:
                    yield cur
                finally:
                    self.depth -= 1
                return
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._sql_error(e, what=what) from None
            self.depth = 1
            try:
                self.on_begin(cur)
                yield cur
                cur.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                self.on_rollback()
                if isinstance(e, sqlite3.Error):
                    raise self._sql_error(e, what=what) from None
                raise
            finally:
                self.depth = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Cursor]:
        """A consistent snapshot for multi-statement reads (inside a write: its view)."""
        with self.lock:
            cur = self.conn.cursor()
            if self.depth:
                yield cur
                return
            try:
                cur.execute("BEGIN")
                try:
                    self.on_begin(cur)
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
        with self.lock:
            if self.conn is not None and not self._closed:
                if not self.readonly and not self.depth:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._closed = True
                self.conn.close()

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
            with self.lock, self.sql_errors(f"cannot back up to '{d}':"):
                target = sqlite3.connect(str(tmp))
                try:
                    self.conn.backup(target)
                except sqlite3.Error as e:
                    if is_disk_full(e):  # the copy's disk, not the store's
                        raise disk_full(d, f"the backup of preference store '{self.path}'") from None
                    raise
                finally:
                    target.close()
            for suffix in ("-wal", "-shm"):  # stale companions of an old file at dest
                Path(str(d) + suffix).unlink(missing_ok=True)
            os.replace(tmp, d)  # all or nothing: a failed backup leaves no partial file at dest
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(d, f"the backup of preference store '{self.path}'") from None
            raise StoreError(f"cannot back up the store '{self.path}' to '{d}': {e.strerror or e}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return d
