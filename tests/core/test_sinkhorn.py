"""Batched log-domain Sinkhorn: convergence to exact OT, POT agreement, envelope gradients."""

import math

import ot
import ot.batch
import pytest
import torch

from raydprm.core import LabelScale, cost_matrix, ot_loss, ot_loss_with_stats
from raydprm.core.ot_loss import exact_ot
from raydprm.core.sinkhorn import eps_schedule, sinkhorn, sinkhorn_divergence, sinkhorn_potentials

F64 = torch.float64


def _data(B=16, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.softmax(2 * torch.randn(B, L, generator=g, dtype=F64), -1)
    b = torch.softmax(2 * torch.randn(B, L, generator=g, dtype=F64), -1)
    b[:4] = torch.nn.functional.one_hot(torch.arange(4) % L, L).to(F64)  # one-hot targets
    return a, b


def _entropy(p):
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1)


@pytest.mark.parametrize("cost", ["reward_gap", "grid_l1", "custom"])
def test_sinkhorn_tends_to_exact_as_eps_shrinks(cost):
    s = LabelScale.hh()
    if cost == "custom":
        A = torch.rand(6, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
        M = cost_matrix("custom", s, matrix=(A + A.T).fill_diagonal_(0))
    else:
        M = cost_matrix(cost, s)
    a, b = _data()
    exact = exact_ot(a, b, M)[0]
    prev = float("inf")
    for eps in (0.3, 0.1, 0.03, 0.01):
        v, st = ot_loss_with_stats(a, b, M, method="sinkhorn", reduction="none", eps=eps, tol=1e-9,
                                   max_iter=20000)
        assert st["converged"], st
        gap = v - exact
        # 0 <= OT_eps - OT <= eps * min(H(a), H(b))  (sinkhorn.py docstring)
        assert torch.all(gap >= -1e-7) and torch.all(gap <= eps * torch.minimum(_entropy(a), _entropy(b)) + 1e-7)
        assert float(gap.max()) < prev
        prev = float(gap.max())
    assert prev < 0.01 * math.log(6)


def test_matches_pot_batch_solver():
    """Same plan as POT's entropic solver; values differ by eps (H(a) + H(b))."""
    M = cost_matrix("grid_l1", LabelScale.hh())
    a, b = _data(B=32, seed=3)
    b = 0.9 * b + 0.1 / 6  # POT's log solver needs log(b) finite
    eps = 0.1
    v, f, g, st = sinkhorn(a, b, M, eps, tol=1e-10, max_iter=5000)
    res = ot.batch.solve_batch(M.expand(32, 6, 6).contiguous(), reg=eps, a=a, b=b, tol=1e-10, max_iter=5000,
                               method="log_sinkhorn", reg_type="entropy", grad="detach")
    assert torch.allclose(v, res.value + eps * (_entropy(a) + _entropy(b)), atol=1e-8)
    # the plan itself: P_ij = a_i b_j exp((f_i + g_j - M_ij) / eps); its <P, M> is sinkhorn2's value
    fu, gu, _ = sinkhorn_potentials(a, b, M, eps, tol=1e-12, max_iter=5000)
    P = a[:, :, None] * b[:, None, :] * torch.exp((fu[:, :, None] + gu[:, None, :] - M) / eps)
    assert torch.allclose(P, res.plan, atol=1e-9)
    ref = torch.stack([torch.as_tensor(ot.sinkhorn2(a[i], b[i], M, eps, method="sinkhorn_log", stopThr=1e-13))
                       for i in range(4)])
    assert torch.allclose((P[:4] * M).sum((1, 2)), ref, atol=1e-8)


def _unrolled(a, b, M, eps, n_iter):
    """Naive twin: the plain log-domain iterations, differentiated by autograd."""
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(n_iter):
        f = -eps * torch.logsumexp(torch.log(b)[:, None, :] + (g[:, None, :] - M) / eps, 2)
        g = -eps * torch.logsumexp(torch.log(a)[:, :, None] + (f[:, :, None] - M) / eps, 1)
    return (f * a).sum(1) + (g * b).sum(1)


def test_envelope_gradient_equals_unrolled_autograd():
    M = cost_matrix("grid_l1", LabelScale.hh())
    a, b = _data(B=8, seed=4)
    b = 0.8 * b + 0.2 / 6
    z = torch.log(a).requires_grad_(True)
    ot_loss(z, b, M, method="sinkhorn", from_logits=True, reduction="sum", eps=0.2, tol=1e-12,
            max_iter=5000).backward()
    z2 = torch.log(a).requires_grad_(True)
    _unrolled(torch.softmax(z2, 1), b, M, 0.2, 400).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-8)


def test_sinkhorn_divergence():
    M = cost_matrix("reward_gap", LabelScale.hh())
    a, b = _data(seed=5)
    v, ga, gb, _ = sinkhorn_divergence(a, b, M, 0.1, tol=1e-10, max_iter=5000)
    v_ba = sinkhorn_divergence(b, a, M, 0.1, tol=1e-10, max_iter=5000)[0]
    assert torch.all(v > 0) and torch.allclose(v, v_ba, atol=1e-8)  # positive, symmetric
    # zero, and stationary, at a = b (at eps = 0.5: at 0.1 the alternating iterations on a
    # nearly block-diagonal plan need far more than 5000 steps to fix the block offsets)
    z, gz, _, st = sinkhorn_divergence(a, a, M, 0.5, tol=1e-12, max_iter=5000)
    assert st["converged"] and torch.all(z.abs() < 1e-10) and torch.all(gz.abs() < 1e-8)
    # its gradient matches the biased pieces' finite differences
    d = torch.zeros_like(a)
    d[:, 0], d[:, 1] = 1e-6, -1e-6
    fd = (sinkhorn_divergence(a + d, b, M, 0.1, tol=1e-12, max_iter=5000)[0] - v) / 1e-6
    assert torch.allclose(fd, ga[:, 0] - ga[:, 1], atol=1e-4)


def test_batched_cost_and_no_scaling():
    M = cost_matrix("grid_l1", LabelScale.hh())
    a, b = _data(B=4)
    v1 = sinkhorn(a, b, M, 0.1, tol=1e-10)[0]
    v2 = sinkhorn(a, b, M.expand(4, 6, 6), 0.1, tol=1e-10)[0]
    v3 = sinkhorn(a, b, M, 0.1, tol=1e-10, eps_start=0.1)[0]  # epsilon scaling off
    assert torch.allclose(v1, v2, atol=1e-9) and torch.allclose(v1, v3, atol=1e-9)
    assert eps_schedule(0.1, 0.8, 0.5) == [0.8, 0.4, 0.2, 0.1]
    with pytest.raises(ValueError, match="eps_decay"):
        eps_schedule(0.1, 1.0, 1.5)


def test_newton_polish_converges_fast_on_tied_reward_gap():
    """reward_gap ties labels 3 and 4 (zero cost): plain Sinkhorn at eps = 0.1 stalls far
    short of tol = 1e-6 in 1000 iterations; the Newton polish meets it in a few dozen and
    lands on the same fixed point as the plain iterations run to convergence."""
    M = cost_matrix("reward_gap", LabelScale.hh())
    a, b = _data(B=400, seed=7)
    a[4:8, 2] = 0.0  # zero-mass predictions too
    a = a / a.sum(1, keepdim=True)
    plain = sinkhorn(a, b, M, 0.1, tol=1e-6, max_iter=1000, newton=False)[3]
    assert not plain["converged"]  # the stall this guards against
    v, f, g, st = sinkhorn(a, b, M, 0.1, tol=1e-6, max_iter=1000)
    assert st["converged"] and st["iterations"] <= 100 and st["newton_steps"] >= 1, st
    # both marginals of the plan of the returned potentials, computed independently
    fu, gu, _ = sinkhorn_potentials(a, b, M, 0.1, tol=1e-6)
    P = a[:, :, None] * b[:, None, :] * torch.exp((fu[:, :, None] + gu[:, None, :] - M) / 0.1)
    assert float((P.sum(2) - a).abs().sum(1).max()) < 1e-6
    assert float((P.sum(1) - b).abs().sum(1).max()) < 1e-6
    # same fixed point as the plain iterations, converged, on rows where that is affordable
    idx = torch.arange(0, 400, 50)
    vp, _, _, stp = sinkhorn(a[idx], b[idx], M, 0.1, tol=1e-10, max_iter=100_000, newton=False)
    vn, _, _, stn = sinkhorn(a[idx], b[idx], M, 0.1, tol=1e-10, max_iter=1000)
    assert stp["converged"] and stn["converged"], (stp, stn)
    assert torch.allclose(vp, vn, atol=1e-9) and torch.allclose(v[idx], vn, atol=1e-6)


def test_newton_polish_survives_a_singular_hessian(monkeypatch):
    """float32 training batches can make the Newton system singular (seen in bench/reward_compare.py):
    those rows fall back to plain Sinkhorn steps instead of raising."""
    import torch

    from raydprm.core import LabelScale, cost_matrix
    from raydprm.core.sinkhorn import newton_polish

    M = cost_matrix("reward_gap", LabelScale.hh()).to(torch.float32)
    a = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]], dtype=torch.float32)
    a = a.clamp_min(1e-30) / a.clamp_min(1e-30).sum(1, keepdim=True)
    b = torch.tensor([[0, 0, 0.5, 0.5, 0, 0], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2]], dtype=torch.float32)
    b = b.clamp_min(1e-30) / b.clamp_min(1e-30).sum(1, keepdim=True)
    real_solve_ex = torch.linalg.solve_ex

    def failing_solve_ex(H, g):  # every system reports singular
        d, info = real_solve_ex(H, g)
        return d, torch.ones_like(info)

    monkeypatch.setattr(torch.linalg, "solve_ex", failing_solve_ex)
    f, g, err, steps = newton_polish(a, b, M, 0.1, torch.zeros_like(b), tol=1e-4, max_steps=3000)
    assert torch.isfinite(f).all() and torch.isfinite(g).all()
    assert err < 1e-3  # plain Sinkhorn steps still make progress


@pytest.mark.parametrize("batched_cost", [False, True])
def test_row_blocks_give_the_same_solution(batched_cost):
    """Solving in row blocks (each block to the tolerance on its own) gives the same potentials
    as one batch up to the tolerance; the stats are the worst over the blocks."""
    a, b = _data(B=70, seed=4)
    M = cost_matrix("reward_gap", LabelScale.hh())
    if batched_cost:
        M = M.expand(70, 6, 6) * torch.linspace(0.5, 1.5, 70, dtype=F64)[:, None, None]
    one = sinkhorn(a, b, M, 0.1, tol=1e-10)
    blocks = sinkhorn(a, b, M, 0.1, tol=1e-10, block_rows=16)
    assert blocks[3]["blocks"] == 5 and blocks[3]["converged"] and one[3]["converged"]
    assert blocks[3]["iterations"] <= one[3]["iterations"]
    assert torch.allclose(blocks[0], one[0], atol=1e-8)
    assert torch.allclose(blocks[1], one[1], atol=1e-6) and torch.allclose(blocks[2], one[2], atol=1e-6)
    div_one = sinkhorn_divergence(a, b, M, 0.1, tol=1e-10)
    div_blocks = sinkhorn_divergence(a, b, M, 0.1, tol=1e-10, block_rows=16)
    assert torch.allclose(div_blocks[0], div_one[0], atol=1e-8)
