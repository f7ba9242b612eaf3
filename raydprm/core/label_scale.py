"""Label scale: the L preference labels, their scalar rewards and grid coordinates.

The default is the DPRM paper's six helpfulness x harm labels (arXiv 2402.09764,
Table 1; docs/equations.md). A predicted label distribution mu (B, L) is turned into
a scalar reward for PPO by its expectation (paper),

    E_mu[r] = sum_i mu_i r_i,                                                          (S1)

or by risk-aware readouts the paper does not have (our additions): the lower-tail
conditional value at risk at level alpha (Rockafellar & Uryasev, 2000),

    CVaR_alpha(mu) = (1 / alpha) * integral_0^alpha F_mu^{-1}(u) du,                   (S2)

the mean reward of the worst alpha-fraction of the crowd, and the mean-minus-kappa-std
readout E_mu[r] - kappa * sqrt(Var_mu[r]).                                             (S3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from raydprm.core.hh_labels import HH_DESCRIPTIONS, HH_GRID, HH_LABELS, HH_REWARDS

__all__ = ["LabelScale", "check_distribution", "SCALARISATIONS"]

DIST_ATOL = 1e-5


def check_distribution(mu: torch.Tensor, num_labels: int | None = None, name: str = "mu",
                       atol: float = DIST_ATOL) -> None:
    """Raise ValueError unless mu (B, L) or (L,) is finite, >= 0 and sums to 1 within atol.

    Two passes over mu on the accepting path (it runs on every loss call): min(mu) >= 0
    (NaN propagates through amin) and |row sum - 1| <= atol, which together imply every
    entry is finite. Only a rejected input is scanned again, to name the rule it breaks.
    """
    if not isinstance(mu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mu).__name__}")
    if mu.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (L,) or (B, L), got {tuple(mu.shape)}")
    if num_labels is not None and mu.shape[-1] != num_labels:
        raise ValueError(f"{name} has {mu.shape[-1]} labels, expected {num_labels}")
    if mu.shape[-1] < 2:
        raise ValueError(f"{name}: need L >= 2 labels, got {mu.shape[-1]}")
    if mu.numel() == 0:
        return
    x = mu.detach()
    if not x.is_floating_point():
        x = x.double()
    lo = float(x.amin())
    # row sums as a matrix-vector product: a sum over a short last dim is ~2x slower on CPU
    dev = float((x @ x.new_ones(x.shape[-1])).sub_(1).abs_().max())
    if lo >= 0 and dev <= atol:  # NaN fails both comparisons
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite entries")
    if lo < 0:
        raise ValueError(f"{name} has negative entries (min {lo:.3g}); expected probabilities")
    raise ValueError(f"{name} rows must sum to 1 (max deviation {dev:.3g} > {atol}); "
                     "pass logits with from_logits=True or normalise first")


@dataclass(frozen=True)
class LabelScale:
    """L labels with names, scalar rewards r (L,) and optional grid coordinates (L, G).

    Validated on construction: L >= 2, finite rewards, one name per label, unique
    names, grid rows of equal length. `LabelScale.hh()` is the paper's default.
    """

    names: tuple[str, ...]
    rewards: tuple[float, ...]
    grid: tuple[tuple[float, ...], ...] | None = None
    descriptions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "rewards", tuple(float(r) for r in self.rewards))
        L = len(self.rewards)
        if L < 2:
            raise ValueError(f"LabelScale needs L >= 2 labels, got {L}")
        if len(self.names) != L:
            raise ValueError(f"LabelScale: {len(self.names)} names for {L} rewards")
        if len(set(self.names)) != L:
            raise ValueError(f"LabelScale: label names must be unique, got {self.names}")
        if not all(math.isfinite(r) for r in self.rewards):
            raise ValueError(f"LabelScale: rewards must be finite, got {self.rewards}")
        if self.grid is not None:
            grid = tuple(tuple(float(c) for c in row) for row in self.grid)
            if len(grid) != L or len({len(row) for row in grid}) != 1 or len(grid[0]) == 0:
                raise ValueError("LabelScale: grid must have one coordinate row of equal length per label")
            if not all(math.isfinite(c) for row in grid for c in row):
                raise ValueError("LabelScale: grid coordinates must be finite")
            object.__setattr__(self, "grid", grid)
        if self.descriptions is not None and len(self.descriptions) != L:
            raise ValueError("LabelScale: one description per label")

    # --- constructors -------------------------------------------------------------
    @classmethod
    def hh(cls) -> LabelScale:
        """The paper's 6 helpfulness x harm labels (Table 1); grid = (helpfulness level, harm level)."""
        return cls(names=HH_LABELS, rewards=HH_REWARDS, grid=HH_GRID, descriptions=HH_DESCRIPTIONS)

    @classmethod
    def ordinal(cls, num_labels: int, low: float = 0.0, high: float = 1.0) -> LabelScale:
        """L evenly spaced ordinal labels with rewards from `low` to `high` (a Likert scale)."""
        if num_labels < 2:
            raise ValueError(f"LabelScale needs L >= 2 labels, got {num_labels}")
        step = (high - low) / (num_labels - 1)
        return cls(names=tuple(f"level{i}" for i in range(num_labels)),
                   rewards=tuple(low + i * step for i in range(num_labels)),
                   grid=tuple((float(i),) for i in range(num_labels)))

    @classmethod
    def from_config(cls, labels_cfg) -> LabelScale:
        """The label scale of a ``LabelsConfig`` (anything with ``names``, ``rewards``, ``grid``)."""
        return cls(names=tuple(labels_cfg.names), rewards=tuple(labels_cfg.rewards), grid=labels_cfg.grid)

    # --- persistence (JSON-able; saved next to every reward model) --------------------
    def to_dict(self) -> dict[str, Any]:
        """Names, rewards and grid as plain lists (descriptions are not persisted)."""
        return {"names": list(self.names), "rewards": list(self.rewards),
                "grid": [list(g) for g in self.grid] if self.grid is not None else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelScale:
        """Inverse of :meth:`to_dict`."""
        grid = d.get("grid")
        return cls(names=tuple(d["names"]), rewards=tuple(d["rewards"]),
                   grid=tuple(tuple(g) for g in grid) if grid is not None else None)

    def same_labels(self, other: LabelScale) -> bool:
        """Same names and rewards (to 1e-9); the grid is not compared."""
        return (self.names == other.names and len(self.rewards) == len(other.rewards)
                and all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(self.rewards, other.rewards)))

    # --- accessors ------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.rewards)

    def reward_tensor(self, dtype=torch.float64, device=None) -> torch.Tensor:
        return torch.tensor(self.rewards, dtype=dtype, device=device)  # (L,)

    def grid_tensor(self, dtype=torch.float64, device=None) -> torch.Tensor:
        if self.grid is None:
            raise ValueError("this LabelScale has no grid coordinates")
        return torch.tensor(self.grid, dtype=dtype, device=device)  # (L, G)

    @property
    def best_label(self) -> int:
        return max(range(self.num_labels), key=lambda i: self.rewards[i])

    # --- scalarisation ----------------------------------------------------------------
    def _r(self, mu: torch.Tensor) -> torch.Tensor:
        check_distribution(mu, self.num_labels)
        return self.reward_tensor(mu.dtype, mu.device)

    def expected_reward(self, mu: torch.Tensor) -> torch.Tensor:
        """E_mu[r], Eq. (S1). mu (B, L) -> (B,)."""
        return mu @ self._r(mu)  # (Eq. S1)

    def reward_std(self, mu: torch.Tensor) -> torch.Tensor:
        r = self._r(mu)
        m = mu @ r
        return (mu @ (r * r) - m * m).clamp_min(0).sqrt()  # (B,)

    def mean_minus_std(self, mu: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
        """E_mu[r] - kappa * Std_mu[r], Eq. (S3). mu (B, L) -> (B,)."""
        return self.expected_reward(mu) - kappa * self.reward_std(mu)  # (Eq. S3)

    def cvar(self, mu: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
        """Lower-tail CVaR of the reward at level alpha in (0, 1], Eq. (S2). mu (B, L) -> (B,).

        alpha = 1 gives E_mu[r]; alpha -> 0 gives the worst reward with positive mass.
        """
        if not 0 < alpha <= 1:
            raise ValueError(f"cvar: alpha must lie in (0, 1], got {alpha}")
        r = self._r(mu)
        order = torch.argsort(r)  # ascending rewards: the worst first
        r_s, mu_s = r[order], mu[..., order]  # (L,), (B, L)
        before = torch.cumsum(mu_s, -1) - mu_s  # mass strictly below each label
        take = torch.minimum(mu_s, (alpha - before).clamp_min(0))  # mass of the alpha-tail
        return (take @ r_s) / alpha  # (Eq. S2)

    def scalarise(self, mu: torch.Tensor, how: str = "expected", **kw) -> torch.Tensor:
        """Scalar reward of mu (B, L) by name: one of SCALARISATIONS."""
        if how not in SCALARISATIONS:
            raise ValueError(f"unknown scalarisation {how!r}; choose one of {sorted(SCALARISATIONS)}")
        return getattr(self, SCALARISATIONS[how])(mu, **kw)


# name -> LabelScale method; config files pick the reward readout by name.
SCALARISATIONS: dict[str, str] = {
    "expected": "expected_reward",
    "cvar": "cvar",
    "mean_minus_std": "mean_minus_std",
}
