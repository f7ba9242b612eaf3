"""A full disk anywhere is one line naming the path and what was being written, and leaves no
partial file (issue 25, part 4): ENOSPC injected where the writes happen."""

import errno
import json

import datasets
import pytest

from raydprm.cli import _report, main
from raydprm.errors import DiskFull, writing


def _enospc(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_store_export_onto_a_full_disk_is_one_line_and_leaves_no_arrow_file(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "s.db")
    assert main(["store", "simulate", "--db", db, "--n", "6", "--votes-per-item", "2"]) == 0
    capsys.readouterr()

    def full(self, path, *a, **kw):  # the probe's failure: a 0-byte .arrow, then ENOSPC
        from pathlib import Path

        Path(path).mkdir(parents=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"")
        raise _enospc(Path(path) / "data-00000-of-00001.arrow")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    out = tmp_path / "exp"
    assert main(["store", "export", "--db", db, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"raydprm: error: no space left on the device of '{out}' while writing the store export; free "
                   "space there (or point the output elsewhere) and run again"]
    assert not [p.name for p in tmp_path.iterdir() if "exp" in p.name]  # nothing half-written, no temp left


def test_writing_replaces_whole_or_keeps_the_old_and_names_the_path(tmp_path):
    out = tmp_path / "report.json"
    with writing(out, "the report") as tmp:
        tmp.write_text(json.dumps({"v": 1}))
    with pytest.raises(DiskFull, match=f"'{out}' while writing the report"):
        with writing(out, "the report") as tmp:
            tmp.write_text('{"v": ')
            raise _enospc(tmp)
    assert json.loads(out.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_full_disk_deep_inside_a_library_or_an_actor_is_one_line_naming_the_path(capsys):
    class RayTaskError(Exception):  # Ray's wrapper: the real error is its ``cause``
        def __init__(self, cause):
            super().__init__("ray::LearnerActor.save() (pid=1) ... inline_container.cc unexpected pos 512")
            self.cause = cause

    assert _report(RayTaskError(_enospc("/runs/r/ppo/ckpt/step_000002/engine/model_states.pt")), False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raydprm: error: no space left on the device writing "
                                               "'/runs/r/ppo/ckpt/step_000002/engine/model_states.pt'")
    import sqlite3

    assert _report(sqlite3.OperationalError("database or disk is full"), False) == 2
    assert "no space left on the device" in capsys.readouterr().err
    assert _report(ValueError("index out of range"), False) == 1  # not every error is a full disk
