"""The PPO step over real role groups, synchronous and one-step off-policy (async rollout)."""

from __future__ import annotations

import math

import pytest

from raydprm.config import Config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def roles(tiny_kit, tmp_path_factory):
    import ray

    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.reward_actor import RewardPool
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.dprm import DPRM

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = Config().override(["rollout.max_new_tokens=6", "rollout.num_cpus=0.5", "ppo.rollout_batch=4",
                             "ppo.minibatch=4", "engine.micro_batch=4", "ppo.epochs=1", "engine.engine=torch",
                             "reward.actor_num_cpus=0.5", "engine.num_cpus_per_worker=0.5"])
    rm_dir = DPRM.from_backbone("tiny-opt", LabelScale.hh(), max_length=64, seed=1).save(
        tmp_path_factory.mktemp("rm") / "rm")
    made = []
    try:
        def make():
            r = RolloutPool.create(cfg.rollout, "tiny-gpt2")
            w = RewardPool.create(str(rm_dir), LabelScale.hh(), cfg.reward)
            learner = LearnerGroup.create(cfg.ppo, "tiny-gpt2", engine=cfg.engine, seed=0)
            made.extend([r, w, learner])
            return r, w, learner

        yield cfg, make
    finally:
        for m in made:
            m.shutdown()
        ray.shutdown()


PROMPTS = [f"Q: how do i bake bread {i} ?\nA:" for i in range(16)]


@pytest.mark.parametrize("async_rollout", [False, True])
def test_ppo_loop_modes(roles, async_rollout):
    """Sync: every batch comes from the newest policy (lag 0). Async: from the policy one
    update older (lag 1 after the first step); the generators end on the last version in
    both, and every step trains with finite losses."""
    from raydprm.cluster.ppo_loop import PPOLoop

    cfg, make = roles
    rollout, reward, learner = make()
    loop = PPOLoop(rollout, reward, learner, cfg.rollout, seed=3, async_rollout=async_rollout)
    steps = [PROMPTS[i * 4:(i + 1) * 4] for i in range(4)]
    recs = [loop.step(i, steps[i], steps[i + 1] if i + 1 < len(steps) else None) for i in range(len(steps))]
    loop.finish()
    lags = [r["rollout/policy_lag"] for r in recs]
    assert lags == ([0.0, 1.0, 1.0, 1.0] if async_rollout else [0.0] * 4)
    assert rollout.versions() == [4] and rollout.version == 4
    for r in recs:
        assert all(math.isfinite(r[k]) for k in ("ppo/policy_loss", "ppo/value_loss", "reward/mean"))
        parts = sum(r[k] for k in ("time/generate_s", "time/score_s", "time/learn_s", "time/sync_s"))
        assert 0 < parts <= r["time/step_s"] + 1e-6


def test_a_restart_handler_drops_async_rollouts_without_collecting_them():
    """finish(collect=False), the pipeline's GroupRestarted handler: the step is redone, so rollouts in
    flight are dropped unread (collecting them could restart a generator lost with the learner and ask
    it for weights that died with it); finish() at the end of a stage still waits for them."""
    from raydprm.cluster.ppo_loop import PPOLoop
    from raydprm.cluster.rollout_actor import PendingRollout
    from raydprm.config import RolloutConfig

    class Pool:
        collected = 0

        def collect(self, pending):
            Pool.collected += 1
            return []

    loop = PPOLoop(Pool(), None, None, RolloutConfig(), async_rollout=True)
    loop._ahead = (3, PendingRollout([], []))
    loop.finish(collect=False)
    assert loop._ahead is None and Pool.collected == 0
    loop._ahead = (3, PendingRollout([], []))
    loop.finish()
    assert loop._ahead is None and Pool.collected == 1
