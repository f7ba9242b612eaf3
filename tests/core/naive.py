"""Element-by-element reference twins ("naive oracles") of the PPO math in raydprm.core.

Each ``*_naive`` function computes what its fast namesake in ``raydprm.core.{gae,kl,ppo_loss,advantages}``
(``w1_line_naive``: ``raydprm.core.ot_exact.ot_line``) computes, written out literally (Python floats, one token at a time); the equivalence
tests compare the two. They live with the tests, not in the shipped package.
"""

from __future__ import annotations

import math

import torch

from raydprm.core.cost import ordinal_cost


def wasserstein_cost(num_labels: int) -> torch.Tensor:
    """The ground cost the "wasserstein" loss uses in closed form: |i - j| on label positions."""
    return ordinal_cost(num_labels)


def w1_line_naive(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference twin of the blocked W1 closed form (`ot_exact.ot_line`, p = 1), one row at a
    time: sort by x, W1 = sum_k |A_k - B_k| gap_k, dual f_(k) = sum_{m >= k} sign(A_m - B_m) gap_m,
    centred."""
    order = torch.argsort(x)
    gaps = x[order][1:] - x[order][:-1]
    vals, fs = [], []
    for ar, br in zip(a, b):
        c = torch.cumsum(ar[order] - br[order], 0)[:-1]
        vals.append((c.abs() * gaps).sum())
        h = torch.sign(c) * gaps
        f_sorted = torch.cat([torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]), h.new_zeros(1)])
        f = torch.empty_like(f_sorted)
        f[order] = f_sorted
        fs.append(f - f.mean())
    return torch.stack(vals), torch.stack(fs)


def masked_gae_naive(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                     lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference twin of :func:`masked_gae`: per sequence, per token, the sum
    ``A_t = sum_k (gamma*lam)^k delta_{t+k}`` written out literally in Python floats."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        r = [float(x) for x in rewards[b, :n]]
        v = [float(x) for x in values[b, :n]] + [0.0]
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    vals = values.double() * mask.double()
    return adv.to(rewards.dtype), ((adv + vals) * mask.double()).to(rewards.dtype)


def whiten_naive(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Reference twin of :func:`whiten`: collect the valid entries into a list, use Python math."""
    vals = [float(v) for v, k in zip(x.flatten(), mask.flatten()) if k]
    n = len(vals)
    mean = sum(vals) / max(n, 1)
    var = sum((v - mean) ** 2 for v in vals) / max(n - 1, 1)
    out = torch.zeros(x.shape, dtype=torch.float64)
    flat = out.view(-1)
    for i, (v, k) in enumerate(zip(x.flatten(), mask.flatten())):
        if k:
            w = (float(v) - mean) / (var + eps) ** 0.5
            flat[i] = w if shift_mean else w + mean
    return out.to(x.dtype)


def kl_estimate_naive(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1",
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference twin of :func:`kl_estimate`: from the probabilities themselves, in Python floats."""
    out = torch.zeros(logprobs.shape, dtype=torch.float64)
    flat = out.view(-1)
    m = mask.flatten() if mask is not None else torch.ones(logprobs.numel())
    for i, (lp, lq, k) in enumerate(zip(logprobs.flatten().tolist(), ref_logprobs.flatten().tolist(), m.tolist())):
        if not k:
            continue
        p, q = math.exp(lp), math.exp(lq)
        r = q / p
        flat[i] = {"k1": math.log(p / q), "k2": 0.5 * math.log(r) ** 2, "k3": r - 1 - math.log(r)}[estimator]
    return out.to(logprobs.dtype)


def shape_rewards_naive(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Reference twin of :func:`shape_rewards` (rewards only), token by token."""
    B, T = kl.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            out[b, t] = -beta * float(kl[b, t]) + (float(scores[b]) if t == n - 1 else 0.0)
    return out.to(kl.dtype)


def adaptive_kl_controller_naive(beta: float, current_kl: float, n_steps: int, target_kl: float,
                                 horizon: int) -> float:
    """Reference twin of :func:`adaptive_kl_controller`: the clip written as branches."""
    e = current_kl / target_kl - 1.0
    if e > 0.2:
        e = 0.2
    elif e < -0.2:
        e = -0.2
    k_beta = n_steps / horizon
    return beta + beta * k_beta * e


def aggregate_naive(x: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean") -> float:
    """Reference twin of :func:`aggregate` (default denominator), with Python lists."""
    rows = [[float(v) for v, k in zip(xr, mr) if k] for xr, mr in zip(x, mask)]
    if mode == "token_mean":
        flat = [v for r in rows for v in r]
        return sum(flat) / max(len(flat), 1)
    return sum(sum(r) / max(len(r), 1) for r in rows) / len(rows)


def clipped_surrogate_naive(logprobs, old_logprobs, advantages, mask, clip_ratio: float) -> float:
    """Reference twin of :func:`clipped_surrogate` (token_mean), one token at a time."""
    tot, n = 0.0, 0
    for lp, lo, a, k in zip(logprobs.flatten().tolist(), old_logprobs.flatten().tolist(),
                            advantages.flatten().tolist(), mask.flatten().tolist()):
        if not k:
            continue
        r = math.exp(lp - lo)
        rc = min(max(r, 1 - clip_ratio), 1 + clip_ratio)
        tot += max(-a * r, -a * rc)
        n += 1
    return tot / max(n, 1)


def clipped_value_loss_naive(values, old_values, returns, mask, value_clip: float) -> float:
    """Reference twin of :func:`clipped_value_loss` (token_mean), one token at a time."""
    tot, n = 0.0, 0
    for v, vo, r, k in zip(values.flatten().tolist(), old_values.flatten().tolist(),
                           returns.flatten().tolist(), mask.flatten().tolist()):
        if not k:
            continue
        vc = vo + min(max(v - vo, -value_clip), value_clip)
        tot += 0.5 * max((v - r) ** 2, (vc - r) ** 2)
        n += 1
    return tot / max(n, 1)


def entropy_from_logits_naive(logits: torch.Tensor) -> torch.Tensor:
    """Reference twin of :func:`entropy_from_logits`: softmax then -sum p log p, with p > 0 only."""
    p = torch.softmax(logits.double(), dim=-1)
    h = torch.where(p > 0, -p * torch.log(p), torch.zeros_like(p)).sum(-1)
    return h.to(torch.float32)


def token_logprobs_naive(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Reference twin of :func:`token_logprobs`: the full log-softmax, then index."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    B, T = ids.shape
    out = torch.empty(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            out[b, t] = logp[b, t, int(ids[b, t])]
    return out.float()


# ---------------------------------------------------------------- advantage estimators (raydprm.core.advantages)
def _rows(scores, kl, mask, kl_coef):
    """Per response: its valid token rewards r_t = -beta kl_t (+ score at the last), in Python floats."""
    out = []
    for b in range(len(scores)):
        n = int(mask[b].sum())
        out.append([-kl_coef * float(kl[b, t]) + (float(scores[b]) if t == n - 1 else 0.0) for t in range(n)])
    return out


def _members(group):
    ids = [int(g) for g in group]
    return [[j for j, h in enumerate(ids) if h == g] for g in ids]  # row -> the rows of its group


def _spread(per_row, mask):
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for b, rows in enumerate(per_row):
        for t, v in enumerate(rows):
            out[b, t] = v
    return out


def grpo_naive(scores, kl, mask, group, kl_coef=0.0, eps=1e-6, std=True):
    """Twin of ``grpo`` (``std=False``: ``dr_grpo``): R_i = sum_t r_t; (R_i - mean_g) / (std_g + eps)."""
    R = [sum(r) for r in _rows(scores, kl, mask, kl_coef)]
    adv, ret = [], []
    for i, mem in enumerate(_members(group)):
        mean = sum(R[j] for j in mem) / len(mem)
        sd = math.sqrt(sum((R[j] - mean) ** 2 for j in mem) / max(len(mem) - 1, 1))
        a = (R[i] - mean) / (sd + eps) if std else R[i] - mean
        n = int(mask[i].sum())
        adv.append([a] * n)
        ret.append([R[i]] * n)
    return _spread(adv, mask), _spread(ret, mask)


def rloo_naive(scores, kl, mask, group, kl_coef=0.0):
    """Twin of ``rloo``: R_i minus the mean of the other responses' returns, as a literal loop."""
    R = [sum(r) for r in _rows(scores, kl, mask, kl_coef)]
    adv, ret = [], []
    for i, mem in enumerate(_members(group)):
        others = [R[j] for j in mem if j != i]
        n = int(mask[i].sum())
        adv.append([R[i] - sum(others) / len(others)] * n)
        ret.append([R[i]] * n)
    return _spread(adv, mask), _spread(ret, mask)


def reinforce_pp_naive(scores, kl, mask, group, kl_coef=0.0, gamma=1.0, eps=1e-6, baseline=False):
    """Twin of ``reinforce_pp`` (``baseline=True``: ``reinforce_pp_baseline``): G_t = sum_k gamma^(k-t) r_k
    token by token, then (G - mean) / sqrt(var + eps) over every valid token of the batch."""
    scores = [float(s) for s in scores]
    if baseline:
        scores = [s - sum(scores[j] for j in mem) / len(mem) for s, mem in zip(scores, _members(group))]
    G = [[sum(gamma ** (k - t) * r[k] for k in range(t, len(r))) for t in range(len(r))]
         for r in _rows(scores, kl, mask, kl_coef)]
    flat = [g for row in G for g in row]
    mean = sum(flat) / len(flat)
    var = sum((g - mean) ** 2 for g in flat) / max(len(flat) - 1, 1)
    adv = [[(g - mean) / math.sqrt(var + eps) for g in row] for row in G]
    return _spread(adv, mask), _spread(G, mask)


# ---------------------------------------------------------------- policy losses (raydprm.core.ppo_loss.POLICY_LOSSES)
def policy_loss_naive(name, logprobs, old_logprobs, advantages, mask, clip_low, clip_high, clip_c) -> float:
    """Twin of ``POLICY_LOSSES[name]`` (token_mean), one token at a time, the clips as branches."""
    hi = clip_high if name == "clip_higher" else clip_low
    tot, n = 0.0, 0
    for lp, lo, a, k in zip(logprobs.flatten().tolist(), old_logprobs.flatten().tolist(),
                            advantages.flatten().tolist(), mask.flatten().tolist()):
        if not k:
            continue
        r = math.exp(lp - lo)
        rc = 1 - clip_low if r < 1 - clip_low else 1 + hi if r > 1 + hi else r
        loss = max(-a * r, -a * rc)
        if name == "dual_clip" and a < 0 and loss > -clip_c * a:
            loss = -clip_c * a
        tot += loss
        n += 1
    return tot / max(n, 1)


# ---- group objectives (raydprm.core.group_objectives): naive twins, Python floats -------------------------

def _norm_weights_naive(weights) -> list[float]:
    w = [float(v) for v in weights]
    tot = sum(w)
    return [v / tot for v in w]


def population_naive(J, weights) -> float:
    """Reference twin of :func:`population`: sum_g w_g J_g."""
    return sum(wg * float(jg) for wg, jg in zip(_norm_weights_naive(weights), J))


def worst_group_naive(J, weights, tau: float = 0.1) -> float:
    """Reference twin of :func:`worst_group`: -tau log sum_g w_g exp(-J_g / tau), shifted by the
    minimum for stability; tau = 0 is the minimum over groups with positive weight."""
    w = _norm_weights_naive(weights)
    live = [float(j) for j, wg in zip(J, w) if wg > 0]
    lo = min(live)
    if tau == 0:
        return lo
    s = sum(wg * math.exp(-(float(j) - lo) / tau) for j, wg in zip(J, w) if wg > 0)
    return lo - tau * math.log(s)


def cvar_groups_naive(J, weights, alpha: float = 0.25) -> float:
    """Reference twin of :func:`cvar_groups`: walk the groups from the worst, filling a budget of
    alpha population mass, and average what was taken."""
    w = _norm_weights_naive(weights)
    pairs = sorted(zip([float(j) for j in J], w), key=lambda p: p[0])
    left, tot = alpha, 0.0
    for j, wg in pairs:
        take = min(wg, left)
        tot += take * j
        left -= take
        if left <= 0:
            break
    return tot / alpha


def nash_naive(J, weights, r_min: float = -3.0) -> float:
    """Reference twin of :func:`nash`: log of the weighted product prod_g (J_g - r_min)^{w_g}."""
    w = _norm_weights_naive(weights)
    prod = 1.0
    for j, wg in zip(J, w):
        prod *= (float(j) - r_min) ** wg
    return math.log(prod)


def mean_minus_std_naive(J, weights, kappa: float = 1.0) -> float:
    """Reference twin of :func:`mean_minus_std`: two passes over the groups."""
    w = _norm_weights_naive(weights)
    m = sum(wg * float(j) for j, wg in zip(J, w))
    var = sum(wg * (float(j) - m) ** 2 for j, wg in zip(J, w))
    return m - kappa * math.sqrt(var)


def scalarise_naive(group_rewards, weights, name: str, **params) -> list[float]:
    """Reference twin of :func:`scalarise`: J by a loop, the coefficients by central finite
    differences of the naive objective, then R_b = sum_g c_g r_g(x_b) sample by sample."""
    rows = [[float(v) for v in r] for r in group_rewards]
    B, G = len(rows), len(rows[0])
    J = [sum(r[g] for r in rows) / B for g in range(G)]
    f = {"population": population_naive, "worst_group": worst_group_naive, "cvar_groups": cvar_groups_naive,
         "nash": nash_naive, "mean_minus_std": mean_minus_std_naive}[name]
    h = 1e-6
    coef = []
    for g in range(G):
        up = list(J)
        dn = list(J)
        up[g] += h
        dn[g] -= h
        coef.append((f(up, weights, **params) - f(dn, weights, **params)) / (2 * h))
    return [sum(c * v for c, v in zip(coef, r)) for r in rows]
