"""The reward trainer's registries: every configurable loss has exactly one objective, the
pairwise one is the Bradley-Terry loss of the core registry, and evaluation dispatches on
the model kind."""

import dataclasses
import math

import pytest
import torch

from raydprm.config import RewardConfig
from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.models.reward_models import REWARD_MODELS
from raydprm.train.reward import (
    DISTRIBUTIONAL_LOSSES,
    LOSSES,
    REWARD_OBJECTIVES,
    DistributionalObjective,
    GroupObjective,
    PairwiseObjective,
    evaluate_reward_model,
    make_loss,
    objective_for,
)
from raydprm.train.reward_data import PairExamples, examples_from_records

SCALE = LabelScale.hh()


def test_config_choices_are_the_registered_losses():
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(RewardConfig)}["loss"]
    assert set(choices) == set(LOSSES) == set(REWARD_OBJECTIVES)
    assert set(DISTRIBUTIONAL_LOSSES) == {k for k, o in REWARD_OBJECTIVES.items() if o is DistributionalObjective}
    assert REWARD_OBJECTIVES["bt"] is PairwiseObjective
    # each reward-model kind is trained by an objective: the losses' ones, plus the group DPRM's
    # (reward.conditioning=group on a distributional loss)
    assert {o.kind for o in REWARD_OBJECTIVES.values()} | {GroupObjective.kind} == set(REWARD_MODELS)
    assert objective_for(RewardConfig(loss="ot", conditioning="group")) is GroupObjective


def test_make_loss_refuses_a_pairwise_name():
    with pytest.raises(RaydprmError, match="not a distributional loss"):
        make_loss(RewardConfig(loss="bt"), SCALE)


def test_distributional_losses_are_zero_on_their_target_and_positive_elsewhere():
    t = torch.softmax(torch.randn(4, 6, dtype=torch.float64), -1)
    far = torch.zeros(4, 6, dtype=torch.float64)
    far[:, -1] = 1.0
    for name in ("ot", "wasserstein"):
        fn = make_loss(RewardConfig(loss=name), SCALE)
        assert float(fn(torch.log(t), t)) < 1e-6, name  # OT(mu, mu) = 0
        assert float(fn(torch.log(t), far)) > 0.1, name
    ce = make_loss(RewardConfig(loss="ce"), SCALE)
    entropy = float(-(t * t.log()).sum(-1).mean())
    assert math.isclose(float(ce(torch.log(t), t)), entropy, rel_tol=1e-6)  # CE(t, t) = H(t)


class _FixedScores:
    """A stand-in BT model: the score of a response is a number written in it."""

    kind = "bt"

    def score(self, prompts, responses, batch_size=64):
        return torch.tensor([float(r) for r in responses])


def test_pairwise_metrics_are_the_bt_likelihood_and_accuracy():
    recs = [{"prompt": "p", "response": str(v), "target": [1.0, 0, 0, 0, 0, 0] if v > 0 else [0, 0, 0, 0, 0, 1.0]}
            for v in (2.0, 1.0, -1.0, -2.0)]
    data = examples_from_records(recs, 6)
    pairs = PairExamples(["p"] * 3, ["2.0", "1.0", "-2.0"], ["p"] * 3, ["1.0", "-1.0", "-1.0"])
    m = evaluate_reward_model(_FixedScores(), data, SCALE, None, pairs)
    d = torch.tensor([1.0, 2.0, -1.0])  # s_c - s_r
    assert math.isclose(m["bt_loss"], float(-torch.nn.functional.logsigmoid(d).mean()), rel_tol=1e-6)
    assert math.isclose(m["pair_accuracy"], 2 / 3)
    assert m["rank_corr"] > 0.8  # the scores order the items like their expected rewards
    assert PairwiseObjective.selection(m) == m["bt_loss"]


def test_config_conversion_and_result_roundtrip(tmp_path):
    from raydprm.config import Config
    from raydprm.train.reward import RewardTrainResult, train_reward_kwargs

    cfg = Config().override(["models.dtype=bfloat16", "models.cache_dir=/kit", "run.seed=7", "reward.loss=bt"])
    kw = train_reward_kwargs(cfg, tmp_path, progress=False)
    assert kw["scale"] == LabelScale.from_config(cfg.labels) and kw["scale"].same_labels(SCALE)
    assert (kw["reward_cfg"].loss, kw["seed"], kw["dtype"], kw["cache_dir"]) == ("bt", 7, "bfloat16", "/kit")
    assert kw["backbone"] == cfg.models.reward_backbone and kw["out_dir"] == tmp_path
    res = RewardTrainResult(best_dir=tmp_path / "best", last_dir=None, best_metrics={"ot_distance": 0.5},
                            history=[{"step": 1}], steps=3, epochs=1, stopped_early=True, seconds=1.5)
    assert RewardTrainResult.from_dict(res.to_dict()).to_dict() == res.to_dict()
