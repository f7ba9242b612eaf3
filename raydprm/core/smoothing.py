"""Targeted label smoothing of crowd distributions (DPRM paper, arXiv 2402.09764).

The paper moves a small mass from the most likely label to the next most likely one,
"near certainty instead of certainty"; the mass is not given, so it is a parameter:

    mu'_top = mu_top - m,   mu'_next = mu_next + m,   m = min(epsilon, mu_top).          (T1)

`next` is the second most likely label (ties broken by closeness in label index to the
top label, then by lower index), or, in the cost-aware variant (ours), the label that is
cheapest to reach from the top label under a cost matrix M (ties broken by larger mass).
Both keep every row a distribution: non-negative, summing to 1.
"""

from __future__ import annotations

import torch

from raydprm.core.label_scale import check_distribution

__all__ = ["targeted_smoothing", "SMOOTHINGS", "smooth"]


def _move(mu: torch.Tensor, top: torch.Tensor, nxt: torch.Tensor, epsilon: float) -> torch.Tensor:
    rows = torch.arange(mu.shape[0], device=mu.device)
    m = torch.clamp(mu[rows, top], max=epsilon)  # (B,)  (Eq. T1)
    out = mu.clone()
    out[rows, top] -= m
    out[rows, nxt] += m
    return out


def targeted_smoothing(mu: torch.Tensor, epsilon: float, cost: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (T1) on mu (B, L) or (L,). With `cost` (L, L), the receiver is the cheapest-to-reach label."""
    if not 0 <= epsilon <= 1:
        raise ValueError(f"smoothing epsilon must lie in [0, 1], got {epsilon}")
    squeeze = mu.dim() == 1
    mu2 = mu[None] if squeeze else mu  # (B, L)
    check_distribution(mu2, name="mu")
    B, L = mu2.shape
    top = mu2.argmax(1)  # (B,)
    idx = torch.arange(L, device=mu2.device)
    if cost is None:
        # second most likely; ties -> nearest index to top, then lower index
        second = mu2.masked_fill(idx[None] == top[:, None], float("-inf")).max(1, keepdim=True).values
        dist = (idx[None] - top[:, None]).abs()  # (B, L)
        key = torch.where(mu2 == second, -(dist * L + idx[None]).to(mu2.dtype), torch.full_like(mu2, -1e30))
    else:
        if cost.shape != (L, L):
            raise ValueError(f"cost must be ({L}, {L}), got {tuple(cost.shape)}")
        c = cost.to(mu2)[top]  # (B, L) cost of reaching each label from the top one
        key = -c * 1e6 + mu2  # cheapest first, then larger mass
    key = key.masked_fill(idx[None] == top[:, None], float("-inf"))
    nxt = key.argmax(1)
    out = _move(mu2, top, nxt, epsilon)
    return out[0] if squeeze else out


SMOOTHINGS = {
    "none": lambda mu, epsilon=0.0, cost=None: mu,
    "targeted": lambda mu, epsilon=0.1, cost=None: targeted_smoothing(mu, epsilon),
    "targeted_cost": lambda mu, epsilon=0.1, cost=None: targeted_smoothing(mu, epsilon, cost),
}


def smooth(mu: torch.Tensor, how: str = "targeted", epsilon: float = 0.1, cost=None) -> torch.Tensor:
    """Smoothing by name (one of SMOOTHINGS)."""
    if how not in SMOOTHINGS:
        raise ValueError(f"unknown smoothing {how!r}; choose one of {sorted(SMOOTHINGS)}")
    if how == "targeted_cost" and cost is None:
        raise ValueError("smoothing 'targeted_cost' needs a cost matrix")
    return SMOOTHINGS[how](mu, epsilon=epsilon, cost=cost)
