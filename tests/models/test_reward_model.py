"""DPRM / BT reward models: head shapes, readouts, batch invariance, save/load, label-scale checks."""

import math

import pytest
import torch

from raydprm.core.label_scale import LabelScale
from raydprm.core.pairwise_loss import pairwise_loss, reduce_pairs
from raydprm.errors import RaydprmError
from raydprm.models.bt import BTRewardModel
from raydprm.models.dprm import DPRM
from raydprm.models.reward_models import load_reward_model

PROMPTS = ["Q: how do I boil an egg ?\nA:", "Q: what is a loan ?\nA:", "Q: hi\nA:"]
RESPONSES = [" put it in boiling water .", " money you borrow and pay back with interest over many months .", " no"]


@pytest.mark.parametrize("backbone", ["tiny-opt", "tiny-gpt2"])
def test_reward_dprm_shapes_and_readouts(tiny_kit, backbone):
    scale = LabelScale.hh()
    m = DPRM.from_backbone(backbone, scale, max_length=64)
    z = m.logits(PROMPTS, RESPONSES)
    assert z.shape == (3, 6)  # (B, L)
    out = m.score(PROMPTS, RESPONSES, scalar="cvar", cvar_alpha=0.3)
    mu = out.distribution
    assert mu.shape == (3, 6)
    assert torch.allclose(mu.sum(-1), torch.ones(3), atol=1e-6)
    r = torch.tensor(scale.rewards)
    assert torch.allclose(out.expected, mu @ r, atol=1e-5)  # E_mu[r]
    assert torch.all(out.entropy >= 0) and torch.all(out.entropy <= math.log(6) + 1e-6)
    assert torch.all(out.cvar <= out.expected + 1e-6)  # a lower tail is never above the mean
    assert torch.allclose(out.scalar, out.cvar)
    ms = m.score(PROMPTS, RESPONSES, scalar="mean_std", kappa=0.5).scalar
    std = ((mu * r * r).sum(-1) - (mu @ r) ** 2).clamp_min(0).sqrt()
    assert torch.allclose(ms, mu @ r - 0.5 * std, atol=1e-5)
    items = out.to_items(scale.names)
    assert set(items[0]["distribution"]) == set(scale.names)
    with pytest.raises(RaydprmError, match="unknown scalar"):
        m.score(PROMPTS, RESPONSES, scalar="median")


def test_reward_dprm_score_is_batch_invariant(tiny_kit):
    """Right padding + last-token pooling: a text scores the same alone or in any batch."""
    m = DPRM.from_backbone("tiny-opt", LabelScale.hh())
    batched = m.score(PROMPTS, RESPONSES).logits
    for i in range(3):
        alone = m.score(PROMPTS[i:i + 1], RESPONSES[i:i + 1]).logits
        assert torch.allclose(alone[0], batched[i], atol=1e-5)


def test_reward_dprm_truncates_from_the_left(tiny_kit):
    m = DPRM.from_backbone("tiny-opt", LabelScale.hh(), max_length=16)
    enc = m.backbone.tokenize(["word " * 100], [" the response end ."])
    assert enc["input_ids"].shape[1] == 16
    assert enc["input_ids"][0, -1].item() == m.backbone.end_id  # the pooled token is the end marker


def test_reward_dprm_save_load_roundtrip_and_scale_mismatch(tiny_kit, tmp_path):
    from raydprm.config import LabelsConfig

    scale = LabelScale.from_config(LabelsConfig())
    m = DPRM.from_backbone("tiny-opt", scale, max_length=64)
    with torch.no_grad():
        m.head.bias.add_(torch.arange(6.0))  # make the head non-trivial
    m.save(tmp_path / "rm")
    assert {p.name for p in (tmp_path / "rm").iterdir()} >= {"backbone", "head.pt", "reward_model.json"}
    m2 = DPRM.load(tmp_path / "rm", scale)
    assert m2.backbone.max_length == 64
    assert torch.allclose(m.score(PROMPTS, RESPONSES).logits, m2.score(PROMPTS, RESPONSES).logits, atol=1e-6)
    other = LabelScale(names=scale.names, rewards=(1.0, 0.0, -1.0, -1.0, -1.5, -3.0))
    with pytest.raises(RaydprmError, match="label scale .* differs"):
        DPRM.load(tmp_path / "rm", other)
    with pytest.raises(RaydprmError, match="labels"):
        DPRM.load(tmp_path / "rm", LabelScale.ordinal(3))
    with pytest.raises(RaydprmError, match="not a raydprm reward model"):
        DPRM.load(tmp_path, scale)


def test_reward_bt_model_shapes_save_load(tiny_kit, tmp_path):
    m = BTRewardModel.from_backbone("tiny-gpt2", LabelScale.hh())
    s = m.score(PROMPTS, RESPONSES)
    assert s.shape == (3,)
    m.save(tmp_path / "bt")
    m2 = load_reward_model(tmp_path / "bt")
    assert isinstance(m2, BTRewardModel)
    assert torch.allclose(s, m2.score(PROMPTS, RESPONSES), atol=1e-6)
    with pytest.raises(RaydprmError, match="'bt' reward model, expected 'dprm'"):
        DPRM.load(tmp_path / "bt")
    # BT loss: -log sigmoid(d); d = 0 -> log 2
    per_pair, _ = pairwise_loss("bt")(torch.zeros(4), torch.zeros(4))
    assert math.isclose(float(reduce_pairs(per_pair)), math.log(2), rel_tol=1e-6)


def test_reward_dprm_on_an_encoder_backbone(tiny_kit, tmp_path):
    """Any HF backbone: a (tiny, random) BERT encoder loads through AutoModel too."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tiny_kit["tiny-opt"])
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    m = DPRM.from_backbone(str(tmp_path / "bert"), LabelScale.hh())
    assert m.backbone.hidden_size == 32
    out = m.score(PROMPTS, RESPONSES)
    assert out.distribution.shape == (3, 6)
    alone = m.score(PROMPTS[:1], RESPONSES[:1]).logits
    assert torch.allclose(alone[0], out.logits[0], atol=1e-5)


def test_reward_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(RaydprmError, match="does not exist .*not a kit name"):
        DPRM.from_backbone(str(tmp_path / "nope"), LabelScale.hh())
