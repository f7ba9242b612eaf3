"""Pairwise preference losses behind one registry.

Every loss takes per-pair scalars of the chosen and the rejected side and returns the
per-pair loss (B,) plus a dict of tensor stats; the caller reduces (mean, or a weighted
mean with :func:`reduce_pairs`). What the scalars are depends on the family:

* reward-model losses (``bt``): the reward model's scores ``s(x, y)``;
* direct-alignment losses (``dpo``, ``crowd_dpo``, ``ipo``, ``slic``, ``slic_rso``,
  ``rrhf``; below): sequence log-probabilities of the policy, with the reference's
  passed as keyword arguments.

``target`` (optional, (B,)) is the probability that the chosen side really is preferred,
e.g. the crowd's preference probability computed from the store's distributions; with
``target=None`` the label is hard (chosen always wins).

Bradley-Terry (the paper's BT-RM baseline):

    L_BT = -[p log sigma(s_c - s_r) + (1 - p) log sigma(s_r - s_c)],   p = target (default 1)

Register a new loss with ``@register_pairwise_loss("name")``; look one up with
:func:`pairwise_loss`.

Direct-alignment losses (train the policy on pairs: no reward model, no RL)
--------------------------------------------------------------------------

Every loss takes the policy's *sequence* log-probabilities of the chosen and of the
rejected response, ``chosen`` and ``rejected`` (B,), and returns ``(per_pair (B,), stats)``;
the reference's log-probabilities and the hyper-parameters are keyword arguments.
``target`` (B,) is the probability that ``chosen`` really is preferred (soft labels;
``None`` = hard label, chosen wins). For a soft target each loss is its expectation over
the label ``y ~ Bernoulli(target)``: ``target * loss(y=1) + (1 - target) * loss(y=0)``,
which is the paper's BCE with ``p*(y)`` in place of a hard ``y`` (its Eq. 7) for DPO.

With ``h_pi = log pi(c) - log pi(r)`` and ``h = h_pi - (log pi_ref(c) - log pi_ref(r))``
(Dumoulin et al., TMLR 2024, Sec. 4.3-4.4; the original papers in brackets):

* ``dpo`` (Eq. 14; Rafailov et al. 2023):   -log sigmoid(beta h)
* ``crowd_dpo``: DPO with the crowd's preference probability as a soft target (required):
  -[p log sigmoid(beta h) + (1 - p) log sigmoid(-beta h)]
* ``ipo`` (Eq. 23; Azar et al. 2023):       (h - 1 / (2 tau))^2
* ``slic`` (SLiC-HF-direct, Eq. 20; Zhao et al. 2023):
  max(0, delta - h_pi) - lambda log pi(x_sft)   (x_sft = the chosen response by default)
* ``slic_rso`` (Eq. 21; Liu et al. 2023): max(0, delta - h)
* ``rrhf`` (Eq. 19; Yuan et al. 2023), length-normalised log-probs n(x) = log pi(x) / |x|:
  max(0, n(r) - n(c)) + lambda (-n(c))   (ranking term + the SFT term on the best response,
  as a per-token NLL)

Pure torch; ``stats`` are detached scalars (``margin`` = mean h or the loss's own margin,
``accuracy`` = fraction of pairs whose margin is > 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["PAIRWISE_LOSSES", "register_pairwise_loss", "pairwise_loss", "bt_loss", "reduce_pairs", "dpo_loss",
           "crowd_dpo_loss", "ipo_loss", "slic_loss", "slic_rso_loss", "rrhf_loss", "DIRECT_ALIGNMENT_LOSSES"]

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


# ----------------------------------------------------------------------------- direct alignment

DIRECT_ALIGNMENT_LOSSES = ("dpo", "crowd_dpo", "ipo", "slic", "slic_rso", "rrhf")


def _log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """h = (log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r)), (B,)."""
    if ref_chosen is None or ref_rejected is None:
        raise ValueError("this loss needs the reference's log-probabilities: pass ref_chosen= and ref_rejected=")
    return (chosen - ref_chosen) - (rejected - ref_rejected)


def _soft(loss_y1: torch.Tensor, loss_y0: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """E_{y ~ Bernoulli(target)} loss(y); hard label (y = 1) when target is None."""
    if target is None:
        return loss_y1
    return target * loss_y1 + (1 - target) * loss_y0


def _stats(margin: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    m = margin.detach()
    out = {"margin": m.mean(), "accuracy": (m > 0).to(m.dtype).mean()}
    out.update({k: v.detach() for k, v in extra.items()})
    return out


@register_pairwise_loss("dpo")
def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None, *,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Eq. 14): -log sigmoid(beta h) per pair; soft labels through ``target``."""
    if not beta > 0:
        raise ValueError(f"dpo: beta must be > 0, got {beta}")
    h = _log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected)  # (B,)
    z = beta * h
    per_pair = _soft(-F.logsigmoid(z), -F.logsigmoid(-z), target)  # (Eq. 14) BCE on sigmoid(beta h)
    return per_pair, _stats(h, reward_chosen=(beta * (chosen - ref_chosen)).mean(),
                            reward_rejected=(beta * (rejected - ref_rejected)).mean())


@register_pairwise_loss("crowd_dpo")
def crowd_dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None, *,
                   ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Crowd DPO: BCE of sigmoid(beta h) against the crowd's P(chosen > rejected) (required)."""
    if target is None:
        raise ValueError("crowd_dpo needs target= (the crowd's probability that chosen is preferred)")
    per_pair, stats = dpo_loss(chosen, rejected, target, ref_chosen=ref_chosen, ref_rejected=ref_rejected, beta=beta)
    stats["target"] = target.detach().mean()
    return per_pair, stats


@register_pairwise_loss("ipo")
def ipo_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None, *,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, tau: float = 0.1
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Eq. 23): (h - 1 / (2 tau))^2 per pair; for y = 0 the sign of h flips."""
    if not tau > 0:
        raise ValueError(f"ipo: tau must be > 0, got {tau}")
    h = _log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    c = 1.0 / (2.0 * tau)
    per_pair = _soft((h - c) ** 2, (-h - c) ** 2, target)  # (Eq. 23)
    return per_pair, _stats(h)


@register_pairwise_loss("slic")
def slic_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None, *,
              delta: float = 1.0, sft_weight: float = 0.0, sft_logp: torch.Tensor | None = None,
              ref_chosen: torch.Tensor | None = None, ref_rejected: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SLiC-HF-direct (Eq. 20): max(0, delta - h_pi) - lambda log pi(x_sft).

    ``sft_logp`` (B,): log pi of the SFT example of each pair (Eq. 20's second expectation;
    e.g. a sample of pi_pre); default the chosen response ("maximise the likelihood of the
    preferred observations"). The reference is not used (accepted for a uniform call).
    """
    if delta < 0 or sft_weight < 0:
        raise ValueError(f"slic: delta and sft_weight must be >= 0, got {delta}, {sft_weight}")
    h = chosen - rejected  # log pi(c) / pi(r)
    per_pair = _soft(F.relu(delta - h), F.relu(delta + h), target)  # (Eq. 20) hinge
    sft = -(chosen if sft_logp is None else sft_logp)
    if sft_weight > 0:
        per_pair = per_pair + sft_weight * sft  # (Eq. 20) - lambda E_SFT[log pi]
    return per_pair, _stats(h, sft_nll=sft.mean())


@register_pairwise_loss("slic_rso")
def slic_rso_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None, *,
                  ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, delta: float = 1.0
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RSO-normalised SLiC (Eq. 21): max(0, delta - h), h normalised by the reference."""
    if delta < 0:
        raise ValueError(f"slic_rso: delta must be >= 0, got {delta}")
    h = _log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    per_pair = _soft(F.relu(delta - h), F.relu(delta + h), target)  # (Eq. 21)
    return per_pair, _stats(h)


@register_pairwise_loss("rrhf")
def rrhf_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor | None = None, *,
              len_chosen: torch.Tensor, len_rejected: torch.Tensor, sft_weight: float = 1.0,
              ref_chosen: torch.Tensor | None = None, ref_rejected: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RRHF (Eq. 19) for a pair: max(0, n(r) - n(c)) + lambda (-n(c)), n(x) = log pi(x) / |x|.

    ``len_chosen``, ``len_rejected`` (B,): token counts (> 0). The SFT term is the
    per-token NLL of the chosen (best) response. The reference is not used.
    """
    if sft_weight < 0:
        raise ValueError(f"rrhf: sft_weight must be >= 0, got {sft_weight}")
    if torch.any(len_chosen <= 0) or torch.any(len_rejected <= 0):
        raise ValueError("rrhf: sequence lengths must be > 0")
    nc, nr = chosen / len_chosen, rejected / len_rejected  # length-normalised log-probs
    m = nc - nr
    per_pair = _soft(F.relu(-m), F.relu(m), target)  # (Eq. 19) ranking term
    sft = -nc
    if sft_weight > 0:
        per_pair = per_pair + sft_weight * sft  # RRHF's L_ft on the best response
    return per_pair, _stats(m, sft_nll=sft.mean())
