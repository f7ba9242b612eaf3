"""Ground-cost matrices M (L, L) over the label space, picked by name.

Named costs (a config or a Tune sweep chooses one of COST_NAMES):

    reward_gap  M_ij = |r_i - r_j|^p      (DPRM paper: the OT cost follows the reward
                                           table; a pseudo-metric when rewards tie, e.g.
                                           HH types 3 and 4 share r = -1)
    ordinal     M_ij = |i - j|^p          (Likert distance between label positions)
    grid_l1     M_ij = sum_g |x_ig - x_jg| (L1 on the (helpfulness, harm) grid; separates
                                           labels whose rewards tie)
    custom      a user matrix, validated: square L x L, finite, >= 0, zero diagonal

With p >= 1, `reward_gap` and `ordinal` are 1-D ground metrics |x_i - x_j|^p, for which
OT has a closed form (monotone coupling); `line_embedding` recognises that structure
from the matrix alone so that any caller passing a plain tensor gets the fast path.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from raydprm.core.label_scale import LabelScale

__all__ = ["COST_NAMES", "cost_matrix", "validate_cost", "line_embedding",
           "reward_gap_cost", "ordinal_cost", "grid_l1_cost"]


def validate_cost(M, num_labels: int | None = None) -> torch.Tensor:
    """Check a user cost matrix and return it as a tensor; raise naming the rule that failed."""
    if not isinstance(M, torch.Tensor):
        M = torch.as_tensor(np.asarray(M, dtype=np.float64))
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"cost matrix must be square (L, L), got shape {tuple(M.shape)}")
    if M.shape[0] < 2:
        raise ValueError(f"cost matrix needs L >= 2, got {M.shape[0]}")
    if num_labels is not None and M.shape[0] != num_labels:
        raise ValueError(f"cost matrix is {M.shape[0]}x{M.shape[0]}, expected {num_labels}x{num_labels}")
    if not M.is_floating_point():
        M = M.to(torch.float64)
    if not bool(torch.isfinite(M).all()):
        raise ValueError("cost matrix must be finite")
    if bool((M < 0).any()):
        raise ValueError(f"cost matrix must be non-negative (min {float(M.min()):.3g})")
    if bool((torch.diagonal(M) != 0).any()):
        raise ValueError("cost matrix must have a zero diagonal (moving mass nowhere costs nothing)")
    return M


def reward_gap_cost(scale: LabelScale, p: float = 1.0) -> torch.Tensor:
    r = scale.reward_tensor()  # (L,)
    return (r[:, None] - r[None, :]).abs() ** p  # (L, L)


def ordinal_cost(scale: LabelScale | int, p: float = 1.0) -> torch.Tensor:
    L = scale if isinstance(scale, int) else scale.num_labels
    i = torch.arange(L, dtype=torch.float64)
    return (i[:, None] - i[None, :]).abs() ** p  # (L, L)


def grid_l1_cost(scale: LabelScale) -> torch.Tensor:
    x = scale.grid_tensor()  # (L, G)
    return (x[:, None, :] - x[None, :, :]).abs().sum(-1)  # (L, L)


_COSTS = {
    "reward_gap": lambda scale, p=1.0: reward_gap_cost(scale, p),
    "ordinal": lambda scale, p=1.0: ordinal_cost(scale, p),
    "grid_l1": lambda scale: grid_l1_cost(scale),
    "custom": lambda scale, matrix: validate_cost(matrix, scale.num_labels).to(torch.float64),
}
COST_NAMES: tuple[str, ...] = tuple(_COSTS)


def cost_matrix(name: str, scale: LabelScale | None = None, **params) -> torch.Tensor:
    """Named cost matrix (L, L) float64 for `scale` (default LabelScale.hh()).

    params: `p` for reward_gap / ordinal; `matrix` for custom.
    """
    if name not in _COSTS:
        raise ValueError(f"unknown cost {name!r}; choose one of {list(COST_NAMES)}")
    scale = LabelScale.hh() if scale is None else scale
    if "p" in params and not params["p"] > 0:
        raise ValueError(f"cost exponent p must be > 0, got {params['p']}")
    try:
        M = _COSTS[name](scale, **params)
    except TypeError as e:  # unknown / missing parameter: say which cost takes what
        raise ValueError(f"bad parameters {sorted(params)} for cost {name!r}: {e}") from None
    return validate_cost(M, scale.num_labels)


def line_embedding(M: torch.Tensor) -> tuple[np.ndarray, float] | None:
    """Positions x (L,) and exponent p >= 1 with M_ij = |x_i - x_j|^p, or None.

    Such a cost is a 1-D ground metric (convex in |x_i - x_j|), for which the monotone
    coupling is optimal and OT has a closed form. Checked to a relative 1e-9 (float64)
    or 1e-5 (lower precision). Cached on the matrix bytes.
    """
    Mc = M.detach().to("cpu", torch.float64).contiguous().numpy()
    tol = 1e-9 if M.dtype == torch.float64 else 1e-5
    return _line_embedding_cached(Mc.tobytes(), Mc.shape[0], tol)


@functools.lru_cache(maxsize=256)
def _line_embedding_cached(buf: bytes, L: int, tol: float):
    M = np.frombuffer(buf, dtype=np.float64).reshape(L, L)
    D = M.max()
    if D == 0:
        return np.zeros(L), 1.0
    if not np.allclose(M, M.T, rtol=0, atol=tol * D):
        return None
    a, c = np.unravel_index(np.argmax(M), M.shape)

    def fits(p: float):
        x = M[a] ** (1.0 / p)
        ok = np.allclose(np.abs(x[:, None] - x[None, :]) ** p, M, rtol=0, atol=tol * D)
        return (x.copy(), p) if ok else None

    got = fits(1.0)
    if got is not None:
        return got
    # exponent from one interior point b: (M_ab/D)^(1/p) + (M_bc/D)^(1/p) = 1, increasing in p
    inner = np.minimum(M[a], M[c])
    b = int(np.argmax(inner))
    if inner[b] <= 0:
        return None
    u, v = M[a, b] / D, M[b, c] / D
    if u + v >= 1:  # concave (p < 1) or not a line at all: no closed form
        return None
    lo, hi = 1.0, 64.0
    if u ** (1 / hi) + v ** (1 / hi) < 1:
        return None
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if u ** (1 / mid) + v ** (1 / mid) < 1:
            lo = mid
        else:
            hi = mid
    p = 0.5 * (lo + hi)
    p_round = round(p)
    for cand in (float(p_round), p):  # prefer an integer exponent when it fits
        if cand >= 1 and (got := fits(cand)) is not None:
            return got
    return None
