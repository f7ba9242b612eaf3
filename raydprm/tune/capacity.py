"""How many trials fit at once: each trial's bundles against the cluster's resources (no Ray here).

    max_concurrent = min over resources r of floor(C_r / D_r)

where ``D_r`` is what one trial reserves (the sum of its placement-group bundles, plus what
Ray Train reserves outside them while the reward model trains on several workers) and ``C_r``
the most the cluster can offer (its autoscaler's maximum when known, else what it has now).
Counting Train's workers matters: trials holding every CPU would leave a Train placement
group pending forever (ray#47439).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["demand", "max_concurrent", "shortfall"]


def demand(bundles: Sequence[Mapping[str, float]], outside: Sequence[Mapping[str, float]] = ()) -> dict[str, float]:
    """Resources one trial reserves at its peak: its bundles, plus ``outside`` (Ray Train's)."""
    out: dict[str, float] = {}
    for b in (*bundles, *outside):
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + float(v)
    return {k: v for k, v in out.items() if v > 0}


def shortfall(per_trial: Mapping[str, float], cluster: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Resources one trial needs more of than the cluster can offer: {name: (need, have)}."""
    return {k: (v, float(cluster.get(k, 0.0))) for k, v in per_trial.items() if v > float(cluster.get(k, 0.0)) + 1e-9}


def max_concurrent(per_trial: Mapping[str, float], cluster: Mapping[str, float], cap: int = 0) -> int:
    """Trials that fit side by side (at least 1: a cluster that can grow is judged by the
    autoscaler); ``cap`` > 0 bounds it (the sweep file's or the command line's limit)."""
    fits = [math.floor(float(cluster.get(k, 0.0)) / v + 1e-9) for k, v in per_trial.items() if v > 0]
    n = max(1, min(fits) if fits else 1)
    return min(n, cap) if cap > 0 else n
