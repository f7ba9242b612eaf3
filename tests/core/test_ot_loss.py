"""OT losses against POT (ot.emd2) and the paper's facts."""

import math

import ot
import pytest
import torch
from naive import w1_line_naive, wasserstein_cost  # tests/core/naive.py

from raydprm.core import OT_METHODS, LabelScale, cost_matrix, ot_exact, ot_loss, ot_loss_with_stats
from raydprm.core.ot_exact import MAX_VERTEX_LABELS, ot_line
from raydprm.core.ot_loss import exact_ot

F64 = torch.float64


def _scale(L, seed):
    """L labels with random rewards (one tie when L >= 3) on a 2-row grid."""
    g = torch.Generator().manual_seed(seed)
    r = (torch.randint(-6, 3, (L,), generator=g) * 0.5).tolist()
    if L >= 3:
        r[2] = r[1]
    cols = math.ceil(L / 2)
    grid = [(i % cols, i // cols) for i in range(L)]
    return LabelScale(names=[f"l{i}" for i in range(L)], rewards=r, grid=grid)


def _costs(L, seed):
    s = _scale(L, seed)
    g = torch.Generator().manual_seed(seed + 100)
    A = torch.rand(L, L, generator=g, dtype=F64)
    custom = (A + 0.3 * A.T).fill_diagonal_(0)  # not symmetric: a general cost
    return {
        "reward_gap": cost_matrix("reward_gap", s),
        "reward_gap_p2": cost_matrix("reward_gap", s, p=2),
        "ordinal": cost_matrix("ordinal", s),
        "ordinal_p2": cost_matrix("ordinal", s, p=2),
        "ordinal_sqrt": cost_matrix("ordinal", s, p=0.5),  # concave: general solver
        "grid_l1": cost_matrix("grid_l1", s),
        "custom": cost_matrix("custom", s, matrix=custom),
    }


def _batch(L, seed, n=8):
    """Random preds; targets: random, one-hot and with zero-mass labels."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.softmax(2 * torch.randn(3 * n, L, generator=g, dtype=F64), -1)
    tgt = torch.softmax(2 * torch.randn(3 * n, L, generator=g, dtype=F64), -1)
    tgt[n : 2 * n] = torch.nn.functional.one_hot(torch.randint(0, L, (n,), generator=g), L).to(F64)
    zero = torch.rand(n, L, generator=g) < 0.5
    zero[:, 0] = False
    tgt[2 * n :] = torch.where(zero, 0.0, tgt[2 * n :])
    tgt[2 * n :] /= tgt[2 * n :].sum(1, keepdim=True)
    return pred, tgt


def _pot(pred, tgt, M):
    vals, grads = [], []
    for i in range(pred.shape[0]):
        a = pred[i].clone().requires_grad_(True)
        v = ot.emd2(a, tgt[i], M)
        v.backward()
        vals.append(float(v))
        grads.append(a.grad.clone())
    return torch.tensor(vals, dtype=F64), torch.stack(grads)


@pytest.mark.parametrize("L", range(2, 11))
def test_exact_matches_pot_value_and_gradient(L):
    pred, tgt = _batch(L, L)
    n = pred.shape[0] // 3
    costs = _costs(L, L)
    if L >= 9:  # enumerating 12870 / 48620 dual vertices costs seconds per matrix: fewer kinds
        costs = {k: costs[k] for k in ("reward_gap", "ordinal_p2", "grid_l1" if L == 9 else "custom")}
    for name, M in costs.items():
        p = pred.clone().requires_grad_(True)
        val = ot_loss(p, tgt, M, method="exact", reduction="none")
        val.sum().backward()
        ref, ref_grad = _pot(pred, tgt, M)
        assert torch.allclose(val.detach(), ref, atol=1e-9, rtol=0), name
        # our gradient is an optimal dual: with g = its c-transform the dual value is OT
        f = p.grad
        g_ct = (M[None] - f[:, :, None]).min(1).values  # (B, L) g_j = min_i M_ij - f_i
        dual = (f * pred).sum(1) + (g_ct * tgt).sum(1)
        assert torch.allclose(dual, ref, atol=1e-9, rtol=0), name
        assert torch.allclose(f.sum(1), torch.zeros(len(f), dtype=F64), atol=1e-9)  # centred
        # full-support rows: the dual is unique for a generic cost, so it equals POT's
        if name in ("custom", "ordinal", "ordinal_p2"):
            assert torch.allclose(f[:n], ref_grad[:n], atol=1e-9, rtol=0), name


def test_gradient_reaches_logits_and_matches_pot_chain():
    M = cost_matrix("grid_l1", LabelScale.hh())
    pred, tgt = _batch(6, 0)
    z = torch.log(pred).clone().requires_grad_(True)
    ot_loss(z, tgt, M, method="exact", from_logits=True, reduction="sum").backward()
    z2 = z.detach().clone().requires_grad_(True)
    p2 = torch.softmax(z2, 1)
    sum(ot.emd2(p2[i], tgt[i], M) for i in range(len(tgt))).backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-9)


def test_general_fallback_above_vertex_limit():
    L = MAX_VERTEX_LABELS + 1
    pred, tgt = _batch(L, 1, n=2)
    M = _costs(L, 1)["custom"]
    val, stats = ot_loss_with_stats(pred, tgt, M, method="exact", reduction="none")
    assert stats["solver"] == "pot_emd"
    assert torch.allclose(val, _pot(pred, tgt, M)[0], atol=1e-9)


@pytest.mark.parametrize("cost_name", ["reward_gap", "ordinal", "grid_l1", "custom"])
def test_metric_facts(cost_name):
    L = 6
    M = _costs(L, 3)[cost_name]
    pred, tgt = _batch(L, 5)
    zero = ot_loss(pred, pred, M, method="exact", reduction="none")
    assert torch.all(zero.abs() < 1e-12)  # W(mu, mu) = 0
    div = ot_loss(pred, pred, M, method="sinkhorn_divergence", reduction="none", eps=0.5, tol=1e-10)
    assert torch.all(div.abs() < 1e-6)  # the unbiased divergence too
    # W(delta_a, delta_b) = M_ab for every pair
    eye = torch.eye(L, dtype=F64)
    a = eye.repeat_interleave(L, 0)
    b = eye.repeat(L, 1)
    d = ot_loss(a, b, M, method="exact", reduction="none").reshape(L, L)
    assert torch.allclose(d, M, atol=1e-12)
    # symmetry when the cost is symmetric; transposed cost when it is not
    fwd = ot_loss(pred, tgt, M, method="exact", reduction="none")
    bwd = ot_loss(tgt, pred, M.T.contiguous(), method="exact", reduction="none")
    assert torch.allclose(fwd, bwd, atol=1e-12)


def test_ot_to_ideal_is_reward_gap_to_best():
    """Paper: with M_{j,best} = r_best - r_j, OT(mu, delta_best) = r_best - E_mu[r]."""
    s = LabelScale.hh()
    M = cost_matrix("reward_gap", s)
    mu, _ = _batch(6, 7)
    ideal = torch.nn.functional.one_hot(torch.full((len(mu),), s.best_label), 6).to(F64)
    for method in ("exact", "closed_form"):
        val = ot_loss(mu, ideal, M, method=method, reduction="none")
        assert torch.allclose(val, max(s.rewards) - s.expected_reward(mu), atol=1e-12)
    g = cost_matrix("grid_l1", s)  # holds for the general solver too with the reward-gap cost
    assert not torch.equal(g, M)
    val = exact_ot(mu, ideal, M + 0)[0]
    assert torch.allclose(val, max(s.rewards) - s.expected_reward(mu), atol=1e-12)


def test_ce_is_blind_to_geometry_ot_is_not():
    """The paper's example: [0.9, 0.1, 0...] vs [0.9, 0, 0.1, ...] vs [0.9, 0, ..., 0.1]."""
    preds = torch.tensor([[0.9, 0.1, 0, 0, 0, 0], [0.9, 0, 0.1, 0, 0, 0], [0.9, 0, 0, 0, 0, 0.1]], dtype=F64)
    tgt = torch.tensor([[1.0, 0, 0, 0, 0, 0]], dtype=F64).repeat(3, 1)
    ce = ot_loss(preds, tgt, method="ce", reduction="none")
    assert torch.allclose(ce, ce[:1].expand(3))
    M = cost_matrix("reward_gap", LabelScale.hh())
    for method in ("exact", "sinkhorn", "wasserstein"):
        val = ot_loss(preds, tgt, M, method=method, reduction="none")
        assert float(val[0]) < float(val[1]) < float(val[2]), method
    assert torch.allclose(ot_loss(preds, tgt, M, reduction="none"), torch.tensor([0.05, 0.2, 0.4], dtype=F64))


def test_wasserstein_baseline_and_reductions():
    pred, tgt = _batch(6, 9)
    w = ot_loss(pred, tgt, method="wasserstein", reduction="none")
    assert torch.allclose(w, ot_loss(pred, tgt, wasserstein_cost(6), method="exact", reduction="none"))
    assert torch.allclose(ot_loss(pred, tgt, method="wasserstein", reduction="sum"), w.sum())
    assert torch.allclose(ot_loss(pred, tgt, method="wasserstein"), w.mean())
    # float32 inputs stay float32
    v = ot_loss(pred.float(), tgt.float(), cost_matrix("grid_l1"), reduction="none")
    assert v.dtype == torch.float32 and torch.allclose(v.double(), exact_ot(pred, tgt, cost_matrix("grid_l1"))[0],
                                                       atol=1e-5)
    assert set(OT_METHODS) >= {"exact", "sinkhorn", "ce", "wasserstein"}


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"method": "emd"}, "unknown OT loss method"),
        ({"reduction": "max"}, "reduction"),
        ({"target": torch.full((4, 5), 0.2)}, "shaped like pred"),
        ({"target": torch.full((4, 6), 0.5)}, "sum to 1"),
        ({"pred": torch.full((4, 6), 0.5)}, "from_logits=True"),
        ({"cost": torch.ones(6, 6)}, "zero diagonal"),
        ({"cost": None}, "needs a cost matrix"),
        ({"cost": torch.zeros(5, 5)}, "expected 6x6"),
        ({"method": "closed_form", "cost": cost_matrix("grid_l1")}, "1-D ground cost"),
        ({"method": "sinkhorn", "eps": 0.0}, "eps must be > 0"),
        ({"method": "wasserstein", "eps": 0.1}, "no solver options"),
    ],
)
def test_bad_inputs_raise(kw, msg):
    args = {"pred": torch.full((4, 6), 1 / 6), "target": torch.full((4, 6), 1 / 6),
            "cost": cost_matrix("ordinal"), "method": "exact"}
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        ot_loss(args.pop("pred"), args.pop("target"), args.pop("cost"), **args)


@pytest.mark.parametrize("xs", [(0.0, 1, 2, 3, 4, 5), (1.0, 0.5, -1, -1, -1.5, -3), (0.3, -2, 1.5, 1.5, 0, 4)])
@pytest.mark.parametrize("table", [True, False])
def test_closed_form_blocks_match_naive_twin(monkeypatch, xs, table):
    """Increasing, decreasing (with a tie) and unsorted positions; small row blocks so the batch
    spans several blocks and a ragged last one: values and duals equal the per-row formula,
    and the duals asked for are the only ones computed; both dual paths (sign-pattern table,
    shifted cumsum)."""
    monkeypatch.setattr(ot_exact, "_W1_BLOCK_BYTES", 7 * 6 * 8)  # 7 rows per block
    if not table:
        monkeypatch.setattr(ot_exact, "_W1_TABLE_MAX_L", 0)
    a, b = _batch(6, seed=3, n=15)  # 45 rows: 6 blocks of 7 and one of 3
    x = torch.tensor(xs, dtype=F64)
    v_ref, f_ref = w1_line_naive(a, b, x)
    v, f, g = ot_line(a, b, x)
    assert torch.allclose(v, v_ref, atol=1e-12) and torch.allclose(f, f_ref, atol=1e-12)
    assert torch.equal(g, -f)
    v0, f0, g0 = ot_line(a, b, x, need=(False, False))
    assert torch.equal(v0, v) and f0 is None and g0 is None
    _, f1, g1 = ot_line(a, b, x, need=(False, True))
    assert f1 is None and torch.equal(g1, g)


def test_forward_without_grad_equals_forward_with_grad():
    """The loss computed without a tape (no duals) equals the one with; the gradient of a
    weighted sum is the weight times the dual, for a scalar ('sum') and per-row weights."""
    pred, tgt = _batch(6, seed=5, n=17)  # 51 rows
    M = cost_matrix("reward_gap")
    with torch.no_grad():
        v_nograd = ot_loss(pred, tgt, M, reduction="none")
    p = pred.clone().requires_grad_(True)
    v = ot_loss(p, tgt, M, reduction="none")
    assert torch.equal(v.detach(), v_nograd)
    f = exact_ot(pred, tgt, M)[1]
    w = torch.linspace(0.5, 2.0, 51, dtype=F64)
    (gw,) = torch.autograd.grad((v * w).sum(), p, retain_graph=True)
    (gs,) = torch.autograd.grad(3.0 * v.sum(), p, retain_graph=True)
    assert torch.allclose(gw, w[:, None] * f) and torch.allclose(gs, 3.0 * f)
    # a plain sum hands the duals on as the gradient; accumulating twice into .grad must
    # not alter what the graph saved (the second backward sees the same duals)
    v.sum().backward(retain_graph=True)
    v.sum().backward()
    assert torch.allclose(p.grad, 2.0 * f)


def _old_path(pred, tgt, M, reduction, from_logits=False):
    """The unfused path the fused loss replaces: separate input checks, DualOT over exact_ot's
    per-row values and duals, then the reduction (kept for the general costs)."""
    from raydprm.core.ot_loss import dual_ot

    p = torch.softmax(pred, 1) if from_logits else pred
    v = dual_ot(p, tgt, lambda a, b, need: exact_ot(a, b, M, need=need)[:3] + ({},), None)
    return {"none": v, "sum": v.sum(), "mean": v.mean()}[reduction]


@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("xs", [(0.0, 1, 2, 3, 4, 5), (1.0, 0.5, -1, -1, -1.5, -3), (0.3, -2, 1.5, 1.5, 0, 4)])
def test_fused_line_loss_equals_old_path_and_naive_twin(monkeypatch, xs, table):
    """The one-pass W1 loss (LineW1Loss): values and the gradients of pred and target equal the
    unfused DualOT path and the per-row naive formula, for every reduction, logits or
    probabilities, several blocks with a ragged last one, and both dual paths (sign-pattern
    table and shifted cumsum)."""
    monkeypatch.setattr(ot_exact, "_W1_BLOCK_BYTES", 7 * 6 * 8)  # 7 rows per block
    if not table:
        monkeypatch.setattr(ot_exact, "_W1_TABLE_MAX_L", 0)
    pred, tgt = _batch(6, seed=11, n=15)  # 45 rows
    x = torch.tensor(xs, dtype=F64)
    M = (x[:, None] - x[None, :]).abs()
    v_naive, f_naive = w1_line_naive(pred, tgt, x)
    for reduction in ("none", "sum", "mean"):
        # logits: the softmax runs inside the pass unless the target needs a gradient too
        for from_logits, tgt_grad in ((False, True), (True, True), (True, False)):
            inp = torch.log(pred) + 0.3 if from_logits else pred
            p1, t1 = inp.clone().requires_grad_(True), tgt.clone().requires_grad_(tgt_grad)
            p2, t2 = inp.clone().requires_grad_(True), tgt.clone().requires_grad_(tgt_grad)
            v1, st = ot_loss_with_stats(p1, t1, M, method="closed_form", from_logits=from_logits, reduction=reduction)
            v2 = _old_path(p2, t2, M, reduction, from_logits)
            assert st["solver"] == "closed_form"
            assert torch.allclose(v1, v2, atol=1e-12, rtol=1e-12), (reduction, from_logits)
            w = torch.linspace(0.5, 2.0, 45, dtype=F64) if reduction == "none" else torch.tensor(1.7, dtype=F64)
            (v1 * w).sum().backward()
            (v2 * w).sum().backward()
            assert torch.allclose(p1.grad, p2.grad, atol=1e-12), (reduction, from_logits)
            if tgt_grad:
                assert torch.allclose(t1.grad, t2.grad, atol=1e-12), (reduction, from_logits)
        # against the naive twin: value and dual d value / d pred = f, d / d target = -f
        scale = {"none": 1.0, "sum": 1.0, "mean": 1 / 45}[reduction]
        p, t = pred.clone().requires_grad_(True), tgt.clone().requires_grad_(True)
        v = ot_loss(p, t, M, method="closed_form", reduction=reduction)
        ref = {"none": v_naive, "sum": v_naive.sum(), "mean": v_naive.mean()}[reduction]
        assert torch.allclose(v, ref, atol=1e-12)
        v.sum().backward()
        assert torch.allclose(p.grad, scale * f_naive, atol=1e-12) and torch.allclose(t.grad, -scale * f_naive, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_fused_line_loss_gradcheck(reduction):
    """float64 gradcheck of LineW1Loss through softmax (on the simplex the dual is defined up
    to a per-row constant, which the softmax Jacobian removes), in pred and target at once."""
    from raydprm.core.ot_loss import line_w1_loss

    g = torch.Generator().manual_seed(4)
    za = torch.randn(9, 6, generator=g, dtype=F64, requires_grad=True)
    zb = torch.randn(9, 6, generator=g, dtype=F64, requires_grad=True)
    x = torch.tensor(LabelScale.hh().rewards, dtype=F64)
    fn = lambda a, b: line_w1_loss(torch.softmax(a, 1), torch.softmax(b, 1), x, reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (za, zb), eps=1e-6, atol=1e-7)
    # logits in: softmax and its Jacobian inside the pass (target fixed)
    tb = torch.softmax(zb.detach(), 1)
    fn = lambda a: line_w1_loss(a, tb, x, reduction, from_logits=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (za,), eps=1e-6, atol=1e-7)


def test_fused_line_loss_backward_hands_on_the_dual_and_checks_inputs():
    """reduction 'sum': the gradient is the dual itself; a retained graph gives the same
    gradient twice (the saved dual is not altered by accumulation); inputs off the simplex
    raise check_distribution's messages from inside the fused pass."""
    pred, tgt = _batch(6, seed=6, n=5)
    M = cost_matrix("reward_gap")
    p = pred.clone().requires_grad_(True)
    loss = ot_loss(p, tgt, M, reduction="sum")
    loss.backward(retain_graph=True)
    g1 = p.grad.clone()
    loss.backward()
    assert torch.allclose(p.grad, 2 * g1) and torch.allclose(g1, exact_ot(pred, tgt, M)[1], atol=1e-12)
    bad_p, bad_t = pred.clone(), tgt.clone()
    bad_p[3, 2] = float("nan")
    bad_t[4] = torch.tensor([1.2, -0.2, 0, 0, 0, 0], dtype=F64)
    with pytest.raises(ValueError, match="pred .*non-finite"):
        ot_loss(bad_p.requires_grad_(True), tgt, M)
    with pytest.raises(ValueError, match="target has negative entries"):
        ot_loss(pred, bad_t, M)
    with pytest.raises(ValueError, match="logits have non-finite"):
        ot_loss(bad_p, tgt, M, from_logits=True)
    # an empty batch: as the unfused path (sum 0, mean NaN), with an empty gradient
    for reduction, expect in (("sum", 0.0), ("mean", float("nan"))):
        e = torch.empty(0, 6, dtype=F64, requires_grad=True)
        v = ot_loss(e, torch.empty(0, 6, dtype=F64), M, reduction=reduction)
        v.backward()
        assert (math.isnan(float(v)) if math.isnan(expect) else float(v) == expect) and e.grad.shape == (0, 6)
    # a logit range too wide for one shift (exp would underflow): torch.softmax first, same loss
    z = torch.log(pred)
    z[0, 0] = -2000.0
    with torch.no_grad():
        ref = _old_path(z, tgt, M, "mean", from_logits=True)
        assert torch.allclose(ot_loss(z, tgt, M, from_logits=True), ref, atol=1e-12)
