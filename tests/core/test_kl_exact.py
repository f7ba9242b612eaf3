"""The exact per-token KL over the vocabulary (issue 25, part 5): facts and its naive twin."""

import math

import numpy as np
import pytest
import torch

from raydprm.core.kl import kl_estimate, kl_from_logits, sequence_kl


def _naive(z, zr):
    p = [math.exp(x) for x in z]
    q = [math.exp(x) for x in zr]
    sp, sq = sum(p), sum(q)
    return sum(pv / sp * math.log((pv / sp) / (qv / sq)) for pv, qv in zip(p, q))


def test_matches_the_naive_twin():
    g = torch.Generator().manual_seed(0)
    z, zr = torch.randn(3, 5, 17, generator=g) * 3, torch.randn(3, 5, 17, generator=g) * 3
    got = kl_from_logits(z, zr)
    assert got.shape == (3, 5)
    want = torch.tensor([[_naive(z[b, t].tolist(), zr[b, t].tolist()) for t in range(5)] for b in range(3)],
                        dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_zero_iff_same_distribution_and_invariant_to_a_logit_shift():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, 11, generator=g)
    assert torch.equal(kl_from_logits(z, z), torch.zeros(4, 6, dtype=torch.float64))
    assert torch.allclose(kl_from_logits(z, z + 7.5), torch.zeros(4, 6, dtype=torch.float64), atol=1e-12)
    assert bool((kl_from_logits(z, torch.randn(4, 6, 11, generator=g)) > 0).all())


def test_two_point_distribution():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 log 2 + 1/2 log(2/3)
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    zr = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    assert kl_from_logits(z, zr).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-12)


def test_sequence_kl_sums_only_the_valid_tokens():
    g = torch.Generator().manual_seed(2)
    z, zr = torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    per = kl_from_logits(z, zr)
    got = sequence_kl(z, zr, mask)
    assert torch.allclose(got, torch.stack([per[0, :3].sum(), per[1, 0]]), rtol=1e-12)
    with pytest.raises(ValueError):
        sequence_kl(z, zr, mask[:, :3])


def test_exact_kl_is_the_mean_of_the_one_sample_estimate_with_less_variance():
    """E_{y~p}[log p(y) - log q(y)] = KL(p||q): the one-sample estimate (k1) averages to the exact value,
    can be negative, and varies from sample to sample where the exact one does not."""
    g = torch.Generator().manual_seed(3)
    z, zr = torch.randn(13, generator=g) * 0.3, torch.randn(13, generator=g) * 0.3  # a policy that barely moved
    exact = kl_from_logits(z, zr).item()
    logp, logq = torch.log_softmax(z.double(), -1), torch.log_softmax(zr.double(), -1)
    y = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=g)
    k1 = kl_estimate(logp[y], logq[y], "k1")
    assert float(k1.mean()) == pytest.approx(exact, abs=4 * float(k1.std()) / math.sqrt(len(y)))
    assert bool((k1 < 0).any()) and exact > 0
    assert float(np.var(k1.numpy())) > 0  # the exact KL has no sampling variance at a fixed prefix


def test_float32_agrees_with_float64():
    g = torch.Generator().manual_seed(4)
    z, zr = torch.randn(2, 3, 50, generator=g), torch.randn(2, 3, 50, generator=g)
    mask = torch.ones(2, 3)
    assert torch.allclose(sequence_kl(z, zr, mask, torch.float32).double(), sequence_kl(z, zr, mask), rtol=1e-5)


def test_gradient_flows_and_inputs_are_untouched():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    zr = torch.randn(2, 7, generator=g, dtype=torch.float64)
    before = z.detach().clone()
    kl_from_logits(z, zr).sum().backward()
    assert torch.equal(z.detach(), before) and z.grad is not None and bool(torch.isfinite(z.grad).all())
    zz = z.detach()
    kl_from_logits(zz, zr)  # no grad: the in-place path
    assert torch.equal(zz, before)
