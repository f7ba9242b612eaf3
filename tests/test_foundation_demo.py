"""The end-to-end demo runs every stage on local Ray and writes a reproducible run dir."""

import json

import pytest
import yaml

from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed]


def test_demo_smoke_end_to_end(tmp_path):
    from raydprm.cluster.demo import SMOKE_OVERRIDES, run_demo

    cfg = load_config(None, [*SMOKE_OVERRIDES, f"run.output_dir={tmp_path}", "run.name=smoke", "ray.num_cpus=4"])
    metrics = run_demo(cfg, progress=False)
    run_dir = tmp_path / "smoke"
    for f in ("config.yaml", "report.md", "metrics.json", "demo.png", "store.db"):
        assert (run_dir / f).is_file(), f
    # the saved config reproduces the run's config exactly
    assert load_config(run_dir / "config.yaml") == cfg
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["ppo"]["steps"] == 2
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["sft"]["final_loss"] < m["sft"]["first_loss"]
    assert m["store"]["votes"] == metrics["store"]["votes"] > 0
    assert len(m["ppo"]) == 2 and all("ppo/policy_loss" in r for r in m["ppo"])
    ev = m["eval"]
    for k in ("vanilla", "dprm_ot"):
        assert abs(sum(ev[k]["label_pct"]) - 100) < 1e-6
    assert set(ev["dprm_ot_vs_vanilla"]) == {"scientist", "teacher", "politician", "teenager", "ceo", "artist"}
    assert (run_dir / "policy" / "config.json").is_file()  # exported HF policy
    assert "Vanilla" in (run_dir / "report.md").read_text() or "vanilla" in (run_dir / "report.md").read_text()
