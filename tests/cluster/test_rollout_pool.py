"""Generator actors on Ray: ordered pool, verified weight sync over the object store and
vLLM RPC, corrupted/partial/timed-out syncs refused, NCCL on CUDA only."""

import time

import pytest
import torch
from helpers import kill_actor, perturbed
from transformers import AutoModelForCausalLM, AutoTokenizer

from raydprm.config import RolloutConfig
from raydprm.rollout.sampling import SamplingParams
from raydprm.rollout.sync import WeightSyncError, probe_logprobs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

PROMPTS = ["The crowd", "A helpful answer is", "x", "Why", "Tell me about votes"]
GREEDY = SamplingParams(max_new_tokens=10, temperature=0)


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_local, tiny_policy):
    from raydprm.cluster.rollout_actor import RolloutPool

    p = RolloutPool.create(RolloutConfig(num_replicas=2, num_cpus=0.5, sync_timeout_s=60, bucket_mb=1,
                                         probe_tolerance=1e-4), tiny_policy, max_restarts=1)
    yield p
    p.shutdown()


def _update(model, version, pool, bucket_mb=1, probe=None):
    """What a learner publishes: manifest + bucket refs + its probe logprobs."""
    from raydprm.cluster.weight_sync import publish

    return publish(model.state_dict(), version, probe or probe_logprobs(model, pool.probe_ids), bucket_mb)


def _reference(model, path, prompts, sp):
    from raydprm.rollout.hf_engine import HFEngine

    return HFEngine(model, tokenizer=AutoTokenizer.from_pretrained(path)).generate(prompts, sp)


def test_rollout_ray_split_evenly():
    from raydprm.cluster.rollout_actor import split_evenly

    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert sum(b - a for a, b in split_evenly(64, 3)) == 64


def test_rollout_ray_pool_gathers_in_order_like_one_engine(pool, hf_engine):
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=5)
    got = pool.generate(PROMPTS, sp)
    want = hf_engine.generate(PROMPTS, sp)  # one engine, same seeds: the split is invisible
    assert [(r.prompt_index, r.sample_index) for r in got] == [(i, j) for i in range(5) for j in range(2)]
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] == [r.token_ids for r in hf_engine.generate(PROMPTS, GREEDY)]
    assert pool.generate([], GREEDY) == []


def test_rollout_ray_object_store_sync_follows_the_learner(pool, tiny_policy):
    learner = perturbed(tiny_policy, seed=1)
    want = [r.token_ids for r in _reference(learner, tiny_policy, PROMPTS, GREEDY)]
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] != want
    reports = pool.sync_weights(_update(learner, 1, pool))
    assert len(reports) == 2 and {r.replica for r in reports} == {0, 1}
    assert all(r.version == 1 and r.probe_max_diff < 1e-4 and r.transport == "object_store" for r in reports)
    assert pool.versions() == [1, 1]
    out = pool.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in out] == want and {r.weight_version for r in out} == {1}
    learner3 = perturbed(tiny_policy, seed=3)
    pool.sync_weights(_update(learner3, 3, pool, bucket_mb=64))
    assert pool.versions() == [3, 3]
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] == \
        [r.token_ids for r in _reference(learner3, tiny_policy, PROMPTS, GREEDY)]
    with pytest.raises(WeightSyncError, match="not newer"):
        pool.sync_weights(_update(learner3, 3, pool))
    with pytest.raises(WeightSyncError, match="takes a published WeightUpdate"):
        pool.sync_weights(learner3.state_dict())  # a state dict in the driver is refused


def test_rollout_ray_dead_replica_is_restarted_with_the_current_weights(pool, tiny_policy):
    """A generator killed between steps is replaced on the next call and first given the
    last verified update, so what it serves is still the learner's policy."""
    from raydprm.cluster.rollout_actor import RolloutGenerator

    learner = perturbed(tiny_policy, seed=7)
    v = pool.version + 1
    pool.sync_weights(_update(learner, v, pool))
    want = [r.token_ids for r in _reference(learner, tiny_policy, PROMPTS, GREEDY)]
    pid = pool.group.all(RolloutGenerator.info)[1]["pid"]
    kill_actor(pool.group.actors[1])
    restarts = pool.restarts
    out = pool.generate(PROMPTS, GREEDY)
    assert pool.restarts == restarts + 1
    assert [r.token_ids for r in out] == want and {r.weight_version for r in out} == {v}
    assert pool.group.all(RolloutGenerator.info)[1]["pid"] != pid
    assert pool.versions() == [v, v]


def test_rollout_ray_corrupted_and_partial_syncs_are_refused(pool, tiny_policy):
    from raydprm.cluster.weight_sync import WeightUpdate, publish
    from raydprm.rollout.sync import RawBucket

    before = [r.token_ids for r in pool.generate(PROMPTS, GREEDY)]
    v0 = pool.version
    learner = perturbed(tiny_policy, seed=21)
    expected = probe_logprobs(learner, pool.probe_ids)
    up = publish(learner.state_dict(), v0 + 1, expected, bucket_mb=1)
    assert len(up.bucket_refs) >= 1
    b0 = ray.get(up.bucket_refs[0])  # a RawBucket: the tensors' own bytes
    arrays = [a.copy() for a in b0.arrays]
    arrays[-1][-9] ^= 0x02
    corrupted = WeightUpdate(up.manifest, [ray.put(RawBucket(b0.names, tuple(arrays)))] + up.bucket_refs[1:], expected)
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        pool.sync_weights(corrupted)
    from raydprm.rollout.sync import iter_buckets

    refs = [ray.put(b) for b in iter_buckets(learner.state_dict(), 32 * 1024, raw=True)]  # several small buckets
    with pytest.raises(WeightSyncError, match="partial weight sync"):
        pool.sync_weights(WeightUpdate(up.manifest, refs[:-1], expected))  # the last one lost
    assert pool.version == v0 and pool.versions() == [v0, v0]
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] == before  # old weights still serve


def test_rollout_ray_sync_times_out_instead_of_hanging(pool, tiny_policy):
    """A bucket that never arrives: the sync fails after its timeout, clearly, and the
    replicas keep their verified weights."""
    from raydprm.cluster.weight_sync import WeightUpdate

    @ray.remote(num_cpus=0)
    def never():
        time.sleep(600)

    stuck = never.remote()
    v0 = pool.version
    try:
        learner = perturbed(tiny_policy, seed=4)
        up = _update(learner, v0 + 1, pool, bucket_mb=64)
        t0 = time.monotonic()
        with pytest.raises(WeightSyncError, match="timed out"):
            pool.sync_weights(WeightUpdate(up.manifest, up.bucket_refs + [stuck], up.expected_probe), timeout_s=2.0)
        assert time.monotonic() - t0 < 15
        assert pool.versions() == [v0, v0]
    finally:
        ray.cancel(stuck, force=True)


def test_rollout_ray_probe_failure_stops_the_replica_serving(pool, tiny_policy):
    learner = perturbed(tiny_policy, seed=31)
    expected = probe_logprobs(learner, pool.probe_ids)
    v = pool.version + 1
    with pytest.raises(WeightSyncError, match="probe logprobs differ"):
        pool.sync_weights(_update(learner, v, pool, probe=[x + 0.05 for x in expected]))
    with pytest.raises(WeightSyncError, match="failed verification; sync again"):
        pool.generate(PROMPTS, GREEDY)
    pool.sync_weights(_update(learner, v, pool, probe=expected))  # a verified sync repairs it
    assert pool.versions() == [v, v]
    assert len(pool.generate(PROMPTS, GREEDY)) == len(PROMPTS)


@pytest.mark.vllm
def test_rollout_ray_vllm_replica_syncs_over_worker_rpc(ray_local, tiny_policy):
    from raydprm.cluster.rollout_actor import RolloutPool

    p = RolloutPool.create(RolloutConfig(engine="vllm", num_replicas=1, num_cpus=1, kv_cache_memory_mb=32,
                                         weight_sync="vllm_rpc", bucket_mb=1, probe_tolerance=1e-4), tiny_policy)
    try:
        base = AutoModelForCausalLM.from_pretrained(tiny_policy)
        assert [r.token_ids for r in p.generate(PROMPTS, GREEDY)] == \
            [r.token_ids for r in _reference(base, tiny_policy, PROMPTS, GREEDY)]
        learner = perturbed(tiny_policy, seed=41)
        (rep,) = p.sync_weights(_update(learner, 1, p))
        assert rep.transport == "vllm_rpc" and rep.probe_max_diff < 1e-4 and rep.num_tensors == len(learner.state_dict())
        out = p.generate(PROMPTS, GREEDY)
        assert [r.token_ids for r in out] == [r.token_ids for r in _reference(learner, tiny_policy, PROMPTS, GREEDY)]
    finally:
        p.shutdown()


@pytest.mark.gpu
@pytest.mark.vllm
def test_rollout_ray_nccl_broadcast_from_the_learner_to_vllm_workers(ray_local, tiny_policy):
    """The NCCL transport end to end: the learner's rank 0 (one GPU) broadcasts to a vLLM
    generator (another GPU); the driver only moves the manifest."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("the nccl weight transport needs 2 CUDA devices (learner GPU + vLLM GPU); none here")
    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.cluster.weight_sync import sync_policy
    from raydprm.config import EngineSection, PPOConfig

    p = RolloutPool.create(RolloutConfig(engine="vllm", num_replicas=1, num_gpus=1, weight_sync="nccl",
                                         probe_tolerance=1e-3), tiny_policy)
    learner = LearnerGroup.create(PPOConfig(), tiny_policy, engine=EngineSection(num_gpus_per_worker=1, engine="torch"))
    try:
        (rep,) = sync_policy(learner, p, version=1)
        assert rep.transport == "nccl" and rep.probe_max_diff < 1e-3 and p.versions() == [1]
    finally:
        learner.shutdown()
        p.shutdown()


def test_rollout_ray_pool_loads_another_policy_from_its_hf_directory(ray_local, tiny_policy, tmp_path):
    """Evaluation reuses one pool for every trained policy: after load_checkpoint its logprobs
    and greedy samples are those of a pool started on that directory; a directory without
    weights is refused and the pool keeps serving its old weights. ``version=0`` (warm reuse for
    another run) counts weight versions from 0 again, also in a replica restarted after it."""
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.rollout.engine import RolloutError

    other = perturbed(tiny_policy, seed=11, scale=0.3)
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_policy).save_pretrained(tmp_path / "other")
    cfg = RolloutConfig(num_replicas=1, num_cpus=0.5)
    reused = RolloutPool.create(cfg, tiny_policy, max_restarts=1)
    fresh = RolloutPool.create(cfg, str(tmp_path / "other"))
    try:
        seqs = [r.prompt_ids + r.token_ids for r in fresh.generate(PROMPTS, GREEDY)]
        before = reused.score(seqs)
        with pytest.raises(RolloutError, match="no \\*.safetensors"):
            reused.load_checkpoint(tmp_path)
        assert reused.score(seqs) == before
        reused.load_checkpoint(tmp_path / "other")
        got, want = reused.score(seqs), fresh.score(seqs)
        assert max(abs(a - b) for x, y in zip(got, want) for a, b in zip(x, y)) < 1e-5
        assert max(abs(a - b) for x, y in zip(before, want) for a, b in zip(x, y)) > 0.1  # it did change
        assert [r.text for r in reused.generate(PROMPTS, GREEDY)] == [r.text for r in fresh.generate(PROMPTS, GREEDY)]
        # warm reuse for another training run: a synced pool counts weight versions from 0 again
        learner = perturbed(tiny_policy, seed=3)
        reused.sync_weights(_update(learner, 4, reused))
        assert reused.version == 4 and reused.versions() == [4]
        reused.load_checkpoint(tmp_path / "other", version=0)
        assert reused.version == 0 and reused.versions() == [0] == fresh.versions()
        assert reused.score(seqs) == fresh.score(seqs)
        kill_actor(reused.group.actors[0])  # a replica restarted now loads that directory at version 0
        assert reused.score(seqs) == fresh.score(seqs) and reused.versions() == [0] and reused.restarts == 1
        reused.sync_weights(_update(learner, 1, reused))  # the next run's first sync is accepted
        assert reused.versions() == [1]
    finally:
        reused.shutdown()
        fresh.shutdown()


@ray.remote(num_cpus=0)
class _Publisher:
    """A learner rank's stand-in: the buckets it publishes are its own, and die with it (as with a lost node)."""

    def publish(self, state, version, probe):
        from raydprm.cluster.weight_sync import publish

        return publish(state, version, probe, bucket_mb=1)


def _published_by(learner, version, pool):
    """What a learner rank publishes (its actor owns the buckets) and that actor."""
    owner = _Publisher.remote()
    return ray.get(owner.publish.remote(learner.state_dict(), version, probe_logprobs(learner, pool.probe_ids))), owner


def _kill_owner(owner, update, timeout_s=60.0):
    """Kill the publisher and wait until its buckets are known lost (the owner's death reaches a
    borrower a moment after its process exits): a plain re-send now raises OwnerDiedError."""
    kill_actor(owner)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(update.bucket_refs[0], timeout=5)
        except ray.exceptions.OwnerDiedError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the buckets were still there {timeout_s:g} s after their owner died")


@pytest.fixture(scope="module")
def lost_pool(ray_local, tiny_policy):
    from raydprm.cluster.rollout_actor import RolloutPool

    p = RolloutPool.create(RolloutConfig(num_replicas=2, num_cpus=0.25, sync_timeout_s=60, bucket_mb=1,
                                         probe_tolerance=1e-4), tiny_policy, max_restarts=8)
    yield p
    p.shutdown()


def test_rollout_ray_restart_after_the_update_died_with_its_owner_gets_the_same_version_republished(
        lost_pool, tiny_policy):
    """The node-loss case (issue 25): a replica restarted after the learner rank that published the
    last update died (its buckets with it) asks the pool's source to publish that version again,
    takes it because the digest is the lost update's, and serves exactly the learner's policy; the
    fresh copy's live buckets serve the next restart without asking again."""
    from raydprm.cluster.rollout_actor import RolloutGenerator

    pool = lost_pool
    learner = perturbed(tiny_policy, seed=41)
    want = [r.token_ids for r in _reference(learner, tiny_policy, PROMPTS, GREEDY)]
    asked = []

    def source(version):  # the learner, alive (or restarted), publishing its current weights again
        asked.append(version)
        return _update(learner, version, pool)

    v, restarts = pool.version + 1, pool.restarts
    up, owner = _published_by(learner, v, pool)
    pool.sync_weights(up, source=source)
    assert pool.versions() == [v, v]
    _kill_owner(owner, up)  # the buckets of version v are gone with their owner
    pid = pool.group.all(RolloutGenerator.info)[1]["pid"]
    kill_actor(pool.group.actors[1])
    out = pool.generate(PROMPTS, GREEDY)
    assert asked == [v] and pool.restarts == restarts + 1 and pool.group.all(RolloutGenerator.info)[1]["pid"] != pid
    assert [r.token_ids for r in out] == want and {r.weight_version for r in out} == {v}
    assert pool.versions() == [v, v] and pool.version == v
    kill_actor(pool.group.actors[0])  # the next restart re-sends the fresh copy: nothing is asked again
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] == want
    assert asked == [v] and pool.restarts == restarts + 2 and pool.versions() == [v, v]
    # restarted in the middle of a sync (the pipeline publishing after its learner restarted): the retried
    # call gives it the new version; the lost one is neither re-sent nor asked for
    up, owner = _published_by(perturbed(tiny_policy, seed=42), v + 1, pool)
    pool.sync_weights(up, source=source)
    _kill_owner(owner, up)
    kill_actor(pool.group.actors[1])
    newer = perturbed(tiny_policy, seed=45)
    pool.sync_weights(_update(newer, v + 2, pool), source=source)
    assert asked == [v] and pool.restarts == restarts + 3 and pool.versions() == [v + 2, v + 2]
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] == \
        [r.token_ids for r in _reference(newer, tiny_policy, PROMPTS, GREEDY)]


def test_rollout_ray_lost_update_never_lets_a_restarted_replica_serve_other_weights(lost_pool, tiny_policy):
    """When the lost version cannot be had again, the restarted replica refuses to generate (never its
    initial weights under the pool's version) until a sync succeeds: the learner moved on (another
    digest), the learner restarted too (GroupRestarted reaches the caller, which publishes anew), or
    the pool has no source."""
    from raydprm.cluster.group import GroupRestarted

    pool = lost_pool
    v1, v2 = perturbed(tiny_policy, seed=43), perturbed(tiny_policy, seed=44)

    def moved_on(version):
        return _update(v2, version, pool)

    def learner_restarted(version):
        raise GroupRestarted("learner: rank 0 died during 'republish_weights'; the group restarted")

    v, restarts = pool.version, pool.restarts
    for source, error in [(moved_on, "exists nowhere"), (learner_restarted, "the group restarted"),
                          (None, "knows no learner")]:
        v += 1
        up, owner = _published_by(v1, v, pool)
        pool.sync_weights(up, source=source)
        _kill_owner(owner, up)
        kill_actor(pool.group.actors[1])
        with pytest.raises((WeightSyncError, GroupRestarted), match=error):
            pool.generate(PROMPTS, GREEDY)
        assert pool.versions() == [v, -1]  # the replica that could not catch up is marked unverified
        with pytest.raises(WeightSyncError, match="failed verification; sync again"):
            pool.generate(PROMPTS, GREEDY)
    v += 1
    pool.sync_weights(_update(v2, v, pool))  # the caller's next sync repairs it (the pipeline publishes anew)
    assert pool.versions() == [v, v]
    assert [r.token_ids for r in pool.generate(PROMPTS, GREEDY)] == \
        [r.token_ids for r in _reference(v2, tiny_policy, PROMPTS, GREEDY)]
    assert pool.restarts == restarts + 3
