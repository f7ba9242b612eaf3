"""PPO losses on masked response tokens: clipped surrogate, clipped value loss, entropy
bonus, and token-mean / sequence-mean aggregation.

Shapes: ``B`` sequences, ``T`` response tokens, ``V`` vocabulary. ``mask`` (B, T) marks
valid response tokens. Every loss returns ``(loss, stats)`` where stats are detached
scalar tensors (call ``.item()`` only when logging).

Clipped surrogate (Schulman et al. 2017, Eq. 7), ``rho_t = exp(logp_t - logp_old_t)``::

    L_pg = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))

Clipped value loss (as in OpenAI baselines' ppo2)::

    V_clip = V_old + clip(V - V_old, -c, c)
    L_v    = 1/2 max((V - R)^2, (V_clip - R)^2)

Aggregation: ``token_mean`` = sum over all valid tokens / number of valid tokens;
``seq_mean`` = mean over sequences of each sequence's token mean; ``token_sum`` = sum over
valid tokens / (B * T), a constant that does not favour short or long responses (Dr. GRPO).

Policy losses on a registry (``POLICY_LOSSES``, ``ppo.policy_loss``): ``clip`` (PPO),
``dual_clip`` (Ye et al. 2020) and ``clip_higher`` (DAPO), one signature. For data-parallel
training with gradient accumulation the caller passes ``denominator`` so that the sum of
micro-batch losses equals the loss of the whole minibatch (see :func:`aggregate`).
"""

from __future__ import annotations

import torch

__all__ = [
    "AGGREGATIONS",
    "POLICY_LOSSES",
    "aggregate",
    "clip_higher_loss",
    "clip_loss",
    "clipped_surrogate",
    "clipped_value_loss",
    "dual_clip_loss",
    "entropy_from_logits",
    "entropy_bonus",
    "token_logprobs",
]


def _token_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask.to(x.dtype)).sum()


def _seq_mean_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return ((x * m).sum(1) / m.sum(1).clamp(min=1)).sum()


# name -> (numerator over this micro-batch, default denominator)
AGGREGATIONS = {
    "token_mean": (_token_sum, lambda mask: mask.sum().clamp(min=1)),
    "seq_mean": (_seq_mean_sum, lambda mask: torch.tensor(float(mask.shape[0]))),
    "token_sum": (_token_sum, lambda mask: torch.tensor(float(mask.numel()))),  # Dr. GRPO: a constant B * T
}


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
              denominator: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a (B, T) per-token quantity to a scalar.

    ``token_mean``: ``sum_{b,t} m x / sum m``; ``seq_mean``: ``sum_b (sum_t m x / sum_t m) / B``.
    ``denominator`` replaces the default ``sum m`` (token_mean) or ``B`` (seq_mean), e.g.
    with the count over the whole distributed minibatch divided by the number of
    (rank, micro-batch) pieces whose gradients the engine averages.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation '{mode}'; expected one of {', '.join(AGGREGATIONS)}")
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} differ in shape")
    num, default_den = AGGREGATIONS[mode]
    den = default_den(mask) if denominator is None else denominator
    return num(x, mask) / den


def _surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
               clip_low: float, clip_high: float, clip_c: float | None, agg: str,
               denominator: float | torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)  # rho_t
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = torch.max(pg1, pg2)  # (Eq. 7) pessimistic bound
    if clip_c is not None:  # dual clip: -A rho is at most -c A where A < 0
        pg3 = -advantages * clip_c
        dual = (advantages < 0) & (pg3 < pg)
        pg = torch.where(advantages < 0, torch.min(pg, pg3), pg)
    loss = aggregate(pg, mask, agg, denominator)
    with torch.no_grad():
        m = mask.to(pg.dtype)
        n = m.sum().clamp(min=1)
        stats = {
            "clipfrac": ((pg2 > pg1).to(pg.dtype) * m).sum() / n,
            "approx_kl": ((torch.expm1(log_ratio) - log_ratio) * m).sum() / n,  # k3 of KL(old||new)
            "ratio": (ratio * m).sum() / n,
        }
        if clip_c is not None:
            stats["dual_clipfrac"] = (dual.to(pg.dtype) * m).sum() / n
    return loss, stats


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip_ratio: float, agg: str = "token_mean",
                      denominator: float | torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped policy loss (to minimise), Schulman et al. 2017, Eq. 7:
    ``max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``. Stats: ``clipfrac`` (fraction of valid tokens
    whose clipped term is the active one), ``approx_kl`` (k3 estimate of KL(old || new)),
    ``ratio`` (mean ratio)."""
    return _surrogate(logprobs, old_logprobs, advantages, mask, clip_ratio, clip_ratio, None, agg, denominator)


def clip_loss(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28, clip_c=3.0,
              agg="token_mean", denominator=None):
    """``clip``: PPO's symmetric clip with ``eps = clip_low`` (:func:`clipped_surrogate`)."""
    return _surrogate(logprobs, old_logprobs, advantages, mask, clip_low, clip_low, None, agg, denominator)


def dual_clip_loss(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28, clip_c=3.0,
                   agg="token_mean", denominator=None):
    """``dual_clip`` (Ye et al. 2020, "Mastering Complex Control in MOBA Games", Eq. 5): for
    ``A < 0`` the clipped loss is further bounded, ``min(max(-A rho, -A clip(rho)), -c A)``, so a
    token whose ratio exploded cannot dominate the batch (``c = clip_c > 1``). Stat ``dual_clipfrac``."""
    return _surrogate(logprobs, old_logprobs, advantages, mask, clip_low, clip_low, clip_c, agg, denominator)


def clip_higher_loss(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28, clip_c=3.0,
                     agg="token_mean", denominator=None):
    """``clip_higher`` (Yu et al. 2025, DAPO, Eq. 10): decoupled ranges,
    ``max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))`` with ``eps_high > eps_low`` so
    low-probability tokens can grow (against entropy collapse)."""
    return _surrogate(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, None, agg, denominator)


# ppo.policy_loss -> loss(logprobs, old_logprobs, advantages, mask, *, clip_low, clip_high, clip_c, agg, denominator)
POLICY_LOSSES = {"clip": clip_loss, "dual_clip": dual_clip_loss, "clip_higher": clip_higher_loss}


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, value_clip: float, agg: str = "token_mean",
                       denominator: float | torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (to minimise). Stats: ``vf_clipfrac``, ``value_mean``, ``value_error``."""
    v_clip = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    l1 = (values - returns) ** 2
    l2 = (v_clip - returns) ** 2
    loss = aggregate(0.5 * torch.max(l1, l2), mask, agg, denominator)
    with torch.no_grad():
        m = mask.to(values.dtype)
        n = m.sum().clamp(min=1)
        stats = {
            "vf_clipfrac": ((l2 > l1).to(values.dtype) * m).sum() / n,
            "value_mean": (values * m).sum() / n,
            "value_error": (l1 * m).sum() / n,
        }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (B, T) of the categorical distributions given by ``logits`` (B, T, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)  # H = -sum_v p_v log p_v


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float, agg: str = "token_mean",
                  denominator: float | torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-coef * aggregate(entropy)``: added to the loss it rewards higher entropy.
    Stats: ``entropy`` (token-mean entropy)."""
    loss = -coef * aggregate(entropy, mask, agg, denominator)
    with torch.no_grad():
        m = mask.to(entropy.dtype)
        stats = {"entropy": (entropy * m).sum() / m.sum().clamp(min=1)}
    return loss, stats


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[ids]``: (B, T, V), (B, T) -> (B, T), without materialising the
    full (B, T, V) log-softmax (``logit[id] - logsumexp(logits)``)."""
    logits = logits.float()
    picked = torch.gather(logits, -1, ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)

