"""Dirichlet preference updater: facts from raydprm/core/dirichlet.py's docstring."""

import numpy as np
import pytest
import torch

from raydprm.core.dirichlet import (
    beta_mean_variance,
    beta_update,
    decay_factor,
    dirichlet_mean,
    dirichlet_update,
    dirichlet_variance,
    mix_posteriors,
    moment_match_dirichlet,
)

L = 6


def _votes(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, L, (n,), generator=g)
    soft = torch.softmax(torch.randn(n, L, generator=g, dtype=torch.float64), -1)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return labels, soft, w


def test_order_independent_without_forgetting():
    labels, soft, w = _votes(40, 0)
    prior = torch.ones(L, dtype=torch.float64)
    one_shot = dirichlet_update(prior, soft, w)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    a = prior.clone()
    for k in perm.tolist():  # one vote at a time, shuffled
        a = dirichlet_update(a, soft[k : k + 1], w[k : k + 1])
    assert torch.allclose(a, one_shot, atol=1e-12)
    # integer labels are one-hot votes
    a_int = dirichlet_update(prior, labels)
    assert torch.allclose(a_int - prior, torch.bincount(labels, minlength=L).double())


def test_order_independent_with_time_forgetting():
    """Votes at times t_k, read at time T: same posterior whatever the batching/order."""
    _, soft, w = _votes(30, 2)
    times = torch.sort(torch.rand(30, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10).values
    prior = torch.full((L,), 0.5, dtype=torch.float64)
    h, T = 3.0, 10.0
    one_shot = dirichlet_update(prior, soft, w, prior=prior, vote_ages=T - times, half_life=h)
    # closed form: prior + sum_k w_k 0.5^((T-t_k)/h) v_k
    ref = prior + ((w * 0.5 ** ((T - times) / h))[:, None] * soft).sum(0)
    assert torch.allclose(one_shot, ref, atol=1e-12)
    # streamed in three chunks, each chunk updated at its own latest time
    a, t_a = prior.clone(), 0.0
    for chunk in (slice(0, 7), slice(7, 20), slice(20, 30)):
        now = float(times[chunk].max())
        a = dirichlet_update(a, soft[chunk], w[chunk], prior=prior, vote_ages=now - times[chunk],
                             elapsed=now - t_a, half_life=h)
        t_a = now
    a = dirichlet_update(a, soft[:0], w[:0], prior=prior, vote_ages=torch.zeros(0), elapsed=T - t_a, half_life=h)
    assert torch.allclose(a, one_shot, atol=1e-12)


def test_forgetting_tracks_a_shifted_preference():
    prior = torch.ones(2, dtype=torch.float64)
    old = torch.zeros(100, dtype=torch.long)  # crowd used to pick label 0
    new = torch.ones(30, dtype=torch.long)  # then shifts to label 1
    a_static = dirichlet_update(dirichlet_update(prior, old), new)
    a_forget = dirichlet_update(dirichlet_update(prior, old), new, prior=prior, elapsed=10.0, half_life=2.0)
    assert dirichlet_mean(a_static)[1] < 0.3
    assert dirichlet_mean(a_forget)[1] > 0.85  # 31 / (1 + 100 * 0.5**5 + 31)
    # a long pause relaxes the posterior to the prior
    a_far = dirichlet_update(a_static, new[:0], prior=prior, elapsed=1e4, half_life=2.0)
    assert torch.allclose(a_far, prior, atol=1e-9)
    assert decay_factor(2.0, 2.0) == pytest.approx(0.5)
    assert decay_factor(5.0, None) == 1.0


def test_zero_prior_mean_is_count_weighted_average():
    """(N P + n P_new) / (N + n), the paper's aggregation (docs/equations.md)."""
    P = torch.tensor([0.5, 0.1, 0.4, 0, 0, 0], dtype=torch.float64)
    P_new = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2, 0.0], dtype=torch.float64)
    N, n = 10.0, 5.0
    a = dirichlet_update(torch.zeros(L, dtype=torch.float64), P[None], torch.tensor([N]))
    a = dirichlet_update(a, P_new[None], torch.tensor([n]))
    assert torch.allclose(dirichlet_mean(a), (N * P + n * P_new) / (N + n), atol=1e-12)


def test_moments_and_beta_case():
    alpha = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    m, v = dirichlet_mean(alpha), dirichlet_variance(alpha)
    torch.manual_seed(0)
    samples = torch.distributions.Dirichlet(alpha).sample((200_000,))
    assert torch.allclose(m, samples.mean(0), atol=5e-3)
    assert torch.allclose(v, samples.var(0), atol=2e-3)
    a, b = beta_update(1.0, 1.0, successes=3, failures=1)
    assert (a, b) == (4.0, 2.0)
    bm, bv = beta_mean_variance(a, b)
    assert bm == pytest.approx(4 / 6) and bv == pytest.approx(4 * 2 / (36 * 7))
    # numpy in, numpy out
    assert isinstance(dirichlet_mean(np.array([1.0, 1.0])), np.ndarray)


def test_per_item_index_and_mixture():
    labels, _, w = _votes(50, 4)
    items = torch.arange(50) % 3
    alpha = dirichlet_update(torch.ones(3, L, dtype=torch.float64), labels, w, index=items)
    for i in range(3):
        ref = dirichlet_update(torch.ones(L, dtype=torch.float64), labels[items == i], w[items == i])
        assert torch.allclose(alpha[i], ref)
    mean, var = mix_posteriors(alpha, torch.tensor([0.2, 0.3, 0.5]))
    assert torch.allclose(mean, (torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[:, None]
                                 * dirichlet_mean(alpha)).sum(0))
    assert float(mean.sum()) == pytest.approx(1.0)
    # mixture variance >= the weighted average of component variances (total variance)
    assert torch.all(var >= (torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[:, None]
                             * dirichlet_variance(alpha)).sum(0) - 1e-15)
    # moment matching recovers a single Dirichlet exactly
    a_hat = moment_match_dirichlet(dirichlet_mean(alpha[0]), dirichlet_variance(alpha[0]))
    assert torch.allclose(a_hat, alpha[0], atol=1e-9)


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: dirichlet_update(torch.ones(L), torch.tensor([6])), "must lie in"),
        (lambda: dirichlet_update(torch.ones(L), torch.full((1, L), 0.5)), "sum to 1"),
        (lambda: dirichlet_update(torch.ones(L), torch.tensor([1]), torch.tensor([-1.0])), ">= 0"),
        (lambda: dirichlet_update(torch.ones(L), torch.tensor([1]), half_life=1.0), "needs `prior`"),
        (lambda: dirichlet_update(torch.ones(2, L), torch.tensor([1])), "pass `index`"),
        (lambda: dirichlet_mean(torch.tensor([1.0])), "size >= 2"),
        (lambda: decay_factor(-1.0, 1.0), ">= 0"),
        (lambda: mix_posteriors(torch.ones(2, L), torch.tensor([1.0])), "shape"),
    ],
)
def test_bad_inputs_raise(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
