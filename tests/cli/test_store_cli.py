"""`raydprm store init|stats|import|export|simulate` end to end (in-process main())."""

import json

import datasets

from raydprm.cli import main
from raydprm.store import PreferenceStore


def test_store_cli_roundtrip(tmp_path, capsys):
    db = str(tmp_path / "s.db")
    assert main(["store", "init", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["votes"] == 0
    assert main(["store", "simulate", "--db", db, "--n", "30", "--votes-per-item", "5",
                 "--mixture", "teenager=3,ceo=1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["votes_added"] == 150 and out["mixture"]["teenager"] == 0.75
    # simulate again with the same seed: idempotent (deterministic vote ids)
    assert main(["store", "simulate", "--db", db, "--n", "30", "--votes-per-item", "5",
                 "--mixture", "teenager=3,ceo=1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["duplicates"] == 150
    assert main(["store", "stats", "--db", db]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["votes"] == 150 and st["votes_per_persona"]["artist"] == 0
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"}))
    assert main(["store", "import", "--db", db, "--file", str(hh)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["votes"] == 2
    out_dir = tmp_path / "export"
    assert main(["store", "export", "--db", db, "--out", str(out_dir), "--mixture", "teenager=1",
                 "--smoothing", "0.05"]) == 0
    ds = datasets.load_from_disk(str(out_dir))
    assert len(ds) == 32 and abs(sum(ds[0]["target"]) - 1) < 1e-9
    assert main(["store", "export", "--db", db, "--out", str(tmp_path / "pairs.jsonl"), "--pairs"]) == 0
    assert (tmp_path / "pairs.jsonl").read_text().count("\n") == 1
    assert PreferenceStore(db).count_votes() == 152


def test_store_cli_errors_are_one_line(tmp_path, capsys):
    db = str(tmp_path / "s.db")
    assert main(["store", "simulate", "--db", db, "--n", "2", "--mixture", "pirate=1"]) == 2
    assert "unknown personas ['pirate']" in capsys.readouterr().err
    assert main(["store", "import", "--db", db, "--file", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["store", "simulate", "--db", db, "--n", "0"]) == 2
    assert main(["store", "init", "--db", db, "store.synchronous=OFF"]) == 2
    assert "store.synchronous" in capsys.readouterr().err
