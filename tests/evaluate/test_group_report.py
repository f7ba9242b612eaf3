"""Per-group evaluation: each group's E[r] with its interval and label shares, the worst group
(= the minimum of the per-group values), the disparity, the distance to each group's own labels,
report.md/png's group tables, and a learned judge's per-group verdicts."""

import json

import numpy as np
import pytest
import torch

from raydprm.evaluate.judge import Judged, judge_with_model
from raydprm.evaluate.report import build_report, group_summary, reward_w1, write_report

NAMES = ("safe", "unsure", "unsafe")
R = (1.0, 0.0, -1.0)


def _judged(rng, S, N, lean):
    """Two groups: 'maj' sees mostly safe, 'min' leans by ``lean`` towards unsafe."""
    maj = rng.dirichlet((8, 1, 1), size=(S, N))
    mino = rng.dirichlet((1, 1, 1 + lean), size=(S, N))
    gd = {"maj": maj, "min": mino}
    dist = 0.75 * maj + 0.25 * mino
    r = np.asarray(R)
    return Judged(dist=dist, persona_reward={g: d @ r for g, d in gd.items()}, reward=dist @ r,
                  kl=np.zeros((S, N)), group_dist=gd)


def test_reward_w1_closed_forms():
    assert reward_w1([1, 0, 0], [0, 0, 1], R) == pytest.approx(2.0)  # all mass two reward units away
    assert reward_w1([0.5, 0.5, 0], [0.5, 0, 0.5], R) == pytest.approx(0.5)
    assert reward_w1([0.2, 0.3, 0.5], [0.2, 0.3, 0.5], R) == 0.0
    assert reward_w1([0, 0, 1], [1, 0, 0], (-1.0, 0.0, 1.0)) == pytest.approx(2.0)  # any order of rewards


def test_group_report_worst_group_disparity_intervals_and_tables(tmp_path):
    rng = np.random.default_rng(0)
    judged = {"vanilla": _judged(rng, 2, 40, lean=6), "dprm_ot": _judged(rng, 2, 40, lean=1)}
    ref = {"maj": [0.8, 0.1, 0.1], "min": [0.2, 0.2, 0.6]}
    rep = build_report(judged, R, n_boot=200, group_reference=ref)
    for name, j in judged.items():
        p = rep["policies"][name]
        per = {g: e["expected_reward"] for g, e in p["groups"].items()}
        assert per == pytest.approx({g: float(j.persona_reward[g].mean()) for g in ("maj", "min")})
        assert p["worst_group"]["expected_reward"] == min(per.values())
        assert p["worst_group"]["group"] == min(per, key=per.get) == "min"
        assert p["disparity"] == pytest.approx(max(per.values()) - min(per.values()))
        for g, e in p["groups"].items():
            lo, hi = e["ci"]
            assert lo <= e["expected_reward"] <= hi
            assert sum(e["label_pct"]) == pytest.approx(100.0)
            assert e["label_pct"] == pytest.approx(list(100 * j.group_dist[g].reshape(-1, 3).mean(0)))
            assert e["distance"] == pytest.approx(reward_w1(e["label_pct"], ref[g], R))
        assert p["disparity_ci95"][0] <= p["disparity"] <= p["disparity_ci95"][1]
    # the minority leans less to unsafe under dprm_ot: its worst group is better off, the gap smaller
    assert rep["policies"]["dprm_ot"]["disparity"] < rep["policies"]["vanilla"]["disparity"]
    assert set(rep["head_to_head"]["dprm_ot_vs_vanilla"]["per_persona"]) == {"maj", "min"}  # per-group head to head
    write_report(rep, tmp_path, NAMES)
    md = (tmp_path / "report.md").read_text()
    assert "worst group E[r]" in md and "disparity" in md and "## E[r] per rater group" in md
    assert "| safe | unsure | unsafe |" in md  # the scale's own label names
    assert json.loads((tmp_path / "report.json").read_text())["policies"]["vanilla"]["worst_group"]["group"] == "min"
    assert (tmp_path / "report.png").stat().st_size > 0
    # without per-group verdicts there is nothing per group
    assert group_summary(Judged(dist=np.ones((1, 2, 3)) / 3, persona_reward={}, reward=np.zeros((1, 2)),
                                kl=np.zeros((1, 2))), R) == {}


def test_learned_judge_gives_each_groups_verdict(tiny_kit):
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.dprm import GroupDPRM

    scale = LabelScale(NAMES, R)
    m = GroupDPRM.from_backbone("tiny-opt", scale, max_length=64, groups=["a", "b"], group_weights=[1, 1])
    with torch.no_grad():
        m.head.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 3.0]))
    prompts = ["Q: one ?\nA:", "Q: two ?\nA:"]
    resp = [[" yes .", " no ."], [" maybe .", " sure ."]]  # (S = 2 seeds, N = 2 prompts)
    j = judge_with_model(m, prompts, resp)
    assert j.dist.shape == (2, 2, 3) and set(j.group_dist) == {"a", "b"}
    out = m.score(prompts, resp[1])
    assert j.group_dist["b"][1] == pytest.approx(out.group_distribution[:, 1].double().numpy(), abs=1e-6)
    assert j.reward == pytest.approx(j.dist @ np.asarray(R))
    assert np.all(j.persona_reward["a"] > j.persona_reward["b"])  # a's head leans safe, b's unsafe
