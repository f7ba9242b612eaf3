"""Cost matrices: named costs, validation rules, 1-D structure detection."""

import pytest
import torch

from raydprm.core import COST_NAMES, LabelScale, cost_matrix, validate_cost
from raydprm.core.cost import line_embedding


def test_named_costs_on_hh():
    s = LabelScale.hh()
    assert set(COST_NAMES) >= {"reward_gap", "ordinal", "grid_l1", "custom"}
    rg = cost_matrix("reward_gap", s)
    assert rg[0, 5] == 4.0 and rg[2, 3] == 0.0  # types 3 and 4 tie: a pseudo-metric
    assert torch.equal(cost_matrix("ordinal", s, p=2)[0], torch.tensor([0, 1, 4, 9, 16, 25.0], dtype=torch.float64))
    g = cost_matrix("grid_l1", s)
    assert g[2, 3] == 3.0  # grid L1 separates the reward tie: (0,0) vs (2,1)
    assert torch.equal(g, g.T) and torch.all(torch.diagonal(g) == 0)
    custom = cost_matrix("custom", s, matrix=g * 2)
    assert torch.equal(custom, g * 2)


def test_line_embedding_detects_1d_costs():
    s = LabelScale.hh()
    x, p = line_embedding(cost_matrix("reward_gap", s))
    assert p == 1.0
    M = cost_matrix("reward_gap", s)
    assert torch.allclose((torch.tensor(x)[:, None] - torch.tensor(x)[None]).abs(), M)
    assert line_embedding(cost_matrix("ordinal", s, p=3))[1] == 3.0
    assert line_embedding(cost_matrix("reward_gap", s, p=2))[1] == 2.0
    assert line_embedding(cost_matrix("ordinal", s, p=0.5)) is None  # concave: no closed form
    assert line_embedding(cost_matrix("grid_l1", s)) is None
    # a random line in a random order, p = 1.5
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(7, generator=g, dtype=torch.float64)
    x, p = line_embedding((pos[:, None] - pos[None]).abs() ** 1.5)
    assert p == pytest.approx(1.5, abs=1e-9)


@pytest.mark.parametrize(
    "M, msg",
    [
        (torch.zeros(2, 3), "square"),
        (torch.zeros(1, 1), "L >= 2"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), "finite"),
        (torch.tensor([[0.0, -1.0], [1.0, 0.0]]), "non-negative"),
        (torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "zero diagonal"),
    ],
)
def test_custom_matrix_rules(M, msg):
    with pytest.raises(ValueError, match=msg):
        validate_cost(M)


def test_bad_names_and_params():
    with pytest.raises(ValueError, match="unknown cost"):
        cost_matrix("euclid")
    with pytest.raises(ValueError, match="bad parameters"):
        cost_matrix("grid_l1", p=2)
    with pytest.raises(ValueError, match="expected 6x6"):
        cost_matrix("custom", matrix=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="p must be > 0"):
        cost_matrix("ordinal", p=0)
    with pytest.raises(ValueError, match="no grid"):
        cost_matrix("grid_l1", LabelScale(names=("a", "b"), rewards=(0.0, 1.0)))
