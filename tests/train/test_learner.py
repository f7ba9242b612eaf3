"""The single-process PPO learner: DeepSpeed vs torch engine, metrics, exact resume,
HF export, probes, bad input."""

import dataclasses
import logging

import pytest
import torch
from helpers import make_batch

from raydprm.config import ENGINE_KEYS, EngineConfig, EngineSection, PPOConfig
from raydprm.errors import ConfigError, RaydprmError
from raydprm.train import ds_engine
from raydprm.train.learner import PPOLearner
from raydprm.train.rollout_batch import RolloutBatch, RolloutBatchError

pytestmark = pytest.mark.deepspeed


METRICS = ["ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "ppo/kl_coef", "ppo/entropy",
           "ppo/grad_norm", "ppo/tokens_per_s", "ppo/kl", "ppo/reward"]


def ppo_cfg(**kw):
    """The learner's ``ppo`` and ``engine`` sections (keyword arguments of PPOLearner), ``kw`` of either."""
    base = dict(rollout_batch=16, minibatch=8, epochs=2, lr=1e-3, kl_controller="adaptive", target_kl=0.01,
                kl_horizon=100)
    engine = {"micro_batch": 4} | {k: kw.pop(k) for k in list(kw) if k in ENGINE_KEYS}
    return {"ppo": PPOConfig(**base | kw), "engine": EngineSection(**engine)}


def params(learner):
    return {k: v.detach().clone() for k, v in learner.full_state_dict().items()}


def test_deepspeed_stage0_update_equals_torch_engine(tiny_kit):
    batch = make_batch()
    ds = PPOLearner(**ppo_cfg(engine="deepspeed"), policy="tiny-gpt2", seed=0)
    assert ds.engine.name == "deepspeed"
    m_ds = ds.update(batch)
    pt = PPOLearner(**ppo_cfg(engine="torch"), policy="tiny-gpt2", seed=0)
    assert pt.engine.name == "torch"
    m_pt = pt.update(batch)
    a, b = params(ds), params(pt)
    assert a.keys() == b.keys()
    init = PPOLearner(**ppo_cfg(engine="torch"), policy="tiny-gpt2", seed=0).full_state_dict()
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    assert moved > 1e-4  # the update did something
    # DeepSpeed clips with its own norm routine (other summation order): equal up to float noise
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    for k in METRICS:
        if k == "ppo/tokens_per_s":  # timing
            continue
        assert k in m_ds and m_ds[k] == pytest.approx(m_pt[k], rel=1e-4, abs=1e-6), k
    assert m_ds["ppo/optimizer_steps"] == 4  # 2 epochs x 16/8 minibatches
    assert m_ds["ppo/grad_norm"] > 0 and m_ds["ppo/tokens_per_s"] > 0
    # first minibatch of the first epoch sees ratio 1: the policy starts where the rollouts were scored
    assert m_ds["ppo/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first step


def test_resume_is_bit_identical_zero2(tiny_kit, tmp_path):
    cfg = ppo_cfg(engine="deepspeed", zero_stage=2)
    batches = [make_batch(seed=s) for s in (1, 2, 3)]
    a = PPOLearner(**cfg, policy="tiny-gpt2", seed=3)
    for b in batches:
        a.update(b)
    want, beta_a = params(a), a.kl_coef

    b1 = PPOLearner(**cfg, policy="tiny-gpt2", seed=3)
    b1.update(batches[0])
    b1.save(tmp_path / "ckpt")
    rng_after_save = torch.rand(3)
    del b1
    torch.manual_seed(1234)  # a fresh process would have other RNG state
    b2 = PPOLearner(**cfg, policy="tiny-gpt2", seed=3)
    b2.load(tmp_path / "ckpt")
    assert torch.equal(torch.rand(3), rng_after_save)  # RNG state restored
    assert b2.step == 1
    for b in batches[1:]:
        b2.update(b)
    got = params(b2)
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed parameters differ"
    assert b2.kl_coef == beta_a and beta_a != cfg["ppo"].beta  # adaptive controller state carried over


def test_load_refuses_incomplete_or_mismatched_checkpoint(tiny_kit, tmp_path):
    lr = PPOLearner(**ppo_cfg(engine="torch"), policy="tiny-gpt2")
    with pytest.raises(RaydprmError, match="not a complete learner checkpoint"):
        lr.load(tmp_path / "nothing")
    lr.save(tmp_path / "t")
    ds = PPOLearner(**ppo_cfg(engine="deepspeed"), policy="tiny-gpt2")
    with pytest.raises(RaydprmError, match="torch worker"):
        ds.load(tmp_path / "t")


def test_export_hf_loads_and_matches_policy(tiny_kit, tmp_path):
    from transformers import AutoModelForCausalLM

    lr = PPOLearner(**ppo_cfg(engine="deepspeed", zero_stage=3), policy="tiny-gpt2")
    lr.update(make_batch())
    out = lr.export_hf(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    seq = [[3, 17, 99, 250, 7, 8], [5, 6, 7]]
    want = lr.score(seq)
    with torch.no_grad():
        for s, w in zip(seq, want):
            ids = torch.tensor([s])
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            assert torch.allclose(lp, torch.tensor(w), atol=1e-5)
            assert len(w) == len(s) - 1
    assert (out / "tokenizer.json").is_file()
    # the export is the trained policy, not the initial one
    init = AutoModelForCausalLM.from_pretrained(tiny_kit["tiny-gpt2"])
    assert not torch.equal(init.transformer.h[0].mlp.c_fc.weight, model.transformer.h[0].mlp.c_fc.weight)


def test_separate_critic_and_seq_mean_and_k3(tiny_kit):
    cfg = ppo_cfg(engine="torch", critic="separate", loss_agg="seq_mean", kl_estimator="k3", entropy_coef=0.01)
    lr = PPOLearner(**cfg, policy="tiny-opt")
    before = {k: v.clone() for k, v in lr.full_state_dict().items() if k.startswith("critic_backbone.")}
    assert before
    m = lr.update(make_batch())
    after = lr.full_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the critic trains
    assert all(torch.isfinite(torch.tensor(m[k])) for k in METRICS)


def test_bf16_deepspeed_runs(tiny_kit):
    lr = PPOLearner(**ppo_cfg(engine="deepspeed", precision="bf16", epochs=1), policy="tiny-gpt2")
    m = lr.update(make_batch())
    assert all(torch.isfinite(torch.tensor(m[k])) for k in METRICS)


def test_torch_fallback_warns_when_deepspeed_missing(tiny_kit, monkeypatch, caplog):
    monkeypatch.setattr(ds_engine, "deepspeed_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="raydprm.train.ds_engine"):
        lr = PPOLearner(**ppo_cfg(engine="deepspeed"), policy="tiny-gpt2")
    assert lr.engine.name == "torch"
    assert "falling back to the plain torch engine" in caplog.text


def test_deepspeed_config_derives_batch_shape():
    engine = EngineSection(micro_batch=4, num_workers=2, zero_stage=3, offload_optimizer=True, offload_params=True,
                           precision="bf16")
    cfg = EngineConfig.of(engine, PPOConfig(rollout_batch=32, minibatch=16, grad_clip=0.5))
    ds = ds_engine.deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 16 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "optimizer" not in ds  # client AdamW
    ds_adam = EngineConfig.of(dataclasses.replace(engine, optimizer="ds_adam"), PPOConfig(rollout_batch=32, minibatch=16))
    assert "optimizer" in ds_engine.deepspeed_config(ds_adam)


@pytest.mark.parametrize("kw,msg", [
    (dict(rollout_batch=30, minibatch=8), "must divide ppo.rollout_batch"),
    (dict(minibatch=9, rollout_batch=18, num_workers=2), r"'ppo.minibatch' = 9 must be a multiple of engine.num_workers"),
    (dict(rollout_batch=24, minibatch=12, micro_batch=5), r"'engine.micro_batch' = 5 must divide the per-worker minibatch"),
    (dict(offload_params=True, zero_stage=2), r"'engine.offload_params' needs engine.zero_stage = 3"),
    (dict(offload_optimizer=True), r"'engine.offload_optimizer' needs engine.zero_stage >= 1"),
])
def test_bad_ppo_config_is_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        c = ppo_cfg(**kw)
        EngineConfig.of(c["engine"], c["ppo"])


def test_bad_batches_are_refused(tiny_kit):
    with pytest.raises(RolloutBatchError, match="2 logprobs for 3 response tokens"):
        RolloutBatch.from_sequences([[1, 2]], [[3, 4, 5]], [0.0], [[0.0, 0.0]])
    with pytest.raises(RolloutBatchError, match="at least one prompt token and one response token"):
        RolloutBatch.from_sequences([[1, 2]], [[]], [0.0])
    with pytest.raises(RolloutBatchError, match="rewards must be finite"):
        RolloutBatch.from_sequences([[1]], [[2]], [float("nan")])
    with pytest.raises(RolloutBatchError, match="must have the same length"):
        RolloutBatch.from_sequences([[1], [2]], [[2]], [0.0])
    b = make_batch(4)
    with pytest.raises(RolloutBatchError, match="right-padded"):
        RolloutBatch(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask.flip(1), b.logprobs, b.rewards)
    lr = PPOLearner(**ppo_cfg(engine="torch"), policy="tiny-gpt2")
    with pytest.raises(RolloutBatchError, match="does not split into minibatches"):
        lr.update(make_batch(12))
    with pytest.raises(RolloutBatchError, match="takes a RolloutBatch"):
        lr.update({"prompt_ids": []})


def test_missing_model_is_a_clear_error(tmp_path):
    from raydprm.errors import RaydprmError
    from raydprm.models.policy import load_policy

    # a local path that does not exist is refused before any loader runs (one clear line)
    with pytest.raises(RaydprmError, match="does not exist .*not a kit name"):
        load_policy(str(tmp_path / "nope"))
    with pytest.raises(RaydprmError, match="does not exist .*not a kit name"):
        load_policy("./not-a-model")


def test_every_zero_stage_and_offload_give_the_same_update(tiny_kit):
    batch = make_batch(seed=5)
    ref = PPOLearner(**ppo_cfg(engine="torch"), policy="tiny-gpt2", seed=0)
    ref.update(batch)
    want = params(ref)
    for kw in (dict(zero_stage=1), dict(zero_stage=2, offload_optimizer=True),
               dict(zero_stage=3, offload_optimizer=True, offload_params=True)):
        lr = PPOLearner(**ppo_cfg(engine="deepspeed", **kw), policy="tiny-gpt2", seed=0)
        lr.update(batch)
        got = params(lr)
        assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5, kw  # flat-buffer sum order


def test_rollout_batch_padding_and_from_responses():
    from types import SimpleNamespace

    recs = [SimpleNamespace(prompt_ids=[7, 8, 9], token_ids=[4], logprobs=[-0.5]),
            SimpleNamespace(prompt_ids=[5], token_ids=[1, 2, 3], logprobs=[-1.0, -2.0, -3.0])]
    b = RolloutBatch.from_responses(recs, [1.0, -1.0], pad_id=0)
    assert b.prompt_ids.tolist() == [[7, 8, 9], [0, 0, 5]] and b.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.response_ids.tolist() == [[4, 0, 0], [1, 2, 3]] and b.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b.logprobs.tolist() == [[-0.5, 0.0, 0.0], [-1.0, -2.0, -3.0]]
    assert len(b) == 2 and b.num_response_tokens == 4 and b.num_tokens == 8
    assert b.shard(1, 2).rewards.tolist() == [-1.0]
    with pytest.raises(RolloutBatchError, match="cannot be split evenly"):
        b.shard(0, 3)


@pytest.mark.parametrize("advantage,kw", [("grpo", dict(kl_in="loss", policy_loss="dual_clip")),
                                          ("rloo", dict(policy_loss="clip_higher")),
                                          ("dr_grpo", dict(loss_agg="token_sum")),
                                          ("reinforce_pp", {})])
def test_critic_free_learner_has_no_value_head_and_trains_the_policy(tiny_kit, advantage, kw):
    """A critic-free estimator: every parameter (and so every optimizer state) is the policy's,
    no value metric is reported, and the update moves the policy."""
    batch = dataclasses.replace(make_batch(), group=torch.arange(16) // 4)  # 4 prompts x 4 responses
    lr = PPOLearner(**ppo_cfg(engine="torch", advantage=advantage, **kw), policy="tiny-gpt2", seed=0)
    names = [n for n, _ in lr.engine.module.named_parameters()]
    assert names and all(n.startswith("lm.") for n in names) and not any("value_head" in n for n in names)
    assert sum(len(g["params"]) for g in lr.engine.optimizer.param_groups) == len(names)
    before = params(lr)
    m = lr.update(batch)
    assert not {"ppo/value_loss", "ppo/vf_clipfrac", "ppo/values"} & set(m)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert ("ppo/kl_loss" in m) == (kw.get("kl_in") == "loss")
    assert ("ppo/dual_clipfrac" in m) == (kw.get("policy_loss") == "dual_clip")
    after = params(lr)
    assert max(float((after[k] - before[k]).abs().max()) for k in after) > 1e-4


def test_rollout_batch_group_defaults_to_one_per_row_and_is_checked():
    b = make_batch(B=4)
    assert b.group.tolist() == [0, 1, 2, 3] and b.select(slice(1, 3)).group.tolist() == [1, 2]
    with pytest.raises(RolloutBatchError, match="group must be"):
        dataclasses.replace(b, group=torch.zeros(3, dtype=torch.long))


def test_every_learner_is_one_rank_base_on_one_engine_config():
    """PPO and direct alignment share the rank base and one engine section; EngineConfig joins it
    with each algorithm's optimisation keys and its checks name the real keys."""
    from raydprm.config import AlignConfig
    from raydprm.train.direct_alignment import DirectAlignmentLearner
    from raydprm.train.rank import LearnerRank

    assert issubclass(PPOLearner, LearnerRank) and issubclass(DirectAlignmentLearner, LearnerRank)
    for cls in (PPOLearner, DirectAlignmentLearner):  # neither repeats the rank base's set-up or checkpoints
        assert not {"_build", "save", "load", "_ref_logits", "_ref_token_logprobs", "export_hf"} & set(vars(cls))
    engine = EngineSection(micro_batch=2, num_workers=2, engine="torch")
    ppo, align = EngineConfig.of(engine, ppo_cfg()["ppo"]), EngineConfig.of(engine, AlignConfig(minibatch=8))
    assert (ppo.grad_accum, ppo.section, ppo.engine) == (2, "ppo", "torch")
    assert (align.engine, align.grad_accum, align.section) == ("torch", 2, "align")
    with pytest.raises(ConfigError, match=r"'engine.micro_batch' = 3 must divide .* align.minibatch / engine.num_workers"):
        EngineConfig.of(EngineSection(micro_batch=3, num_workers=2), AlignConfig(minibatch=8))
