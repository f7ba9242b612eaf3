"""Named metric sums that a data-parallel trainer accumulates and all-reduces in one call.

A trainer adds per-micro-batch terms by name (``sums.add(policy_loss=..., tokens=...)``);
the values live in one float64 tensor so that the sum over ranks is a single
``all_reduce``; they are read back by name (``sums["tokens"]``), never by position.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["MetricSums"]


class MetricSums:
    """Float64 sums of the metrics ``names`` (fixed at construction; an unknown name is a KeyError)."""

    def __init__(self, *names: str):
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique, got {names}")
        self._index = {n: i for i, n in enumerate(names)}
        self._values = torch.zeros(len(names), dtype=torch.float64)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._index)

    def add(self, **terms: float | torch.Tensor) -> None:
        """Add each term (a float or a 0-dim tensor) to the sum of its name."""
        for name, value in terms.items():
            self._values[self._index[name]] += value

    def reduce(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the sums by ``fn(sums)``, e.g. an all-reduce over ranks; ``fn`` gets and
        returns the (N,) float64 tensor of all sums in ``names`` order."""
        out = fn(self._values)
        if out.shape != self._values.shape:
            raise ValueError(f"reduce changed the shape of the sums: {tuple(out.shape)}")
        self._values = out.to("cpu", torch.float64)

    def __getitem__(self, name: str) -> float:
        return float(self._values[self._index[name]])

    def to_dict(self) -> dict[str, float]:
        return {n: float(self._values[i]) for n, i in self._index.items()}
