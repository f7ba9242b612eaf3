"""bench/store.py's per-rater import benchmark runs at a smoke size and reports both sides."""

import importlib.util
from pathlib import Path


def test_import_bench_smoke(tmp_path, capsys):
    path = Path(__file__).resolve().parents[2] / "bench" / "store.py"
    spec = importlib.util.spec_from_file_location("bench_store_import", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    im = mod.import_bench(tmp_path, 2000, 1, 1000)
    assert im["rows"] == 2000 and im["importer_rows_per_s"] > 0 and im["baseline_rows_per_s"] > 0
    assert 0 < im["importer_peak_rss_mib"] < 1024 and im["ratio"] > 0
    assert '"kind": "importer"' in capsys.readouterr().out
