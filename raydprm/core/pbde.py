"""Preference behaviour distribution equations (PBDE) — pairwise choice rules.

Dumoulin et al., "A density estimation perspective on learning from pairwise human
preferences" (TMLR 2024). An annotator with (log-)density log p over items prefers a
over b with probability

    P(a > b) = sigmoid(Omega(a) - Omega(b)),   Omega(x) = f(x) log p(x) + g(x),  f > 0   (PBDE)

Named rules (the paper's Sec. 4):

* Luce choice rule (f = 1, g = 0):         P(a > b) = p(a) / (p(a) + p(b))            (Eq. 3)
* length-normalised Luce (f = 1/|x|):      Omega(x) = log p(x) / |x|
* DPO form (f = beta, g = -beta log pi_pre): Omega(x) = beta (log p(x) - log pi_pre(x))  (Eq. 14)

and the multi-annotator mixture: preferences pooled from K annotators with shares w_k
(Eq. 25)

    P(a > b) = sum_k w_k sigmoid(Omega_k(a) - Omega_k(b)).

Pure math: torch tensors in, tensors out (numpy arrays are accepted and returned as numpy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["omega", "pbde_preference", "luce", "length_normalised_luce", "dpo_preference",
           "mixture_preference", "PBDE_RULES"]


def _t(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _out(y: torch.Tensor, ref):
    return y if isinstance(ref, torch.Tensor) else y.detach().cpu().numpy()


def omega(logp, f=1.0, g=0.0):
    """Omega(x) = f(x) log p(x) + g(x), elementwise (PBDE). ``f`` must be > 0."""
    lp, ft, gt = _t(logp), _t(f), _t(g)
    if torch.any(ft <= 0):
        raise ValueError("PBDE: f(x) must be > 0")
    return _out(ft * lp + gt, logp)


def pbde_preference(omega_a, omega_b):
    """P(a > b) = sigmoid(Omega(a) - Omega(b)) (PBDE)."""
    return _out(torch.sigmoid(_t(omega_a) - _t(omega_b)), omega_a)


def luce(logp_a, logp_b):
    """Luce choice rule, P(a > b) = p(a) / (p(a) + p(b)) = sigmoid(log p(a) - log p(b)) (Eq. 3)."""
    return pbde_preference(logp_a, logp_b)


def length_normalised_luce(logp_a, logp_b, len_a, len_b):
    """Length-normalised Luce: Omega(x) = log p(x) / |x| with |x| > 0 the sequence length."""
    la, lb = _t(len_a), _t(len_b)
    if torch.any(la <= 0) or torch.any(lb <= 0):
        raise ValueError("length_normalised_luce: lengths must be > 0")
    return _out(torch.sigmoid(_t(logp_a) / la - _t(logp_b) / lb), logp_a)


def dpo_preference(logp_a, logp_b, ref_logp_a, ref_logp_b, beta: float = 1.0):
    """DPO form: Omega(x) = beta (log p(x) - log pi_pre(x)) (Eq. 14's implicit reward)."""
    if not beta > 0:
        raise ValueError(f"dpo_preference: beta must be > 0, got {beta}")
    h = beta * ((_t(logp_a) - _t(ref_logp_a)) - (_t(logp_b) - _t(ref_logp_b)))
    return _out(torch.sigmoid(h), logp_a)


def mixture_preference(omega_a, omega_b, weights):
    """Multi-annotator mixture (Eq. 25): sum_k w_k sigmoid(Omega_k(a) - Omega_k(b)).

    omega_a, omega_b: (K, ...) each annotator's Omega of a and b; weights (K,) >= 0,
    normalised here. Returns (...).
    """
    oa, ob, w = _t(omega_a), _t(omega_b), _t(weights)
    if oa.shape != ob.shape or oa.dim() < 1 or w.shape != (oa.shape[0],):
        raise ValueError(f"mixture_preference: omega_a {tuple(oa.shape)}, omega_b {tuple(ob.shape)} "
                         f"must match and be (K, ...) with weights ({oa.shape[0] if oa.dim() else '?'},)")
    if not torch.all(torch.isfinite(w)) or torch.any(w < 0) or float(w.sum()) <= 0:
        raise ValueError("mixture_preference: weights must be finite, >= 0, not all zero")
    w = (w / w.sum()).to(oa).reshape(-1, *([1] * (oa.dim() - 1)))  # (K, 1.., 1)
    return _out((w * torch.sigmoid(oa - ob)).sum(0), omega_a)  # (Eq. 25)


# Registry of single-annotator rules by name: rule(logp_a, logp_b, **extra) -> P(a > b).
PBDE_RULES: dict[str, Callable[..., object]] = {
    "luce": luce,
    "length_normalised_luce": length_normalised_luce,
    "dpo": dpo_preference,
}
