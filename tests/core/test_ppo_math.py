"""PPO math facts (raydprm/core/{gae,kl,ppo_loss}.py): each fast path against its naive
twin, plus the properties PPO relies on."""

import math

import pytest
import torch
from core.naive import (  # tests/core/naive.py (tests/ is on sys.path through its conftest.py)
    adaptive_kl_controller_naive,
    aggregate_naive,
    clipped_surrogate_naive,
    clipped_value_loss_naive,
    entropy_from_logits_naive,
    kl_estimate_naive,
    masked_gae_naive,
    shape_rewards_naive,
    token_logprobs_naive,
    whiten_naive,
)

from raydprm.core.gae import masked_gae, masked_moments, whiten
from raydprm.core.kl import (
    adaptive_kl_controller,
    fixed_kl_controller,
    kl_estimate,
    shape_rewards,
    update_kl_coef,
)
from raydprm.core.ppo_loss import (
    aggregate,
    clipped_surrogate,
    clipped_value_loss,
    entropy_bonus,
    entropy_from_logits,
    token_logprobs,
)


def _mask(B=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T  # one full row
    return (torch.arange(T)[None, :] < lens[:, None]).long()  # (B, T) right-padded


# ----------------------------------------------------------------------------- GAE


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0), (1.0, 1.0)])
def test_gae_equals_loop(gamma, lam):
    torch.manual_seed(1)
    mask = _mask()
    r, v = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    a, ret = masked_gae(r, v, mask, gamma, lam)
    a0, ret0 = masked_gae_naive(r, v, mask, gamma, lam)
    assert torch.allclose(a, a0, atol=1e-12) and torch.allclose(ret, ret0, atol=1e-12)


def test_gae_lambda1_gamma1_is_reward_to_go_minus_value():
    torch.manual_seed(2)
    mask = _mask()
    r, v = torch.randn(5, 7), torch.randn(5, 7)
    a, ret = masked_gae(r, v, mask, 1.0, 1.0)
    m = mask.float()
    togo = (r * m).flip(1).cumsum(1).flip(1) * m  # sum_{k >= t} r_k
    assert torch.allclose(ret, togo, atol=1e-5)
    assert torch.allclose(a, (togo - v) * m, atol=1e-5)


def test_gae_masked_positions_do_not_matter():
    torch.manual_seed(3)
    mask = _mask()
    r, v = torch.randn(5, 7), torch.randn(5, 7)
    junk_r, junk_v = r.clone(), v.clone()
    junk_r[mask == 0] = 1e6
    junk_v[mask == 0] = -1e6
    a, ret = masked_gae(r, v, mask, 0.99, 0.95)
    a2, ret2 = masked_gae(junk_r, junk_v, mask, 0.99, 0.95)
    assert torch.equal(a, a2) and torch.equal(ret, ret2)
    assert bool((a[mask == 0] == 0).all()) and bool((ret[mask == 0] == 0).all())


def test_gae_rejects_holes_in_mask():
    mask = torch.tensor([[1, 0, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        masked_gae(torch.zeros(1, 3), torch.zeros(1, 3), mask, 1.0, 1.0)


def test_whiten_matches_naive_and_is_standardised():
    torch.manual_seed(4)
    mask = _mask(6, 9)
    x = torch.randn(6, 9, dtype=torch.float64) * 3 + 2
    w = whiten(x, mask)
    assert torch.allclose(w, whiten_naive(x, mask), atol=1e-10)
    mean, var = masked_moments(w, mask)
    assert abs(float(mean)) < 1e-10 and abs(float(var) - 1) < 1e-6
    assert bool((w[mask == 0] == 0).all())
    keep = whiten(x, mask, shift_mean=False)
    assert torch.allclose(keep, whiten_naive(x, mask, shift_mean=False), atol=1e-10)


# ----------------------------------------------------------------------------- KL


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators_match_naive(est):
    torch.manual_seed(5)
    mask = _mask()
    lp, ref = -torch.rand(5, 7) * 3, -torch.rand(5, 7) * 3
    assert torch.allclose(kl_estimate(lp, ref, est, mask), kl_estimate_naive(lp, ref, est, mask), atol=1e-5)


def test_kl_estimators_unbiased_and_nonnegative():
    # sample a ~ p from a categorical; E_p[k1] = E_p[k3] = KL(p||q); k2, k3 >= 0
    torch.manual_seed(6)
    p = torch.softmax(torch.randn(10), 0)
    q = torch.softmax(torch.randn(10), 0)
    true_kl = float((p * (p / q).log()).sum())
    a = torch.multinomial(p, 400_000, replacement=True)
    lp, lq = p.log()[a][None], q.log()[a][None]
    for est in ("k1", "k3"):
        assert abs(float(kl_estimate(lp, lq, est).mean()) - true_kl) < 0.02 * max(1.0, true_kl)
    for est in ("k2", "k3"):
        assert float(kl_estimate(lp, lq, est).min()) >= 0
    assert float(kl_estimate(lp, lp, "k3").abs().max()) == 0.0  # identical policies: zero


def test_kl_unknown_estimator_is_an_error():
    with pytest.raises(ValueError, match="unknown KL estimator 'k9'"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k9")


def test_shape_rewards_matches_naive_and_pays_score_at_last_token():
    torch.manual_seed(7)
    mask = _mask()
    kl = torch.rand(5, 7)
    scores = torch.randn(5)
    r, stats = shape_rewards(scores, kl, mask, beta=0.3)
    assert torch.allclose(r, shape_rewards_naive(scores, kl, mask, 0.3), atol=1e-6)
    # summing the shaped rewards of a row gives score - beta * sum_t kl_t
    assert torch.allclose(r.sum(1), scores - 0.3 * (kl * mask).sum(1), atol=1e-5)
    assert abs(float(stats["kl"]) - float((kl * mask).sum(1).mean())) < 1e-6


def test_shape_rewards_rejects_empty_response():
    with pytest.raises(ValueError, match="at least one valid token"):
        shape_rewards(torch.zeros(2), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)


def test_adaptive_controller_moves_beta_toward_target():
    beta = 0.1
    up = adaptive_kl_controller(beta, current_kl=12.0, n_steps=64, target_kl=6.0, horizon=1000)
    down = adaptive_kl_controller(beta, current_kl=1.0, n_steps=64, target_kl=6.0, horizon=1000)
    same = adaptive_kl_controller(beta, current_kl=6.0, n_steps=64, target_kl=6.0, horizon=1000)
    assert up > beta > down and same == beta
    # the proportional error is clipped at +-0.2
    assert math.isclose(adaptive_kl_controller(beta, 1e9, 1000, 6.0, 1000), beta * 1.2)
    assert math.isclose(adaptive_kl_controller(beta, 0.0, 1000, 6.0, 1000), beta * 0.8)
    # iterating with the KL stuck above target keeps raising beta
    b = beta
    for _ in range(10):
        b = adaptive_kl_controller(b, 20.0, 64, 6.0, 1000)
    assert b > up


@pytest.mark.parametrize("kl", [0.0, 3.0, 5.9, 6.0, 7.0, 100.0])
def test_adaptive_controller_matches_naive(kl):
    assert math.isclose(adaptive_kl_controller(0.05, kl, 32, 6.0, 500),
                        adaptive_kl_controller_naive(0.05, kl, 32, 6.0, 500), rel_tol=1e-12)


def test_fixed_controller_and_dispatch():
    assert fixed_kl_controller(0.05, 100.0, 64) == 0.05
    assert update_kl_coef("fixed", 0.05, 100.0, 64, 6.0, 1000)[0] == 0.05
    assert update_kl_coef("adaptive", 0.05, 100.0, 64, 6.0, 1000)[0] > 0.05
    with pytest.raises(ValueError, match="unknown KL controller"):
        update_kl_coef("pid", 0.05, 1.0, 1, 1.0, 1)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_aggregate_matches_naive(mode):
    torch.manual_seed(8)
    mask = _mask()
    x = torch.randn(5, 7, dtype=torch.float64)
    assert math.isclose(float(aggregate(x, mask, mode)), aggregate_naive(x, mask, mode), rel_tol=1e-12)


def test_aggregate_denominator_splits_a_minibatch_exactly():
    # summing micro-batch losses with the minibatch denominator == the minibatch loss
    torch.manual_seed(9)
    mask = _mask(8, 6)
    x = torch.randn(8, 6, dtype=torch.float64)
    whole = aggregate(x, mask, "token_mean")
    n = mask.sum()
    parts = aggregate(x[:3], mask[:3], "token_mean", n) + aggregate(x[3:], mask[3:], "token_mean", n)
    assert torch.allclose(whole, parts, atol=1e-12)
    whole_s = aggregate(x, mask, "seq_mean")
    parts_s = aggregate(x[:3], mask[:3], "seq_mean", 8.0) + aggregate(x[3:], mask[3:], "seq_mean", 8.0)
    assert torch.allclose(whole_s, parts_s, atol=1e-12)


def test_aggregate_masked_positions_do_not_matter():
    mask = _mask()
    x = torch.randn(5, 7)
    y = x.clone()
    y[mask == 0] = 1e9
    for mode in ("token_mean", "seq_mean"):
        assert torch.equal(aggregate(x, mask, mode), aggregate(y, mask, mode))


def test_clipped_surrogate_matches_naive():
    torch.manual_seed(10)
    mask = _mask()
    old = -torch.rand(5, 7, dtype=torch.float64) * 2
    new = old + torch.randn(5, 7, dtype=torch.float64) * 0.3
    adv = torch.randn(5, 7, dtype=torch.float64)
    loss, stats = clipped_surrogate(new, old, adv, mask, 0.2)
    assert math.isclose(float(loss), clipped_surrogate_naive(new, old, adv, mask, 0.2), rel_tol=1e-10)
    assert 0 < float(stats["clipfrac"]) < 1 and float(stats["approx_kl"]) > 0


def test_zero_policy_gradient_where_ratio_is_clipped():
    # ratio above 1+eps with A > 0, and below 1-eps with A < 0: the clipped term is active
    old = torch.zeros(1, 4, dtype=torch.float64)
    new = torch.tensor([[0.5, -0.5, 0.05, 0.5]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    loss, stats = clipped_surrogate(new, old, adv, mask, clip_ratio=0.2)
    loss.backward()
    g = new.grad[0]
    assert g[0] == 0 and g[1] == 0  # clipped: no gradient
    assert g[2] != 0 and g[3] != 0  # inside the range, or the pessimistic unclipped side
    assert math.isclose(float(stats["clipfrac"]), 0.5)


def test_surrogate_masked_positions_get_no_gradient():
    old = torch.zeros(2, 3)
    new = (torch.randn(2, 3) * 0.01).requires_grad_()  # ratios inside the clip range
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    clipped_surrogate(new, old, torch.ones(2, 3), mask, 0.2)[0].backward()
    assert bool((new.grad[mask == 0] == 0).all()) and bool((new.grad[mask == 1] != 0).all())


def test_clipped_value_loss_matches_naive_and_clips():
    torch.manual_seed(11)
    mask = _mask()
    old = torch.randn(5, 7, dtype=torch.float64)
    v = old + torch.randn(5, 7, dtype=torch.float64)
    ret = torch.randn(5, 7, dtype=torch.float64)
    loss, _ = clipped_value_loss(v, old, ret, mask, 0.2)
    assert math.isclose(float(loss), clipped_value_loss_naive(v, old, ret, mask, 0.2), rel_tol=1e-10)
    # V moved away from R: the unclipped error is the larger one and keeps its gradient
    vv = torch.tensor([[3.0]], dtype=torch.float64, requires_grad=True)
    lv, st = clipped_value_loss(vv, torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64),
                                torch.ones(1, 1), 0.2)
    lv.backward()
    assert float(vv.grad) != 0 and float(st["vf_clipfrac"]) == 0.0
    # V moved toward R beyond the clip: the clipped error is larger and constant in V -> zero gradient
    vv2 = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
    lv2, st2 = clipped_value_loss(vv2, torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64),
                                  torch.ones(1, 1), 0.2)
    lv2.backward()
    assert float(vv2.grad) == 0 and float(st2["vf_clipfrac"]) == 1.0


def test_entropy_matches_naive_and_bounds():
    torch.manual_seed(12)
    logits = torch.randn(3, 4, 50) * 3
    h = entropy_from_logits(logits)
    assert torch.allclose(h, entropy_from_logits_naive(logits), atol=1e-5)
    assert bool((h >= 0).all()) and bool((h <= math.log(50) + 1e-5).all())
    assert torch.allclose(entropy_from_logits(torch.zeros(1, 1, 50)), torch.tensor([[math.log(50)]]))
    loss, st = entropy_bonus(h, torch.ones(3, 4), coef=0.1)
    assert torch.allclose(loss, -0.1 * h.mean()) and torch.allclose(st["entropy"], h.mean())


def test_token_logprobs_matches_naive():
    torch.manual_seed(13)
    logits = torch.randn(2, 5, 30) * 4
    ids = torch.randint(0, 30, (2, 5))
    assert torch.allclose(token_logprobs(logits, ids), token_logprobs_naive(logits, ids), atol=1e-5)
