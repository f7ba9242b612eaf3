"""The direct-alignment learner: pairs from a store export, loss goes down on a tiny model,
bit-identical resume, HF export, config validation."""

import pytest
import torch

from raydprm.config import ENGINE_KEYS, HH_REWARDS, AlignConfig, Config, EngineSection, load_config
from raydprm.core.pbde import crowd_preference
from raydprm.errors import ConfigError, RaydprmError
from raydprm.models.policy import load_tokenizer
from raydprm.train.direct_alignment import (
    DirectAlignmentLearner,
    PairBatch,
    PairBatchError,
    pair_batches,
    pairs_from_export,
)

GOOD = [0.7, 0.2, 0.1, 0, 0, 0]
MID = [0.2, 0.4, 0.3, 0.1, 0, 0]
BAD = [0.1, 0.1, 0.2, 0.1, 0.2, 0.3]


def export_rows():
    rows = []
    for k in range(8):
        p = f"question {k}: how do I water a plant?"
        rows += [{"prompt": p, "response": f"water it gently every {k + 2} days", "target": GOOD},
                 {"prompt": p, "response": "no idea, figure it out yourself", "target": BAD},
                 {"prompt": p, "response": f"maybe water {k} times", "target": MID}]
    rows.append({"prompt": "a lonely prompt", "response": "one answer", "target": GOOD})  # no partner
    return rows


def test_pairs_from_export_orients_by_crowd_preference():
    pairs = pairs_from_export(export_rows(), HH_REWARDS, pairs_per_prompt=3)
    assert len(pairs) == 8 * 3  # 3 pairs per prompt, the lonely prompt gives none
    for p in pairs:
        assert p["target"] >= 0.5
        if "figure it out" in p["chosen"]:
            raise AssertionError("the crowd never prefers the rude answer")
    one = next(p for p in pairs if "gently" in p["chosen"] and "figure" in p["rejected"])
    assert one["target"] == pytest.approx(float(crowd_preference(GOOD, BAD, HH_REWARDS)))
    # at most pairs_per_prompt per prompt, seeded
    few = pairs_from_export(export_rows(), HH_REWARDS, pairs_per_prompt=1, seed=3)
    assert len(few) == 8 and few == pairs_from_export(export_rows(), HH_REWARDS, pairs_per_prompt=1, seed=3)
    # exact ties have no hard label
    tie = [{"prompt": "q", "response": "a", "target": MID}, {"prompt": "q", "response": "b", "target": MID}]
    with pytest.raises(PairBatchError, match="no pairs"):
        pairs_from_export(tie, HH_REWARDS)
    assert pairs_from_export(tie, HH_REWARDS, hard=False)[0]["target"] == 0.5


def test_pair_batch_shapes_and_eos(tiny_kit):
    tok = load_tokenizer("tiny-gpt2")
    pairs = pairs_from_export(export_rows(), HH_REWARDS)
    b = PairBatch.from_pairs(pairs[:5], tok, max_prompt_tokens=8, max_response_tokens=6)
    assert b.prompt_ids.shape[0] == 5 and b.prompt_ids.shape[1] <= 8 and b.chosen_ids.shape[1] <= 6
    assert b.chosen_ids.shape == b.rejected_ids.shape
    last = b.chosen_mask.sum(1) - 1
    assert torch.all(b.chosen_ids[torch.arange(5), last] == tok.eos_token_id)
    assert torch.all(b.prompt_mask[:, -1] == 1)  # left-padded prompts
    with pytest.raises(PairBatchError, match="target"):
        PairBatch(b.prompt_ids, b.prompt_mask, b.chosen_ids, b.chosen_mask, b.rejected_ids, b.rejected_mask,
                  b.target + 2)
    stream = pair_batches(pairs, 8, seed=1)
    first = [next(stream) for _ in range(4)]
    assert all(len(x) == 8 for x in first)


def cfg(**kw):
    """The learner's ``align`` and ``engine`` sections (keyword arguments of DirectAlignmentLearner)."""
    engine = {"micro_batch": 4, "engine": "torch"} | {k: kw.pop(k) for k in list(kw) if k in ENGINE_KEYS}
    return {"align": AlignConfig(**dict(algo="dpo", beta=0.5, batch=16, minibatch=8, lr=2e-3) | kw),
            "engine": EngineSection(**engine)}


@pytest.fixture(scope="module")
def batch(tiny_kit):
    tok = load_tokenizer("tiny-gpt2")
    pairs = pairs_from_export(export_rows(), HH_REWARDS, pairs_per_prompt=2)
    return PairBatch.from_pairs(pairs, tok, max_prompt_tokens=16, max_response_tokens=12)


@pytest.mark.parametrize("algo", ["dpo", "crowd_dpo", "ipo", "slic", "slic_rso", "rrhf"])
def test_every_algo_lowers_its_loss(batch, algo):
    lr = cfg_lr(algo=algo)
    before = lr.evaluate(batch)["align/eval_loss"]
    for _ in range(4):
        m = lr.update(batch)
    after = lr.evaluate(batch)["align/eval_loss"]
    assert after < before, (algo, before, after)
    assert m["align/optimizer_steps"] == 2 and m["align/step"] == 4
    if algo not in ("slic", "slic_rso"):  # a satisfied hinge has zero gradient
        assert m["align/grad_norm"] > 0
    if algo in ("dpo", "crowd_dpo", "ipo"):
        # the implicit reward margin moved in the crowd's direction
        assert m["align/chosen_logratio"] > m["align/rejected_logratio"]
    if algo == "crowd_dpo":
        assert 0.5 < m["align/target"] < 1.0


def _params(learner):
    return {k: v.detach().clone() for k, v in learner.full_state_dict().items()}


def cfg_lr(**kw):
    return DirectAlignmentLearner(**cfg(**kw), policy="tiny-gpt2", seed=0)


@pytest.mark.deepspeed
def test_resume_is_bit_identical_deepspeed(batch, tmp_path):
    c = cfg(engine="deepspeed", zero_stage=0, epochs=2)
    parts = [batch.select(torch.arange(i, i + 8)) for i in (0, 8, 0)]
    a = DirectAlignmentLearner(**c, policy="tiny-gpt2", seed=3)
    for b in parts:
        a.update(b)
    want = _params(a)

    b1 = DirectAlignmentLearner(**c, policy="tiny-gpt2", seed=3)
    b1.update(parts[0])
    b1.save(tmp_path / "ckpt")
    rng_after_save = torch.rand(3)
    del b1
    torch.manual_seed(1234)
    b2 = DirectAlignmentLearner(**c, policy="tiny-gpt2", seed=3)
    b2.load(tmp_path / "ckpt")
    assert torch.equal(torch.rand(3), rng_after_save)
    assert b2.step == 1
    for b in parts[1:]:
        b2.update(b)
    got = _params(b2)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed parameters differ"
    init = _params(DirectAlignmentLearner(**c, policy="tiny-gpt2", seed=3))
    assert max(float((want[k] - init[k]).abs().max()) for k in want) > 1e-5  # training moved them

    # refuse a checkpoint of another algorithm, or an incomplete one
    other = DirectAlignmentLearner(**cfg(engine="deepspeed", algo="ipo"), policy="tiny-gpt2")
    with pytest.raises(RaydprmError, match="align.algo"):
        other.load(tmp_path / "ckpt")
    with pytest.raises(RaydprmError, match="COMPLETE"):
        other.load(tmp_path)


def test_export_hf_loads_and_matches(batch, tmp_path):
    from transformers import AutoModelForCausalLM

    lr = cfg_lr()
    lr.update(batch)
    out = lr.export_hf(tmp_path / "hf")
    m = AutoModelForCausalLM.from_pretrained(out).eval()
    state = lr.policy_state_dict()
    for k, v in m.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), k


def test_bad_config_and_batches_are_refused(batch):
    with pytest.raises(ConfigError, match="align.algo"):
        load_config(None, ["align.algo=ppo"])
    with pytest.raises(ConfigError, match="align.minibatch"):
        AlignConfig(batch=12, minibatch=8)
    with pytest.raises(ConfigError, match=r"'engine.micro_batch' = 3 must divide .* align.minibatch / engine.num_workers"):
        load_config(None, ["align.minibatch=8", "engine.micro_batch=3", "ppo.minibatch=6", "ppo.rollout_batch=12",
                           "pipeline.policies=[vanilla,dpo]"])  # a run with a direct-alignment arm
    assert Config().align.algo == "dpo"
    lr = cfg_lr()
    with pytest.raises(PairBatchError, match="minibatch"):
        lr.update(batch.select(torch.arange(5)))
    with pytest.raises(PairBatchError, match="PairBatch"):
        lr.update("not a batch")


def test_pairs_from_a_real_store_export(tmp_path):
    from raydprm.store import PreferenceStore

    P = "how do I water a plant?"
    answers = {"gently, every few days": 0, "no idea": 5, "maybe": 2}
    with PreferenceStore(tmp_path / "s.db") as s:
        votes = [{"vote_id": f"{r}-{k}", "prompt": P, "response": r, "persona": "scientist",
                  "label": min(lab + k % 2, 5)} for r, lab in answers.items() for k in range(4)]
        s.add_votes(votes)
        export = s.export()
        dist = {r: s.distribution(P, r) for r in answers}
    pairs = pairs_from_export(export, HH_REWARDS)
    assert len(pairs) == 3
    for p in pairs:
        assert p["target"] == pytest.approx(float(crowd_preference(dist[p["chosen"]], dist[p["rejected"]],
                                                                   HH_REWARDS)))
        assert p["target"] > 0.5
    assert {p["chosen"] for p in pairs} >= {"gently, every few days"}
