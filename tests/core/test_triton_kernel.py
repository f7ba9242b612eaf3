"""Fused Triton Sinkhorn kernel vs its torch reference (interpreter on CPU, real kernel on GPU)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from raydprm.core.triton_sinkhorn import triton_available

_INTERPRETER_CHECK = textwrap.dedent(
    """
    import os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from raydprm.core import LabelScale, cost_matrix, ot_loss
    from raydprm.core.sinkhorn import sinkhorn
    from raydprm.core.triton_sinkhorn import triton_sinkhorn

    g = torch.Generator().manual_seed(0)
    for name, L in (("grid_l1", 6), ("ordinal", 3)):
        scale = LabelScale.hh() if L == 6 else LabelScale.ordinal(L)
        M = cost_matrix(name, scale)
        a = torch.softmax(2 * torch.randn(37, L, generator=g, dtype=torch.float64), -1)
        b = torch.softmax(2 * torch.randn(37, L, generator=g, dtype=torch.float64), -1)
        b[:L] = torch.eye(L, dtype=torch.float64)  # one-hot targets, zero masses
        v, f, gg, st = triton_sinkhorn(a, b, M, 0.3, tol=1e-9, block_b=16)
        v2, f2, g2, st2 = sinkhorn(a, b, M, 0.3, tol=1e-9, check_every=1, newton=False)  # the plain iterations
        assert st["converged"] and st2["converged"], (st, st2)
        assert torch.allclose(v, v2, atol=1e-9), (v - v2).abs().max()
        assert torch.allclose(f, f2, atol=1e-6) and torch.allclose(gg, g2, atol=1e-6)
    # through the loss registry, gradients included
    z = torch.log(a).requires_grad_(True)
    ot_loss(z, b, M, method="sinkhorn", from_logits=True, backend="triton", eps=0.3, tol=1e-9).backward()
    z2 = torch.log(a).requires_grad_(True)
    ot_loss(z2, b, M, method="sinkhorn", from_logits=True, backend="torch", eps=0.3, tol=1e-9).backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    print("TRITON-INTERPRETER-OK")
    """
)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed (the `cpu`/`gpu` extras list it)")
def test_kernel_matches_torch_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "TRITON-INTERPRETER-OK" in out.stdout, out.stderr[-3000:]


def test_core_import_does_not_load_triton_or_pot():
    code = ("import sys, raydprm.core, raydprm.core.ot_loss, raydprm.core.triton_sinkhorn; "
            "bad = [m for m in ('triton', 'ot', 'ray') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for the real Triton kernel")
def test_kernel_on_gpu_matches_torch_and_is_faster():
    import time

    from raydprm.core import LabelScale, cost_matrix
    from raydprm.core.sinkhorn import sinkhorn
    from raydprm.core.triton_sinkhorn import triton_sinkhorn

    g = torch.Generator().manual_seed(0)
    M = cost_matrix("grid_l1", LabelScale.hh()).float().cuda()
    a = torch.softmax(2 * torch.randn(100_000, 6, generator=g), -1).cuda()
    b = torch.softmax(2 * torch.randn(100_000, 6, generator=g), -1).cuda()
    triton_sinkhorn(a, b, M, 0.1, tol=1e-5)  # compile
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    v, *_ = triton_sinkhorn(a, b, M, 0.1, tol=1e-5)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    v2, *_ = sinkhorn(a, b, M, 0.1, tol=1e-5)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    assert torch.allclose(v, v2, atol=1e-4)
    print(f"triton {t1 - t0:.4f}s torch {t2 - t1:.4f}s ratio {(t2 - t1) / (t1 - t0):.1f}x")
