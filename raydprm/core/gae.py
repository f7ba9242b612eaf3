"""Generalised advantage estimation over masked response tokens, and advantage whitening.

Shapes: ``B`` sequences, ``T`` response tokens. A response occupies the first
``mask[b].sum()`` positions of its row (right padding); positions where ``mask == 0`` are
padding: they never influence a valid position, and every output is 0 there.

GAE (Schulman et al. 2016, "High-dimensional continuous control using GAE", Eq. 16)::

    delta_t = r_t + gamma * V_{t+1} - V_t          (V_{t+1} = 0 after the last token)
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t                            (the value target)

Functions take tensors and plain scalars and return tensors; their element-by-element
reference twins are in ``tests/core/naive.py``.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_gae",
    "masked_mean",
    "masked_moments",
    "whiten",
]


def _check_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> None:
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the values have {tuple(like.shape)}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be (B, T), got {mask.dim()} dims")
    m = mask.bool()
    if m.shape[1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError(f"{name} must be right-padded (ones then zeros in every row)")


def masked_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
               lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``(A, R)``, both (B, T), zero where ``mask == 0``.

    One backward sweep over T, vectorised over B. ``rewards``/``values``: (B, T), any
    values at padded positions (they are masked out first).
    """
    _check_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(f"values has shape {tuple(values.shape)} but rewards has {tuple(rewards.shape)}")
    m = mask.to(rewards.dtype)
    r = rewards * m
    v = values.detach() * m
    B, T = r.shape
    adv = torch.zeros_like(r)
    last = torch.zeros(B, dtype=r.dtype, device=r.device)  # A_{t+1}
    next_v = torch.zeros(B, dtype=r.dtype, device=r.device)  # V_{t+1}, 0 past the end
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_v - v[:, t]  # (Eq. 16) delta_t
        last = (delta + gamma * lam * last) * m[:, t]  # A_t; padding resets the recursion
        adv[:, t] = last
        next_v = v[:, t]
    returns = (adv + v) * m
    return adv, returns


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is set (all dims, or along ``dim``)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and (unbiased, Bessel-corrected) variance of ``x`` over all valid positions."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1)
    var = (((x - mean) * m) ** 2).sum() / (n - 1).clamp(min=1)
    return mean, var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the valid positions; 0 at padding.

    ``shift_mean=False`` only rescales (keeps the mean), as some PPO variants do for rewards.
    """
    mean, var = masked_moments(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)

