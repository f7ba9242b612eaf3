"""`raydprm experiments drift`: the report judges every policy under the new and the old crowd
(no Ray here: the samples are given; the runs themselves are tests/cluster/test_drift.py)."""

import json

import numpy as np

from raydprm.config import load_config
from raydprm.experiments import drift
from raydprm.sim.personas import Population, load_personas, simulated_items


def test_report_judges_under_both_crowds_and_writes_its_files(tmp_path):
    cfg = load_config(None, [*drift.DRIFT, *drift.QUICK, "pipeline.bootstrap=100"])
    items = simulated_items(12, seed=5)
    prompts = [p for p, _ in items]
    good = [r for _, r in items]
    short = ["ok"] * len(items)
    ev = {"prompts": prompts, "texts": {"vanilla": [short, short], "refresh_off": [short, good],
                                        "refresh_on": [good, good]},
          "kl": {n: np.zeros((2, len(items))) for n in ("vanilla", "refresh_off", "refresh_on")}}
    hist = [{"step": t, "reward/mean": 0.1 * t, "drift/judged_new": -0.1 * t, "drift/judged_old": 0.0,
             "drift/refreshed": float(t % 2 == 0)} for t in range(1, 7)]
    rep = drift._report(cfg, ev, {"refresh_on": hist, "refresh_off": hist}, tmp_path)
    drift._write(rep, tmp_path)
    new = Population(load_personas(), cfg.pipeline.drift_mixture)
    rewards = np.asarray(cfg.labels.rewards)
    for name, texts in ev["texts"].items():
        # E[r] under the new crowd = mean over seeds and prompts of its exact distribution . rewards (Eq. P1)
        want = np.mean([new.true_distributions(prompts, t) @ rewards for t in texts])
        assert abs(rep["new_mixture"]["policies"][name]["expected_reward"] - want) < 1e-9
    assert rep["new_mixture"]["policies"]["refresh_on"]["expected_reward"] != \
        rep["old_mixture"]["policies"]["refresh_on"]["expected_reward"]
    assert set(rep["new_mixture"]["head_to_head"]) == {"refresh_on_vs_refresh_off", "refresh_on_vs_vanilla",
                                                       "refresh_off_vs_vanilla"}
    d = rep["new_mixture"]["head_to_head"]["refresh_on_vs_refresh_off"]["expected_reward_diff"]["mean"]
    pol = rep["new_mixture"]["policies"]
    assert abs(d - (pol["refresh_on"]["expected_reward"] - pol["refresh_off"]["expected_reward"])) < 1e-9
    assert rep["setup"]["drift_step"] == 3 and rep["setup"]["drift_mixture"] == {"scientist": 1.0, "artist": 1.0}
    assert [r["step"] for r in rep["curves"]["refresh_on"]] == list(range(1, 7))
    assert json.loads((tmp_path / "drift_report.json").read_text())["setup"] == rep["setup"]
    md = (tmp_path / "drift_report.md").read_text()
    assert "refresh_on_vs_refresh_off" in md and (tmp_path / "drift_reward.png").stat().st_size > 1000
