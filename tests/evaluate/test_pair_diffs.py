"""Each pair's worst-group and disparity differences (paired bootstrap, the worst group recomputed
inside every resample) and a comparison's pairs among all policies, on hand-made verdicts."""

import numpy as np
import pytest

from raydprm.evaluate.judge import Judged
from raydprm.evaluate.report import build_report, pair_group_diffs, write_report

R = (1.0, 0.0, -1.0)


def _judged(per_group: dict[str, np.ndarray]) -> Judged:
    """Verdicts whose per-group E[r] is given, (S, N) each; the population is the groups' mean."""
    S, N = next(iter(per_group.values())).shape
    reward = np.mean(list(per_group.values()), 0)
    return Judged(dist=np.full((S, N, 3), 1 / 3), persona_reward=dict(per_group), reward=reward,
                  kl=np.zeros((S, N)))


def _const(S, N, **vals):
    return _judged({g: np.full((S, N), v) for g, v in vals.items()})


def test_constant_verdicts_give_the_exact_differences_with_zero_width_intervals():
    a, b = _const(2, 10, maj=0.5, mino=-0.2), _const(2, 10, maj=0.3, mino=0.1)
    d = pair_group_diffs(a, b, n_boot=100)
    # worst: -0.2 vs 0.1; disparity: 0.7 vs 0.2
    assert d["worst_group_diff"]["mean"] == pytest.approx(-0.3)
    assert d["worst_group_diff"]["ci95"] == pytest.approx([-0.3, -0.3])
    assert d["disparity_diff"]["mean"] == pytest.approx(0.5)
    assert d["disparity_diff"]["ci95"] == pytest.approx([0.5, 0.5])


def test_the_resampling_is_paired():
    """b = a + 0.1 in every group and sample: every paired resample gives exactly +0.1 for the worst
    group and 0 for the disparity, however noisy a is (an unpaired one would not)."""
    rng = np.random.default_rng(0)
    a = _judged({g: rng.normal(m, 1.0, (4, 30)) for g, m in (("x", 0.0), ("y", 0.5), ("z", 1.0))})
    b = _judged({g: v + 0.1 for g, v in a.persona_reward.items()})
    d = pair_group_diffs(b, a, n_boot=200, groups=[0, 0, 1, 1])
    assert d["worst_group_diff"]["mean"] == pytest.approx(0.1)
    assert d["worst_group_diff"]["ci95"] == pytest.approx([0.1, 0.1])
    assert d["disparity_diff"]["ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_worst_group_is_recomputed_inside_each_resample_of_whole_seeds():
    """a's worst group switches with the training seed (seed 0: g1 = 0, g2 = 1; seed 1: the reverse).
    Over both seeds each group's mean is 0.5, so a's worst group E[r] is 0.5 and its disparity 0; a
    resample of one seed twice has worst group 0 and disparity 1. Against b = 0 everywhere the
    resampled differences take only those values: intervals [0, 0.5] and [0, 1], not resolved."""
    S, N = 4, 6
    seed0 = np.array([1, 1, 0, 0], dtype=float)[:, None] * np.ones((S, N))  # rows 0, 1: training seed 0
    a = _judged({"g1": 1.0 - seed0, "g2": seed0})
    b = _const(S, N, g1=0.0, g2=0.0)
    d = pair_group_diffs(a, b, n_boot=400, groups=[0, 0, 1, 1])
    assert d["worst_group_diff"]["mean"] == pytest.approx(0.5)  # not the mean of per-sample minima (0)
    assert d["worst_group_diff"]["ci95"] == pytest.approx([0.0, 0.5])
    assert d["disparity_diff"]["mean"] == pytest.approx(0.0)
    assert d["disparity_diff"]["ci95"] == pytest.approx([0.0, 1.0])
    # without per-group verdicts (or with different groups) there is nothing to compare
    none = Judged(dist=np.full((S, N, 3), 1 / 3), persona_reward={}, reward=np.zeros((S, N)), kl=np.zeros((S, N)))
    assert pair_group_diffs(none, none) == {} and pair_group_diffs(a, _const(S, N, g1=0.0, g3=0.0)) == {}


def test_report_pairs_among_all_policies_and_the_comparison_table(tmp_path):
    S, N = 4, 8
    judged = {"vanilla": _const(S, N, maj=0.0, mino=-0.5), "bt": _const(S, N, maj=0.6, mino=-0.4),
              "dprm_ot": _const(S, N, maj=0.5, mino=-0.3), "dprm_ot_wg": _const(S, N, maj=0.3, mino=0.1)}
    groups = [0, 0, 1, 1]
    base = build_report(judged, R, n_boot=100, seed_groups=groups)
    rep = build_report(judged, R, n_boot=100, seed_groups=groups, all_pairs=True, group_diffs=True)
    # the refs' pairs keep their keys and values; every other pair comes once
    pairs = {f"{a}_vs_{b}" for i, a in enumerate(judged) for b in list(judged)[:i]}
    assert set(rep["head_to_head"]) == pairs and set(base["head_to_head"]) < pairs
    for k, h in base["head_to_head"].items():
        assert {x: rep["head_to_head"][k][x] for x in h} == h
    h = rep["head_to_head"]["dprm_ot_wg_vs_dprm_ot"]
    assert h["expected_reward_diff"]["mean"] == pytest.approx(0.2 - 0.1)
    pol = rep["policies"]
    for k, h in rep["head_to_head"].items():
        a, b = k.split("_vs_")
        want = pol[a]["worst_group"]["expected_reward"] - pol[b]["worst_group"]["expected_reward"]
        assert h["worst_group_diff"]["mean"] == pytest.approx(want)
        assert h["disparity_diff"]["mean"] == pytest.approx(pol[a]["disparity"] - pol[b]["disparity"])
    assert h["worst_group_diff"]["ci95"] == pytest.approx([0.4, 0.4])  # dprm_ot_wg: 0.1 vs -0.3
    assert rep["head_to_head"]["dprm_ot_wg_vs_dprm_ot"]["disparity_diff"]["ci95"] == pytest.approx([-0.6, -0.6])
    write_report(rep, tmp_path, ("safe", "unsure", "unsafe"))
    md = (tmp_path / "report.md").read_text()
    assert "| worst-group E[r] difference (95% CI) | resolved | disparity difference (95% CI) | resolved |" in md
    assert "| dprm_ot_wg_vs_dprm_ot | +0.100 [0.100, 0.100] | yes | +0.400 [0.400, 0.400] | yes | " \
           "-0.600 [-0.600, -0.600] | yes |" in md
