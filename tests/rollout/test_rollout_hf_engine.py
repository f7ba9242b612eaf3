"""The transformers engine: batching, logprobs, sampling semantics, finish reasons."""

import math

import pytest
import torch

from raydprm.rollout.engine import RolloutError
from raydprm.rollout.hf_engine import _filter_logits, teacher_forced_logprobs
from raydprm.rollout.sampling import SamplingParams

PROMPTS = ["The crowd", "A helpful answer is", "x", "Why do people vote the way they do"]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def test_rollout_hf_greedy_is_batch_invariant(hf_engine):
    """Left padding + position ids: a prompt decodes the same alone and in a padded batch."""
    batch = hf_engine.generate(PROMPTS, GREEDY)
    assert [(r.prompt_index, r.sample_index) for r in batch] == [(i, 0) for i in range(len(PROMPTS))]
    for i, p in enumerate(PROMPTS):
        alone = hf_engine.generate([p], GREEDY)[0]
        assert alone.token_ids == batch[i].token_ids
        assert max(abs(a - b) for a, b in zip(alone.logprobs, batch[i].logprobs)) < 1e-4
        assert batch[i].finish_reason == "length" and len(batch[i].token_ids) == 12


def test_rollout_hf_logprobs_equal_teacher_forced_pass(hf_engine):
    """Reported logprobs are the raw log p(token | prefix) of a plain forward pass."""
    sp = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=50, seed=3, n=2)
    for r in hf_engine.generate(PROMPTS[:3], sp):
        full = r.prompt_ids + r.token_ids
        tf = teacher_forced_logprobs(hf_engine.model, [full])[0][len(r.prompt_ids) - 1:]
        assert len(tf) == len(r.logprobs) == r.num_tokens
        assert max(abs(a - b) for a, b in zip(tf, r.logprobs)) < 1e-4
        # and equal to the engine's own scoring of the same sequence
        assert max(abs(a - b) for a, b in zip(hf_engine.score([full])[0][len(r.prompt_ids) - 1:], r.logprobs)) < 1e-4


def test_rollout_hf_greedy_equals_argmax_of_forward(hf_engine):
    r = hf_engine.generate(["The crowd"], SamplingParams(max_new_tokens=5, temperature=0))[0]
    ids = list(r.prompt_ids)
    with torch.no_grad():
        for tok in r.token_ids:
            nxt = hf_engine.model(torch.tensor([ids])).logits[0, -1].argmax().item()
            assert nxt == tok
            ids.append(tok)


def test_rollout_hf_seed_reproducible_and_n_samples_distinct(hf_engine):
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=11)
    a = hf_engine.generate(PROMPTS[:2], sp)
    assert [(r.prompt_index, r.sample_index) for r in a] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    b = hf_engine.generate(PROMPTS[:2], sp)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    # per-request seeds: the same (prompt, sample) gets the same tokens in a different batch layout
    c = hf_engine.generate(PROMPTS[1:2], sp, first_index=1)
    assert [r.token_ids for r in c] == [r.token_ids for r in a[3:]] and c[0].prompt_index == 1
    assert len({tuple(r.token_ids) for r in a[:3]}) == 3  # samples differ
    d = hf_engine.generate(PROMPTS[:2], sp.with_(seed=12))
    assert [r.token_ids for r in d] != [r.token_ids for r in a]


def test_rollout_hf_top_k_and_top_p_restrict_the_support(hf_engine):
    ids = hf_engine.tokenizer("The crowd")["input_ids"]
    with torch.no_grad():
        logits = hf_engine.model(torch.tensor([ids])).logits[0, -1]
    top5 = set(torch.topk(logits, 5).indices.tolist())
    firsts = {r.token_ids[0] for r in hf_engine.generate(["The crowd"], SamplingParams(
        max_new_tokens=1, temperature=1.0, top_k=5, n=40, seed=0))}
    assert firsts <= top5 and len(firsts) > 1
    # top_k=1 and a tiny top_p are greedy
    g = hf_engine.generate(PROMPTS, GREEDY)
    for sp in (SamplingParams(max_new_tokens=12, temperature=1.0, top_k=1, seed=5),
               SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=5)):
        assert [r.token_ids for r in hf_engine.generate(PROMPTS, sp)] == [r.token_ids for r in g]


def test_rollout_hf_filter_logits_math():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = torch.softmax(_filter_logits(logits, 1.0, 0, 0.7), -1)[0]
    assert torch.allclose(p, torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0, 0]))  # smallest set with mass >= 0.7
    p = torch.softmax(_filter_logits(logits, 1.0, 3, 1.0), -1)[0]
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    p = torch.softmax(_filter_logits(logits, 2.0, 0, 1.0), -1)[0]  # temperature 2 = sqrt of probs
    q = torch.sqrt(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(p, q / q.sum())


def test_rollout_hf_sampling_frequencies_follow_the_model(hf_engine):
    """The exponential-race sampler draws the first token with the model's probabilities."""
    ids = hf_engine.tokenizer("x")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(hf_engine.model(torch.tensor([ids])).logits[0, -1] / 0.05, -1)
    top = torch.topk(probs, 2)
    n = 400
    out = hf_engine.generate(["x"], SamplingParams(max_new_tokens=1, temperature=0.05, n=n, seed=1))
    freq = sum(r.token_ids[0] == top.indices[0].item() for r in out) / n
    p = top.values[0].item()
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_rollout_hf_eos_and_stop_strings_set_finish_reasons(hf_engine):
    base = hf_engine.generate(["The crowd"], GREEDY)[0]
    saved = hf_engine.eos_id
    try:
        k = next(k for k in range(1, 12) if base.token_ids[k] not in base.token_ids[:k])
        hf_engine.eos_id = base.token_ids[k]  # pretend the first new greedy token after the first is EOS
        r = hf_engine.generate(["The crowd"], GREEDY)[0]
        assert r.finish_reason == "stop" and r.token_ids == base.token_ids[:k + 1] and r.stop_string is None
        r = hf_engine.generate(["The crowd"], GREEDY.with_(ignore_eos=True))[0]
        assert r.finish_reason == "length" and r.token_ids == base.token_ids
    finally:
        hf_engine.eos_id = saved
    stop = base.text[len(base.text) // 2:len(base.text) // 2 + 2]
    r = hf_engine.generate(["The crowd"], GREEDY.with_(stop=(stop,)))[0]
    assert r.finish_reason == "stop" and r.stop_string == stop
    assert stop not in r.text and base.text.startswith(r.text)
    assert r.token_ids == base.token_ids[:len(r.token_ids)] and len(r.token_ids) < len(base.token_ids)


def test_rollout_hf_prompt_validation(hf_engine):
    with pytest.raises(RolloutError, match="prompt 0 is an empty list of token ids"):
        hf_engine.generate([[]], GREEDY)
    with pytest.raises(RolloutError, match="outside the vocabulary"):
        hf_engine.generate([[1, 10**6]], GREEDY)
    with pytest.raises(RolloutError, match=r"prompt 1 has \d+ tokens; the limit is 4"):
        from raydprm.rollout.hf_engine import HFEngine

        HFEngine(hf_engine.model, tokenizer=hf_engine.tokenizer, max_prompt_tokens=4).generate(
            ["a", "a long prompt with many many words in it"], GREEDY)
    with pytest.raises(RolloutError, match="single string"):
        hf_engine.generate("just one string", GREEDY)
    # token-id prompts and the empty string (BOS) work
    out = hf_engine.generate([[5, 6, 7], ""], GREEDY)
    assert out[0].prompt_ids == [5, 6, 7] and out[1].prompt_ids == [hf_engine.tokenizer.bos_token_id]


def test_rollout_hf_load_weights_refuses_unknown_names_without_touching_the_model(hf_engine):
    before = {k: v.clone() for k, v in hf_engine.model.state_dict().items()}
    sd = {k: v + 1 for k, v in before.items()}
    sd["bogus.weight"] = torch.zeros(1)
    with pytest.raises(RolloutError, match="not in the model"):
        hf_engine.load_weights(sd.items())
    with pytest.raises(RolloutError, match="has shape"):
        hf_engine.load_weights([("transformer.wte.weight", torch.zeros(3, 3))])
    for k, v in hf_engine.model.state_dict().items():
        assert torch.equal(v, before[k])
