"""The reward actor's scalar readout under reward.objective (no Ray: the actor is a plain class):
population = the mixture's E[r]; worst_group leans on the worse-off group; the pool joins its
replicas' parts before estimating J on the whole batch."""

import numpy as np
import pytest
import torch

from raydprm.cluster.reward_actor import RewardActor, RewardPool, objective_rewards
from raydprm.config import RewardConfig
from raydprm.core.label_scale import LabelScale
from raydprm.models.dprm import GroupDPRM

SCALE = LabelScale(("safe", "unsure", "unsafe"), (1.0, 0.0, -1.0))
PROMPTS = ["Q: a ?\nA:", "Q: b ?\nA:", "Q: c ?\nA:", "Q: d ?\nA:"]
RESP = [" yes .", " no .", " maybe so .", " sure thing ."]


def test_objective_rewards_closed_forms():
    ge = np.array([[1.0, -1.0], [0.0, 0.0]])  # (B, G): J = (0.5, -0.5)
    pop = objective_rewards(ge, [0.5, 0.5], RewardConfig(), -1.0)
    assert pop == pytest.approx([0.0, 0.0])  # sum_g w_g r_g(x)
    hard = objective_rewards(ge, [0.5, 0.5], RewardConfig(conditioning="group", objective="worst_group",
                                                          objective_tau=0.0), -1.0)
    assert hard == pytest.approx([-1.0, 0.0])  # tau = 0: all weight on the worst group (MaxMin)
    soft = objective_rewards(ge, [0.5, 0.5], RewardConfig(conditioning="group", objective="worst_group",
                                                          objective_tau=1.0), -1.0)
    assert -1.0 < soft[0] < 0.0  # between the minimum and the mean


def test_reward_actor_scores_groups_and_scalarises_the_objective(tiny_kit, tmp_path):
    torch.manual_seed(0)
    m = GroupDPRM.from_backbone("tiny-opt", SCALE, max_length=64, groups=["a", "b"], group_weights=[1, 1])
    with torch.no_grad():
        m.head.bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0, 2.0]))
    m.save(tmp_path / "g")
    pop = RewardActor(str(tmp_path / "g"), SCALE, RewardConfig(conditioning="group")).score(PROMPTS, RESP)
    assert pop["group_expected"].shape == (4, 2) and pop["groups"] == ["a", "b"]
    assert pop["reward"] == pytest.approx(pop["group_expected"].mean(1), abs=1e-5)  # equal weights: the mixture
    cfg = RewardConfig(conditioning="group", objective="worst_group", objective_tau=0.05)
    worst = RewardActor(str(tmp_path / "g"), SCALE, cfg).score(PROMPTS, RESP)
    assert worst["reward"] == pytest.approx(objective_rewards(worst["group_expected"], [0.5, 0.5], cfg, -1.0))
    assert np.all(worst["reward"] < pop["reward"])  # b (worse off) counts for more than its weight

    class _Group:  # two replicas' parts joined by the pool: J is estimated on the whole batch
        num_actors = 2

        def each(self, fn, calls, timeout_s=None):
            actor = RewardActor(str(tmp_path / "g"), SCALE, cfg)
            return [actor.score(*args) for args, _ in calls]

    joined = RewardPool(_Group(), cfg).score(PROMPTS, RESP)
    assert joined["reward"] == pytest.approx(worst["reward"], abs=1e-5)
