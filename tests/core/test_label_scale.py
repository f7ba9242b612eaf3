"""Label scale: the paper's HH table, scalarisation and validation."""

import pytest
import torch

from raydprm.core import LabelScale
from raydprm.core.label_scale import check_distribution


def test_hh_is_the_papers_table():
    s = LabelScale.hh()
    assert s.num_labels == 6
    assert s.rewards == (1.0, 0.5, -1.0, -1.0, -1.5, -3.0)
    assert s.best_label == 0
    assert s.grid_tensor().shape == (6, 2)


def test_expected_reward_cvar_mean_minus_std():
    s = LabelScale.hh()
    mu = torch.tensor([[0.5, 0.1, 0.4, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]], dtype=torch.float64)
    er = s.expected_reward(mu)
    assert torch.allclose(er, torch.tensor([0.5 + 0.05 - 0.4, -3.0], dtype=torch.float64))
    # CVaR at alpha = 1 is the mean; at alpha -> 0 the worst reward with mass; in between the tail mean
    assert torch.allclose(s.cvar(mu, 1.0), er)
    assert float(s.cvar(mu, 1e-6)[0]) == pytest.approx(-1.0)
    assert float(s.cvar(mu, 0.5)[0]) == pytest.approx((0.4 * -1.0 + 0.1 * 0.5) / 0.5)
    std = torch.sqrt(mu @ torch.tensor(s.rewards, dtype=torch.float64) ** 2 - er**2)
    assert torch.allclose(s.mean_minus_std(mu, 2.0), er - 2.0 * std)
    assert torch.allclose(s.scalarise(mu, "cvar", alpha=1.0), er)
    assert float(s.mean_minus_std(mu)[1]) == pytest.approx(-3.0)  # a certain label has no spread


def test_ordinal_scale():
    s = LabelScale.ordinal(5, low=-1, high=1)
    assert s.rewards == (-1.0, -0.5, 0.0, 0.5, 1.0)


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda: LabelScale(names=("a",), rewards=(1.0,)), "L >= 2"),
        (lambda: LabelScale(names=("a", "b"), rewards=(1.0, float("nan"))), "finite"),
        (lambda: LabelScale(names=("a", "a"), rewards=(1.0, 0.0)), "unique"),
        (lambda: LabelScale(names=("a", "b", "c"), rewards=(1.0, 0.0)), "names"),
        (lambda: LabelScale(names=("a", "b"), rewards=(1.0, 0.0), grid=((0,), (1, 2))), "grid"),
        (lambda: LabelScale.hh().expected_reward(torch.tensor([[0.5, 0.5, 0.5, 0, 0, 0]])), "sum to 1"),
        (lambda: LabelScale.hh().expected_reward(torch.tensor([[1.5, -0.5, 0, 0, 0, 0]])), "negative"),
        (lambda: LabelScale.hh().expected_reward(torch.full((1, 5), 0.2)), "expected 6"),
        (lambda: LabelScale.hh().cvar(torch.eye(6), 0.0), "alpha"),
        (lambda: LabelScale.hh().scalarise(torch.eye(6), "median"), "unknown scalarisation"),
        (lambda: check_distribution(torch.tensor([[float("inf"), 0.0]])), "non-finite"),
        (lambda: check_distribution(torch.tensor([[float("nan"), 1.0]])), "non-finite"),
        (lambda: check_distribution(torch.tensor([[float("-inf"), 1.0]])), "non-finite"),
        (lambda: check_distribution(torch.tensor([[1.5, -0.5], [0.5, 0.5]])), "negative"),
        (lambda: check_distribution(torch.tensor([[0.5, 0.5], [0.5, 0.6]])), "sum to 1"),
        (lambda: check_distribution(torch.tensor([0.7, 0.7])), "sum to 1"),
    ],
)
def test_bad_inputs_raise(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_check_distribution_accepts_the_simplex():
    """Rows on the simplex pass whatever their dtype or shape: one-hot integers, a single row,
    an empty batch, mass within the tolerance of 1."""
    check_distribution(torch.eye(3, dtype=torch.long))
    check_distribution(torch.tensor([0.25, 0.75]))
    check_distribution(torch.empty(0, 4))
    check_distribution(torch.full((5, 4), 0.25) + 1e-6)
