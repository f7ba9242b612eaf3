"""Batched log-domain Sinkhorn with epsilon scaling, and the Sinkhorn divergence.

Entropic OT with the KL regulariser relative to a (x) b (Peyre & Cuturi, "Computational
Optimal Transport", 2019, Eq. 4.2 with Remark 4.5; Feydy et al., AISTATS 2019, Eq. 3):

    OT_eps(a, b) = min_{P in U(a, b)} <P, M> + eps KL(P | a (x) b)
                 = max_{f, g} <f, a> + <g, b> - eps <a (x) b, exp((f + g - M) / eps) - 1>.  (K1)

Its plan equals POT's `reg * sum P log P` plan (the two regularisers differ by a
constant on U(a, b)), and 0 <= OT_eps - OT <= eps * min(H(a), H(b)) <= eps log L.
Log-domain block coordinate ascent on (K1) (Peyre & Cuturi, Eq. 4.43):

    f_i = -eps LSE_j( log b_j + (g_j - M_ij) / eps )                                    (K2)
    g_j = -eps LSE_i( log a_i + (f_i - M_ij) / eps )                                    (K3)

At the fixed point the value is <f, a> + <g, b> and, by the envelope theorem,
grad_a OT_eps = f, grad_b OT_eps = g (up to a constant; we centre them). Epsilon
scaling (Schmitzer, SIAM J. Sci. Comput. 2019, Sec. 3.2; Feydy et al., Sec. 3) anneals
eps geometrically from the cost's diameter to the target, warm-starting each stage.
Stopping rule: the L1 error of the row marginals of P, max over the batch, < tol.

Unbiased Sinkhorn divergence (Feydy et al., AISTATS 2019, Eq. 5):

    S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2,                   (K4)

which is 0 at a = b; its gradient in a is f_ab - (f_aa + g_aa) / 2.

Naive twin: the same updates unrolled with autograd (tests compare the gradients).
"""

from __future__ import annotations

import math

import torch

__all__ = ["sinkhorn_potentials", "sinkhorn", "sinkhorn_divergence", "symmetric_potential", "eps_schedule"]


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp whose exponents are clamped at -80: terms below e^-80 relative to the max
    change nothing in float64/32 but would make CPUs crawl through subnormal numbers."""
    m = x.amax(dim, keepdim=True)
    return (m + torch.log(torch.exp((x - m).clamp_min(-80.0)).sum(dim, keepdim=True))).squeeze(dim)


def eps_schedule(eps: float, eps_start: float | None, decay: float) -> list[float]:
    """Geometric epsilon schedule eps_start, eps_start * decay, ..., eps (the last stage)."""
    if not eps > 0:
        raise ValueError(f"sinkhorn: eps must be > 0, got {eps}")
    if eps_start is None or eps_start <= eps:
        return [eps]
    if not 0 < decay < 1:
        raise ValueError(f"sinkhorn: eps_decay must lie in (0, 1), got {decay}")
    n = math.ceil(math.log(eps / eps_start) / math.log(decay))
    return [eps_start * decay**k for k in range(n)] + [eps]


def sinkhorn_potentials(
    a: torch.Tensor,
    b: torch.Tensor,
    M: torch.Tensor,
    eps: float = 0.05,
    *,
    eps_start: float | None = None,
    eps_decay: float = 0.5,
    stage_iters: int = 3,
    tol: float = 1e-6,
    max_iter: int = 1000,
    check_every: int = 5,
):
    """Potentials (f, g) of Eq. (K1) by (K2)-(K3). a, b (B, L); M (L, L) or (B, L, L).

    eps_start defaults to max(M) (epsilon scaling on); pass eps_start=eps to switch it
    off. Intermediate stages run `stage_iters` iterations each; the last stage runs until
    the row-marginal L1 error is below `tol` (max over the batch) or `max_iter` in all.
    Returns (f (B, L), g (B, L), stats) with uncentred potentials.
    """
    Mb = M[None] if M.dim() == 2 else M  # (1|B, L, L)
    loga, logb = torch.log(a), torch.log(b)  # -inf where a mass is 0
    logb_row = logb[:, None, :]  # (B, 1, L)
    loga_col = loga[:, :, None]  # (B, L, 1)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    if eps_start is None:
        eps_start = float(M.max())
    sched = eps_schedule(eps, eps_start, eps_decay)
    it, err = 0, float("inf")
    for stage, e in enumerate(sched):
        last = stage == len(sched) - 1
        n = max_iter - it if last else min(stage_iters, max(max_iter - it, 0))
        for k in range(n):
            f_new = -e * _lse(logb_row + (g[:, None, :] - Mb) / e, dim=2)  # (Eq. K2) (B, L)
            check = last and (k % check_every == check_every - 1 or k == n - 1)
            if check:  # row sums of the current plan are a_i exp((f_i - f_new_i) / e)
                dev = torch.where(a > 0, a * torch.expm1((f - f_new) / e).abs(), torch.zeros_like(a))
                err = float(dev.sum(1).max())
            f = f_new
            g = -e * _lse(loga_col + (f[:, :, None] - Mb) / e, dim=1)  # (Eq. K3) (B, L)
            it += 1
            if check and err < tol:
                break
    stats = {"iterations": it, "marginal_error": err, "eps": eps, "stages": len(sched),
             "converged": err < tol}
    return f, g, stats


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def sinkhorn(a, b, M, eps: float = 0.05, **kw):
    """OT_eps(a, b) of Eq. (K1). Returns (value (B,), f (B, L), g (B, L), stats); f, g centred."""
    f, g, stats = sinkhorn_potentials(a, b, M, eps, **kw)
    value = (f * a).sum(1) + (g * b).sum(1)  # (Eq. K1) at the fixed point
    return value, _centre(f), _centre(g), stats


def symmetric_potential(a, M, eps: float = 0.05, *, eps_start: float | None = None, eps_decay: float = 0.5,
                        stage_iters: int = 3, tol: float = 1e-6, max_iter: int = 1000, check_every: int = 5):
    """Potential f of OT_eps(a, a) for a symmetric cost, where f = g (Feydy et al., Sec. 3):
    the averaged update f <- (f + T(f)) / 2 with T(f)_i = -eps LSE_j(log a_j + (f_j - M_ij) / eps)
    converges much faster than alternating (K2)-(K3) on this problem. OT_eps(a, a) = 2 <f, a>.
    """
    Mb = M[None] if M.dim() == 2 else M
    loga_row = torch.log(a)[:, None, :]  # (B, 1, L)
    f = torch.zeros_like(a)
    sched = eps_schedule(eps, float(M.max()) if eps_start is None else eps_start, eps_decay)
    it, err = 0, float("inf")
    for stage, e in enumerate(sched):
        last = stage == len(sched) - 1
        n = max_iter - it if last else min(stage_iters, max(max_iter - it, 0))
        for k in range(n):
            t = -e * _lse(loga_row + (f[:, None, :] - Mb) / e, dim=2)  # T(f) (B, L)
            check = last and (k % check_every == check_every - 1 or k == n - 1)
            if check:
                dev = torch.where(a > 0, a * torch.expm1((f - t) / e).abs(), torch.zeros_like(a))
                err = float(dev.sum(1).max())
            f = 0.5 * (f + t)
            it += 1
            if check and err < tol:
                break
    return f, {"iterations": it, "marginal_error": err, "converged": err < tol}


def sinkhorn_divergence(a, b, M, eps: float = 0.05, **kw):
    """S_eps(a, b) of Eq. (K4). Returns (value (B,), grad_a (B, L), grad_b (B, L), stats), centred.

    Symmetric cost: OT_eps(a, b) by (K2)-(K3) and the self terms by `symmetric_potential`
    (gradient of OT_eps(a, a) / 2 in a is f_aa). Otherwise the three problems are solved
    as one batch of 3B with the general iterations.
    """
    B = a.shape[0]
    if torch.equal(M, M.transpose(-1, -2)):
        f, g, stats = sinkhorn_potentials(a, b, M, eps, **kw)
        MM = M if M.dim() == 2 else torch.cat([M, M], 0)
        s, st2 = symmetric_potential(torch.cat([a, b], 0), MM, eps, **kw)
        stats = {**stats, "self_iterations": st2["iterations"],
                 "marginal_error": max(stats["marginal_error"], st2["marginal_error"]),
                 "converged": stats["converged"] and st2["converged"]}
        value = (f * a).sum(1) + (g * b).sum(1) - (s[:B] * a).sum(1) - (s[B:] * b).sum(1)  # (Eq. K4)
        return value, _centre(f - s[:B]), _centre(g - s[B:]), stats
    A = torch.cat([a, a, b], 0)  # (3B, L)
    Bt = torch.cat([b, a, b], 0)
    MM = M if M.dim() == 2 else torch.cat([M, M, M], 0)
    f, g, stats = sinkhorn_potentials(A, Bt, MM, eps, **kw)
    v = (f * A).sum(1) + (g * Bt).sum(1)  # (3B,)
    value = v[:B] - 0.5 * v[B : 2 * B] - 0.5 * v[2 * B :]  # (Eq. K4)
    grad_a = f[:B] - 0.5 * (f[B : 2 * B] + g[B : 2 * B])
    grad_b = g[:B] - 0.5 * (f[2 * B :] + g[2 * B :])
    return value, _centre(grad_a), _centre(grad_b), stats
