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

Newton polish of the last stage (on by default; Brauer, Clason, Lorenz & Wirth,
"A Sinkhorn-Newton method for entropic optimal transport", arXiv 1710.06635, 2017).
With f = f(g) from (K2) the dual (K1) becomes the concave semi-dual

    h(g) = <f(g), a> + <g, b>,   grad h = b - P^T 1,
    -Hess h = (diag(P^T 1) - P^T Pi) / eps,   Pi_ij = P_ij / a_i (rows of the plan),    (K5)

whose Newton step solves an L x L system per row (gauge: + b b^T, which leaves the
step's component orthogonal to 1 unchanged; identity on columns with b_j = 0). Plain
Sinkhorn crawls when the plan is nearly block-decoupled (a tree edge of the exact plan
carries little mass, or tied costs as in `reward_gap`): the rate is 1 minus that mass.
Newton is exact on the linearised problem, so it needs ~10 steps instead of thousands.
Each step is clipped to max |dg| <= 10 eps (the semi-dual is log-sum-exp-like along a
decoupled direction, so an unclipped step overshoots by far), then backtracked
(t = 1, 1/2, 1/4, 1/8) until h increases; a row where no t increases h takes a plain
Sinkhorn g-update instead, which never decreases h. Rows that meet the tolerance are
frozen. With Newton the stopping rule is the L1 error of the column marginals of the
plan of (f(g), g), whose row marginals are exact: the same quantity up to which side
was updated last.

When max(M) / eps <= 100 (float64; 20 float32) each LSE of (K2)-(K3) is computed in
kernel form, m + log(K @ exp(logw - m)) with K = exp(-M / eps) and one shift m per row
(`_kernel_lse`): a (B, L) x (L, L) matmul instead of (B, L, L) elementwise work.

Unbiased Sinkhorn divergence (Feydy et al., AISTATS 2019, Eq. 5):

    S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2,                   (K4)

which is 0 at a = b; its gradient in a is f_ab - (f_aa + g_aa) / 2.

Naive twin: the same updates unrolled with autograd (tests compare the gradients).
"""

from __future__ import annotations

import math

import torch

__all__ = ["sinkhorn_potentials", "newton_polish", "sinkhorn", "sinkhorn_divergence", "symmetric_potential", "eps_schedule"]


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp whose exponents are clamped at -80: terms below e^-80 relative to the max
    change nothing in float64/32 but would make CPUs crawl through subnormal numbers."""
    m = x.amax(dim, keepdim=True)
    return (m + torch.log(torch.exp((x - m).clamp_min(-80.0)).sum(dim, keepdim=True))).squeeze(dim)


# Largest max(M) / eps for which the kernel form below is used (else log-domain LSE).
_KERNEL_RATIO = {torch.float64: 100.0, torch.float32: 20.0}


def _kernel_lse(logw: torch.Tensor, K: torch.Tensor, transpose: bool) -> torch.Tensor:
    """LSE_j(logw_j + log K_ij) for every i (transpose: LSE_i(logw_i + log K_ij) for every j)
    as one small matmul with a per-row shift: m + log(K @ exp(logw - m)). logw (B, L);
    K = exp(-M / eps) (1|B, L, L). Exact up to rounding when every K_ij >= e^-100 (float64;
    e^-20 float32): the sum is then >= e^-100 (the max term has weight 1), and weights below
    e^-300 (e^-60), dropped to avoid subnormals, change it by less than e^-200 relative."""
    m = logw.amax(1, keepdim=True)
    z = logw - m
    w = torch.where(z > (-300.0 if logw.dtype == torch.float64 else -60.0), torch.exp(z), 0.0)  # (B, L)
    if K.shape[0] == 1:
        s = w @ (K[0] if transpose else K[0].T)
    else:
        s = torch.bmm(w[:, None, :], K if transpose else K.transpose(1, 2))[:, 0]
    return torch.log(s) + m


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
    newton: bool | None = None,
    newton_after: int = 10,
    block_rows: int | None = None,
):
    """Potentials (f, g) of Eq. (K1) by (K2)-(K3). a, b (B, L); M (L, L) or (B, L, L).

    eps_start defaults to max(M) (epsilon scaling on); pass eps_start=eps to switch it
    off. Intermediate stages run `stage_iters` iterations each; the last stage runs until
    the marginal L1 error is below `tol` (max over the batch) or `max_iter` iterations in
    all (a Newton step counts as one). newton (default: on when L <= 64) polishes the
    last stage by Eq. (K5) after `newton_after` plain iterations; newton=False runs the
    plain iterations only (the fused kernel's reference).
    On CPU the rows are solved in blocks of `block_rows` (default: see `_block_rows`), each
    block to the tolerance on its own, so the working set stays in cache and the time grows
    linearly in B; the stats are then the worst over the blocks (iterations, error).
    Returns (f (B, L), g (B, L), stats) with uncentred potentials.
    """
    if eps_start is None:
        eps_start = float(M.max())
    kw = {"eps_start": eps_start, "eps_decay": eps_decay, "stage_iters": stage_iters, "tol": tol,
          "max_iter": max_iter, "check_every": check_every, "newton": newton, "newton_after": newton_after}
    return _in_blocks(lambda a_, b_, M_: _potentials_block(a_, b_, M_, eps, **kw), a, b, M, block_rows)


# Bytes of one (rows, L, L) tensor in a CPU block of Sinkhorn(-Newton) rows. The Newton
# step holds about ten of them, so a block's working set (~20 MiB) stays in the last-level
# cache; one tensor per (B, L, L) at B = 1e6 (288 MB in float64) was fetched from memory
# (and page-faulted in afresh) on every op, which made B = 1e6 cost 15-22x B = 1e5.
_BLOCK_BYTES = 1 << 21


def _block_rows(a: torch.Tensor, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"sinkhorn: block_rows must be >= 1, got {block_rows}")
        return block_rows
    if a.device.type != "cpu":  # a GPU wants the whole batch in one launch per op
        return max(a.shape[0], 1)
    L = a.shape[1]
    return max(256, _BLOCK_BYTES // (L * L * a.element_size()))


def _in_blocks(solve, a, b, M, block_rows):
    """solve(a, b, M) -> (f, g, stats) over row blocks; concatenated, stats merged (worst)."""
    B = a.shape[0]
    rows = _block_rows(a, block_rows)
    if B <= rows:
        return solve(a, b, M)
    fs, gs, sts = [], [], []
    for s in range(0, B, rows):
        Ms = M if M.dim() == 2 else M[s : s + rows]
        f, g, st = solve(a[s : s + rows], b[s : s + rows], Ms)
        fs.append(f)
        gs.append(g)
        sts.append(st)
    stats = dict(sts[0])
    for key in ("iterations", "newton_steps", "marginal_error"):
        if key in stats:
            stats[key] = max(st[key] for st in sts)
    stats["converged"] = all(st["converged"] for st in sts)
    stats["blocks"] = len(sts)
    return torch.cat(fs), (torch.cat(gs) if gs[0] is not None else None), stats


def _potentials_block(a, b, M, eps, *, eps_start, eps_decay, stage_iters, tol, max_iter, check_every,
                      newton, newton_after):
    """sinkhorn_potentials on one block of rows (eps_start already resolved)."""
    Mb = M[None] if M.dim() == 2 else M  # (1|B, L, L)
    loga, logb = torch.log(a), torch.log(b)  # -inf where a mass is 0
    logb_row = logb[:, None, :]  # (B, 1, L)
    loga_col = loga[:, :, None]  # (B, L, 1)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    sched = eps_schedule(eps, eps_start, eps_decay)
    if newton is None:
        newton = a.shape[1] <= 64
    it, err, n_newton = 0, float("inf"), 0
    for stage, e in enumerate(sched):
        last = stage == len(sched) - 1
        n = max_iter - it if last else min(stage_iters, max(max_iter - it, 0))
        if last and newton:
            n = min(n, newton_after)
        fast = float(M.max()) / e <= _KERNEL_RATIO.get(a.dtype, 0.0)
        K = torch.exp(-Mb / e) if fast else None  # Gibbs kernel (1|B, L, L)
        for k in range(n):
            if fast:  # same (K2), as a matmul
                f_new = -e * _kernel_lse(logb + g / e, K, transpose=False)
            else:
                f_new = -e * _lse(logb_row + (g[:, None, :] - Mb) / e, dim=2)  # (Eq. K2) (B, L)
            check = last and (k % check_every == check_every - 1 or k == n - 1)
            if check:  # row sums of the current plan are a_i exp((f_i - f_new_i) / e)
                dev = torch.where(a > 0, a * torch.expm1((f - f_new) / e).abs(), torch.zeros_like(a))
                err = float(dev.sum(1).max())
            f = f_new
            if fast:
                g = -e * _kernel_lse(loga + f / e, K, transpose=True)
            else:
                g = -e * _lse(loga_col + (f[:, :, None] - Mb) / e, dim=1)  # (Eq. K3) (B, L)
            it += 1
            if check and err < tol:
                break
    if newton and not err < tol and it < max_iter:
        f, g, err, n_newton = newton_polish(a, b, Mb, eps, g, tol=tol, max_steps=max_iter - it)
        it += n_newton
    stats = {"iterations": it, "marginal_error": err, "eps": eps, "stages": len(sched),
             "converged": err < tol, "newton_steps": n_newton}
    return f, g, stats


def _semi_dual(a, b, logb, Ms, Ks, e, g):
    """f(g) by (K2), h(g) = <f, a> + <g, b> (zero-mass terms dropped), and what the plan's
    rows Pi (B, L, L) are made from: kernel form (Ks = exp(-Ms / e) given) or log domain."""
    if Ks is not None:
        logw = logb + g / e
        m = logw.amax(1, keepdim=True)
        z = logw - m
        w = torch.where(z > (-300.0 if g.dtype == torch.float64 else -60.0), torch.exp(z), 0.0)  # (B, L)
        sw = w @ Ks[0].T if Ks.shape[0] == 1 else torch.bmm(w[:, None, :], Ks.transpose(1, 2))[:, 0]
        lse, state = torch.log(sw) + m, (w, sw)
    else:
        x = logb[:, None, :] + (g[:, None, :] - Ms) / e  # (B, L, L)
        lse = _lse(x, dim=2)  # (B, L)
        state = (x, lse)
    f = -e * lse
    h = torch.where(a > 0, a * f, 0.0).sum(1) + torch.where(b > 0, b * g, 0.0).sum(1)
    return f, h, state


def _plan_rows(state, Ks):
    """Pi_ij = P_ij / a_i (B, L, L) from `_semi_dual`'s state."""
    if Ks is not None:
        w, sw = state
        return Ks * (w[:, None, :] / sw[:, :, None])
    x, lse = state
    return torch.exp((x - lse[:, :, None]).clamp_min(-80.0))


def newton_polish(a, b, M, eps: float, g, *, tol: float = 1e-6, max_steps: int = 100,
                  clip: float = 10.0):
    """Damped Newton ascent on the semi-dual h(g) of Eq. (K5) from a warm start g (B, L).

    M (L, L), (1, L, L) or (B, L, L). Returns (f (B, L), g (B, L), err, steps): f = f(g)
    by (K2), err the max over rows of the column-marginal L1 error. Rows whose error is
    below tol are frozen (only the rest are iterated). Uses the kernel form of (K2)
    (see `_kernel_lse`) when max(M) / eps allows, else the log domain.
    """
    Mb = M[None] if M.dim() == 2 else M
    B, L = a.shape
    fast = float(Mb.max()) / eps <= _KERNEL_RATIO.get(a.dtype, 0.0)
    Kb = torch.exp(-Mb / eps) if fast else None
    logb = torch.log(b)
    g = g.clone()
    f = torch.empty_like(a)
    err_rows = torch.empty(B, dtype=a.dtype, device=a.device)
    act = torch.arange(B, device=a.device)  # rows still iterating
    eye = torch.eye(L, dtype=a.dtype, device=a.device)
    steps = 0

    def pick(T, idx):  # a shared (1, L, L) cost / kernel, or the rows idx of a batched one
        return T if T is None or T.shape[0] == 1 else T[idx]

    aa, bb, lb, Ms, Ks = a, b, logb, Mb, Kb
    ff, h, state = _semi_dual(aa, bb, lb, Ms, Ks, eps, g)
    while True:
        gg = g[act]
        pi = _plan_rows(state, Ks)  # (b, L, L) rows of the plan / a_i
        P = aa[:, :, None] * pi
        c = P.sum(1)  # column marginals
        grad = bb - c  # grad h (Eq. K5)
        e_rows = grad.abs().sum(1)
        f[act], err_rows[act] = ff, e_rows
        keep = e_rows >= tol
        if steps >= max_steps or not bool(keep.any()):
            break
        if not bool(keep.all()):  # freeze converged rows
            act, aa, bb, lb, gg, P, pi, c, grad, h = (t[keep] for t in (act, aa, bb, lb, gg, P, pi, c, grad, h))
            Ms, Ks = pick(Ms, keep), pick(Ks, keep)
        zero_b = (bb <= 0).to(a.dtype)
        H = (torch.diag_embed(c) - P.transpose(1, 2) @ pi) / eps  # -Hess h (Eq. K5)
        H = H + bb[:, :, None] * bb[:, None, :] + zero_b[:, :, None] * eye  # gauge; fix g_j where b_j = 0
        d, info = torch.linalg.solve_ex(H, grad)  # Newton step (b, L)
        # a singular H (float32 round-off on a near-degenerate plan) or a non-finite step:
        # no Newton step for that row; the fallback below takes a plain Sinkhorn step instead
        bad = (info != 0) | ~torch.isfinite(d).all(1)
        d = torch.where(bad[:, None], torch.zeros_like(d), d)
        d = d * (clip * eps / d.abs().amax(1, keepdim=True).clamp_min(1e-300)).clamp(max=1.0)
        new_g = gg.clone()
        todo = torch.arange(len(gg), device=a.device)
        for t in (1.0, 0.5, 0.25, 0.125):  # backtracking on the rows not yet improved
            gt = gg[todo] + t * d[todo]
            ht = _semi_dual(aa[todo], bb[todo], lb[todo], pick(Ms, todo), pick(Ks, todo), eps, gt)[1]
            ok = ht > h[todo]
            new_g[todo[ok]] = gt[ok]
            todo = todo[~ok]
            if len(todo) == 0:
                break
        if len(todo):  # no improving step: a plain Sinkhorn g-update (K3) at f(g) never lowers h
            Mt, Kt = pick(Ms, todo), pick(Ks, todo)
            fo = _semi_dual(aa[todo], bb[todo], lb[todo], Mt, Kt, eps, gg[todo])[0]
            if Kt is not None:
                new_g[todo] = -eps * _kernel_lse(torch.log(aa[todo]) + fo / eps, Kt, transpose=True)
            else:
                new_g[todo] = -eps * _lse(torch.log(aa[todo])[:, :, None] + (fo[:, :, None] - Mt) / eps, dim=1)
        g[act] = new_g
        steps += 1
        ff, h, state = _semi_dual(aa, bb, lb, Ms, Ks, eps, new_g)
    return f, g, float(err_rows.max()), steps


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def sinkhorn(a, b, M, eps: float = 0.05, **kw):
    """OT_eps(a, b) of Eq. (K1). Returns (value (B,), f (B, L), g (B, L), stats); f, g centred."""
    f, g, stats = sinkhorn_potentials(a, b, M, eps, **kw)
    value = (f * a).sum(1) + (g * b).sum(1)  # (Eq. K1) at the fixed point
    return value, _centre(f), _centre(g), stats


def symmetric_potential(a, M, eps: float = 0.05, *, eps_start: float | None = None, eps_decay: float = 0.5,
                        stage_iters: int = 3, tol: float = 1e-6, max_iter: int = 1000, check_every: int = 5,
                        block_rows: int | None = None):
    """Potential f of OT_eps(a, a) for a symmetric cost, where f = g (Feydy et al., Sec. 3):
    the averaged update f <- (f + T(f)) / 2 with T(f)_i = -eps LSE_j(log a_j + (f_j - M_ij) / eps)
    converges much faster than alternating (K2)-(K3) on this problem. OT_eps(a, a) = 2 <f, a>.
    """
    eps_start = float(M.max()) if eps_start is None else eps_start
    kw = {"eps_start": eps_start, "eps_decay": eps_decay, "stage_iters": stage_iters, "tol": tol,
          "max_iter": max_iter, "check_every": check_every}

    def solve(a_, _b, M_):
        f_, st = _symmetric_block(a_, M_, eps, **kw)
        return f_, None, st

    f, _, stats = _in_blocks(solve, a, a, M, block_rows)
    return f, stats


def _symmetric_block(a, M, eps, *, eps_start, eps_decay, stage_iters, tol, max_iter, check_every):
    """symmetric_potential on one block of rows (eps_start resolved)."""
    Mb = M[None] if M.dim() == 2 else M
    loga_row = torch.log(a)[:, None, :]  # (B, 1, L)
    f = torch.zeros_like(a)
    sched = eps_schedule(eps, eps_start, eps_decay)
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
        sym_kw = {k: v for k, v in kw.items() if k not in ("newton", "newton_after")}  # averaged map: fast already
        s, st2 = symmetric_potential(torch.cat([a, b], 0), MM, eps, **sym_kw)
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
