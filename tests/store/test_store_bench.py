"""bench/store.py runs in smoke mode and reports a ratio for both synchronous modes."""

import importlib.util
from pathlib import Path


def test_store_bench_smoke(capsys):
    path = Path(__file__).resolve().parents[2] / "bench" / "store.py"
    spec = importlib.util.spec_from_file_location("bench_store", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = mod.main(["--smoke"])
    for sync in ("NORMAL", "FULL"):
        m = summary["modes"][sync]
        assert m["raw_votes_per_s"] > 0 and m["store_votes_per_s"] > 0 and m["ratio"] > 0
    assert summary["distribution_queries_per_s"]["pooled"] > 0
    assert "ratio" in capsys.readouterr().out
