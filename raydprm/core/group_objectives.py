"""Objectives over rater groups: what a policy should maximise when groups disagree.

A policy ``pi`` earns from each rater group ``g`` (a persona, or an imported store's rater
group) the expected reward ``J_g(pi) = E_{x ~ pi}[r_g(x)]``, where ``r_g(x) = E_{mu_g(x)}[r]``
is the reward the group's label distribution gives response ``x``. Shapes: ``G`` groups,
``B`` samples; ``J`` (G,) and the group weights ``w`` (G,) (population shares; normalised
to sum to 1 here, so any non-negative weights with a positive sum are accepted).

Every objective is a pure function ``f(J, w, **params) -> (value, grad)``: the scalar welfare
``f(J)`` and its gradient ``df/dJ_g`` (G,) in closed form (a subgradient where ``f`` has a
kink). All five are concave in ``J`` and ``J`` is linear in the policy's action
probabilities, so maximising any of them over policies is a concave problem.

* ``population``      f = sum_g w_g J_g                     (today's objective; the mixture's E[r])
* ``worst_group``     f = -tau log sum_g w_g exp(-J_g / tau) (soft minimum; tau -> 0: MaxMin)
* ``cvar_groups``     f = (1 / alpha) int_0^alpha F_J^{-1}(u) du (mean of the worst alpha share)
* ``nash``            f = sum_g w_g log(J_g - r_min)         (Nash social welfare)
* ``mean_minus_std``  f = m - kappa sqrt(sum_g w_g (J_g - m)^2),  m = sum_g w_g J_g

Policy gradient (used by PPO through :func:`scalarise`): by the chain rule

    grad_theta f(J(pi_theta)) = sum_g f_g'(J) grad_theta J_g
                              = E_{x ~ pi}[ grad_theta log pi(x) * sum_g f_g'(J) r_g(x) ],   (G1)

so the per-sample reward ``R(x) = sum_g f_g'(J) r_g(x)`` (with ``J`` estimated on the batch
and held fixed) gives the policy gradient of the welfare: a REINFORCE/PPO learner that
maximises ``E[R]`` climbs ``f``. For ``population`` the coefficients are ``w`` and ``R(x)``
is exactly the mixture's expected reward, i.e. today's reward. The coefficients sum to 1
for every objective except ``nash`` (their sum there is ``sum_g w_g / (J_g - r_min)``), so
``R`` stays on the label scale's units; ``scalarise(..., normalise=True)`` rescales them to
sum to 1 for ``nash`` too (same direction, comparable KL trade-off).

Register a new objective with ``@register_group_objective("name")``; look one up with
:func:`group_objective`. Pure torch; the naive twins are in ``tests/core/naive.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["GROUP_OBJECTIVES", "register_group_objective", "group_objective", "check_group_inputs",
           "population", "worst_group", "cvar_groups", "nash", "mean_minus_std", "scalarise"]

GroupObjective = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]
GROUP_OBJECTIVES: dict[str, GroupObjective] = {}


def register_group_objective(name: str) -> Callable[[GroupObjective], GroupObjective]:
    """Decorator: add ``fn`` to :data:`GROUP_OBJECTIVES` under ``name`` (names are unique)."""

    def deco(fn: GroupObjective) -> GroupObjective:
        if name in GROUP_OBJECTIVES:
            raise ValueError(f"group objective '{name}' is registered twice")
        GROUP_OBJECTIVES[name] = fn
        return fn

    return deco


def group_objective(name: str) -> GroupObjective:
    """The registered objective ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return GROUP_OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown group objective '{name}'; known: {', '.join(sorted(GROUP_OBJECTIVES))}") from None


def check_group_inputs(J: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``J`` (G,) and ``weights`` (G,); return ``(J, w)`` with ``w`` normalised to sum 1.

    Raises ValueError naming the problem: wrong shapes, non-finite values, negative weights
    or weights that sum to 0.
    """
    if J.dim() != 1 or J.numel() == 0:
        raise ValueError(f"J must have shape (G,) with G >= 1, got {tuple(J.shape)}")
    if weights.shape != J.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and J {tuple(J.shape)} differ in shape")
    if not bool(torch.isfinite(J.detach()).all()):
        raise ValueError("J has non-finite entries")
    if not bool(torch.isfinite(weights).all()) or float(weights.min()) < 0:
        raise ValueError(f"group weights must be finite and >= 0, got {weights.tolist()}")
    total = weights.sum()
    if float(total) <= 0:
        raise ValueError("group weights sum to 0; give at least one group a positive weight")
    return J, (weights / total).to(J.dtype)


@register_group_objective("population")
def population(J: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Population expected reward, the mixture's E[r] (today's PPO objective; DPRM paper Sec. 3.4):

        f(J) = sum_g w_g J_g,        df/dJ_g = w_g.
    """
    J, w = check_group_inputs(J, weights)
    return (w * J).sum(), w.clone()


@register_group_objective("worst_group")
def worst_group(J: torch.Tensor, weights: torch.Tensor, tau: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft minimum over the groups' expected rewards (the entropic risk measure of J under w;
    Foellmer & Schied 2002), whose limit tau -> 0 is MaxMin-RLHF's egalitarian objective
    ``min_g J_g`` (Chakraborty et al. 2024, "MaxMin-RLHF: alignment with diverse human preferences"):

        f(J) = -tau log sum_g w_g exp(-J_g / tau),
        df/dJ_g = w_g exp(-J_g / tau) / sum_h w_h exp(-J_h / tau)      (a softmax of -J/tau + log w).

    ``tau -> 0``: ``min_{g: w_g > 0} J_g``; ``tau -> inf``: ``sum_g w_g J_g`` (Taylor expansion
    of the log-sum-exp). Always ``min_g J_g <= f <= sum_g w_g J_g``. ``tau = 0`` is the hard
    minimum itself, with the subgradient that splits equally among the tied minimisers.
    """
    if not (tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"worst_group: tau must be finite and >= 0, got {tau}")
    J, w = check_group_inputs(J, weights)
    if tau == 0:
        live = J[w > 0]
        lo = live.min()
        hit = ((J == lo) & (w > 0)).to(J.dtype)
        return lo, hit / hit.sum()
    logits = -J / tau + torch.log(w)  # log(w_g exp(-J_g / tau)); w_g = 0 -> -inf, excluded
    value = -tau * torch.logsumexp(logits, 0)
    return value, torch.softmax(logits, 0)


@register_group_objective("cvar_groups")
def cvar_groups(J: torch.Tensor, weights: torch.Tensor, alpha: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean expected reward of the worst alpha share of the population, groups ranked by J
    (the lower-tail CVaR of the distribution that puts mass w_g on J_g; Rockafellar & Uryasev
    2000). Sort ascending, J_(1) <= ... <= J_(G); group (k) contributes the part of its mass
    that falls below alpha:

        m_(k) = min(w_(k), max(0, alpha - sum_{j<k} w_(j))),
        f(J)  = (1 / alpha) sum_k m_(k) J_(k),          df/dJ_(k) = m_(k) / alpha.

    ``alpha = 1``: the weighted mean; ``alpha -> 0``: the minimum. With equal weights and
    ``alpha = k / G`` it is the mean of the k worst groups. Ties are ranked by index; the
    value does not depend on it and the gradient is a valid supergradient.
    """
    if not (0 < alpha <= 1):
        raise ValueError(f"cvar_groups: alpha must be in (0, 1], got {alpha}")
    J, w = check_group_inputs(J, weights)
    order = torch.argsort(J, stable=True)
    ws = w[order]
    below = torch.cumsum(ws, 0) - ws  # mass of the groups ranked before (k)
    m_sorted = torch.minimum(ws, (alpha - below).clamp(min=0))
    m = torch.empty_like(m_sorted)
    m[order] = m_sorted
    grad = m / alpha
    return (grad * J).sum(), grad


@register_group_objective("nash")
def nash(J: torch.Tensor, weights: torch.Tensor, r_min: float = -3.0, eps: float = 1e-6
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nash social welfare with the scale's minimum reward as the disagreement point (Nash
    1950; Kaneko & Nakamura 1979; the weighted form is the asymmetric Nash bargaining solution
    with bargaining powers w; used for multi-party RLHF by Zhong et al. 2024):

        f(J) = sum_g w_g log(J_g - r_min),        df/dJ_g = w_g / (J_g - r_min).

    With equal weights it is ``(1/G) sum_g log(J_g - r_min)``, the issue's "sum of logs" up to
    the factor 1/G (same maximiser). ``r_min`` is the label scale's lowest reward (-3 for
    the HH scale); a J below it is a ValueError, and the gap is clamped at ``eps``.
    """
    J, w = check_group_inputs(J, weights)
    if float(J.detach().min()) < r_min - 1e-9:
        raise ValueError(f"nash: a group's expected reward {float(J.detach().min()):.6g} is below r_min={r_min}; "
                         "pass the label scale's minimum reward as r_min")
    gap = (J - r_min).clamp(min=eps)
    return (w * torch.log(gap)).sum(), w / gap


@register_group_objective("mean_minus_std")
def mean_minus_std(J: torch.Tensor, weights: torch.Tensor, kappa: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Population mean minus kappa times the spread of the groups' expected rewards (a
    mean-variance criterion across groups; Markowitz 1952):

        m = sum_g w_g J_g,   s = sqrt(sum_g w_g (J_g - m)^2),   f = m - kappa s,
        df/dJ_g = w_g - kappa w_g (J_g - m) / s        (= w_g where s = 0, a supergradient).

    Concave for kappa >= 0 (s is a weighted norm of J - m); the coefficients sum to 1.
    """
    if not (kappa >= 0 and math.isfinite(kappa)):
        raise ValueError(f"mean_minus_std: kappa must be finite and >= 0, got {kappa}")
    J, w = check_group_inputs(J, weights)
    m = (w * J).sum()
    d = J - m
    s = torch.sqrt((w * d * d).sum())
    if float(s.detach()) == 0:
        return m, w.clone()
    return m - kappa * s, w - kappa * w * d / s


def scalarise(group_rewards: torch.Tensor, weights: torch.Tensor, name: str = "population",
              normalise: bool = False, J: torch.Tensor | None = None,
              **params: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample policy-gradient rewards (B,) for the group objective ``name`` (Eq. G1).

    ``group_rewards`` (B, G) holds r_g(x_b), each group's expected reward for sample b.
    ``J`` is estimated on the batch, ``J_g = mean_b r_g(x_b)``, the objective's gradient
    ``c_g = df/dJ_g`` is taken there (no gradient flows through it), and

        R(x_b) = sum_g c_g r_g(x_b).

    ``J`` (G,) replaces the batch estimate, e.g. with the mean over the whole global batch
    when it is split over data-parallel ranks. Where the objective has a kink at the optimum
    (``cvar_groups``, ``mean_minus_std`` and, as tau -> 0, ``worst_group`` when the groups
    are level) the noisy estimate blurs the kink and a learner settles within about J's
    standard error of the optimum (tests/core/test_group_bandit.py).
    ``normalise=True`` divides c by its sum (1 already except for ``nash``). For
    ``population`` R equals the mixture's expected reward exactly. ``params`` go to the
    objective (``tau``, ``alpha``, ``r_min``, ``kappa``). Returns ``(R (B,), stats)`` with
    detached stats ``objective/value`` (f at J), ``objective/J`` (G,) and
    ``objective/coef`` (G,).
    """
    if group_rewards.dim() != 2:
        raise ValueError(f"group_rewards must have shape (B, G), got {tuple(group_rewards.shape)}")
    if group_rewards.shape[0] == 0:
        raise ValueError("group_rewards is empty (B = 0)")
    fn = group_objective(name)
    x = group_rewards.detach()
    if J is None:
        J = x.mean(0)  # (G,) batch estimate of each group's expected reward
    elif J.shape != (x.shape[1],):
        raise ValueError(f"J must have shape (G,) = ({x.shape[1]},), got {tuple(J.shape)}")
    J = J.detach().to(x.dtype)
    value, coef = fn(J, weights.to(x.dtype), **params)
    if normalise:
        coef = coef / coef.sum()
    R = group_rewards @ coef.to(group_rewards.dtype)  # (B, G) @ (G,) -> (B,)
    return R, {"objective/value": value.detach(), "objective/J": J, "objective/coef": coef.detach()}
