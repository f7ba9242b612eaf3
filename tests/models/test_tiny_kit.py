"""Tiny offline model kit: tokenizer and models round-trip through ordinary HF directories."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raydprm.models.tiny import TINY_MODELS, ensure_tiny_models, resolve_model, save_kit, train_tokenizer

TEXTS = [f"question {i}: how do plants grow? answer: plants need light, water and soil {i % 7}." for i in range(300)]


def test_tokenizer_is_byte_level_and_deterministic():
    a = train_tokenizer(TEXTS, vocab_size=400)
    b = train_tokenizer(TEXTS, vocab_size=400)
    assert a.get_vocab() == b.get_vocab()
    s = "unseen ünïcödé text 🚀 and plants"
    assert a.decode(a(s)["input_ids"]) == s  # byte level: nothing is unknown
    assert a.pad_token == "<|pad|>" and a.eos_token == "<|endoftext|>" and a.pad_token_id != a.eos_token_id


def test_kit_round_trip_through_directory(tmp_path):
    paths = save_kit(tmp_path, TEXTS, names=["tiny-gpt2", "tiny-opt"], vocab_size=400)
    for name, d in paths.items():
        assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.padding_side == "left" and tok.pad_token == "<|pad|>"
        model = AutoModelForCausalLM.from_pretrained(d)
        assert model.config.vocab_size == len(tok)
        ids = tok(["plants need light"], return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits
        assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
        # saving and reloading gives identical outputs
        model.save_pretrained(tmp_path / f"{name}-again")
        again = AutoModelForCausalLM.from_pretrained(tmp_path / f"{name}-again")
        with torch.no_grad():
            assert torch.equal(again(**ids).logits, logits)
    assert AutoModelForCausalLM.from_pretrained(paths["tiny-opt"]).config.model_type == "opt"


def test_seeded_builds_are_identical(tmp_path):
    a = save_kit(tmp_path / "a", TEXTS, names=["tiny-gpt2"], vocab_size=400)["tiny-gpt2"]
    b = save_kit(tmp_path / "b", TEXTS, names=["tiny-gpt2"], vocab_size=400)["tiny-gpt2"]
    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resolve_passes_dirs_and_hub_names_through(tmp_path):
    assert resolve_model("facebook/opt-125m") == "facebook/opt-125m"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert set(TINY_MODELS) >= {"tiny-gpt2", "tiny-opt", "small-gpt2"}


def test_ensure_builds_once_and_reuses(tmp_path):
    calls = []

    def corpus():
        calls.append(1)
        return TEXTS

    first = ensure_tiny_models(tmp_path, names=["tiny-gpt2"], corpus=corpus)
    mtime = (first["tiny-gpt2"] / "config.json").stat().st_mtime_ns
    second = ensure_tiny_models(tmp_path, names=["tiny-gpt2"], corpus=corpus)
    assert second == first
    assert (second["tiny-gpt2"] / "config.json").stat().st_mtime_ns == mtime  # not rebuilt


def test_default_kit_trains_on_the_simulated_world(tiny_kit):
    tok = AutoTokenizer.from_pretrained(tiny_kit["tiny-gpt2"])
    from raydprm.sim.world import tokenizer_corpus

    sample = tokenizer_corpus()[0]
    ids = tok(sample)["input_ids"]
    assert tok.decode(ids) == sample
    assert len(ids) < len(sample.encode()) / 2  # BPE actually merged the world's vocabulary
