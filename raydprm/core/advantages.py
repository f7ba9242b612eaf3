"""Advantage estimators of an RL step, on a registry: GAE with a critic, and the critic-free
estimators over groups of responses to one prompt (GRPO, Dr. GRPO, RLOO, REINFORCE++).

Shapes: ``B`` responses, ``T`` response tokens (right padding; ``mask`` (B, T) marks valid
tokens). Every estimator takes the same arguments and returns ``(advantages, returns)``, both
(B, T) and 0 at padding::

    ADVANTAGES[name](scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6)

``scores`` (B,): the reward model's scalar readout of each response (expected reward, CVaR,
mean - kappa std: whatever ``reward.scalar`` is); ``kl`` (B, T): the per-token KL estimate to the
reference; ``kl_coef``: beta when the KL is a reward penalty (``ppo.kl_in = reward``), 0 when it is
a loss term. The per-token reward is ``r_t = -beta kl_t + [t = last] score`` (shape_rewards), and a
response's return ``R = sum_t r_t = score - beta sum_t kl_t``. ``group`` (B,): ids of the prompt
each response answers (any integers; groups may differ in size). ``values`` (B, T): the critic's,
GAE only.

Each function's element-by-element twin is in ``tests/core/naive.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from raydprm.core.gae import masked_gae, whiten
from raydprm.core.kl import shape_rewards

__all__ = ["ADVANTAGES", "CRITIC_FREE", "GROUP_ESTIMATORS", "discounted_returns", "dr_grpo", "gae", "group_moments",
           "grpo", "reinforce_pp", "reinforce_pp_baseline", "rloo"]


def group_moments(x: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the mean, the unbiased (Bessel) standard deviation and the size of its group,
    each (B,); x (B,), group (B,) integer ids. A group of one has std 0."""
    _, inv = torch.unique(group, return_inverse=True)  # (B,) dense group index
    G = int(inv.max()) + 1
    n = torch.zeros(G, dtype=x.dtype, device=x.device).index_add_(0, inv, torch.ones_like(x))
    mean = torch.zeros(G, dtype=x.dtype, device=x.device).index_add_(0, inv, x) / n
    dev2 = torch.zeros(G, dtype=x.dtype, device=x.device).index_add_(0, inv, (x - mean[inv]) ** 2)
    std = (dev2 / (n - 1).clamp(min=1)).sqrt()
    return mean[inv], std[inv], n[inv]


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{k >= t} gamma^(k - t) r_k`` over the valid tokens of each row; (B, T), 0 at padding."""
    m = mask.to(rewards.dtype)
    r = rewards * m
    out = torch.zeros_like(r)
    run = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    for t in range(r.shape[1] - 1, -1, -1):
        run = (r[:, t] + gamma * run) * m[:, t]
        out[:, t] = run
    return out


def _sequence_return(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    r, _ = shape_rewards(scores, kl, mask, kl_coef)
    return (r * mask.to(r.dtype)).sum(1)  # R = score - beta sum_t kl_t  (B,)


def _on_tokens(per_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_seq[:, None] * mask.to(per_seq.dtype)  # (B,) -> (B, T), every token of a response


def gae(scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6):
    """PPO's GAE on the shaped rewards with the critic's ``values`` (Schulman et al. 2016, Eq. 16;
    :func:`raydprm.core.gae.masked_gae`): ``A_t = sum_k (gamma lam)^k delta_{t+k}``,
    ``delta_t = r_t + gamma V_{t+1} - V_t``; returns ``A + V``."""
    if values is None:
        raise ValueError("gae needs the critic's values")
    r, _ = shape_rewards(scores, kl, mask, kl_coef)  # r_t = -beta kl_t (+ score at the last token)
    return masked_gae(r, values, mask, gamma, lam)


def grpo(scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6):
    """GRPO, outcome supervision (Shao et al. 2024, DeepSeekMath, Sec. 4.1.2):
    ``A_i = (R_i - mean(R_group)) / (std(R_group) + eps)`` on every token of response i."""
    R = _sequence_return(scores, kl, mask, kl_coef)
    mean, std, _ = group_moments(R, group)
    return _on_tokens((R - mean) / (std + eps), mask), _on_tokens(R, mask)


def dr_grpo(scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", Eq. 3): GRPO without the
    std normalisation, ``A_i = R_i - mean(R_group)``; its length-unbiased token sum is the loss
    aggregation ``ppo.loss_agg = token_sum``."""
    R = _sequence_return(scores, kl, mask, kl_coef)
    mean, _, _ = group_moments(R, group)
    return _on_tokens(R - mean, mask), _on_tokens(R, mask)


def rloo(scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6):
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics", Eq. 6): the baseline of
    response i is the mean return of the other responses to its prompt,
    ``A_i = R_i - 1/(n-1) sum_{j != i} R_j = n/(n-1) (R_i - mean(R_group))``. Groups of >= 2."""
    R = _sequence_return(scores, kl, mask, kl_coef)
    mean, _, n = group_moments(R, group)
    if bool((n < 2).any()):
        raise ValueError("rloo needs at least 2 responses per group")
    return _on_tokens((R - mean) * n / (n - 1), mask), _on_tokens(R, mask)


def reinforce_pp(scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6):
    """REINFORCE++ (Hu 2025, Eq. 5-7): per-token returns of the KL-shaped rewards
    ``G_t = sum_{k >= t} gamma^(k-t) r_k``, normalised over every valid token of the batch,
    ``A_t = (G_t - mean G) / std G``."""
    r, _ = shape_rewards(scores, kl, mask, kl_coef)
    G = discounted_returns(r, mask, gamma)
    return whiten(G, mask, eps=eps), G


def reinforce_pp_baseline(scores, kl, mask, group, values=None, gamma=1.0, lam=1.0, kl_coef=0.0, eps=1e-6):
    """REINFORCE++-baseline (Hu 2025, Sec. 3.3): the group mean score is subtracted first,
    ``score_i - mean(score_group)``, then :func:`reinforce_pp` (batch normalisation)."""
    mean, _, _ = group_moments(scores, group)
    return reinforce_pp(scores - mean, kl, mask, group, values, gamma, lam, kl_coef, eps)


Estimator = Callable[..., tuple[torch.Tensor, torch.Tensor]]
ADVANTAGES: dict[str, Estimator] = {"gae": gae, "grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo,
                                    "reinforce_pp": reinforce_pp, "reinforce_pp_baseline": reinforce_pp_baseline}
CRITIC_FREE = frozenset(ADVANTAGES) - {"gae"}  # no value function to learn
GROUP_ESTIMATORS = frozenset({"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"})  # baselines over a group
