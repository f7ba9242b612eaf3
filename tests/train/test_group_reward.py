"""Group-conditioned reward training: two rater groups that disagree in direction; the model
learns each group's labels (which a population DPRM cannot), per-group held-out fit, the
groups' vote shares as the default population, and the refusals."""

import numpy as np
import pytest
import torch

from raydprm.config import RewardConfig
from raydprm.core.label_scale import LabelScale
from raydprm.errors import ConfigError, RaydprmError
from raydprm.train.reward import GroupObjective, objective_for, train_reward
from raydprm.train.reward_data import examples_from_records
from raydprm.train.reward_metrics import group_fit

SCALE = LabelScale(("safe", "unsure", "unsafe"), (1.0, 0.0, -1.0))


def polarized_records(n=48, seed=0):
    """'blunt' answers: group a votes safe, group b unsafe; 'soft' answers the other way round;
    a has twice b's votes (the majority)."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        kind = ("blunt", "soft")[i % 2]
        a, b = ([6, 0, 0], [0, 0, 3]) if kind == "blunt" else ([0, 1, 5], [3, 0, 0])
        words = " ".join(rng.choice(["the", "a", "cat", "dog", "run"], size=3))
        tot = np.asarray(a, float) + np.asarray(b, float)
        recs.append({"item_id": f"it{i}", "prompt": f"Q: item {i} ?\nA:", "response": f" {words} {kind} .",
                     "target": (tot / tot.sum()).tolist(), "persona_counts": {"a": a, "b": b, "silent": [0, 0, 0]}})
    return recs


def test_group_dprm_learns_each_groups_labels(tiny_kit, tmp_path):
    ex = examples_from_records(polarized_records(), 3)
    cfg = RewardConfig(loss="ot", cost="reward_gap", conditioning="group", lr=1e-2, epochs=10, batch_size=16,
                       patience=0, eval_fraction=0.25)
    res = train_reward(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=tmp_path, progress=False)
    m, best = res.model, res.best_metrics
    assert m.kind == "group_dprm" and m.groups == ["a", "b"]  # a group without votes gets no head
    assert m.group_weights == pytest.approx([2 / 3, 1 / 3], abs=0.02)  # the vote shares (a: 6 per item, b: 3)
    out = m.score([" x", " x"], [" the cat blunt .", " the dog soft ."])
    ge = out.group_expected  # (2, G) each group's E[r]; the posterior targets' (prior 1) are +-0.5..0.67
    assert ge[0, 0] > 0.3 and ge[0, 1] < -0.3  # blunt: a safe, b unsafe
    assert ge[1, 0] < -0.3 and ge[1, 1] > 0.3  # soft: the other way round
    # per-group held-out fit, every metric, every group; the selection score
    assert set(best["persona"]) == {"a", "b"}
    for g in ("a", "b"):
        assert set(best["persona"][g]) >= {"ot_distance", "w1", "ce", "ece", "er_error", "items"}
        # against the raw vote frequencies; the targets are the posteriors (prior 1), ~0.35-0.45 from them
        assert best["persona"][g]["ot_distance"] < 0.6
    assert best["group_ot_distance"] < 0.6
    # a population DPRM on the same data fits neither group (one prediction for both)
    pop = train_reward(ex, scale=SCALE, reward_cfg=RewardConfig(loss="ot", lr=1e-2, epochs=10, batch_size=16,
                                                                 patience=0, eval_fraction=0.25),
                       backbone="tiny-opt", out_dir=None, progress=False).best_metrics
    assert pop["persona"]["b"]["ot_distance"] > 1.5 * best["persona"]["b"]["ot_distance"]


def test_group_fit_matches_hand_computation():
    counts = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]])  # (G, N, L)
    mu = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)  # one prediction (N, L)
    cost = SCALE.reward_tensor()[:, None].sub(SCALE.reward_tensor()[None]).abs()
    fit = group_fit(mu, ["a", "b"], counts, SCALE.reward_tensor(), cost, cost)
    assert fit["a"]["items"] == 1 and fit["b"]["items"] == 2
    assert fit["a"]["ot_distance"] == pytest.approx(0.5)  # half the mass one reward unit away
    assert fit["a"]["ce"] == pytest.approx(-np.log(0.5))
    # b: item 0 all mass moves from {safe, unsure} to unsafe: 0.5 * 2 + 0.5 * 1; item 1 vs [.5, 0, .5]:
    # CDFs [.2, .5] vs [.5, .5], one reward unit apart: 0.3
    assert fit["b"]["ot_distance"] == pytest.approx((1.5 + 0.3) / 2)


def test_group_objective_refusals():
    with pytest.raises(ConfigError, match="reward.conditioning = 'group'"):
        RewardConfig(objective="worst_group")
    with pytest.raises(ConfigError, match="distributional"):
        RewardConfig(loss="bt", conditioning="group")
    assert objective_for(RewardConfig(conditioning="group")) is GroupObjective
    recs = [{k: v for k, v in r.items() if k != "persona_counts"} for r in polarized_records(8)]
    with pytest.raises(RaydprmError, match="per-group vote counts"):
        train_reward(examples_from_records(recs, 3), scale=SCALE, reward_cfg=RewardConfig(conditioning="group"),
                     backbone="tiny-opt", out_dir=None, progress=False)


@pytest.mark.parametrize("loss", ["wasserstein", "ce"])
def test_group_dprm_trains_with_the_comparison_losses(tiny_kit, loss):
    ex = examples_from_records(polarized_records(16), 3)
    cfg = RewardConfig(loss=loss, conditioning="group", lr=1e-2, epochs=2, batch_size=8, patience=0)
    res = train_reward(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=None, progress=False)
    assert res.model.kind == "group_dprm" and res.steps == 4
    assert res.best_metrics["group_ot_distance"] <= res.history[0]["eval"]["group_ot_distance"] + 1e-9
