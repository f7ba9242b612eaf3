"""Issue 14, findings 1, 2, 3 and 7 (store side): a read never changes the store, imports are
all or nothing with errors naming the 1-based line and field, a corrupt file is refused
before any write, read-only stores are readable and read commands never create anything."""

import ctypes
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from raydprm.cli import main
from raydprm.store import PreferenceStore, StoreError
from raydprm.store.hh import import_hh

P = "Q: how do I boil an egg ?\nA:"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("raydprm: error:"), err
    assert "Traceback" not in err
    return lines[0]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _votes(n, t0=1000.0, persona="teacher"):
    rng = np.random.default_rng(0)
    return [{"vote_id": f"v{i}", "prompt": P, "response": f" answer {i % 5} .", "persona": persona,
             "label": int(rng.integers(6)), "ts": t0 + 37.0 * i} for i in range(n)]


# ---------------------------------------------------------------- finding 1: a read changes the store


def test_finding1_stats_after_simulate_keeps_the_half_life(tmp_path, capsys):
    db = str(tmp_path / "hl.db")
    assert main(["store", "simulate", "--db", db, "--n", "20", "--votes-per-item", "3", "store.half_life_s=3600"]) == 0
    capsys.readouterr()
    assert main(["store", "stats", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["half_life_s"] == 3600.0  # old code: 0.0, posteriors rebuilt
    assert main(["store", "simulate", "--db", db, "--n", "20", "--votes-per-item", "3"]) == 0  # config says nothing
    capsys.readouterr()
    # a config that disagrees is one line naming both values, and changes nothing
    PreferenceStore(db).close()  # the last connection out checkpoints the WAL into the file
    before = _sha(db)
    assert main(["store", "simulate", "--db", db, "--n", "20", "store.half_life_s=0"]) == 2
    line = _one_error_line(capsys)
    assert "store.half_life_s = 3600.0" in line and "store.half_life_s = 0.0" in line and "reconfigure" in line
    assert main(["store", "stats", "--db", db, "store.prior=2"]) == 2
    assert "store.prior = 1.0" in _one_error_line(capsys)
    assert _sha(db) == before
    with PreferenceStore(db, readonly=True) as s:
        assert s.half_life_s == 3600.0


def test_reconfigure_rebuilds_from_the_log_in_one_transaction(tmp_path, capsys):
    votes = _votes(60)
    ref = PreferenceStore(tmp_path / "ref.db", half_life_s=500.0, prior=0.5)
    ref.add_votes(votes)
    s = PreferenceStore(tmp_path / "s.db")  # created with the defaults: prior 1, no forgetting
    s.add_votes(votes)
    other = PreferenceStore(tmp_path / "s.db")  # a second connection, e.g. a serving actor
    s.close()
    db = str(tmp_path / "s.db")
    assert main(["store", "reconfigure", "--db", db, "store.half_life_s=500", "store.prior=0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["votes_replayed"] == 60 and out["changed"] == {"prior": [1.0, 0.5], "half_life_s": [0.0, 500.0]}
    at = 1000.0 + 37.0 * 70
    items = [(P, f" answer {k} .") for k in range(5)]
    # the other connection follows the change on its next call (no stale state layout)
    for st in (PreferenceStore(db, readonly=True), other):
        assert (st.prior, st.half_life_s) == (0.5, 500.0) or st is other
        np.testing.assert_allclose(st.distributions(items, at=at), ref.distributions(items, at=at), rtol=1e-12)
        assert (st.prior, st.half_life_s) == (0.5, 500.0)
    assert main(["store", "reconfigure", "--db", db]) == 2
    assert "nothing to reconfigure" in _one_error_line(capsys)
    assert main(["store", "reconfigure", "--db", str(tmp_path / "none.db"), "store.prior=2"]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert not (tmp_path / "none.db").exists()


def test_store_without_a_recorded_prior_adopts_the_first_one(tmp_path):
    s = PreferenceStore(tmp_path / "old.db")
    s.add_votes(_votes(3))
    with s.atomic() as st:  # make it look like a store written before the prior was recorded
        st._db.execute("DELETE FROM meta WHERE key = 'prior'")
    s.close()
    assert PreferenceStore(tmp_path / "old.db", readonly=True, prior=0.25).prior == 0.25  # read-only: not recorded
    assert PreferenceStore(tmp_path / "old.db", prior=0.25).prior == 0.25  # writable: recorded now
    with pytest.raises(StoreError, match="store.prior = 0.25"):
        PreferenceStore(tmp_path / "old.db", prior=1.0)


# ---------------------------------------------------------------- finding 2: imports are not atomic


def _hh_rows(n):
    return [{"chosen": f"\n\nHuman: q {i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q {i}\n\nAssistant: bad {i}"}
            for i in range(n)]


def test_finding2_hh_import_is_all_or_nothing_and_names_the_line(tmp_path, capsys):
    rows = _hh_rows(1000)
    rows[749]["chosen"] = "\n\nHuman: q 749 with no assistant turn"
    f = tmp_path / "hh.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = PreferenceStore(tmp_path / "s.db")
    with pytest.raises(StoreError, match=r"line 750, field 'chosen': transcript has no") as e:
        import_hh(s, f, progress=False, batch_size=100)  # 7 batches were written before line 750
    assert "nothing was imported" in str(e.value)
    assert s.count_votes() == 0 and s.count_items() == 0 and len(s.export_pairs()) == 0
    assert "hh" not in s.personas  # the persona registration rolled back too
    # the store still works, and a good file goes in whole
    f.write_text("\n".join(json.dumps(r) for r in _hh_rows(1000)) + "\n")
    assert import_hh(s, f, progress=False, batch_size=100)["votes"] == 2000
    s.close()
    assert main(["store", "import", "--db", str(tmp_path / "c.db"), "--file", str(tmp_path / "bad.jsonl")]) == 2
    assert "does not exist" in _one_error_line(capsys)


@pytest.mark.parametrize("line,expect", [
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": ', "line 3: malformed JSON"),
    ('[1, 2]', "line 3: expected a JSON object"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', "line 3, field 'rejected': missing"),
    ('{"chosen": 7, "rejected": "x"}', "line 3, field 'chosen': must be a string, got int"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: c\\n\\nAssistant: d"}',
     "line 3, field 'rejected': its prompt"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant:   ", "rejected": "\\n\\nHuman: a\\n\\nAssistant: d"}',
     "line 3, field 'chosen': refused by rule 'response is not empty'"),
    ('{"chosen": ' + "1" * 5000 + "}", "line 3: a JSON integer of 5000 digits"),
    (b'{"chosen": "\xff"}', "line 3: not UTF-8"),
])
def test_hh_errors_name_the_1_based_line_and_field(tmp_path, capsys, line, expect):
    good = "\n".join(json.dumps(r) for r in _hh_rows(2)).encode()
    f = tmp_path / "hh.jsonl"
    f.write_bytes(good + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    db = tmp_path / "s.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f)]) == 2
    assert expect in _one_error_line(capsys)
    with PreferenceStore(db, readonly=True) as s:
        assert s.count_votes() == 0


def test_hh_limit_and_labels_are_checked(tmp_path, capsys):
    f = tmp_path / "hh.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in _hh_rows(5)))
    db = str(tmp_path / "s.db")
    for bad in (["--limit", "-5"], ["--limit", "0"], ["--limit", "x"], ["--chosen-label", "nope"],
                ["--rejected-label", "17"]):
        assert main(["store", "import", "--db", db, "--file", str(f), *bad]) == 2, bad
        _one_error_line(capsys)
    assert main(["store", "import", "--db", db, "--file", str(f), "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2


# ---------------------------------------------------------------- finding 3: corrupt stores


def _corrupt(path, n_pages=20, seed=0):
    size = os.path.getsize(path)
    pages = size // 4096
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        for p in rng.choice(np.arange(1, pages), size=min(n_pages, pages - 1), replace=False):
            f.seek(int(p) * 4096)
            f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def corrupt_db(tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    db = d / "s.db"
    s = PreferenceStore(db)
    s.add_votes([{"vote_id": f"v{i}", "prompt": f"Q: {i % 400} ?\nA:", "response": f" r {i} " * 8,
                  "persona": "ceo", "label": i % 6} for i in range(4000)])
    s.close()  # checkpoints the WAL into the file
    assert os.path.getsize(db) > 400_000
    _corrupt(db)
    return db


@pytest.mark.parametrize("cmd", [["stats"], ["export", "--out", "OUT.jsonl"], ["simulate", "--n", "5"],
                                 ["import", "--file", "HH"], ["init"], ["reconfigure", "store.prior=2"]])
def test_finding3_corrupt_store_is_refused_before_any_write(corrupt_db, tmp_path, capsys, cmd):
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps(_hh_rows(1)[0]))
    cmd = [str(hh) if c == "HH" else str(tmp_path / c) if c == "OUT.jsonl" else c for c in cmd]
    before = _sha(corrupt_db)
    assert main(["store", cmd[0], "--db", str(corrupt_db), *cmd[1:]]) == 2
    line = _one_error_line(capsys)
    assert str(corrupt_db) in line and "corrupt" in line
    assert _sha(corrupt_db) == before
    assert not (tmp_path / "OUT.jsonl").exists()


def test_not_a_store_and_not_sqlite(tmp_path, capsys):
    text = tmp_path / "notes.db"
    text.write_text("hello, I am not a database\n" * 200)
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    for db in (text, other):
        for cmd in ("stats", "init"):
            before = _sha(db)
            assert main(["store", cmd, "--db", str(db)]) == 2
            assert str(db) in _one_error_line(capsys)
            assert _sha(db) == before


# ---------------------------------------------------------------- finding 7: loose input (store side)


def test_finding7_read_commands_never_create_a_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cmd in (["stats"], ["export", "--out", "x.jsonl"]):
        assert main(["store", *cmd, "--db", "typo/x.db"]) == 2
        assert "does not exist" in _one_error_line(capsys)
    assert main(["store", "stats"]) == 2  # the default <run_dir>/store.db
    _one_error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == []  # old code: typo/x.db and runs/demo/store.db created


def _without_root_powers():
    """In the child: drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the bounding set, so that
    even root is bound by file modes (the tests run as root in CI containers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]]))
    return subprocess.run([sys.executable, "-m", "raydprm.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, preexec_fn=_without_root_powers if os.geteuid() == 0 else None)


@pytest.fixture
def readonly_store(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    s = PreferenceStore(d / "s.db", half_life_s=60.0)
    s.add_votes(_votes(10))
    s.close()
    (d / "s.db").chmod(0o444)
    d.chmod(0o555)
    try:
        probe = subprocess.run(["sh", "-c", f"touch {d}/probe"], preexec_fn=_without_root_powers
                               if os.geteuid() == 0 else None, capture_output=True)
    except OSError as e:
        pytest.skip(f"cannot drop root's file powers here: {e}")
    if probe.returncode == 0:
        pytest.skip("file modes are not enforced here (no read-only directory possible)")
    yield d / "s.db"
    d.chmod(0o755)


def test_finding7_store_in_a_read_only_directory_is_readable(readonly_store, tmp_path):
    before = sorted(os.listdir(readonly_store.parent))
    out = _cli("store", "stats", "--db", str(readonly_store))
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["votes"] == 10 and st["half_life_s"] == 60.0 and st["readonly"] is True
    out = _cli("store", "export", "--db", str(readonly_store), "--out", str(tmp_path / "e.jsonl"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "e.jsonl").read_text().count("\n") == 5
    assert sorted(os.listdir(readonly_store.parent)) == before


@pytest.mark.parametrize("cmd", [["simulate", "--n", "3"], ["init"], ["import", "--file", "HH"]])
def test_writing_to_a_read_only_store_is_one_line(readonly_store, tmp_path, cmd):
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps(_hh_rows(1)[0]))
    cmd = [str(hh) if c == "HH" else c for c in cmd]
    out = _cli("store", cmd[0], "--db", str(readonly_store), *cmd[1:])
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "crowd votes" not in ln]
    assert len(lines) == 1 and lines[0].startswith("raydprm: error:") and "read-only" in lines[0], out.stderr


def test_store_init_under_a_read_only_directory_or_a_file(readonly_store, tmp_path, capsys):
    out = _cli("store", "init", "--db", str(readonly_store.parent / "new" / "s.db"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Permission denied" in out.stderr, out.stderr
    (tmp_path / "file").write_text("x")
    assert main(["store", "init", "--db", str(tmp_path / "file" / "s.db")]) == 2
    assert "is a regular file" in _one_error_line(capsys)
