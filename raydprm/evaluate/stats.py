"""Bootstrap 95% intervals over prompts and seeds, and head-to-head win/tie/loss.

Samples are laid out (S seeds, N prompts). One bootstrap resample draws S seeds and N
prompts with replacement, independently, and evaluates the statistic on the crossed grid
``x[seeds][:, prompts]`` (a two-way bootstrap: both the prompt set and the sampling noise
vary). The interval is the 2.5% and 97.5% percentile of the resampled statistics.

When rows come in groups (``groups[s]``: the training seed whose policy sampled row s, a
comparison's layout), the resample draws whole groups with replacement and keeps every row of
each: rows of one training seed share its policy and are not independent draws, so the
interval spans the variation between training runs, not only the sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "win_tie_loss", "head_to_head"]


def _row_sampler(S: int, groups: Sequence[int] | None, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    if groups is None:
        return lambda: rng.integers(0, S, S)
    if len(groups) != S:
        raise ValueError(f"groups has {len(groups)} labels for {S} rows")
    members = [np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)]
    return lambda: np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])


def bootstrap_ci(arrays: Mapping[str, np.ndarray] | np.ndarray, stat: Callable[..., object], *, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95, groups: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``stat`` over (seed, prompt) resamples of every (S, N[, ...]) array.

    ``arrays``: one array or a mapping of arrays sharing their first two axes; ``stat`` takes the
    resampled array (or the mapping's arrays as keyword arguments) and returns a number or a
    vector of numbers; ``groups``: one label per seed row, resampled as whole groups (module doc);
    returns (low, high) of the same shape."""
    named = dict(arrays) if isinstance(arrays, Mapping) else {"x": np.asarray(arrays)}
    S, N = next(iter(named.values())).shape[:2]
    rng = np.random.default_rng(seed)
    rows = _row_sampler(S, groups, rng)
    out = []
    for _ in range(n_boot):
        si, pi = rows(), rng.integers(0, N, N)
        sub = {k: v[si][:, pi] for k, v in named.items()}
        out.append(np.asarray(stat(**sub) if isinstance(arrays, Mapping) else stat(sub["x"]), dtype=np.float64))
    lo, hi = np.percentile(np.stack(out), [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return lo, hi


def win_tie_loss(diff: np.ndarray, margin: float) -> dict[str, float]:
    """% of samples where ``diff = r_policy - r_ref`` is > margin (win), within it (tie), < -margin (loss)."""
    d = np.asarray(diff, dtype=np.float64)
    return {"win": float(100 * (d > margin).mean()), "tie": float(100 * (np.abs(d) <= margin).mean()),
            "loss": float(100 * (d < -margin).mean())}


def _wtl_with_ci(diff: np.ndarray, margin: float, n_boot: int, seed: int,
                 groups: Sequence[int] | None = None) -> dict[str, object]:
    keys = ("win", "tie", "loss")
    out: dict[str, object] = dict(win_tie_loss(diff, margin))
    lo, hi = bootstrap_ci(diff, lambda x: [win_tie_loss(x, margin)[k] for k in keys], n_boot=n_boot, seed=seed,
                          groups=groups)
    out["ci95"] = {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(keys)}
    return out


def head_to_head(policy, ref, *, margin: float = 0.05, n_boot: int = 1000, seed: int = 0,
                 groups: Sequence[int] | None = None) -> dict[str, object]:
    """``policy`` vs ``ref`` (two :class:`~raydprm.evaluate.judge.Judged` on the same prompts and seeds),
    paired per (seed, prompt): overall by the population's expected reward and per persona by that
    persona's, each with bootstrap 95% intervals (``groups``: as in :func:`bootstrap_ci`)."""
    return {"overall": _wtl_with_ci(policy.reward - ref.reward, margin, n_boot, seed, groups),
            "per_persona": {p: _wtl_with_ci(policy.persona_reward[p] - ref.persona_reward[p], margin, n_boot, seed,
                                            groups)
                            for p in ref.persona_reward}}
