"""Group objectives (raydprm.core.group_objectives): closed forms, limits, gradients = autograd,
naive twins, and the policy-gradient identity behind scalarise."""

from __future__ import annotations

import math

import pytest
import torch
from core import naive  # tests/core/naive.py (tests/ is on sys.path through its conftest.py)

from raydprm.core.group_objectives import (
    GROUP_OBJECTIVES,
    cvar_groups,
    group_objective,
    mean_minus_std,
    nash,
    population,
    scalarise,
    worst_group,
)

PARAMS = {"population": {}, "worst_group": {"tau": 0.3}, "cvar_groups": {"alpha": 0.4},
          "nash": {"r_min": -3.0}, "mean_minus_std": {"kappa": 0.7}}
NAIVE = {"population": naive.population_naive, "worst_group": naive.worst_group_naive,
         "cvar_groups": naive.cvar_groups_naive, "nash": naive.nash_naive,
         "mean_minus_std": naive.mean_minus_std_naive}


def _case(seed: int, G: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    J = torch.rand(G, generator=g, dtype=torch.float64) * 3.5 - 2.5  # inside (-3, 1), the HH scale
    w = torch.rand(G, generator=g, dtype=torch.float64) + 0.1
    return J, w


def test_registry_holds_the_five_objectives():
    assert set(GROUP_OBJECTIVES) == {"population", "worst_group", "cvar_groups", "nash", "mean_minus_std"}
    with pytest.raises(ValueError, match="unknown group objective 'maxmin'; known: cvar_groups"):
        group_objective("maxmin")


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_matches_naive_twin(name, seed):
    J, w = _case(seed)
    value, _ = group_objective(name)(J, w, **PARAMS[name])
    assert float(value) == pytest.approx(NAIVE[name](J.tolist(), w.tolist(), **PARAMS[name]), abs=1e-12)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_gradient_equals_autograd(name, seed):
    J, w = _case(seed)
    Jg = J.clone().requires_grad_(True)
    value, grad = group_objective(name)(Jg, w, **PARAMS[name])
    (auto,) = torch.autograd.grad(value, Jg)
    assert torch.allclose(grad, auto, atol=1e-12), (grad, auto)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_objectives_are_concave_along_random_chords(name):
    """f(t a + (1-t) b) >= t f(a) + (1-t) f(b): the welfare problem over policies is concave."""
    f = group_objective(name)
    for seed in range(20):
        a, w = _case(seed)
        b, _ = _case(seed + 100)
        for t in (0.25, 0.5, 0.75):
            mid = float(f(t * a + (1 - t) * b, w, **PARAMS[name])[0])
            chord = t * float(f(a, w, **PARAMS[name])[0]) + (1 - t) * float(f(b, w, **PARAMS[name])[0])
            assert mid >= chord - 1e-12


def test_population_is_the_weighted_mean_with_gradient_w():
    J = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    v, g = population(J, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    assert float(v) == pytest.approx(0.5 * 1.0 + 0.25 * -1.0 + 0.25 * 0.5)
    assert g.tolist() == [0.5, 0.25, 0.25]


def test_worst_group_limits_min_and_weighted_mean():
    J, w = _case(3)
    wn = w / w.sum()
    assert float(worst_group(J, w, tau=1e-4)[0]) == pytest.approx(float(J.min()), abs=1e-3)
    assert float(worst_group(J, w, tau=0.0)[0]) == float(J.min())  # tau = 0 is MaxMin itself
    assert float(worst_group(J, w, tau=1e5)[0]) == pytest.approx(float((wn * J).sum()), abs=1e-4)
    for tau in (0.01, 0.1, 1.0, 10.0):  # in between, min <= f <= mean, and it rises with tau
        v = float(worst_group(J, w, tau=tau)[0])
        assert float(J.min()) <= v <= float((wn * J).sum())
    vals = [float(worst_group(J, w, tau=t)[0]) for t in (0.01, 0.1, 1.0, 10.0)]
    assert vals == sorted(vals)


def test_worst_group_gradient_concentrates_on_the_worst_group():
    J = torch.tensor([0.2, -0.5, 0.9], dtype=torch.float64)
    w = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    _, g = worst_group(J, w, tau=1e-3)
    assert torch.allclose(g, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    _, g0 = worst_group(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), w, tau=0.0)
    assert g0.tolist() == [0.5, 0.5, 0.0]  # ties share the subgradient
    # a group with no weight does not count as a group at all
    v, g = worst_group(J, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), tau=0.0)
    assert float(v) == 0.2 and g.tolist() == [1.0, 0.0, 0.0]


def test_cvar_groups_closed_forms():
    J, w = _case(4)
    wn = w / w.sum()
    assert float(cvar_groups(J, w, alpha=1.0)[0]) == pytest.approx(float((wn * J).sum()), abs=1e-12)
    smallest_w = float(wn[torch.argmin(J)])
    assert float(cvar_groups(J, w, alpha=smallest_w / 2)[0]) == pytest.approx(float(J.min()), abs=1e-12)
    # equal weights, alpha = 2/4: the mean of the two worst groups
    J4 = torch.tensor([3.0, -1.0, 0.0, 2.0], dtype=torch.float64)
    v, g = cvar_groups(J4, torch.ones(4, dtype=torch.float64), alpha=0.5)
    assert float(v) == pytest.approx(-0.5)
    assert g.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_nash_closed_form_and_bad_input():
    J = torch.tensor([0.0, 1.0], dtype=torch.float64)
    v, g = nash(J, torch.ones(2, dtype=torch.float64), r_min=-1.0)
    assert float(v) == pytest.approx(0.5 * math.log(1.0) + 0.5 * math.log(2.0))
    assert g.tolist() == pytest.approx([0.5, 0.25])
    with pytest.raises(ValueError, match="below r_min=-1.0"):
        nash(torch.tensor([-2.0, 0.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64), r_min=-1.0)


def test_mean_minus_std_closed_form_two_equal_groups():
    """Two equal-weight groups: s = |J1 - J2| / 2, so f = (J1 + J2)/2 - kappa |J1 - J2| / 2."""
    J = torch.tensor([1.0, -1.0], dtype=torch.float64)
    v, g = mean_minus_std(J, torch.ones(2, dtype=torch.float64), kappa=0.5)
    assert float(v) == pytest.approx(0.0 - 0.5 * 1.0)
    assert g.tolist() == pytest.approx([0.25, 0.75])
    assert float(g.sum()) == pytest.approx(1.0)
    v0, g0 = mean_minus_std(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert float(v0) == 0.0 and g0.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("bad,match", [
    ((torch.zeros(3), torch.ones(2)), "differ in shape"),
    ((torch.zeros(2), torch.tensor([1.0, -1.0])), "must be finite and >= 0"),
    ((torch.zeros(2), torch.zeros(2)), "sum to 0"),
    ((torch.tensor([0.0, float("nan")]), torch.ones(2)), "non-finite"),
])
def test_bad_inputs_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        population(*bad)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_scalarise_matches_naive_twin(name):
    g = torch.Generator().manual_seed(7)
    R = torch.rand(16, 4, generator=g, dtype=torch.float64) * 3.5 - 2.5
    w = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    out, stats = scalarise(R, w, name, **PARAMS[name])
    assert out.shape == (16,)
    assert torch.allclose(stats["objective/J"], R.mean(0))
    assert torch.allclose(out, torch.tensor(naive.scalarise_naive(R, w, name, **PARAMS[name]),
                                            dtype=torch.float64), atol=1e-6)


def test_scalarise_population_is_the_mixture_reward():
    g = torch.Generator().manual_seed(8)
    R = torch.randn(32, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    out, _ = scalarise(R, w, "population")
    assert torch.allclose(out, R @ w, atol=1e-15)


def test_scalarise_normalise_keeps_direction_and_sums_to_one():
    R = torch.tensor([[0.5, -1.0], [1.0, 0.0]], dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64)
    raw, s_raw = scalarise(R, w, "nash", r_min=-3.0)
    nrm, s_nrm = scalarise(R, w, "nash", normalise=True, r_min=-3.0)
    assert float(s_nrm["objective/coef"].sum()) == pytest.approx(1.0)
    assert torch.allclose(nrm * s_raw["objective/coef"].sum(), raw)


def test_scalarise_reward_gives_the_policy_gradient_of_the_welfare():
    """Eq. G1 exactly: a softmax policy over K arms with group rewards r (K, G). The score-function
    gradient sum_k pi_k grad log pi_k R_k, with R = scalarise's reward and J = the exact
    expectation, equals autograd's gradient of f(J(pi))."""
    g = torch.Generator().manual_seed(9)
    K, G = 6, 3
    r = torch.rand(K, G, generator=g, dtype=torch.float64) * 3 - 2
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for name, params in PARAMS.items():
        theta = torch.randn(K, generator=g, dtype=torch.float64).requires_grad_(True)
        pi = torch.softmax(theta, 0)
        J = pi @ r  # (G,)
        value, coef = group_objective(name)(J, w, **params)
        (direct,) = torch.autograd.grad(value, theta, retain_graph=True)
        R = r @ coef.detach()  # (K,) per-arm reward, what scalarise gives each sample
        surrogate = (pi * R).sum()  # E_pi[R] with R held fixed
        (pg,) = torch.autograd.grad(surrogate, theta)
        assert torch.allclose(direct, pg, atol=1e-12), name


def test_scalarise_takes_J_from_the_caller():
    R = torch.tensor([[1.0, -1.0], [0.0, 0.5]], dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64)
    J = torch.tensor([-2.0, 0.0], dtype=torch.float64)  # e.g. the global batch's mean
    out, stats = scalarise(R, w, "worst_group", J=J, tau=0.0)
    assert stats["objective/J"].tolist() == J.tolist() and stats["objective/coef"].tolist() == [1.0, 0.0]
    assert out.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"J must have shape \(G,\) = \(2,\)"):
        scalarise(R, w, "population", J=torch.zeros(3))
