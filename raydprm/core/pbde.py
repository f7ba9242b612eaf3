"""Preference behaviour distribution equations (PBDE) — pairwise choice rules.

Dumoulin et al., "A density estimation perspective on learning from pairwise human
preferences" (TMLR 2024). An annotator with (log-)density log p over items prefers a
over b with probability

    P(a > b) = sigmoid(Omega(a) - Omega(b)),   Omega(x) = f(x) log p(x) + g(x),  f > 0   (Eq. 11, PBDE)

Named rules (the paper's Sec. 4):

* Luce choice rule (f = 1, g = 0):         P(a > b) = p(a) / (p(a) + p(b))            (Eq. 9; Eq. 2 for a model)
* length-normalised Luce (f = 1/|x|):      Omega(x) = log p(x) / |x|                   (Eq. 26)
* DPO form (f = beta, g = -beta log pi_pre): Omega(x) = beta (log p(x) - log pi_pre(x))  (Eqs. 14-15)
* geometric mixture (f = 1/alpha, g = (1 - 1/alpha) log pi_pre):
      Omega(x) = (log p(x) - log pi_pre(x)) / alpha + log pi_pre(x)                       (Eq. 18)

If the annotator follows the Luce rule with implicit density p* and a model pi is fitted
with the BCE loss under one of these rules, the global optimum is (Theorem 2, App. A.1)

* Luce / length-normalised Luce (same rule for both):  pi = p*
* DPO form:            pi ∝ pi_pre * p*^(1/beta)                                         (Eq. 16)
* geometric mixture:   pi ∝ pi_pre^(1 - alpha) * p*^alpha                                (Eq. 18)

(:func:`dpo_optimum`, :func:`geometric_optimum` give these unnormalised log-densities.)

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
           "geometric_preference", "mixture_preference", "luce_omega", "length_normalised_omega", "dpo_omega",
           "geometric_omega", "dpo_optimum", "geometric_optimum", "crowd_preference", "PBDE_RULES"]


def _t(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _out(y: torch.Tensor, ref):
    return y if isinstance(ref, torch.Tensor) else y.detach().cpu().numpy()


def omega(logp, f=1.0, g=0.0):
    """Omega(x) = f(x) log p(x) + g(x), elementwise (Eq. 11, PBDE). ``f`` must be > 0."""
    lp, ft, gt = _t(logp), _t(f), _t(g)
    if torch.any(ft <= 0):
        raise ValueError("PBDE: f(x) must be > 0")
    return _out(ft * lp + gt, logp)


def pbde_preference(omega_a, omega_b):
    """P(a > b) = sigmoid(Omega(a) - Omega(b)) (Eq. 11, PBDE)."""
    return _out(torch.sigmoid(_t(omega_a) - _t(omega_b)), omega_a)


def luce(logp_a, logp_b):
    """Luce choice rule, P(a > b) = p(a) / (p(a) + p(b)) = sigmoid(log p(a) - log p(b)) (Eq. 9)."""
    return pbde_preference(logp_a, logp_b)


def length_normalised_luce(logp_a, logp_b, len_a, len_b):
    """Length-normalised Luce (Eq. 26): Omega(x) = log p(x) / |x| with |x| > 0 the sequence length."""
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


def geometric_preference(logp_a, logp_b, ref_logp_a, ref_logp_b, alpha: float = 0.5):
    """Geometric-mixture form (Eq. 18): Omega(x) = (log p(x) - log pi_pre(x)) / alpha + log pi_pre(x)."""
    oa = geometric_omega(_t(logp_a), _t(ref_logp_a), alpha)
    ob = geometric_omega(_t(logp_b), _t(ref_logp_b), alpha)
    return _out(torch.sigmoid(oa - ob), logp_a)


# ---------------------------------------------------------------- Omega of each named rule
# The experiments train models through these (P(a > b) = sigmoid(Omega(a) - Omega(b))); they
# are differentiable torch functions (tensors in, tensors out).


def luce_omega(logp: torch.Tensor) -> torch.Tensor:
    """Luce: Omega(x) = log p(x) (f = 1, g = 0)."""
    return logp


def length_normalised_omega(logp: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Length-normalised Luce (Eq. 26): Omega(x) = log p(x) / |x| (f = 1/|x|, g = 0)."""
    return logp / length


def dpo_omega(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Eq. 15): Omega(x) = beta log p(x) - beta log pi_pre(x)."""
    if not beta > 0:
        raise ValueError(f"dpo_omega: beta must be > 0, got {beta}")
    return beta * (logp - ref_logp)


def geometric_omega(logp: torch.Tensor, ref_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 18's model PBDE: f = 1/alpha, g = (1 - 1/alpha) log pi_pre, i.e.
    Omega(x) = log p(x) / alpha + (1 - 1/alpha) log pi_pre(x)."""
    if not alpha > 0:
        raise ValueError(f"geometric_omega: alpha must be > 0, got {alpha}")
    return logp / alpha + (1.0 - 1.0 / alpha) * ref_logp


def dpo_optimum(log_pi_pre, log_p_star, beta: float):
    """Unnormalised log-density of DPO's optimum under a Luce annotator (Eq. 16):
    log pi = log pi_pre + log p* / beta (+ const)."""
    if not beta > 0:
        raise ValueError(f"dpo_optimum: beta must be > 0, got {beta}")
    return _out(_t(log_pi_pre) + _t(log_p_star) / beta, log_pi_pre)


def geometric_optimum(log_pi_pre, log_p_star, alpha: float):
    """Unnormalised log-density of Eq. 18's optimum: (1 - alpha) log pi_pre + alpha log p* (+ const)."""
    if not alpha > 0:
        raise ValueError(f"geometric_optimum: alpha must be > 0, got {alpha}")
    return _out((1.0 - alpha) * _t(log_pi_pre) + alpha * _t(log_p_star), log_pi_pre)


# ---------------------------------------------------------------- the crowd's preference


def crowd_preference(mu_a, mu_b, rewards, ties: str = "half"):
    """The population's probability that response a is preferred to response b, from the
    crowd's label distributions of the two items and the reward table.

    A pair is judged by drawing one voter's label for each side independently,
    ``i ~ mu_a``, ``j ~ mu_b``, and comparing the labels' rewards ``r_i`` and ``r_j``:

        ties = "half":  P(a > b) = sum_ij mu_a[i] mu_b[j] ([r_i > r_j] + 0.5 [r_i = r_j])
                                 = P(r_a > r_b) + 0.5 P(r_a = r_b)
        ties = "drop":  P(a > b) = P(r_a > r_b) / (P(r_a > r_b) + P(r_a < r_b))
                        (0.5 when every draw ties), the probability of a pair that the
                        tie-discarding sampler :func:`~raydprm.train.reward_data.pairs_from_targets`
                        keeps being oriented a > b.

    Both rules give P(a > b) + P(b > a) = 1 and P(a > a) = 0.5. Labels with equal reward
    (the paper's types 3 and 4) tie.

    mu_a, mu_b: (..., L) distributions (rows normalised here); rewards: (L,). Returns (...).
    """
    if ties not in ("half", "drop"):
        raise ValueError(f"crowd_preference: ties must be 'half' or 'drop', got {ties!r}")
    a, b, r = _t(mu_a), _t(mu_b), _t(rewards)
    if a.shape != b.shape or a.shape[-1] != r.shape[-1] or r.dim() != 1:
        raise ValueError(f"crowd_preference: mu_a {tuple(a.shape)}, mu_b {tuple(b.shape)} must match and end in "
                         f"L = {r.shape[-1] if r.dim() else '?'} (rewards {tuple(r.shape)})")
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    r = r.to(a)
    gt = (r[:, None] > r[None, :]).to(a)  # (L, L): [r_i > r_j]
    eq = (r[:, None] == r[None, :]).to(a)
    p_gt = torch.einsum("...i,ij,...j->...", a, gt, b)  # P(r_a > r_b)
    p_eq = torch.einsum("...i,ij,...j->...", a, eq, b)  # P(r_a = r_b)
    if ties == "half":
        p = p_gt + 0.5 * p_eq
    else:
        p_lt = 1.0 - p_gt - p_eq
        dec = p_gt + p_lt
        p = torch.where(dec > 1e-12, p_gt / dec.clamp_min(1e-12), torch.full_like(dec, 0.5))
    return _out(p, mu_a)


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
    "geometric": geometric_preference,
}
