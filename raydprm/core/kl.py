"""Per-token KL estimators, KL-shaped rewards and the KL coefficient (beta) controllers.

Per-token estimators of KL(pi || pi_ref) from a token sampled from pi, with
``log r = log pi_ref(a) - log pi(a)`` (Schulman, "Approximating KL divergence", 2020)::

    k1 = -log r                  unbiased, can be negative
    k2 = (log r)^2 / 2           biased, low variance, >= 0
    k3 = (r - 1) - log r         unbiased, >= 0

The exact per-token KL over the vocabulary at a position where pi and pi_ref give the logit rows
``z`` and ``z_ref`` (what reports use: it needs both models' full rows, never negative, and no
sampling noise beyond that of the sampled prefix)::

    KL_t = sum_v p_v (log p_v - log q_v),   p = softmax(z), q = softmax(z_ref)

and the KL of a response sampled from pi is the sum of KL_t along it (the chain rule of KL:
its expectation over responses is KL(pi(.|x) || pi_ref(.|x)) of the whole sequence).

Reward shaping (Ziegler et al. 2019; Ouyang et al. 2022, Eq. 2): the sequence score is
paid at the last response token, every token pays the KL penalty::

    r_t = -beta * kl_t + [t == last] * score

Controllers are functions of explicit state: ``beta`` in, ``beta`` out. The adaptive one
is Ziegler et al. (2019), Sec. 2.2::

    e    = clip(KL / target - 1, -0.2, 0.2)
    beta = beta * (1 + e * n_steps / horizon)
"""

from __future__ import annotations

import torch

__all__ = [
    "KL_ESTIMATORS",
    "kl_estimate",
    "kl_from_logits",
    "sequence_kl",
    "shape_rewards",
    "fixed_kl_controller",
    "adaptive_kl_controller",
    "update_kl_coef",
]


def _k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return -log_ratio


def _k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio**2


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    # expm1 keeps (r - 1) accurate when r ~ 1, where most tokens are
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1",
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL estimate (B, T) of pi (``logprobs``) from pi_ref; 0 where ``mask == 0``."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator '{estimator}'; expected one of {', '.join(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape")
    kl = KL_ESTIMATORS[estimator](ref_logprobs - logprobs)  # log r = log pi_ref - log pi
    if mask is not None:
        kl = kl * mask.to(kl.dtype)
    return kl


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Exact KL(softmax(logits) || softmax(ref_logits)) over the last (vocabulary) axis: (..., V) -> (...).

    Computed in ``dtype`` from log-softmaxes (no exp of raw logits), clamped at 0 against rounding.
    Naive twin (``tests/core/test_kl_exact.py``)::

        p, q = softmax(z), softmax(z_ref);  sum(p[v] * log(p[v] / q[v]) for v in range(V))
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape")
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    logq = torch.log_softmax(ref_logits.to(dtype), dim=-1)
    diff = logp - logq  # log p_v - log q_v
    p = logp.exp() if logp.requires_grad else logp.exp_()  # in place: one (..., V) buffer fewer, ~2x faster
    kl = torch.einsum("...v,...v->...", p, diff)  # KL_t = sum_v p_v (log p_v - log q_v)
    return kl.clamp_min(0.0)


def sequence_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Exact KL of each sampled response: sum_t mask[b, t] * KL_t, (B, T, V) x 2 + (B, T) -> (B,)."""
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(logits.shape)} (B, T, V)")
    return (kl_from_logits(logits, ref_logits, dtype) * mask.to(dtype)).sum(-1)  # (B,)


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    return mask.long().sum(1) - 1  # (B,) index of the last valid token (right padding)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token rewards (B, T) ``-beta * kl_t``, plus ``scores[b]`` at the last valid token.

    ``scores``: (B,) sequence rewards; ``kl``: (B, T) per-token KL; ``mask``: (B, T), every
    row with at least one valid token. Returns ``(rewards, stats)`` where stats holds the
    mean sequence KL (``kl``) and the mean non-score reward (``non_score_reward``).
    """
    if scores.dim() != 1 or scores.shape[0] != kl.shape[0]:
        raise ValueError(f"scores must be (B,) with B = {kl.shape[0]}, got {tuple(scores.shape)}")
    if bool((mask.sum(1) == 0).any()):
        raise ValueError("every response needs at least one valid token (a row of the mask is all zeros)")
    m = mask.to(kl.dtype)
    non_score = -beta * kl * m
    rewards = non_score.clone()
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, _last_index(mask)] += scores.to(kl.dtype)  # score at the last token
    stats = {"kl": (kl * m).sum(1).mean().detach(), "non_score_reward": non_score.sum(1).mean().detach()}
    return rewards, stats


def fixed_kl_controller(beta: float, current_kl: float = 0.0, n_steps: int = 0) -> float:
    """The fixed controller: beta never changes (same signature as the adaptive one)."""
    return float(beta)


def adaptive_kl_controller(beta: float, current_kl: float, n_steps: int, target_kl: float,
                           horizon: int) -> float:
    """One adaptive update of beta toward ``target_kl`` (Ziegler et al. 2019, Sec. 2.2).

    ``current_kl``: observed KL per sequence; ``n_steps``: sequences in the batch.
    """
    if target_kl <= 0 or horizon <= 0:
        raise ValueError(f"target_kl and horizon must be positive, got {target_kl}, {horizon}")
    err = min(max(current_kl / target_kl - 1.0, -0.2), 0.2)  # e_t = clip(KL/target - 1, +-0.2)
    return float(beta * (1.0 + err * n_steps / horizon))  # beta_{t+1} = beta_t (1 + K_beta e_t)


def update_kl_coef(kind: str, beta: float, current_kl: float, n_steps: int, target_kl: float,
                   horizon: int) -> tuple[float, dict[str, float]]:
    """Dispatch on ``kind`` ('fixed' | 'adaptive'); returns ``(new_beta, stats)``."""
    if kind == "fixed":
        new = fixed_kl_controller(beta, current_kl, n_steps)
    elif kind == "adaptive":
        new = adaptive_kl_controller(beta, current_kl, n_steps, target_kl, horizon)
    else:
        raise ValueError(f"unknown KL controller '{kind}'; expected 'fixed' or 'adaptive'")
    return new, {"kl_coef": new, "kl_coef_prev": float(beta)}
