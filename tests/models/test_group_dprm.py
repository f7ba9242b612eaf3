"""The group-conditioned DPRM: one label distribution per rater group, the population a mixture
under weights given at scoring time (no retraining to re-weight), save/load with its groups."""

import pytest
import torch

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.models.dprm import GroupDPRM
from raydprm.models.reward_models import load_reward_model

PROMPTS = ["Q: how do I boil an egg ?\nA:", "Q: what is a loan ?\nA:", "Q: hi\nA:"]
RESPONSES = [" put it in boiling water .", " money you borrow and pay back with interest .", " no"]


def test_group_dprm_mixture_reweights_without_retraining_and_roundtrips(tiny_kit, tmp_path):
    scale = LabelScale(("safe", "unsure", "unsafe"), (1.0, 0.0, -1.0))
    m = GroupDPRM.from_backbone("tiny-opt", scale, max_length=64, groups=["a", "b"], group_weights=[3.0, 1.0])
    with torch.no_grad():  # make the two groups' heads differ clearly
        m.head.bias.copy_(torch.tensor([4.0, 0.0, 0.0, 0.0, 0.0, 4.0]))
    out = m.score(PROMPTS, RESPONSES)
    mu_g = out.group_distribution.double()
    assert mu_g.shape == (3, 2, 3) and out.groups == ["a", "b"]  # (B, G, L)
    assert torch.allclose(mu_g.sum(-1), torch.ones(3, 2, dtype=torch.float64), atol=1e-6)
    r = scale.reward_tensor()
    assert torch.allclose(out.group_expected.double(), mu_g @ r, atol=1e-5)  # E_mu_g[r]
    # the default population: the training vote shares 3:1
    assert torch.allclose(out.distribution.double(), 0.75 * mu_g[:, 0] + 0.25 * mu_g[:, 1], atol=1e-5)
    # any weights at scoring time, same weights: a group alone is its own head
    only_b = m.score(PROMPTS, RESPONSES, weights={"b": 1.0})
    assert torch.allclose(only_b.distribution, out.group_distribution[:, 1], atol=1e-6)
    assert torch.all(only_b.expected < out.expected)  # b's head leans to 'unsafe'
    items = out.to_items(scale.names, with_groups=True)
    assert set(items[0]["groups"]) == {"a", "b"} and set(items[0]["groups"]["a"]["distribution"]) == set(scale.names)
    with pytest.raises(RaydprmError, match="unknown groups"):
        m.score(PROMPTS, RESPONSES, weights={"c": 1.0})
    with pytest.raises(RaydprmError, match="not all zero"):
        m.score(PROMPTS, RESPONSES, weights={"a": 0.0})
    m.save(tmp_path / "g")
    back = load_reward_model(tmp_path / "g", scale)
    assert isinstance(back, GroupDPRM) and back.groups == ["a", "b"] and back.group_weights == [3.0, 1.0]
    assert torch.allclose(back.score(PROMPTS, RESPONSES).group_distribution, out.group_distribution, atol=1e-6)
    with pytest.raises(RaydprmError):
        load_reward_model(tmp_path / "g", LabelScale.hh())  # another label scale is refused
