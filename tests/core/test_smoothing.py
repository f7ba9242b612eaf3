"""Targeted label smoothing keeps distributions and moves mass where the paper says."""

import pytest
import torch

from raydprm.core import LabelScale, cost_matrix, targeted_smoothing
from raydprm.core.smoothing import smooth


def test_moves_mass_from_top_to_second():
    mu = torch.tensor([[0.5, 0.1, 0.4, 0, 0, 0]], dtype=torch.float64)
    out = targeted_smoothing(mu, 0.1)
    assert torch.allclose(out, torch.tensor([[0.4, 0.1, 0.5, 0, 0, 0]], dtype=torch.float64))
    # one-hot: the receiver is the neighbouring label ("near certainty")
    out = targeted_smoothing(torch.eye(6, dtype=torch.float64)[3], 0.05)
    assert torch.allclose(out, torch.tensor([0, 0, 0.05, 0.95, 0, 0], dtype=torch.float64))
    # epsilon larger than the top mass moves only what is there
    out = targeted_smoothing(torch.tensor([0.4, 0.3, 0.3]), 0.9)
    assert torch.allclose(out, torch.tensor([0.0, 0.7, 0.3]))


def test_cost_variant_picks_cheapest_label():
    s = LabelScale.hh()
    M = cost_matrix("reward_gap", s)
    mu = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # type 6 (r = -3)
    out = targeted_smoothing(mu, 0.1, cost=M)
    assert float(out[4]) == pytest.approx(0.1)  # type 5 (r = -1.5) is the cheapest to reach
    assert torch.equal(smooth(mu, "targeted_cost", 0.1, cost=M), out)


def test_keeps_a_distribution():
    g = torch.Generator().manual_seed(0)
    mu = torch.softmax(3 * torch.randn(500, 6, generator=g, dtype=torch.float64), -1)
    mu[:100] = torch.nn.functional.one_hot(torch.randint(0, 6, (100,), generator=g), 6).double()
    M = cost_matrix("grid_l1", LabelScale.hh())
    for out in (targeted_smoothing(mu, 0.2), targeted_smoothing(mu, 0.2, cost=M)):
        assert torch.all(out >= 0)
        assert torch.allclose(out.sum(1), torch.ones(500, dtype=torch.float64), atol=1e-12)
        assert int(((out - mu).abs() > 0).sum(1).max()) <= 2  # only two labels change


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="epsilon"):
        targeted_smoothing(torch.eye(3)[0], 1.5)
    with pytest.raises(ValueError, match="sum to 1"):
        targeted_smoothing(torch.tensor([0.5, 0.6]), 0.1)
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth(torch.eye(3)[0], "gaussian")
    with pytest.raises(ValueError, match="needs a cost"):
        smooth(torch.eye(3)[0], "targeted_cost")
