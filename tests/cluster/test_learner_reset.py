"""Warm reuse of a learner rank: ``reset`` in the same process builds exactly the learner that a
fresh rank builds on the other policy (weights, reference, optimizer, KL controller, step, RNGs),
so a comparison's next arm trains as it would in new processes. No Ray: the actor class is
driven in this process."""

import dataclasses
import os

import pytest
import torch
from helpers import make_batch

from raydprm.cluster.learner_group import LearnerActor, LearnerGroup
from raydprm.config import EngineSection, PPOConfig
from raydprm.errors import RaydprmError
from raydprm.train.learner import PPOLearner

pytestmark = pytest.mark.deepspeed

CFG = PPOConfig(rollout_batch=16, minibatch=8, epochs=2, lr=1e-3, kl_controller="adaptive", target_kl=0.01)
ENGINE = EngineSection(micro_batch=4)


def _state(actor):
    """Everything the next update depends on that can be read without stepping."""
    lr = actor._learner
    return {"params": {k: v.detach().clone() for k, v in lr.full_state_dict().items()},
            "ref": {k: v.detach().clone() for k, v in lr.ref.state_dict().items()},
            "rng": torch.get_rng_state(), "step": lr.step, "kl_coef": lr.kl_coef, "seed": lr.seed,
            "policy": lr.policy_name}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert a[k].keys() == b[k].keys(), k
            assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def _untimed(m):
    return {k: v for k, v in m.items() if not k.endswith("_s")}


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_reset_rank_is_bitwise_a_fresh_learner_of_another_policy(tiny_kit, tmp_path, engine):
    cfg, eng = CFG, dataclasses.replace(ENGINE, engine=engine)
    used = LearnerActor(PPOLearner, dict(ppo=cfg, engine=eng, policy="tiny-gpt2", seed=0, device="cpu"))
    used.setup("127.0.0.1", None)
    used.update(make_batch(seed=1))
    other = used.export_hf(str(tmp_path / "trained"))  # another policy of the same architecture
    used.update(make_batch(seed=2))  # optimizer moments, KL controller, step and RNGs have moved on
    assert used._learner.step == 2 and used._learner.kl_coef != cfg.beta
    cfg2 = dataclasses.replace(cfg, beta=2 * cfg.beta)  # the next arm's own PPO section
    assert used.reset({"policy": other, "seed": 5, "ppo": cfg2}) == os.getpid()
    got = _state(used)
    m_got = used.update(make_batch(seed=3))
    after_got = _state(used)

    fresh = LearnerActor(PPOLearner, dict(ppo=cfg2, engine=eng, policy=other, seed=5, device="cpu"))
    fresh.setup("127.0.0.1", None)
    want = _state(fresh)
    m_want = fresh.update(make_batch(seed=3))
    after_want = _state(fresh)

    assert got["step"] == 0 and got["kl_coef"] == cfg2.beta and got["policy"] == other
    _assert_same(got, want)  # policy + value head, reference, RNG, step, beta
    assert _untimed(m_got) == _untimed(m_want)  # fresh optimizer: the same first update, bit for bit
    _assert_same(after_got, after_want)
    first = PPOLearner(cfg, "tiny-gpt2", engine=eng, seed=0).ref.state_dict()
    assert any(not torch.equal(first[k], got["ref"][k]) for k in first)  # the reference is the new policy


def test_reset_refuses_another_group_shape_and_an_unset_rank():
    group = LearnerGroup(None, {"kw": {"ppo": CFG, "engine": ENGINE, "policy": "p", "seed": 0}, "res": ENGINE})
    with pytest.raises(RaydprmError, match="same engine.num_workers"):
        group.reset("q", seed=1, engine=dataclasses.replace(ENGINE, num_workers=2))
    assert group._spec["kw"]["policy"] == "p"  # nothing changed
    with pytest.raises(RaydprmError, match="LearnerGroup.create"):
        LearnerGroup(None).reset("q", seed=1)
    with pytest.raises(RuntimeError, match="before setup"):
        LearnerActor(PPOLearner, {}).reset({})
