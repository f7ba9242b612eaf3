"""SFT on the simulated world teaches the tiny policy the answer format."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from raydprm.sim.world import FILLER, TOPICS, prompts, sft_corpus
from raydprm.train.sft import _collate, encode_pairs, sft


def test_response_only_labels(tiny_kit):
    tok = AutoTokenizer.from_pretrained(tiny_kit["tiny-gpt2"])
    (ids, start), = encode_pairs(tok, [{"prompt": "Q: how do i bake bread ?\nA:", "response": " bread ."}], 64)
    assert tok.decode(ids[:start]) == "Q: how do i bake bread ?\nA:"
    assert ids[-1] == tok.eos_token_id


def test_sft_lowers_loss_and_learns_format(tiny_kit, tmp_path):
    data = sft_corpus(2000, seed=1, qualities={"good": 1.0})
    res = sft(tiny_kit["tiny-gpt2"], data, tmp_path / "sft", epochs=2, lr=5e-3, batch_size=32, progress=False)
    assert res.steps == 126 and res.final_loss < 0.4 * res.first_loss
    tok = AutoTokenizer.from_pretrained(res.path)
    model = AutoModelForCausalLM.from_pretrained(res.path)
    ps = prompts(8, seed=5)
    enc = tok(ps, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    world = {w for t in TOPICS.values() for w in t.vocab} | set(FILLER)
    for row in out[:, enc["input_ids"].shape[1]:]:
        assert tok.eos_token_id in row.tolist(), "the policy learned to stop"
        words = tok.decode(row, skip_special_tokens=True).split()
        content = [w for w in words if w.isalpha() and len(w) > 3]
        assert content and sum(w in world for w in content) >= 0.5 * len(content), words


def test_sft_trains_without_dropout_and_saves_the_shipped_config(tiny_kit, tmp_path):
    data = sft_corpus(64, seed=2)
    shipped = AutoConfig.from_pretrained(tiny_kit["tiny-gpt2"])
    assert shipped.resid_pdrop > 0  # the kit ships dropout, so the override is observable
    tok = AutoTokenizer.from_pretrained(tiny_kit["tiny-gpt2"])
    model = AutoModelForCausalLM.from_pretrained(tiny_kit["tiny-gpt2"]).eval()
    # one batch of all 64 examples: the token-mean loss does not depend on their order
    ids, attn, labels = _collate(encode_pairs(tok, data, 96), tok.pad_token_id)
    with torch.no_grad():
        eval_loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss.item()
    # without dropout the first training step's loss is the eval-mode loss of the same batch
    res = sft(tiny_kit["tiny-gpt2"], data, tmp_path / "a", epochs=1, batch_size=64, seed=0, progress=False)
    assert res.first_loss == pytest.approx(eval_loss, rel=1e-5)
    with_dropout = sft(tiny_kit["tiny-gpt2"], data, tmp_path / "b", epochs=1, batch_size=64, seed=0,
                       dropout=None, progress=False)
    assert abs(with_dropout.first_loss - eval_loss) > 1e-4
    saved = json.loads((res.path / "config.json").read_text())
    assert saved["resid_pdrop"] == shipped.resid_pdrop and saved["attn_pdrop"] == shipped.attn_pdrop
    with pytest.raises(ValueError, match="dropout"):
        sft(tiny_kit["tiny-gpt2"], data, tmp_path / "c", dropout=1.0, progress=False)
