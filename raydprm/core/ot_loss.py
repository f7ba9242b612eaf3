"""DPRM training losses between predicted and target label distributions, by name.

`ot_loss(pred, target, cost, method=...)` with pred (B, L) logits or probabilities and
target (B, L) crowd distributions. Methods (OT_METHODS; a config or a Tune sweep picks
one by name):

    exact                exact OT (Eq. O1 in ot_exact.py): the closed form when the cost
                         is a 1-D ground metric |x_i - x_j|^p, p >= 1 (reward_gap,
                         ordinal), else the dual-vertex solver (L <= 10), else POT's
                         network simplex per row (lazily imported fallback)
    closed_form          the 1-D closed form only; raises for other costs
    sinkhorn             entropic OT_eps (Eq. K1 in sinkhorn.py), log-domain, eps scaling;
                         backend "torch", "triton" (fused kernel) or "auto"
    sinkhorn_divergence  unbiased S_eps (Eq. K4), zero at pred = target
    ce                   cross-entropy -sum_i t_i log p_i (the paper's DPRM_C)
    wasserstein          W1 on the label index, cost |i - j| whatever `cost` is (DPRM_W)

The DPRM paper (arXiv 2402.09764) trains with OT to the crowd distribution because CE
ignores the label geometry: CE([0.9, 0.1, 0, ...]) = CE([0.9, 0, ..., 0.1]) against a
one-hot target on label 0, while OT charges the mass by how far it sits.

Every OT method returns per-row values whose gradient in pred comes from the optimal
dual potentials (envelope theorem), through `DualOT`; the solver iterations are never
back-propagated through. The cost matrix gets no gradient. W1 on a line (reward_gap,
ordinal, wasserstein: any cost |x_i - x_j|) takes `LineW1Loss` instead: input checks,
softmax of logits, value, reduction and the gradient computed in one blocked pass, with
backward a single multiply (bench/RESULTS.md, "Forward + backward fused into one pass").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from raydprm.core.cost import line_embedding, validate_cost
from raydprm.core.label_scale import DIST_ATOL, check_distribution
from raydprm.core.ot_exact import MAX_VERTEX_LABELS, _w1_blocks, ot_dual_vertices, ot_line, w1_layout
from raydprm.core.sinkhorn import sinkhorn, sinkhorn_divergence

__all__ = ["ot_loss", "ot_loss_with_stats", "OT_METHODS", "REDUCTIONS", "DualOT", "dual_ot", "exact_ot",
           "LineW1Loss", "line_w1_loss"]

REDUCTIONS = ("none", "mean", "sum")


class DualOT(torch.autograd.Function):
    """value = solver(a, b, need)[0]; d value / d a = f, d value / d b = g (centred duals).

    `solver(a, b, need) -> (value (B,), f (B, L), g (B, L), stats)` runs without autograd;
    need = (need_f, need_g) says which duals the backward will use, and a solver may
    return None for the others (the closed form then skips computing them). `stats` (a
    dict or None) receives the solver's statistics. Call through `dual_ot`, which skips
    the duals altogether when no gradient is recorded.
    """

    @staticmethod
    def forward(ctx, a, b, solver, stats):
        need = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
        value, f, g, st = solver(a.detach(), b.detach(), need)
        if stats is not None:
            stats.update(st)
        ctx.save_for_backward(f if need[0] else None, g if need[1] else None)
        return value

    @staticmethod
    def backward(ctx, grad_value):
        f, g = ctx.saved_tensors
        gv = grad_value[:, None]  # (B, 1)
        if grad_value.numel() and grad_value.stride(0) == 0 and grad_value.device.type == "cpu":
            # a "sum"/"mean" reduction hands back one value expanded over B (stride 0); on CPU
            # a Python-number factor takes the vectorised path (2-3x faster than a broadcast),
            # and a factor of exactly 1 (a plain sum) needs no pass at all: the duals are the
            # gradient (autograd never writes into a gradient it is handed)
            gv = float(grad_value[0])
            if gv == 1.0:
                return (f if ctx.needs_input_grad[0] else None, g if ctx.needs_input_grad[1] else None, None, None)
        return (gv * f if ctx.needs_input_grad[0] else None,
                gv * g if ctx.needs_input_grad[1] else None, None, None)


def dual_ot(a, b, solver, stats):
    """DualOT.apply(a, b, solver, stats), or the bare solver without duals when autograd
    records nothing (no_grad, or neither input requires grad): a pure forward."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return DualOT.apply(a, b, solver, stats)
    value, _, _, st = solver(a.detach(), b.detach(), (False, False))
    if stats is not None:
        stats.update(st)
    return value


_PRED_NAME = "pred (probabilities; pass from_logits=True for logits)"


def _raise_if_off_simplex(a, b, stats, check):
    """The fused kernel's min / row-sum figures failed check_distribution's tests: rescan
    the inputs with it (target first, as ot_loss does) so the error names the rule broken."""
    if stats is None:
        return
    lo, s_min, s_max = stats
    if lo >= 0 and s_max - 1 <= DIST_ATOL and 1 - s_min <= DIST_ATOL:  # NaN fails these
        return
    if check[1]:
        check_distribution(b, name="target")
    if check[0]:
        check_distribution(a, name=_PRED_NAME)


class LineW1Loss(torch.autograd.Function):
    """Reduced W1 loss for a 1-D ground cost |x_i - x_j| (Eq. O2 in ot_exact.py) in one pass.

    forward(a, b, layout, reduction, check) -> loss ((B,) for "none", else a scalar). The
    forward runs the blocked closed form once: the input checks (on the rows while they are
    in cache), the value and, when a gradient is recorded, the centred dual f = d loss / d a
    with the reduction's factor already in it ("mean": 1/B); g = d loss / d b = -f. Only f
    is saved; backward is one multiply by grad_output, none at all for a plain
    loss.backward() of a reduced loss (grad_output = 1, f is the gradient). Call through
    `line_w1_loss`, which skips the duals altogether when no gradient is recorded.
    """

    @staticmethod
    def forward(ctx, a, b, layout, reduction, check, logits_shift=None):
        perm, inv, gaps = layout
        B = a.shape[0]
        need_a, need_b = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        value, f, st = _w1_blocks(a.detach(), b.detach(), perm, inv, gaps, need_a or need_b,
                                  per_row=reduction == "none", scale=1.0 / B if reduction == "mean" and B else 1.0,
                                  check=check, logits_shift=logits_shift)
        _raise_if_off_simplex(a, b, st, check)
        ctx.reduction = reduction
        ctx.save_for_backward(f)
        return _reduced(value, reduction, B)

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        if ctx.reduction == "none":
            if grad.numel() and grad.stride(0) == 0 and grad.device.type == "cpu":
                gv = float(grad[0])  # a later sum/mean: one value expanded over B (see DualOT)
            else:
                gv = grad[:, None]  # (B, 1)
        else:
            gv = float(grad) if grad.device.type == "cpu" else grad
        if isinstance(gv, float) and gv == 1.0:
            ga = f  # the dual is the gradient: no pass (autograd never writes into it)
        else:
            ga = gv * f
        return (ga if ctx.needs_input_grad[0] else None, -ga if ctx.needs_input_grad[1] else None,
                None, None, None, None)


def _reduced(value, reduction, B):
    """value: (B,) per row for "none", else the 0-dim total over the rows."""
    if reduction == "mean":
        return value / B if B else value.new_tensor(float("nan"))
    return value


def line_w1_loss(a, b, x, reduction: str = "mean", check=(True, True), from_logits: bool = False):
    """W1 between a (B, L) and b (B, L) for the cost |x_i - x_j| (Eq. O2), reduced; autograd
    through `LineW1Loss` when it records, else the bare forward (no duals). check =
    (check_a, check_b) runs check_distribution's tests on a / b inside the same pass.
    from_logits: a holds finite logits; their softmax (and its Jacobian, for the gradient)
    is computed in the same pass when the batch's logit range keeps every exp(z - max z)
    a normal float, else by torch.softmax first."""
    layout = w1_layout(x, a.dtype, a.device)
    record = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    shift = None
    if from_logits:
        check = (False, check[1])  # logits are not on the simplex; their softmax is by construction
        lo, hi = (float(v) for v in torch.aminmax(a.detach())) if a.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through aminmax
            raise ValueError("pred logits have non-finite entries")
        # exp(z - hi) >= exp(lo - hi) stays normal; the target's gradient needs f itself
        if hi - lo <= -math.log(torch.finfo(a.dtype).tiny) - 8 and not (record and b.requires_grad):
            shift = hi
        else:
            a = torch.softmax(a, dim=1)
    if record:
        return LineW1Loss.apply(a, b, layout, reduction, check, shift)
    perm, inv, gaps = layout
    value, _, st = _w1_blocks(a.detach(), b.detach(), perm, inv, gaps, False, per_row=reduction == "none",
                              check=check, logits_shift=shift)
    _raise_if_off_simplex(a, b, st, check)
    return _reduced(value, reduction, a.shape[0])


def _pot_rows(a, b, M):
    """General exact fallback for L > MAX_VERTEX_LABELS: POT's network simplex per row."""
    try:
        import ot  # lazy: core must import only torch/numpy at import time
    except ImportError as e:  # pragma: no cover
        raise RuntimeError(f"exact OT for L > {MAX_VERTEX_LABELS} with a general cost needs POT "
                           "(pip install pot); or use method='sinkhorn'") from e
    Mn = M.detach().cpu().double().numpy()
    an, bn = a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()
    vals, fs, gs = [], [], []
    for i in range(an.shape[0]):
        _, log = ot.emd(an[i], bn[i], Mn, log=True)
        vals.append(log["cost"])
        fs.append(log["u"] - log["u"].mean())
        gs.append(log["v"] - log["v"].mean())
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=a.dtype, device=a.device)  # noqa: E731
    return t(vals), t(fs), t(gs)


def exact_ot(a, b, M, closed_form_only: bool = False, need=(True, True)):
    """Exact OT value and centred duals. a, b (B, L); M (L, L). -> (value, f, g, stats).
    need = (need_f, need_g): the closed form returns None for a dual not needed."""
    line = line_embedding(M)
    if line is not None:
        x, p = line
        value, f, g = ot_line(a, b, x, p, need=need)
        return value, f, g, {"solver": "closed_form", "p": p}
    if closed_form_only:
        raise ValueError("method 'closed_form' needs a 1-D ground cost |x_i - x_j|^p with p >= 1 "
                         "(e.g. reward_gap or ordinal); use method='exact' for this cost")
    if M.shape[0] <= MAX_VERTEX_LABELS:
        value, f, g = ot_dual_vertices(a, b, M)
        return value, f, g, {"solver": "dual_vertices"}
    value, f, g = _pot_rows(a, b, M)
    return value, f, g, {"solver": "pot_emd"}


def _ot_method(solve: Callable, takes_need: bool = False) -> Callable:
    def loss(p, t, M, stats, **kw):
        if takes_need:
            return dual_ot(p, t, lambda a, b, need: solve(a, b, M, need=need, **kw), stats)
        return dual_ot(p, t, lambda a, b, need: solve(a, b, M, **kw), stats)

    return loss


def _sinkhorn_solver(a, b, M, backend: str = "auto", **kw):
    use_triton = backend == "triton" or (backend == "auto" and a.is_cuda)
    if use_triton:
        from raydprm.core.triton_sinkhorn import triton_sinkhorn

        return triton_sinkhorn(a, b, M, **kw)
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"sinkhorn backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return sinkhorn(a, b, M, **kw)


def _ce(p, t, M, stats, *, logp=None):
    logp = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)) if logp is None else logp
    return -(t * logp).sum(1)  # DPRM_C: -sum_i t_i log p_i


def _wasserstein(p, t, M, stats):
    x = torch.arange(p.shape[1], dtype=p.dtype, device=p.device)
    return dual_ot(p, t, lambda a, b, need: (*ot_line(a, b, x, 1.0, need=need), {"solver": "closed_form"}), stats)


_LOSSES: dict[str, Callable] = {
    "exact": _ot_method(exact_ot, takes_need=True),
    "closed_form": _ot_method(lambda a, b, M, need: exact_ot(a, b, M, closed_form_only=True, need=need),
                              takes_need=True),
    "sinkhorn": _ot_method(_sinkhorn_solver),
    "sinkhorn_divergence": _ot_method(lambda a, b, M, **kw: sinkhorn_divergence(a, b, M, **kw)),
    "ce": _ce,
    "wasserstein": _wasserstein,
}
OT_METHODS: tuple[str, ...] = tuple(_LOSSES)
_NEEDS_COST = {"exact", "closed_form", "sinkhorn", "sinkhorn_divergence"}


def _finite_logits(pred):
    """pred, after one pass (aminmax) that raises on NaN or +-inf (NaN propagates through it)."""
    lo, hi = torch.aminmax(pred.detach()) if pred.numel() else (0.0, 0.0)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError("pred logits have non-finite entries")
    return pred


def _line_w1_positions(method, cost, pred):
    """Positions x (L,) when the method's loss is W1 for |x_i - x_j| (the fused path): "wasserstein"
    (x = label index), or "exact" / "closed_form" with a cost that embeds on a line with p = 1;
    else None (and the general path, which validates the cost itself)."""
    L = pred.shape[1]
    if method == "wasserstein":
        return torch.arange(L, dtype=torch.float64)
    if method not in ("exact", "closed_form") or cost is None:
        return None
    line = line_embedding(validate_cost(cost, L).to(pred.dtype))  # tolerance of pred's dtype, as exact_ot
    if line is None or line[1] != 1:
        return None
    return torch.as_tensor(line[0], dtype=torch.float64)


def ot_loss_with_stats(pred, target, cost=None, method: str = "exact", *, from_logits: bool = False,
                       reduction: str = "mean", **solver_kw):
    """Like `ot_loss`, returning (loss, stats); stats holds the solver's diagnostics."""
    if method not in _LOSSES:
        raise ValueError(f"unknown OT loss method {method!r}; choose one of {list(OT_METHODS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(pred, torch.Tensor) or pred.dim() != 2:
        raise ValueError(f"pred must be a (B, L) tensor, got {getattr(pred, 'shape', type(pred))}")
    if not isinstance(target, torch.Tensor) or target.shape != pred.shape:
        raise ValueError(f"target must be a tensor shaped like pred {tuple(pred.shape)}, "
                         f"got {tuple(getattr(target, 'shape', ()))}")
    if pred.shape[1] < 2:
        raise ValueError("need L >= 2 labels")
    if not pred.is_floating_point():
        raise ValueError("pred must be a floating-point tensor")
    target = target.to(pred.dtype)
    x = None if solver_kw else _line_w1_positions(method, cost, pred)
    if x is not None:  # W1 on a line: the fused one-pass loss, input checks inside it
        stats = {"method": method, "solver": "closed_form"} | ({} if method == "wasserstein" else {"p": 1.0})
        if from_logits:
            return line_w1_loss(pred, target, x, reduction, check=(False, True), from_logits=True), stats
        return line_w1_loss(pred, target, x, reduction, check=(True, True)), stats
    check_distribution(target, name="target")
    if from_logits:
        logp = torch.log_softmax(_finite_logits(pred), dim=1)  # (B, L)
        p = logp.exp()
    else:
        check_distribution(pred, name=_PRED_NAME)
        p, logp = pred, None
    stats: dict = {"method": method}
    if method in _NEEDS_COST:
        if cost is None:
            raise ValueError(f"method {method!r} needs a cost matrix (L, L); see cost.COST_NAMES")
        M = validate_cost(cost, pred.shape[1]).to(device=pred.device, dtype=pred.dtype).detach()
        values = _LOSSES[method](p, target, M, stats, **solver_kw)
    elif method == "ce":
        values = _ce(p, target, None, stats, logp=logp)
    else:
        if solver_kw:
            raise ValueError(f"method {method!r} takes no solver options, got {sorted(solver_kw)}")
        values = _LOSSES[method](p, target, None, stats)
    if reduction == "mean":
        values = values.mean()
    elif reduction == "sum":
        values = values.sum()
    return values, stats


def ot_loss(pred, target, cost=None, method: str = "exact", *, from_logits: bool = False,
            reduction: str = "mean", **solver_kw) -> torch.Tensor:
    """Loss between pred (B, L) and target (B, L) distributions; see the module docstring.

    pred: logits (from_logits=True) or probabilities; target: rows on the simplex
    (one-hot and zero-mass entries allowed); cost: (L, L) ground cost (ignored by "ce"
    and "wasserstein"); reduction: "none" -> (B,), "mean" / "sum" -> scalar.
    solver_kw go to the solver, e.g. eps, tol, max_iter, eps_start, backend for Sinkhorn.
    """
    return ot_loss_with_stats(pred, target, cost, method, from_logits=from_logits,
                              reduction=reduction, **solver_kw)[0]
