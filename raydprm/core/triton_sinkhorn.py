"""Fused batched log-domain Sinkhorn in one Triton launch (GPU; CPU via TRITON_INTERPRET=1).

Same iterations, epsilon schedule and stopping rule as `sinkhorn.sinkhorn_potentials`
(Eqs. K2-K3 there; that torch code is this kernel's reference): each program owns
BLOCK_B rows and keeps a (BLOCK_B, L), b, f, g and the (L, L) cost in registers for all
iterations, so a solve reads its inputs once and writes f, g once instead of launching
several kernels per iteration. Convergence is decided per program (max over its rows).

Triton is imported only when a kernel is first built: `raydprm.core` itself imports
torch and numpy only.
"""

from __future__ import annotations

import functools

import torch

from raydprm.core.sinkhorn import eps_schedule

__all__ = ["triton_available", "triton_sinkhorn", "triton_sinkhorn_potentials"]

triton = None  # set by _kernel(); module globals so the JIT sees them
tl = None


def triton_available() -> bool:
    try:
        import triton as _t  # noqa: F401
    except ImportError:
        return False
    return True


def _sinkhorn_kernel(a_ptr, b_ptr, m_ptr, sched_ptr, f_ptr, g_ptr, err_ptr, it_ptr,
                     B, L, n_stages, stage_iters, max_iter, tol,
                     BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_L)
    rv = rows < B
    cv = cols < L
    m2 = rv[:, None] & cv[None, :]
    offs = rows[:, None] * L + cols[None, :]
    a = tl.load(a_ptr + offs, mask=m2, other=1.0)  # (BB, BL); padded rows: harmless ones
    b = tl.load(b_ptr + offs, mask=m2, other=1.0)
    colok = (rows[:, None] >= 0) & cv[None, :]
    loga = tl.where(colok & (a > 0), tl.log(tl.where(a > 0, a, 1.0)), -1e30)
    logb = tl.where(colok & (b > 0), tl.log(tl.where(b > 0, b, 1.0)), -1e30)
    Mt = tl.load(m_ptr + cols[:, None] * L + cols[None, :], mask=cv[:, None] & cv[None, :], other=0.0)
    f = a * 0.0
    g = b * 0.0
    it = 0
    for s in range(n_stages - 1):  # epsilon scaling: fixed iterations per stage
        e = tl.load(sched_ptr + s)
        for _k in range(stage_iters):
            x = logb[:, None, :] + (g[:, None, :] - Mt[None, :, :]) / e  # (BB, BL, BL)  (Eq. K2)
            mx = tl.max(x, 2)
            f = -e * (mx + tl.log(tl.sum(tl.exp(x - mx[:, :, None]), 2)))
            y = loga[:, :, None] + (f[:, :, None] - Mt[None, :, :]) / e  # (Eq. K3)
            my = tl.max(y, 1)
            g = -e * (my + tl.log(tl.sum(tl.exp(y - my[:, None, :]), 1)))
            it += 1
    e = tl.load(sched_ptr + n_stages - 1)
    err = tl.max(tl.sum(a * 0.0, 1), 0) + 1e30
    while (it < max_iter) & (err > tol):  # last stage: until the row marginals match
        x = logb[:, None, :] + (g[:, None, :] - Mt[None, :, :]) / e  # (Eq. K2)
        mx = tl.max(x, 2)
        f_new = -e * (mx + tl.log(tl.sum(tl.exp(x - mx[:, :, None]), 2)))
        dev = tl.where(m2 & (a > 0), a * tl.abs(tl.exp((f - f_new) / e) - 1.0), 0.0)
        err = tl.max(tl.sum(dev, 1), 0)
        f = f_new
        y = loga[:, :, None] + (f[:, :, None] - Mt[None, :, :]) / e  # (Eq. K3)
        my = tl.max(y, 1)
        g = -e * (my + tl.log(tl.sum(tl.exp(y - my[:, None, :]), 1)))
        it += 1
    tl.store(f_ptr + offs, f, mask=m2)
    tl.store(g_ptr + offs, g, mask=m2)
    tl.store(err_ptr + pid, err)
    tl.store(it_ptr + pid, it)


@functools.lru_cache(maxsize=1)
def _kernel():
    global triton, tl
    try:
        import triton
        import triton.language as tl
    except ImportError as e:
        raise RuntimeError("the fused Sinkhorn kernel needs triton (pip install triton); "
                           "use backend='torch'") from e
    return triton.jit(_sinkhorn_kernel)


def triton_sinkhorn_potentials(a, b, M, eps: float = 0.05, *, eps_start: float | None = None,
                               eps_decay: float = 0.5, stage_iters: int = 3, tol: float = 1e-6,
                               max_iter: int = 1000, check_every: int = 1, block_b: int | None = None):
    """Drop-in for `sinkhorn.sinkhorn_potentials` (shared cost M (L, L) only).

    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1. check_every is
    accepted for signature compatibility; the kernel checks every iteration (no sync).
    """
    if M.dim() != 2:
        raise ValueError("the fused kernel takes one shared cost matrix (L, L)")
    kern = _kernel()
    B, L = a.shape
    a, b = a.contiguous(), b.contiguous()
    M = M.to(a).contiguous()
    sched = torch.tensor(eps_schedule(eps, float(M.max()) if eps_start is None else eps_start, eps_decay),
                         dtype=a.dtype, device=a.device)
    BLOCK_L = max(2, triton.next_power_of_2(L))
    BLOCK_B = block_b or max(1, min(64, 2048 // (BLOCK_L * BLOCK_L)))
    n_prog = triton.cdiv(B, BLOCK_B)
    f = torch.empty_like(a)
    g = torch.empty_like(b)
    err = torch.empty(n_prog, dtype=a.dtype, device=a.device)
    its = torch.empty(n_prog, dtype=torch.int32, device=a.device)
    kern[(n_prog,)](a, b, M, sched, f, g, err, its, B, L, len(sched), stage_iters, max_iter, tol,
                    BLOCK_B=BLOCK_B, BLOCK_L=BLOCK_L)
    e = float(err.max())
    stats = {"iterations": int(its.max()), "marginal_error": e, "eps": eps, "stages": len(sched),
             "converged": e < tol, "backend": "triton"}
    return f, g, stats


def triton_sinkhorn(a, b, M, eps: float = 0.05, **kw):
    """OT_eps(a, b) (Eq. K1 in sinkhorn.py) from the fused kernel: (value, f, g, stats), f and g centred."""
    f, g, stats = triton_sinkhorn_potentials(a, b, M, eps, **kw)
    value = (f * a).sum(1) + (g * b).sum(1)
    return value, f - f.mean(1, keepdim=True), g - g.mean(1, keepdim=True), stats
