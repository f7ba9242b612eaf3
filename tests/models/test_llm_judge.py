"""LLM-judge labeller: valid distributions from a tiny local LM; batching, engines and vLLM agree."""

import os

import numpy as np
import pytest

from raydprm.models.llm_judge import EngineScorer, JudgeError, LLMJudge, TransformersScorer
from raydprm.sim import world
from raydprm.store import PreferenceStore


@pytest.fixture(scope="module")
def judge(tiny_kit):
    return LLMJudge(str(tiny_kit["tiny-gpt2"]), batch_size=4)


def items(n=7):
    return [(ex["prompt"], ex["response"]) for ex in world.sft_corpus(n, seed=5)]


def test_judge_returns_valid_distributions(judge):
    its = items()
    for persona in ("scientist", "teenager"):
        d = judge.distributions([p for p, _ in its], [r for _, r in its], persona)
        assert d.shape == (7, 6) and np.all(d > 0)
        np.testing.assert_allclose(d.sum(1), 1.0, atol=1e-9)
    assert "rigorous scientist" in judge.judge_prompt("scientist", *its[0])
    assert judge.judge_prompt("a grumpy cat", *its[0]).startswith("You are a grumpy cat")
    assert len(set(judge.label_tokens)) == 6


def test_batched_equals_one_by_one_and_reads_next_token_probs(judge, tiny_kit):
    """Left padding must not change a row (naive twin: one item at a time), and the
    distribution is the LM's next-token softmax renormalised over the label tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    its = items()
    batched = judge.distributions([p for p, _ in its], [r for _, r in its], "ceo")
    single = np.stack([judge.judge(p, r, "ceo") for p, r in its])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    model = AutoModelForCausalLM.from_pretrained(tiny_kit["tiny-gpt2"])
    ids = judge.tokenizer.encode(judge.judge_prompt("ceo", *its[0]), add_special_tokens=False)
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)[judge.label_tokens].numpy()
    np.testing.assert_allclose(batched[0], p / p.sum(), atol=1e-5)


def test_engine_scorer_matches_transformers_scorer(judge, tiny_kit):
    from raydprm.rollout.hf_engine import HFEngine

    engine = HFEngine(str(tiny_kit["tiny-gpt2"]), device="cpu")
    via_engine = LLMJudge(str(tiny_kit["tiny-gpt2"]), scorer=EngineScorer(engine))
    its = items(3)
    np.testing.assert_allclose(via_engine.distributions([p for p, _ in its], [r for _, r in its]),
                               judge.distributions([p for p, _ in its], [r for _, r in its]), atol=1e-5)


def test_judge_votes_go_into_the_store(judge, tmp_path):
    votes = judge.votes(items(3), personas=["scientist", "artist"])
    s = PreferenceStore(tmp_path / "s.db")
    assert s.add_votes(votes)["added"] == 6
    assert s.add_votes(judge.votes(items(3), personas=["scientist", "artist"]))["added"] == 0
    np.testing.assert_allclose(sum(s.distribution(*items(3)[0])), 1.0)


def test_bad_judge_arguments(judge, tiny_kit):
    with pytest.raises(JudgeError, match="label_words"):
        LLMJudge(str(tiny_kit["tiny-gpt2"]), label_words=[" a", " b"])
    with pytest.raises(JudgeError, match="score"):
        EngineScorer(object())
    with pytest.raises(JudgeError, match="batch_size"):
        TransformersScorer(judge.scorer.model, 0, batch_size=0)
    with pytest.raises(JudgeError, match="prompts"):
        judge.distributions(["a"], [])


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_scorer_matches_transformers(tiny_kit, tmp_path):
    """The judge through the vLLM engine (prompt logprobs) agrees with transformers."""
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import json

    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from raydprm.rollout.vllm_engine import VLLMEngine

    src = tiny_kit["tiny-gpt2"]
    tok = AutoTokenizer.from_pretrained(src)
    cfg = json.loads((src / "config.json").read_text())
    torch.manual_seed(0)  # vLLM's CPU attention needs head size 32+: same arch, 2 heads of 32
    model = GPT2LMHeadModel(GPT2Config(n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_embd"] // 32,
                                       n_positions=cfg["n_positions"], vocab_size=cfg["vocab_size"],
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = VLLMEngine(str(tmp_path), max_model_len=256)
    try:
        via_vllm = LLMJudge(str(tmp_path), scorer=EngineScorer(engine))
        ref = LLMJudge(str(tmp_path))
        its = items(4)
        a = via_vllm.distributions([p for p, _ in its], [r for _, r in its], "teacher")
        b = ref.distributions([p for p, _ in its], [r for _, r in its], "teacher")
        np.testing.assert_allclose(a, b, atol=2e-3)
    finally:
        engine.shutdown()
