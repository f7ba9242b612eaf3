"""The pure half of weight sync: buckets, manifests, checksums, staging, the probe."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from raydprm.rollout.sampling import SamplingParams
from raydprm.rollout.sync import (
    WeightManifest,
    WeightStager,
    WeightSyncError,
    apply_update,
    build_manifest,
    check_probe,
    decode_bucket,
    encode_bucket,
    iter_buckets,
    probe_logprobs,
    probe_sequence,
    tensor_digest,
)


@pytest.fixture(scope="module")
def learner(tiny_policy):
    return AutoModelForCausalLM.from_pretrained(tiny_policy)


def _perturb(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_rollout_sync_buckets_are_bounded_and_round_trip(learner):
    sd = learner.state_dict()
    limit = 64 * 1024
    buckets = list(iter_buckets(sd, limit))
    assert len(buckets) > 1
    seen = {}
    for b in buckets:
        tensors = decode_bucket(b)
        raw = sum(t.numel() * t.element_size() for t in tensors.values())
        biggest = max(t.numel() * t.element_size() for t in tensors.values())
        assert raw <= limit or len(tensors) == 1 and raw == biggest  # an oversized tensor travels alone
        seen.update(tensors)
    assert sorted(seen) == sorted(sd)  # every name, tied lm_head included
    assert "lm_head.weight" in seen and "transformer.wte.weight" in seen
    for k, t in sd.items():
        assert torch.equal(seen[k], t)


def test_rollout_sync_raw_buckets_verify_without_copies(learner):
    """Raw buckets (the object-store format) carry the tensors' bytes; the stager views them
    in place, checks size and digest, and refuses a flipped bit or a truncated array."""
    from raydprm.rollout.sync import RawBucket

    sd = learner.state_dict()
    for algo in ("xxh3_128", "sha256"):
        m = build_manifest(sd, 7, digest_algo=algo)
        assert m.digest_algo == algo and WeightManifest.from_dict(m.to_dict()) == m
        st = WeightStager(m)
        for b in iter_buckets(sd, 64 * 1024, raw=True):
            assert isinstance(b, RawBucket) and b.nbytes <= 64 * 1024 or len(b.names) == 1
            st.add(b)
        got = dict(st.complete())
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        assert st.report().digest == m.digest
    m = build_manifest(sd, 8)
    b = next(iter_buckets(sd, 64 * 1024, raw=True))
    flipped = [a.copy() for a in b.arrays]
    flipped[0][3] ^= 0x10
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        WeightStager(m).add(RawBucket(b.names, tuple(flipped)))
    with pytest.raises(WeightSyncError, match="bytes; the manifest says"):
        WeightStager(m).add(RawBucket(b.names, (b.arrays[0][:-4], *b.arrays[1:])))
    # the old safetensors bytes of the same tensors verify against the same manifest
    st = WeightStager(m)
    for enc in iter_buckets(sd, 64 * 1024):
        st.add(enc)
    assert st.report().digest == m.digest


def test_rollout_sync_digest_is_bitwise():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    u = t.clone()
    assert tensor_digest(t) == tensor_digest(u) == tensor_digest(t.t().contiguous().t())  # layout-independent values
    u.view(-1)[5] = torch.nextafter(u.view(-1)[5], torch.tensor(100.0))  # one ulp
    assert tensor_digest(t) != tensor_digest(u)
    assert tensor_digest(t.bfloat16()) == tensor_digest(t.bfloat16().clone())
    assert tensor_digest(t, "sha256") != tensor_digest(t, "xxh3_128")
    with pytest.raises(WeightSyncError, match="unknown weight digest"):
        tensor_digest(t, "md5")


def test_rollout_sync_manifest_round_trips_and_validates(learner):
    m = build_manifest(learner.state_dict(), 3)
    assert WeightManifest.from_dict(m.to_dict()) == m
    assert m.nbytes == sum(t.numel() * t.element_size() for t in learner.state_dict().values())
    with pytest.raises(WeightSyncError, match="version"):
        build_manifest(learner.state_dict(), -1)
    with pytest.raises(WeightSyncError, match="empty"):
        build_manifest({}, 1)
    with pytest.raises(WeightSyncError, match="not a tensor"):
        build_manifest({"w": [1.0]}, 1)


def test_rollout_sync_stager_accepts_a_complete_sync(learner):
    sd = learner.state_dict()
    m = build_manifest(sd, 1)
    st = WeightStager(m)
    for b in iter_buckets(sd, 32 * 1024):
        st.add(b)
    got = st.complete()
    assert [n for n, _ in got] == list(sd)
    assert st.report().digest == m.digest


def test_rollout_sync_stager_detects_a_corrupted_bucket(learner):
    sd = learner.state_dict()
    m = build_manifest(sd, 2)
    buckets = list(iter_buckets(sd, 32 * 1024))
    bad = bytearray(buckets[1])
    bad[-7] ^= 0x40  # one flipped bit in the tensor data region
    st = WeightStager(m)
    st.add(buckets[0])
    with pytest.raises(WeightSyncError, match="checksum mismatch on tensor .* corrupted in transit"):
        st.add(bytes(bad))
    with pytest.raises(WeightSyncError, match="could not be decoded"):
        WeightStager(m).add(buckets[0][:20])


def test_rollout_sync_stager_detects_partial_duplicate_and_foreign_tensors(learner):
    sd = learner.state_dict()
    m = build_manifest(sd, 4)
    buckets = list(iter_buckets(sd, 32 * 1024))
    st = WeightStager(m)
    for b in buckets[:-1]:
        st.add(b)
    with pytest.raises(WeightSyncError, match=r"partial weight sync v4: \d+ of \d+ tensors never arrived"):
        st.complete()
    with pytest.raises(WeightSyncError, match="received twice"):
        st.add(buckets[0])
    with pytest.raises(WeightSyncError, match="not in the manifest"):
        WeightStager(m).add(encode_bucket({"extra.weight": torch.zeros(2)}))
    name = next(iter(sd))
    with pytest.raises(WeightSyncError, match="arrived as"):
        WeightStager(m).add({name: sd[name].double()})


def test_rollout_sync_probe_is_fixed_and_checks_tolerance(learner):
    ids = probe_sequence(1000, 16)
    assert ids == probe_sequence(1000, 16) and len(ids) == 16 and max(ids) < 1000
    assert ids != probe_sequence(1000, 16, seed=1)
    lp = probe_logprobs(learner, probe_sequence(learner.config.vocab_size, 16))
    assert len(lp) == 15 and all(x < 0 for x in lp)
    assert check_probe(lp, lp, 1e-6, 1) == 0.0
    with pytest.raises(WeightSyncError, match="differ from the learner's by 0.5"):
        check_probe(lp, [x + 0.5 for x in lp], 1e-3, 1)
    with pytest.raises(WeightSyncError, match="different probe sequences"):
        check_probe(lp, lp[:-1], 1e-3, 1)
    with pytest.raises(WeightSyncError):
        check_probe(lp, [float("nan")] * len(lp), 1e-3, 1)


def test_rollout_sync_apply_update_makes_the_engine_follow_the_learner(tiny_policy):
    """Object-store path without Ray: after a sync, greedy outputs and probe follow the new weights;
    a corrupted or partial sync leaves the old weights serving and the version unchanged."""
    from raydprm.rollout.hf_engine import HFEngine

    engine = HFEngine(tiny_policy)
    learner = AutoModelForCausalLM.from_pretrained(tiny_policy)
    _perturb(learner, 0.2)
    probe = probe_sequence(engine.vocab_size, 24)
    sp = SamplingParams(max_new_tokens=12, temperature=0)
    prompts = ["The crowd", "A helpful answer"]
    before = [r.token_ids for r in engine.generate(prompts, sp)]
    ref = HFEngine(learner, tokenizer=engine.tokenizer)
    want = [r.token_ids for r in ref.generate(prompts, sp)]
    assert want != before  # the perturbation changes greedy outputs

    sd = learner.state_dict()
    m = build_manifest(sd, 1)
    expected = probe_logprobs(learner, probe)

    # corrupted: refused before loading, old weights still serve
    buckets = list(iter_buckets(sd, 32 * 1024))
    bad = bytearray(buckets[0])
    bad[-3] ^= 1
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        apply_update(engine, m, [bytes(bad)] + buckets[1:], probe, expected, 1e-4)
    assert engine.weight_version == 0
    assert [r.token_ids for r in engine.generate(prompts, sp)] == before
    # partial
    with pytest.raises(WeightSyncError, match="partial weight sync"):
        apply_update(engine, m, buckets[:-1], probe, expected, 1e-4)
    assert engine.weight_version == 0
    assert [r.token_ids for r in engine.generate(prompts, sp)] == before

    rep = apply_update(engine, m, iter_buckets(sd, 32 * 1024), probe, expected, 1e-4)
    assert rep.version == engine.weight_version == 1
    assert rep.digest == m.digest and rep.num_tensors == len(sd) and rep.probe_max_diff <= 1e-5
    out = engine.generate(prompts, sp)
    assert [r.token_ids for r in out] == want and all(r.weight_version == 1 for r in out)

    # a probe computed from other weights (the generator does not compute the learner's model) fails loudly
    with pytest.raises(WeightSyncError, match="probe logprobs differ"):
        apply_update(engine, build_manifest(sd, 2), iter_buckets(sd, 1 << 20), probe,
                     [x - 0.1 for x in expected], 1e-3)
    assert engine.weight_version == -1  # loaded but unverified: the actor refuses to serve it
