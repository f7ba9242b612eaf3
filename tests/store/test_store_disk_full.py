"""A full disk under the preference store (issue 25, part 4): one line naming the store's path and
what was being written; the transaction is rolled back, so the store is as it was (a store being
created leaves no file). The full disk is SQLite's own SQLITE_FULL, what it reports for ENOSPC on its
files, produced with ``PRAGMA max_page_count`` (no loop mount); the bare I/O error SQLite gives when
the WAL index cannot grow is checked with the file system's free space injected."""

import json
import os
import sqlite3
import types

import numpy as np
import pytest

from raydprm.cli import main
from raydprm.errors import DiskFull
from raydprm.store import PreferenceStore
from raydprm.store.sqlite_db import SQLiteFile, StoreDiskFull, StoreError

P = "Q: how do I boil an egg ?\nA:"


def _votes(n, first=0):
    rng = np.random.default_rng(0)
    return [{"vote_id": f"v{i}", "prompt": P, "response": f" answer {i} ." + "x" * 2000, "persona": "teacher",
             "label": int(rng.integers(6)), "ts": 1000.0 + i} for i in range(first, first + n)]


def _fill(conn, spare_pages=0):
    """The disk is full from now on for this connection: the file may not grow past its size."""
    n = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={n + spare_pages}")


def _state(path):
    with PreferenceStore(path, readonly=True) as s:
        assert s._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        n = s._db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
        dists = [s.distribution(P, v["response"]) for v in _votes(4)]
        recount = [s.recount(P, v["response"]) for v in _votes(4)]
        return n, dists, recount


def test_a_full_disk_under_a_batch_is_one_line_naming_the_store_and_the_batch_and_leaves_it_as_it_was(tmp_path):
    db = tmp_path / "s.db"
    with PreferenceStore(db) as s:
        s.add_votes(_votes(4))
    before = _state(db)
    s = PreferenceStore(db)
    _fill(s._db)
    with pytest.raises(StoreDiskFull) as e:
        s.add_votes(_votes(50, first=4))
    msg = str(e.value)
    assert isinstance(e.value, DiskFull) and isinstance(e.value, StoreError) and "\n" not in msg
    assert msg.startswith(f"no space left on the device of preference store '{db}' while writing a batch of 50 "
                          "votes (SQLite: database or disk is full); nothing of it was written (the store is as it "
                          "was)")
    with pytest.raises(StoreDiskFull, match=f"'{db}' while writing the import of 'x.csv'"):
        with s.atomic("the import of 'x.csv'"):  # a block of writes names what the block writes
            s.add_persona("critic")
            s.add_votes(_votes(50, first=4))
    assert s.personas == [p for p in s.personas if p != "critic"]  # the rolled-back persona is gone
    s.close()
    after = _state(db)
    assert after[0] == before[0] == 4 and after == before  # the votes, posteriors and log as they were
    assert np.allclose(after[1], [np.array(a) / sum(a) for a in after[2]])  # posteriors = the recount from the log
    with PreferenceStore(db) as s:  # room again: the same batch goes in whole
        assert s.add_votes(_votes(50, first=4)) == {"added": 50, "duplicates": 0}


def test_a_full_disk_in_the_cli_is_one_line_and_a_store_being_created_leaves_no_file(tmp_path, capsys, monkeypatch):
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(json.dumps({"chosen": f"\n\nHuman: q{i} {'x' * 300}\n\nAssistant: good {i}",
                                      "rejected": f"\n\nHuman: q{i} {'x' * 300}\n\nAssistant: bad {i}"}) + "\n"
                          for i in range(200)))
    db = tmp_path / "s.db"
    assert main(["store", "init", "--db", str(db)]) == 0
    capsys.readouterr()
    real = SQLiteFile._connect
    spare = {"pages": 0}

    def full_disk(self, busy_timeout_s):
        real(self, busy_timeout_s)
        _fill(self.conn, spare["pages"])

    monkeypatch.setattr(SQLiteFile, "_connect", full_disk)
    assert main(["store", "import", "--db", str(db), "--file", str(hh)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"raydprm: error: no space left on the device of preference store '{db}' while writing the import "
                   f"of HH file '{hh}' (SQLite: database or disk is full); nothing of it was written (the store is as "
                   "it was); free space there and run again"]
    monkeypatch.setattr(SQLiteFile, "_connect", real)
    assert main(["store", "stats", "--db", str(db)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["votes"] == 0 and stats["pairs"] == 0 and "annotator" not in stats["votes_per_persona"]

    new = tmp_path / "sub" / "new.db"
    monkeypatch.setattr(SQLiteFile, "_connect", full_disk)
    spare["pages"] = 1  # a new file: room for one page, not for the store's tables
    assert main(["store", "init", "--db", str(new)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"raydprm: error: no space left on the device of preference store '{new}' while writing a new "
                   "store (SQLite: database or disk is full); nothing of it was written (no file is left); free "
                   "space there and run again"]
    assert sorted(os.listdir(new.parent)) == []  # no empty store file, no -wal, no -shm


def test_an_io_error_is_a_full_disk_only_when_the_file_system_has_no_room(tmp_path, monkeypatch):
    f = SQLiteFile(tmp_path / "s.db")
    ioerr = sqlite3.OperationalError("disk I/O error")  # what SQLite says when the WAL index cannot grow
    free = {"blocks": 0}
    monkeypatch.setattr(os, "statvfs", lambda p: types.SimpleNamespace(f_bavail=free["blocks"], f_frsize=4096))
    err = f._sql_error(ioerr, what="a batch of 3 votes")
    assert isinstance(err, StoreDiskFull) and f"'{tmp_path / 's.db'}' while writing a batch of 3 votes" in str(err)
    free["blocks"] = 10**6  # 4 GB free: an I/O error is something else, said as such
    err = f._sql_error(ioerr, what="a batch of 3 votes")
    assert not isinstance(err, DiskFull) and str(err) == (f"preference store '{tmp_path / 's.db'}' failed: "
                                                          "OperationalError: disk I/O error")
    f.close()


def test_a_backup_onto_a_full_disk_names_the_copy_and_leaves_no_partial_file(tmp_path, monkeypatch):
    with PreferenceStore(tmp_path / "s.db") as s:
        s.add_votes(_votes(30))
        real = sqlite3.connect

        def full_target(path, *a, **kw):  # the backup's target is on a full disk
            conn = real(path, *a, **kw)
            conn.execute("PRAGMA max_page_count=2")
            return conn

        monkeypatch.setattr(sqlite3, "connect", full_target)
        out = tmp_path / "copies" / "copy.db"
        with pytest.raises(DiskFull, match=f"no space left on the device of '{out}' while writing the backup of "
                                           f"preference store '{tmp_path / 's.db'}'"):
            s.backup(out)
        assert os.listdir(out.parent) == []
