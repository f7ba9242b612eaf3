"""Dirichlet posteriors over a crowd's label distribution, with optional forgetting.

The DPRM paper (arXiv 2402.09764, v3) keeps a categorical preference per item and a
"Bayesian updater" for new and shifted votes, without giving the formula; v1 uses a
Beta distribution. Our choice (docs/equations.md, section 1): a Dirichlet posterior per item,

    alpha_post = alpha_prior + sum_k  w_k * d_k * v_k                                   (D1)

with v_k (L,) a one-hot or soft vote (a probability vector), w_k >= 0 its weight and
d_k = 0.5 ** (age_k / half_life) an exponential forgetting factor by vote age (d_k = 1
without forgetting). Beta(a, b) is the L = 2 case. Standard Dirichlet moments
(e.g. Bishop, PRML, Eqs. B.17-B.19), with alpha_0 = sum_i alpha_i:

    E[p_i]   = alpha_i / alpha_0                                                        (D2)
    Var[p_i] = alpha_i (alpha_0 - alpha_i) / (alpha_0^2 (alpha_0 + 1))                  (D3)

With a zero prior the posterior mean is the count-weighted average of the votes, so
merging a group of N votes with mean P and n new votes with mean P_new gives
`(N P + n P_new) / (N + n)` (the paper's aggregation).

Forgetting is by *time*, not by update step: evidence collected at time t_0 and read at
time t is scaled by decay(t - t_0). Because 0.5 ** (a / h) * 0.5 ** (b / h) =
0.5 ** ((a + b) / h), decaying in several steps equals decaying once, so the posterior
depends only on the set of (vote, weight, time) triples and the read-out time, never
on the order in which votes arrived. Without forgetting it is a plain sum (order
independent trivially).

How a store uses it (one row per (item, persona)):

    evidence, t_ev = zeros(L), t0
    # new votes (N, L) at times vote_times, now = max(t_ev, vote_times.max()):
    evidence = dirichlet_update(evidence, votes, weights, vote_ages=now - vote_times,
                                elapsed=now - t_ev, half_life=h)      # prior=0 here
    alpha = prior + evidence * decay_factor(t_query - now, h)          # read-out

or, equivalently, keep alpha (prior included) and pass `prior=` so that only the
evidence part decays. Several personas' posteriors for one item are combined with
`mix_posteriors` (a mixture of Dirichlets; its mean is the population's preference).

All functions accept torch tensors or numpy arrays and return the same kind as their
first array argument.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "decay_factor",
    "votes_to_counts",
    "dirichlet_update",
    "dirichlet_mean",
    "dirichlet_variance",
    "beta_update",
    "beta_mean_variance",
    "mix_posteriors",
    "moment_match_dirichlet",
]


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(dtype)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)


def _like(out: torch.Tensor, ref):
    """Return `out` as numpy when the reference input was not a tensor."""
    if isinstance(ref, torch.Tensor):
        return out
    return out.detach().cpu().numpy()


def decay_factor(dt, half_life: float | None):
    """Exponential forgetting factor `0.5 ** (dt / half_life)` (our choice, see module doc).

    dt: elapsed time(s), >= 0, scalar or array. `half_life=None` or `inf` switches
    forgetting off (factor 1).
    """
    t = _as_tensor(dt)
    if torch.any(t < 0):
        raise ValueError("decay_factor: elapsed time dt must be >= 0 (a vote from the future?)")
    if half_life is None or math.isinf(half_life):
        out = torch.ones_like(t)
    else:
        if not half_life > 0:
            raise ValueError(f"decay_factor: half_life must be > 0, got {half_life}")
        out = torch.exp2(-t / half_life)  # 0.5 ** (dt / h)
    if isinstance(dt, (int, float)):
        return float(out)
    return _like(out, dt)


def votes_to_counts(votes, num_labels: int | None = None) -> torch.Tensor:
    """Votes as probability rows (N, L).

    `votes` is either integer labels (N,) in [0, L) (one-hot votes; needs `num_labels`
    unless inferable) or float rows (N, L), each non-negative and summing to 1 (soft votes).
    """
    v = votes if isinstance(votes, torch.Tensor) else torch.as_tensor(np.asarray(votes))
    if not v.is_floating_point():
        if v.dim() != 1:
            raise ValueError(f"integer votes must be a vector of label ids (N,), got shape {tuple(v.shape)}")
        if num_labels is None:
            raise ValueError("integer votes need num_labels")
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_labels):
            raise ValueError(f"vote label ids must lie in [0, {num_labels}), got min {int(v.min())} max {int(v.max())}")
        return torch.nn.functional.one_hot(v.long(), num_labels).to(torch.float64)  # (N, L)
    if v.dim() != 2:
        raise ValueError(f"soft votes must have shape (N, L), got {tuple(v.shape)}")
    if num_labels is not None and v.shape[1] != num_labels:
        raise ValueError(f"votes have {v.shape[1]} labels, posterior has {num_labels}")
    if not torch.all(torch.isfinite(v)) or torch.any(v < 0):
        raise ValueError("soft votes must be finite and non-negative")
    s = v.sum(dim=1)
    if v.shape[0] and torch.max(torch.abs(s - 1)) > 1e-6:
        raise ValueError(f"each soft vote must sum to 1 (max deviation {float(torch.max(torch.abs(s - 1))):.3g})")
    return v


def dirichlet_update(
    alpha,
    votes,
    weights=None,
    *,
    index=None,
    prior=None,
    vote_ages=None,
    elapsed: float = 0.0,
    half_life: float | None = None,
):
    """Add weighted (and optionally aged) votes to Dirichlet concentrations, Eq. (D1).

    alpha:     (L,) or (I, L) current concentrations (prior included), all > 0 unless
               this is a pure evidence accumulator (prior=0 and no prior inside).
    votes:     (N,) integer labels or (N, L) probability rows.
    weights:   (N,) non-negative vote weights (default 1).
    index:     (N,) row of `alpha` (item id) each vote belongs to; required when alpha
               is (I, L); votes are scattered with index_add.
    prior:     concentration the posterior relaxes to under forgetting (broadcastable to
               alpha). Needed when forgetting is on; ignored otherwise.
    vote_ages: (N,) age of each vote at the update time (>= 0); weight w_k * decay(age_k).
    elapsed:   time since `alpha` was last updated; its evidence `alpha - prior` is
               scaled by decay(elapsed).
    half_life: forgetting half-life in the same time unit; None = no forgetting.

    Returns the new concentrations, same shape (and array kind) as alpha.
    """
    a = _as_tensor(alpha)
    squeeze = a.dim() == 1
    a2 = a.unsqueeze(0) if squeeze else a  # (I, L)
    if a2.dim() != 2:
        raise ValueError(f"alpha must be (L,) or (I, L), got {tuple(a.shape)}")
    num_items, num_labels = a2.shape
    if num_labels < 2:
        raise ValueError("a Dirichlet needs L >= 2 labels")
    v = votes_to_counts(votes, num_labels).to(a2)  # (N, L)
    n = v.shape[0]
    w = torch.ones(n, dtype=a2.dtype) if weights is None else _as_tensor(weights).to(a2)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
    if not torch.all(torch.isfinite(w)) or torch.any(w < 0):
        raise ValueError("vote weights must be finite and >= 0")
    forgetting = half_life is not None and not math.isinf(half_life)
    if forgetting:
        if prior is None:
            raise ValueError("forgetting (half_life) needs `prior`: the evidence decays towards it")
        p = _as_tensor(prior).to(a2)
        keep = decay_factor(torch.as_tensor(float(elapsed)), half_life)
        a2 = p + (a2 - p) * keep  # old evidence decays towards the prior
        if vote_ages is not None:
            ages = _as_tensor(vote_ages).to(a2)
            if ages.shape != (n,):
                raise ValueError(f"vote_ages must have shape ({n},), got {tuple(ages.shape)}")
            w = w * decay_factor(ages, half_life)  # (Eq. D1) d_k
    elif elapsed < 0:
        raise ValueError("elapsed must be >= 0")
    contrib = w[:, None] * v  # (N, L)  w_k d_k v_k
    if index is None:
        if num_items != 1:
            raise ValueError("alpha has several rows (I, L): pass `index` (N,) mapping votes to rows")
        out = a2 + contrib.sum(dim=0, keepdim=True)  # (Eq. D1)
    else:
        idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index).long()
        if idx.shape != (n,):
            raise ValueError(f"index must have shape ({n},), got {tuple(idx.shape)}")
        if n and (int(idx.min()) < 0 or int(idx.max()) >= num_items):
            raise ValueError(f"index values must lie in [0, {num_items})")
        out = a2.index_add(0, idx, contrib)  # (Eq. D1), per item
    out = out.squeeze(0) if squeeze else out
    return _like(out, alpha)


def _check_alpha(a: torch.Tensor) -> None:
    if a.dim() < 1 or a.shape[-1] < 2:
        raise ValueError(f"alpha must have a label axis of size >= 2, got shape {tuple(a.shape)}")
    if not torch.all(torch.isfinite(a)) or torch.any(a < 0) or torch.any(a.sum(-1) <= 0):
        raise ValueError("alpha must be finite, >= 0, with a positive total per row")


def dirichlet_mean(alpha):
    """Posterior mean E[p] = alpha / alpha_0, Eq. (D2). alpha (..., L) -> (..., L)."""
    a = _as_tensor(alpha)
    _check_alpha(a)
    return _like(a / a.sum(-1, keepdim=True), alpha)  # (Eq. D2)


def dirichlet_variance(alpha):
    """Posterior marginal variances, Eq. (D3). alpha (..., L) -> (..., L)."""
    a = _as_tensor(alpha)
    _check_alpha(a)
    a0 = a.sum(-1, keepdim=True)
    return _like(a * (a0 - a) / (a0**2 * (a0 + 1)), alpha)  # (Eq. D3)


def beta_update(a, b, successes=0.0, failures=0.0):
    """Beta(a, b) posterior: the L = 2 case of Eq. (D1) -> (a + successes, b + failures)."""
    alpha = dirichlet_update(
        torch.tensor([float(a), float(b)], dtype=torch.float64),
        torch.eye(2, dtype=torch.float64),
        torch.tensor([float(successes), float(failures)], dtype=torch.float64),
    )
    return float(alpha[0]), float(alpha[1])


def beta_mean_variance(a: float, b: float) -> tuple[float, float]:
    """Beta mean a / (a + b) and variance ab / ((a+b)^2 (a+b+1)) (Eqs. D2-D3 with L = 2)."""
    alpha = torch.tensor([float(a), float(b)], dtype=torch.float64)
    return float(dirichlet_mean(alpha)[0]), float(dirichlet_variance(alpha)[0])


def mix_posteriors(alphas, weights):
    """Mixture of P Dirichlet posteriors (one per persona) with mixture weights.

    alphas (P, ..., L), weights (P,) non-negative (normalised here). The mixture
    sum_p w_p Dir(alpha_p) has mean and (law of total variance) marginal variance

        m = sum_p w_p m_p,    Var = sum_p w_p (Var_p + m_p^2) - m^2.

    Returns (mean (..., L), variance (..., L)).
    """
    a = _as_tensor(alphas)
    _check_alpha(a)
    w = _as_tensor(weights).to(a)
    if w.dim() != 1 or w.shape[0] != a.shape[0]:
        raise ValueError(f"weights must have shape ({a.shape[0]},) to match alphas {tuple(a.shape)}")
    if not torch.all(torch.isfinite(w)) or torch.any(w < 0) or float(w.sum()) <= 0:
        raise ValueError("mixture weights must be finite, >= 0 and not all zero")
    w = (w / w.sum()).reshape(-1, *([1] * (a.dim() - 1)))  # (P, 1.., 1)
    m_p = dirichlet_mean(a)
    v_p = dirichlet_variance(a)
    mean = (w * m_p).sum(0)
    var = (w * (v_p + m_p**2)).sum(0) - mean**2
    return _like(mean, alphas), _like(var.clamp_min(0), alphas)


def moment_match_dirichlet(mean, variance):
    """Single Dirichlet with the given mean whose precision alpha_0 matches the variances.

    From Eq. (D3), alpha_0 + 1 = m_i (1 - m_i) / Var_i for each i; we take the
    mass-weighted average of those estimates (Minka's moment matching, 2000).
    mean, variance (..., L) -> alpha (..., L).
    """
    m = _as_tensor(mean)
    v = _as_tensor(variance).to(m)
    ok = (v > 0) & (m > 0) & (m < 1)
    est = torch.where(ok, m * (1 - m) / v.clamp_min(1e-300) - 1, torch.zeros_like(m))
    wts = torch.where(ok, m, torch.zeros_like(m))
    a0 = (est * wts).sum(-1, keepdim=True) / wts.sum(-1, keepdim=True).clamp_min(1e-300)
    return _like(m * a0.clamp_min(1e-12), mean)
