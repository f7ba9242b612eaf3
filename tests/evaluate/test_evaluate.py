"""Evaluation package: bootstrap intervals, head to head, report.json's schema."""

import json

import numpy as np

from raydprm.config import HH_LABELS, HH_REWARDS
from raydprm.evaluate.judge import Judged, judge_samples
from raydprm.evaluate.report import build_report, write_report
from raydprm.evaluate.stats import bootstrap_ci, win_tie_loss


def _judged(rng, S, N, alpha=(1, 1, 1, 1, 1, 1)):
    dist = rng.dirichlet(alpha, size=(S, N))
    r = np.asarray(HH_REWARDS)
    persona = {p: dist @ r + 0.1 * rng.standard_normal((S, N)) for p in ("a", "b")}
    return Judged(dist=dist, persona_reward=persona, reward=dist @ r, kl=rng.random((S, N)))


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, size=(3, 20))
    big = rng.normal(1.0, 1.0, size=(3, 2000))
    lo_s, hi_s = bootstrap_ci(small, lambda x: x.mean(), n_boot=400)
    lo_b, hi_b = bootstrap_ci(big, lambda x: x.mean(), n_boot=400)
    assert lo_s < small.mean() < hi_s and lo_b < big.mean() < hi_b
    assert lo_b < 1.0 < hi_b  # the true mean
    assert (hi_b - lo_b) < (hi_s - lo_s) / 4  # ~1/sqrt(N): 10x more prompts, ~3-10x narrower


def test_win_tie_loss_sums_to_100_and_respects_the_margin():
    d = np.array([[0.2, -0.2, 0.01, -0.04, 0.06]])
    w = win_tie_loss(d, 0.05)
    assert w == {"win": 40.0, "tie": 40.0, "loss": 20.0}


def test_report_schema_and_expected_reward_from_label_shares(tmp_path):
    rng = np.random.default_rng(1)
    judged = {"vanilla": _judged(rng, 2, 30), "dprm_ot": _judged(rng, 2, 30, alpha=(8, 2, 1, 1, 1, 1))}
    rep = build_report(judged, HH_REWARDS, n_boot=200)
    for p in rep["policies"].values():
        assert len(p["label_pct"]) == 6 and abs(sum(p["label_pct"]) - 100) < 1e-9
        assert abs(p["expected_reward"] - np.dot(p["label_pct"], HH_REWARDS) / 100) < 1e-12
        assert p["seeds"] == 2 and isinstance(p["kl"], float)
        lo, hi = p["expected_reward_ci95"]
        assert lo <= p["expected_reward"] <= hi
    h = rep["head_to_head"]["dprm_ot_vs_vanilla"]
    assert set(h) == {"overall", "per_persona", "expected_reward_diff"} and set(h["per_persona"]) == {"a", "b"}
    d = h["expected_reward_diff"]
    want = judged["dprm_ot"].reward.mean() - judged["vanilla"].reward.mean()
    assert abs(d["mean"] - want) < 1e-12 and d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    o = h["overall"]
    assert abs(o["win"] + o["tie"] + o["loss"] - 100) < 1e-9
    assert o["win"] > 60 and o["ci95"]["win"][0] <= o["win"] <= o["ci95"]["win"][1]
    rep.update(stages={"sft": {"seconds": 1.0}}, restarts={"rollout": 0})
    write_report(rep, tmp_path, HH_LABELS)
    back = json.loads((tmp_path / "report.json").read_text())
    assert back["policies"]["dprm_ot"]["label_pct"] == rep["policies"]["dprm_ot"]["label_pct"]
    assert "| dprm_ot |" in (tmp_path / "report.md").read_text() and (tmp_path / "report.png").is_file()


def test_judge_samples_uses_the_population():
    from raydprm.sim.personas import Population
    from raydprm.sim.world import prompts

    pop = Population()
    ps = prompts(3, seed=0)
    j = judge_samples(pop, HH_REWARDS, ps, [["a helpful answer"] * 3, ["no"] * 3])
    assert j.dist.shape == (2, 3, 6) and np.allclose(j.dist.sum(-1), 1)
    assert np.allclose(j.reward, j.dist @ np.asarray(HH_REWARDS))
    assert set(j.persona_reward) == set(pop.names)


def test_grouped_bootstrap_resamples_whole_training_seeds():
    """Rows of one training seed move together: every resample is a union of whole groups, so a
    statistic that is constant within groups takes only the values of group mixtures."""
    x = np.repeat(np.array([[0.0], [1.0], [5.0]]), 2, axis=0) * np.ones((6, 10))  # 3 groups x 2 rows
    groups = [0, 0, 1, 1, 2, 2]
    seen = []
    bootstrap_ci(x, lambda a: seen.append(np.sort(a[:, 0])) or a.mean(), n_boot=200, groups=groups)
    for rows in seen:
        assert len(rows) == 6 and all(np.sum(rows == v) % 2 == 0 for v in (0.0, 1.0, 5.0))
    # between-seed spread widens the interval over the ungrouped (rows-independent) one
    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.1, (6, 40)) + np.repeat(rng.normal(0, 1.0, 3), 2)[:, None]
    lo_g, hi_g = bootstrap_ci(y, lambda a: a.mean(), n_boot=400, groups=groups)
    lo_u, hi_u = bootstrap_ci(y, lambda a: a.mean(), n_boot=400)
    assert hi_g - lo_g >= hi_u - lo_u


def test_report_of_a_comparison_has_per_seed_values_and_no_mirrored_pairs(tmp_path):
    rng = np.random.default_rng(2)
    judged = {n: _judged(rng, 4, 25, alpha=a) for n, a in
              (("vanilla", (1,) * 6), ("bt", (3, 2, 1, 1, 1, 1)), ("dprm_ot", (8, 2, 1, 1, 1, 1)))}
    groups = [0, 0, 1, 1]
    rep = build_report(judged, HH_REWARDS, n_boot=200, seed_groups=groups)
    assert set(rep["head_to_head"]) == {"bt_vs_vanilla", "dprm_ot_vs_vanilla", "dprm_ot_vs_bt"}
    for name, p in rep["policies"].items():
        assert p["seeds"] == 2 and p["samples_per_prompt"] == 4
        per = p["expected_reward_per_seed"]
        assert np.allclose(per, [judged[name].reward[:2].mean(), judged[name].reward[2:].mean()])
        assert abs(np.mean(per) - p["expected_reward"]) < 1e-9  # equal rows per seed
    rep.update(stages={"sft": {"seconds": 1.0}}, restarts={}, compare={"seeds": 2, "ppo_steps": 3, "align_steps": 3,
                                                                      "prompts": 25, "policies": list(judged)},
               curves={"bt": {"step": [1.0, 2.0], "reward/mean": [0.1, 0.2], "ppo/kl": [0.0, 0.1]}})
    write_report(rep, tmp_path, HH_LABELS)
    md = (tmp_path / "report.md").read_text()
    assert "E[r] per training seed" in md and "| dprm_ot_vs_bt |" in md and (tmp_path / "report.png").is_file()


def test_curves_average_seeds_step_by_step_over_the_steps_all_reached():
    from raydprm.evaluate.report import curves

    h = [[{"step": 1, "reward/mean": 0.0, "ppo/kl": 1.0}, {"step": 2, "reward/mean": 1.0, "ppo/kl": 3.0}],
         [{"step": 1, "reward/mean": 2.0, "ppo/kl": 1.0}]]
    assert curves({"bt": h, "none": [[]]}) == {"bt": {"step": [1.0], "reward/mean": [1.0], "ppo/kl": [1.0]}}
