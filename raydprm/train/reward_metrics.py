"""Held-out metrics of a reward model (pure tensors in, floats out).

For a DPRM with predicted mu (N, L) against crowd targets t (N, L):

    ot_distance   mean_n OT_M(mu_n, t_n)            (the configured cost M; exact solver)
    ce            mean_n -sum_i t_ni log mu_ni      (the paper's DPRM_C objective)
    er_error      mean_n |E_mu_n[r] - E_t_n[r]|     (error of PPO's scalar reward)
    ece           expected calibration error of the top label: bins of the confidence
                  c_n = max_i mu_ni; the "accuracy" of a prediction is t_n[argmax mu_n],
                  the probability that a voter drawn from the crowd picks the predicted
                  label, so ECE = sum_b |b|/N |mean_b acc - mean_b c|.

Per persona (rater group) the fit is computed against each group's own vote frequencies,
on the items that group voted on (:func:`group_fit`): OT distance, W1 on label positions,
CE, reward error and top-label ECE. A group-conditioned DPRM is scored with its own
prediction for the group, mu_g; a population DPRM with its one mu for every group.

For the Bradley-Terry model: pairwise accuracy and loss on held-out pairs, and the
Spearman rank correlation of its scalar score with the crowd's expected reward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ot_distance", "distribution_metrics", "expected_calibration_error", "spearman",
           "persona_metrics", "group_fit"]


def ot_distance(mu: torch.Tensor, target: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Exact OT distance per row (N,) between distributions mu, target (N, L) under cost (L, L)."""
    from raydprm.core.ot_loss import ot_loss

    out = ot_loss(mu.double(), target.double(), cost.double(), method="exact", from_logits=False,
                  reduction="none")
    value = out[0] if isinstance(out, tuple) else out
    return value.detach()


def expected_calibration_error(mu: torch.Tensor, target: torch.Tensor, n_bins: int = 10) -> float:
    """Top-label ECE of predictions mu (N, L) against crowd distributions target (N, L)."""
    if mu.shape[0] == 0:
        return 0.0
    conf, top = mu.max(-1)  # (N,)
    acc = target.gather(-1, top[:, None]).squeeze(-1)  # (N,) crowd mass on the predicted label
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)  # (N,)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += float(sel.double().mean()) * abs(float(acc[sel].double().mean() - conf[sel].double().mean()))
    return ece


def distribution_metrics(mu: torch.Tensor, target: torch.Tensor, rewards: torch.Tensor,
                         cost: torch.Tensor) -> dict[str, float]:
    """ot_distance, ce, er_error, ece of mu (N, L) against target (N, L)."""
    mu, target, rewards = mu.double(), target.double(), rewards.double()
    eps = torch.finfo(torch.float64).tiny
    ce = -(target * torch.log(mu.clamp_min(eps))).sum(-1)  # (N,)
    er = (mu @ rewards - target @ rewards).abs()  # (N,)
    return {"ot_distance": float(ot_distance(mu, target, cost).mean()),
            "ce": float(ce.mean()),
            "er_error": float(er.mean()),
            "ece": expected_calibration_error(mu, target)}


def group_fit(mu: torch.Tensor, group_names: Sequence[str], group_counts: torch.Tensor | None,
              rewards: torch.Tensor, cost: torch.Tensor, w1_cost: torch.Tensor | None = None
              ) -> dict[str, dict[str, float]]:
    """Held-out fit per rater group g of predictions ``mu`` — (N, L) one prediction for every
    group, or (N, G, L) one per group — against the group's vote frequencies (from counts
    (G, N, L)), on the items it voted on: ot_distance (``cost``), w1 (``w1_cost``, e.g. the
    ordinal cost |i - j|), ce, er_error, ece, items and votes."""
    out: dict[str, dict[str, float]] = {}
    if group_counts is None:
        return out
    eps = torch.finfo(torch.float64).tiny
    r = rewards.double()
    for g, name in enumerate(group_names):
        c = group_counts[g].double()  # (N, L)
        n = c.sum(-1)
        sel = n > 0
        if not sel.any():
            continue
        freq = c[sel] / n[sel, None]
        m = (mu[:, g] if mu.dim() == 3 else mu)[sel].double()
        row = {"ot_distance": float(ot_distance(m, freq, cost).mean()),
               "ce": float(-(freq * torch.log(m.clamp_min(eps))).sum(-1).mean()),
               "er_error": float((m @ r - freq @ r).abs().mean()),
               "ece": expected_calibration_error(m, freq),
               "items": int(sel.sum()), "votes": float(n.sum())}
        if w1_cost is not None:
            row["w1"] = float(ot_distance(m, freq, w1_cost).mean())
        out[name] = row
    return out


def persona_metrics(mu: torch.Tensor, persona_names: Sequence[str], persona_counts: torch.Tensor | None,
                    rewards: torch.Tensor, cost: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per persona: ot_distance and er_error of mu (N, L) against that persona's vote
    frequencies (from counts (P, N, L)), on the items it voted on."""
    out: dict[str, dict[str, float]] = {}
    if persona_counts is None:
        return out
    for p, name in enumerate(persona_names):
        c = persona_counts[p].double()  # (N, L)
        n = c.sum(-1)
        sel = n > 0
        if not sel.any():
            continue
        freq = c[sel] / n[sel, None]
        m = mu[sel].double()
        out[name] = {"ot_distance": float(ot_distance(m, freq, cost).mean()),
                     "er_error": float((m @ rewards.double() - freq @ rewards.double()).abs().mean()),
                     "items": int(sel.sum())}
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average the ranks of ties
            m = v == val
            r[m] = r[m].mean()
        return r

    if len(x) < 2:
        return 0.0
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den > 0 else 0.0
