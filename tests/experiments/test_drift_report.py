"""`raydprm experiments drift`: the report judges every policy under the new and the old crowd
(the first test without Ray, from given samples; the last runs the quick experiment on Ray;
the drift mechanics themselves are tests/cluster/test_drift.py)."""

import json

import numpy as np
import pytest

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


@pytest.mark.slow
@pytest.mark.ray
def test_quick_experiment_runs_both_arms_on_ray_and_judges_them_under_both_crowds(tmp_path, capsys):
    """The whole experiment at --quick sizes: one SFT/store/reward model, PPO with and without
    refresh, held-out samples of the three policies judged by the new and the old crowd."""
    from raydprm.cli import main

    out = tmp_path / "drift"
    assert main(["experiments", "drift", "--quick", "--no-progress", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    rep = json.loads((out / "drift_report.json").read_text())
    for crowd in ("new_mixture", "old_mixture"):
        assert set(rep[crowd]["policies"]) == {"vanilla", "refresh_on", "refresh_off"}
        assert rep[crowd]["policies"]["vanilla"]["kl"] == 0.0
        assert rep[crowd]["policies"]["refresh_on"]["kl"] != 0.0  # the tuned policies' KL to the SFT one
    on, off = rep["curves"]["refresh_on"], rep["curves"]["refresh_off"]
    assert sum(r["drift/refreshed"] for r in on) == len(rep["refreshes"]) >= 1
    assert sum(r["drift/refreshed"] for r in off) == 0
    assert on[0] == off[0]  # the same start: the arms differ from the first refresh on
    assert all((out / f).is_file() for f in ("drift_report.md", "drift_reward.png"))
