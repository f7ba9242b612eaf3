"""SFT on the simulated world teaches the tiny policy the answer format."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from raydprm.sim.world import FILLER, TOPICS, prompts, sft_corpus
from raydprm.train.sft import encode_pairs, sft


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
