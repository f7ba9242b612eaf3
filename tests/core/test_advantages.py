"""The advantage estimators and policy losses on registries equal their element-by-element twins
(tests/core/naive.py) to 1e-10 in float64, on random masked batches with ragged groups."""

import pytest
import torch
from core.naive import (  # tests/core/naive.py (tests/ is on sys.path through its conftest.py)
    grpo_naive,
    masked_gae_naive,
    policy_loss_naive,
    reinforce_pp_naive,
    rloo_naive,
    shape_rewards_naive,
)

from raydprm.config import ADVANTAGES as CONFIG_ADVANTAGES
from raydprm.config import GROUP_ADVANTAGES
from raydprm.config import POLICY_LOSSES as CONFIG_LOSSES
from raydprm.core.advantages import ADVANTAGES, CRITIC_FREE, GROUP_ESTIMATORS, group_moments
from raydprm.core.ppo_loss import POLICY_LOSSES, clipped_surrogate

TOL = 1e-10


def _batch(seed, B=11, T=7):
    """Scores, KL, a right-padded mask with ragged lengths, values, and ragged groups (sizes 2..4)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    sizes, group = [4, 2, 3, 2], []
    for k, n in enumerate(sizes):
        group += [10 * k + 3] * n  # any ids, not 0..G-1
    perm = torch.randperm(B, generator=g)
    group = torch.tensor(group)[perm]  # members of a group are not adjacent
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    kl = torch.randn(B, T, generator=g, dtype=torch.float64).abs() * mask
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return scores, kl, mask, group, values


def _close(a, b):
    assert a.shape == b.shape and float((a - b).abs().max()) < TOL


def test_registries_and_config_choices_agree():
    assert tuple(ADVANTAGES) == CONFIG_ADVANTAGES and set(GROUP_ESTIMATORS) == set(GROUP_ADVANTAGES)
    assert tuple(POLICY_LOSSES) == CONFIG_LOSSES and CRITIC_FREE == set(ADVANTAGES) - {"gae"}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_estimators_equal_their_naive_twins(seed, beta):
    scores, kl, mask, group, values = _batch(seed)
    kw = dict(values=values, gamma=0.97, lam=0.9, kl_coef=beta)
    adv, ret = ADVANTAGES["gae"](scores, kl, mask, group, **kw)
    twin_a, twin_r = masked_gae_naive(shape_rewards_naive(scores, kl, mask, beta), values, mask, 0.97, 0.9)
    _close(adv, twin_a)
    _close(ret, twin_r)
    for name, twin in [("grpo", grpo_naive(scores, kl, mask, group, beta)),
                       ("dr_grpo", grpo_naive(scores, kl, mask, group, beta, std=False)),
                       ("rloo", rloo_naive(scores, kl, mask, group, beta)),
                       ("reinforce_pp", reinforce_pp_naive(scores, kl, mask, group, beta, gamma=0.97)),
                       ("reinforce_pp_baseline", reinforce_pp_naive(scores, kl, mask, group, beta, gamma=0.97,
                                                                    baseline=True))]:
        adv, ret = ADVANTAGES[name](scores, kl, mask, group, **kw)
        _close(adv, twin[0])
        _close(ret, twin[1])
        assert float((adv * (1 - mask)).abs().max()) == 0.0  # nothing at padding


def test_group_baselines_sum_to_zero_per_group_and_ignore_a_constant_shift():
    """GRPO / Dr. GRPO / RLOO advantages of a group sum to 0, and adding c to every score of a
    group changes nothing (the baseline absorbs it)."""
    scores, kl, mask, group, _ = _batch(7)
    shift = torch.zeros_like(scores)
    for g in group.unique():
        shift[group == g] = float(g)
    for name in ("grpo", "dr_grpo", "rloo"):
        adv, _ = ADVANTAGES[name](scores, kl, mask, group, kl_coef=0.05)
        per_seq = adv[:, 0]
        for g in group.unique():
            assert abs(float(per_seq[group == g].sum())) < 1e-12
        moved, _ = ADVANTAGES[name](scores + shift, kl, mask, group, kl_coef=0.05)
        _close(moved, adv)


def test_rloo_is_grpo_without_std_scaled_by_n_over_n_minus_1():
    scores, kl, mask, group, _ = _batch(3)
    _, _, n = group_moments(scores, group)
    _close(ADVANTAGES["rloo"](scores, kl, mask, group)[0],
           ADVANTAGES["dr_grpo"](scores, kl, mask, group)[0] * (n / (n - 1))[:, None])


def test_rloo_refuses_a_group_of_one():
    scores, kl, mask, _, _ = _batch(1)
    with pytest.raises(ValueError, match="at least 2"):
        ADVANTAGES["rloo"](scores, kl, mask, torch.arange(len(scores)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["clip", "dual_clip", "clip_higher"])
def test_policy_losses_equal_their_naive_twins(seed, name):
    g = torch.Generator().manual_seed(seed)
    scores, _, mask, _, _ = _batch(seed)
    lp = torch.randn(mask.shape, generator=g, dtype=torch.float64) * 0.5
    old = lp + torch.randn(mask.shape, generator=g, dtype=torch.float64) * 0.6  # ratios well outside the clips
    adv = torch.randn(mask.shape, generator=g, dtype=torch.float64) * 2
    loss, stats = POLICY_LOSSES[name](lp, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=1.5)
    assert abs(float(loss) - policy_loss_naive(name, lp, old, adv, mask, 0.2, 0.28, 1.5)) < TOL
    if name == "dual_clip":
        assert float(stats["dual_clipfrac"]) > 0  # the bound is active somewhere in this batch
    if name == "clip":  # the registry's clip is PPO's clipped surrogate
        assert float(loss) == float(clipped_surrogate(lp, old, adv, mask, 0.2)[0])


def test_clip_higher_lets_a_positive_advantage_token_grow_further():
    """DAPO's point: with A > 0 the gradient stays on up to ratio 1 + eps_high, not 1 + eps_low."""
    lp = torch.tensor([[0.25]], dtype=torch.float64, requires_grad=True)  # ratio e^0.25 = 1.28.. > 1.2
    old, adv, mask = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1)
    for name, moves in (("clip", False), ("clip_higher", True)):
        lp.grad = None
        POLICY_LOSSES[name](lp, old, adv, mask, clip_low=0.2, clip_high=0.3)[0].backward()
        assert (float(lp.grad.abs().sum()) > 0) == moves
