"""The Ray learner group: 2 ranks in one gloo process group give the same PPO update as 1
rank (ZeRO 0 and ZeRO 2), hand out full weights, and resume exactly."""

import dataclasses
import os

import pytest
import torch
from helpers import kill_actor, make_batch

from raydprm.config import EngineSection, PPOConfig
from raydprm.rollout.sync import tensor_digest
from raydprm.train.learner import PPOLearner

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


CFG = PPOConfig(rollout_batch=16, minibatch=8, epochs=2, lr=1e-3, kl_controller="adaptive", target_kl=0.01)
ENGINE = EngineSection(micro_batch=4, num_cpus_per_worker=1.0)


@pytest.fixture(scope="module")
def single_worker_reference(tiny_kit):
    """The 1-worker update (in this process), batches 1 then 2."""
    lr = PPOLearner(CFG, "tiny-gpt2", engine=ENGINE, seed=0)
    m1 = lr.update(make_batch(seed=1))
    m2 = lr.update(make_batch(seed=2))
    return lr.full_state_dict(), m1, m2, lr.kl_coef


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("stage", [0, 2])
def test_two_workers_match_one_worker(ray_local, tiny_kit, single_worker_reference, stage, tmp_path):
    from raydprm.cluster.learner_group import LearnerGroup

    want, m1_ref, m2_ref, beta_ref = single_worker_reference
    engine = dataclasses.replace(ENGINE, num_workers=2, zero_stage=stage)
    group = LearnerGroup.create(CFG, engine=engine, policy="tiny-gpt2", seed=0, timeout_s=300)
    try:
        info = group.info()
        assert [i["rank"] for i in info] == [0, 1] and {i["world_size"] for i in info} == {2}
        assert {i["engine"] for i in info} == {"deepspeed"} and len({i["pid"] for i in info}) == 2
        m1 = group.update(make_batch(seed=1))
        if stage == 2:  # save after the first update, finish, then resume a new group from it
            group.save(tmp_path / "ckpt")
        m2 = group.update(make_batch(seed=2))
        got = group.full_state_dict()
        assert _max_diff(want, got) < 5e-5  # float noise only: one Adam step moves weights by ~1e-3
        for k in ("ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/kl", "ppo/entropy", "ppo/grad_norm"):
            assert m1[k] == pytest.approx(m1_ref[k], rel=1e-3, abs=1e-5), k
            assert m2[k] == pytest.approx(m2_ref[k], rel=1e-3, abs=1e-5), k
        assert m2["ppo/kl_coef"] == pytest.approx(m2_ref["ppo/kl_coef"])
        update = group.publish_weights(1, [1, 2, 3], bucket_mb=1)  # rank 0 publishes; refs come back
        names = [t.name for t in update.manifest.tensors]
        assert "transformer.wte.weight" in names and not any(n.startswith("lm.") for n in names)
        wte = next(t for t in update.manifest.tensors if t.name == "transformer.wte.weight")
        assert wte.digest == tensor_digest(got["lm.transformer.wte.weight"])
        assert len(update.expected_probe) == 2 and all(isinstance(r, ray_local.ObjectRef) for r in update.bucket_refs)
        again = group.republish_weights(1, [1, 2, 3], bucket_mb=1)  # a lost update's version, published again
        assert again.manifest == update.manifest and again.expected_probe == update.expected_probe
        assert set(again.bucket_refs).isdisjoint(update.bucket_refs)  # fresh buckets
        if stage == 2:
            group.shutdown()
            group = LearnerGroup.create(CFG, engine=engine, policy="tiny-gpt2", seed=0, timeout_s=300)
            group.load(tmp_path / "ckpt")
            assert [i["step"] for i in group.info()] == [1, 1]
            group.update(make_batch(seed=2))
            resumed = group.full_state_dict()
            assert all(torch.equal(got[k], resumed[k]) for k in got), "resume is not bit-identical"
    finally:
        group.shutdown()


def test_cli_toy_on_a_two_worker_group(ray_local, tiny_kit, tmp_path, capsys):
    from raydprm.cli import main

    rc = main(["learner", "toy", "--smoke", "--no-progress", "--workers", "2", f"run.output_dir={tmp_path}",
               "engine.zero_stage=2"])
    assert rc == 0
    assert "toy PPO: 2 steps, 2 worker(s), engine deepspeed (ZeRO 2)" in capsys.readouterr().out


def test_group_with_a_missing_model_fails_fast(ray_local, tiny_kit, tmp_path):
    from raydprm.cluster.learner_group import LearnerGroup

    engine = dataclasses.replace(ENGINE, num_workers=2)
    with pytest.raises(Exception, match="does not exist .*not a kit name"):
        LearnerGroup.create(CFG, engine=engine, policy=str(tmp_path / "no-such-model"), timeout_s=120)


def test_dead_rank_restarts_the_whole_group_from_its_checkpoint(ray_local, tiny_kit, tmp_path):
    """Ranks share a process group, so one dead rank restarts every rank: the group
    rejoins, loads the last checkpoint, and tells the caller to redo the work since. A reset
    group (warm reuse) keeps its processes, and a restart after it builds the reset learner."""
    from raydprm.cluster.group import GroupRestarted
    from raydprm.cluster.learner_group import LearnerActor, LearnerGroup

    engine = dataclasses.replace(ENGINE, num_workers=2, engine="torch")
    group = LearnerGroup.create(CFG, engine=engine, policy="tiny-gpt2", seed=0, max_restarts=2, timeout_s=300)
    try:
        group.update(make_batch(seed=1))
        group.save(tmp_path / "ckpt")
        at_ckpt = group.full_state_dict()
        group.update(make_batch(seed=2))
        pids = [i["pid"] for i in group.info()]
        kill_actor(group.group.actors[1])
        with pytest.raises(GroupRestarted, match="restarted from its last checkpoint"):
            group.update(make_batch(seed=3))
        info = group.info()
        assert group.restarts == 1 and [i["step"] for i in info] == [1, 1]
        assert not {i["pid"] for i in info} & set(pids)
        now = group.full_state_dict()
        assert all(torch.equal(at_ckpt[k], now[k]) for k in at_ckpt)
        group.update(make_batch(seed=2))  # the redone step trains again
        # warm reuse: the same processes (and process group) become a fresh learner; seed 7 draws
        # another value head, so a rank rebuilt from the old arguments would show
        fresh = PPOLearner(CFG, "tiny-gpt2", engine=dataclasses.replace(engine, num_workers=1), seed=7).full_state_dict()
        pids = [i["pid"] for i in group.info()]
        assert group.reset("tiny-gpt2", seed=7) == pids
        assert group.last_checkpoint is None and [i["step"] for i in group.info()] == [0, 0]
        now = group.full_state_dict()
        assert all(torch.equal(fresh[k], now[k]) for k in fresh)
        group.update(make_batch(seed=1))
        kill_actor(group.group.actors[1])  # a rank restarted after the reset builds the reset learner
        with pytest.raises(GroupRestarted):
            group.update(make_batch(seed=2))
        now = group.full_state_dict()
        assert all(torch.equal(fresh[k], now[k]) for k in fresh)  # no checkpoint since the reset
        kill_actor(group.group.actors[0])
        with pytest.raises(Exception, match="restart budget"):
            group.group.all(LearnerActor.info)
    finally:
        group.shutdown()
