"""Pairwise preference losses behind one registry.

Every loss takes per-pair scalars of the chosen and the rejected side and returns the
per-pair loss (B,) plus a dict of tensor stats; the caller reduces (mean, or a weighted
mean with :func:`reduce_pairs`). What the scalars are depends on the family:

* reward-model losses (``bt``): the reward model's scores ``s(x, y)``;
* direct-alignment losses (DPO, IPO, SLiC, RRHF, crowd DPO; a later issue adds them to
  this registry): sequence log-probabilities of the policy, with the reference's passed
  as keyword arguments.

``target`` (optional, (B,)) is the probability that the chosen side really is preferred,
e.g. the crowd's preference probability computed from the store's distributions; with
``target=None`` the label is hard (chosen always wins).

Bradley-Terry (the paper's BT-RM baseline):

    L_BT = -[p log sigma(s_c - s_r) + (1 - p) log sigma(s_r - s_c)],   p = target (default 1)

Register a new loss with ``@register_pairwise_loss("name")``; look one up with
:func:`pairwise_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["PAIRWISE_LOSSES", "register_pairwise_loss", "pairwise_loss", "bt_loss", "reduce_pairs"]

PairwiseLoss = Callable[..., "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
PAIRWISE_LOSSES: dict[str, PairwiseLoss] = {}


def register_pairwise_loss(name: str) -> Callable[[PairwiseLoss], PairwiseLoss]:
    """Decorator: add ``fn`` to :data:`PAIRWISE_LOSSES` under ``name`` (names are unique)."""

    def deco(fn: PairwiseLoss) -> PairwiseLoss:
        if name in PAIRWISE_LOSSES:
            raise ValueError(f"pairwise loss '{name}' is registered twice")
        PAIRWISE_LOSSES[name] = fn
        return fn

    return deco


def pairwise_loss(name: str) -> PairwiseLoss:
    """The registered loss ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return PAIRWISE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown pairwise loss '{name}'; known: {', '.join(sorted(PAIRWISE_LOSSES))}") from None


def reduce_pairs(per_pair: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``per_pair`` (B,), or its ``weight``-weighted mean."""
    if weight is None:
        return per_pair.mean()
    return (per_pair * weight).sum() / weight.sum().clamp_min(1e-12)


@register_pairwise_loss("bt")
def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry negative log-likelihood per pair (B,), soft labels through ``target``."""
    margin = chosen - rejected  # (B,)
    if target is None:
        per_pair = -F.logsigmoid(margin)  # -log sigma(s_c - s_r)
    else:
        per_pair = -(target * F.logsigmoid(margin) + (1 - target) * F.logsigmoid(-margin))
    stats = {"margin": margin.detach().mean(), "accuracy": (margin.detach() > 0).to(margin.dtype).mean()}
    return per_pair, stats
