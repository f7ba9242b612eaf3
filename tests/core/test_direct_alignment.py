"""Direct-alignment losses (DPO, crowd DPO, IPO, SLiC, RSO-SLiC, RRHF) and the PBDE rules:
hand-computed values, gradient signs, soft labels, theoretical optima, crowd preference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydprm.core import pbde
from raydprm.core.pairwise_loss import DIRECT_ALIGNMENT_LOSSES, PAIRWISE_LOSSES, bt_loss, pairwise_loss

D = torch.float64
# one pair: policy log-probs of chosen / rejected and the reference's
LC, LR, RC, RR = -3.0, -5.0, -4.0, -4.5  # h_pi = 2, h = (-3 + 4) - (-5 + 4.5) = 1.5


def t(*x):
    return torch.tensor(x, dtype=D)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_registry_keeps_bt_and_adds_every_direct_alignment_loss():
    assert PAIRWISE_LOSSES["bt"] is bt_loss
    for name in DIRECT_ALIGNMENT_LOSSES:
        assert pairwise_loss(name) is PAIRWISE_LOSSES[name]
    with pytest.raises(ValueError, match="dpo"):
        pairwise_loss("nope")


def test_dpo_hand_value():
    loss, st = pairwise_loss("dpo")(t(LC), t(LR), ref_chosen=t(RC), ref_rejected=t(RR), beta=0.5)
    assert float(loss[0]) == pytest.approx(-math.log(sig(0.5 * 1.5)), abs=1e-12)
    assert float(st["margin"]) == pytest.approx(1.5) and float(st["accuracy"]) == 1.0
    assert float(st["reward_chosen"]) == pytest.approx(0.5 * 1.0)


def test_ipo_hand_value_and_soft_label():
    tau = 0.25  # 1 / (2 tau) = 2
    loss, _ = pairwise_loss("ipo")(t(LC), t(LR), ref_chosen=t(RC), ref_rejected=t(RR), tau=tau)
    assert float(loss[0]) == pytest.approx((1.5 - 2.0) ** 2)
    soft, _ = pairwise_loss("ipo")(t(LC), t(LR), t(0.3), ref_chosen=t(RC), ref_rejected=t(RR), tau=tau)
    assert float(soft[0]) == pytest.approx(0.3 * (1.5 - 2) ** 2 + 0.7 * (-1.5 - 2) ** 2)


def test_slic_hand_value_with_sft_term():
    # h_pi = 2 < delta = 3: hinge 1; SFT term -lambda log pi(chosen) = 0.5 * 3
    loss, st = pairwise_loss("slic")(t(LC), t(LR), delta=3.0, sft_weight=0.5)
    assert float(loss[0]) == pytest.approx(1.0 + 1.5)
    loss, _ = pairwise_loss("slic")(t(LC), t(LR), delta=1.0, sft_weight=0.0)
    assert float(loss[0]) == 0.0  # margin 2 beyond delta 1
    loss, _ = pairwise_loss("slic")(t(LC), t(LR), delta=1.0, sft_weight=2.0, sft_logp=t(-7.0))
    assert float(loss[0]) == pytest.approx(14.0)  # an explicit SFT sample's NLL


def test_slic_rso_hand_value():
    loss, _ = pairwise_loss("slic_rso")(t(LC), t(LR), ref_chosen=t(RC), ref_rejected=t(RR), delta=2.0)
    assert float(loss[0]) == pytest.approx(0.5)  # max(0, 2 - 1.5)


def test_rrhf_hand_value():
    # n(c) = -3 / 3 = -1, n(r) = -5 / 2 = -2.5: ranking term 0; reversed lengths: n(c) = -3/1, n(r) = -5/5
    loss, _ = pairwise_loss("rrhf")(t(LC), t(LR), len_chosen=t(3.0), len_rejected=t(2.0), sft_weight=1.0)
    assert float(loss[0]) == pytest.approx(0.0 + 1.0)
    loss, st = pairwise_loss("rrhf")(t(LC), t(LR), len_chosen=t(1.0), len_rejected=t(5.0), sft_weight=0.0)
    assert float(loss[0]) == pytest.approx(-1.0 - (-3.0))  # max(0, n(r) - n(c)) = 2
    assert float(st["accuracy"]) == 0.0


def test_crowd_dpo_equals_bce_with_soft_target():
    g = torch.Generator().manual_seed(0)
    lc, lr, rc, rr = (torch.randn(16, generator=g, dtype=D) * 3 for _ in range(4))
    p = torch.rand(16, generator=g, dtype=D)
    beta = 0.7
    loss, st = pairwise_loss("crowd_dpo")(lc, lr, p, ref_chosen=rc, ref_rejected=rr, beta=beta)
    logits = beta * ((lc - rc) - (lr - rr))
    want = F.binary_cross_entropy_with_logits(logits, p, reduction="none")
    assert torch.allclose(loss, want, atol=1e-12)
    assert float(st["target"]) == pytest.approx(float(p.mean()))
    with pytest.raises(ValueError, match="target"):
        pairwise_loss("crowd_dpo")(lc, lr, ref_chosen=rc, ref_rejected=rr)
    # with a hard target of 1 crowd DPO is DPO
    hard, _ = pairwise_loss("dpo")(lc, lr, ref_chosen=rc, ref_rejected=rr, beta=beta)
    ones, _ = pairwise_loss("crowd_dpo")(lc, lr, torch.ones(16, dtype=D), ref_chosen=rc, ref_rejected=rr, beta=beta)
    assert torch.allclose(hard, ones, atol=1e-12)


@pytest.mark.parametrize("name,kw", [("dpo", {"beta": 0.5}), ("ipo", {"tau": 1.0})])
def test_gradient_raises_chosen_and_lowers_rejected(name, kw):
    # at h = 0 (policy == reference), both losses push log pi(c) up and log pi(r) down
    lc, lr = t(-4.0, -2.0).requires_grad_(), t(-4.0, -2.0).requires_grad_()
    loss, _ = pairwise_loss(name)(lc, lr, ref_chosen=t(-4.0, -2.0), ref_rejected=t(-4.0, -2.0), **kw)
    loss.sum().backward()
    assert torch.all(lc.grad < 0) and torch.all(lr.grad > 0)  # descent raises c, lowers r
    assert torch.allclose(lc.grad, -lr.grad)


def test_ipo_gradient_changes_sign_past_its_target_margin():
    # IPO regresses h onto 1 / (2 tau): beyond it the gradient pulls the margin back (DPO never does)
    tau = 0.5  # target margin 1
    lc = t(0.0).requires_grad_()
    loss, _ = pairwise_loss("ipo")(lc, t(-3.0), ref_chosen=t(0.0), ref_rejected=t(0.0), tau=tau)  # h = 3
    loss.sum().backward()
    assert float(lc.grad) > 0
    lc2 = t(0.0).requires_grad_()
    loss, _ = pairwise_loss("dpo")(lc2, t(-3.0), ref_chosen=t(0.0), ref_rejected=t(0.0), beta=1.0)
    loss.sum().backward()
    assert float(lc2.grad) < 0


def test_losses_refuse_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta"):
        pairwise_loss("dpo")(t(0.0), t(0.0), ref_chosen=t(0.0), ref_rejected=t(0.0), beta=0.0)
    with pytest.raises(ValueError, match="reference"):
        pairwise_loss("ipo")(t(0.0), t(0.0), ref_chosen=None, ref_rejected=None)
    with pytest.raises(ValueError, match="lengths"):
        pairwise_loss("rrhf")(t(0.0), t(0.0), len_chosen=t(0.0), len_rejected=t(1.0))


# ------------------------------------------------------------------ PBDE rules


def test_pbde_instances_are_omega_differences():
    la, lb, ra, rb = t(-1.0), t(-3.0), t(-2.0), t(-2.5)
    assert float(pbde.luce(la, lb)) == pytest.approx(math.exp(-1) / (math.exp(-1) + math.exp(-3)))
    assert float(pbde.length_normalised_luce(la, lb, t(1.0), t(6.0))) == pytest.approx(sig(-1 + 0.5))
    assert float(pbde.dpo_preference(la, lb, ra, rb, beta=2.0)) == pytest.approx(sig(2 * (1 - (-0.5))))
    alpha = 0.25
    og = pbde.geometric_omega(la, ra, alpha) - pbde.geometric_omega(lb, rb, alpha)
    assert float(og) == pytest.approx((1 / alpha) * (-1 + 3) + (1 - 1 / alpha) * (-2 + 2.5))
    assert float(pbde.geometric_preference(la, lb, ra, rb, alpha)) == pytest.approx(sig(float(og)))
    # geometric with alpha = 1 is Luce
    assert float(pbde.geometric_preference(la, lb, ra, rb, 1.0)) == pytest.approx(float(pbde.luce(la, lb)))
    assert pbde.PBDE_RULES["geometric"] is pbde.geometric_preference


def test_dpo_optimum_satisfies_the_luce_annotator():
    # Eq. 16: the model with pi ∝ pi_pre p*^(1/beta) under the DPO PBDE reproduces Luce preferences
    rng = np.random.default_rng(0)
    lpre, lstar = rng.normal(size=8), rng.normal(size=8)
    beta = 4.0
    lpi = pbde.dpo_optimum(lpre, lstar, beta) + 3.7  # any constant
    p_model = pbde.dpo_preference(lpi[:, None], lpi[None, :], lpre[:, None], lpre[None, :], beta=beta)
    p_star = pbde.luce(lstar[:, None], lstar[None, :])
    assert np.allclose(p_model, p_star, atol=1e-12)
    alpha = 0.3
    lg = pbde.geometric_optimum(lpre, lstar, alpha) - 1.1
    pg = pbde.geometric_preference(lg[:, None], lg[None, :], lpre[:, None], lpre[None, :], alpha)
    assert np.allclose(pg, p_star, atol=1e-12)


def test_crowd_preference_rule():
    r = [1.0, 0.5, -1.0, -1.0, -1.5, -3.0]
    best, worst = np.eye(6)[0], np.eye(6)[5]
    assert pbde.crowd_preference(best, worst, r) == 1.0
    assert pbde.crowd_preference(worst, best, r) == 0.0
    # types 3 and 4 share r = -1: a tie
    assert pbde.crowd_preference(np.eye(6)[2], np.eye(6)[3], r) == 0.5
    mu_a = np.array([0.5, 0.1, 0.4, 0, 0, 0])
    mu_b = np.array([0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    # by hand: P(>) and P(=) over the 6 x 6 label draws
    gt = sum(mu_a[i] * mu_b[j] for i in range(6) for j in range(6) if r[i] > r[j])
    eq = sum(mu_a[i] * mu_b[j] for i in range(6) for j in range(6) if r[i] == r[j])
    p = pbde.crowd_preference(mu_a, mu_b, r)
    assert p == pytest.approx(gt + 0.5 * eq)
    assert p + pbde.crowd_preference(mu_b, mu_a, r) == pytest.approx(1.0)
    assert pbde.crowd_preference(mu_a, mu_a, r) == pytest.approx(0.5)
    lt = 1 - gt - eq
    assert pbde.crowd_preference(mu_a, mu_b, r, ties="drop") == pytest.approx(gt / (gt + lt))
    batch = pbde.crowd_preference(np.stack([mu_a, mu_b]), np.stack([mu_b, mu_a]), r)
    assert batch.shape == (2,) and batch[0] == pytest.approx(p)
    with pytest.raises(ValueError, match="ties"):
        pbde.crowd_preference(mu_a, mu_b, r, ties="x")
