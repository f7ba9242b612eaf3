"""Bootstrap 95% intervals over prompts and seeds, and head-to-head win/tie/loss.

Samples are laid out (S seeds, N prompts). One bootstrap resample draws S seeds and N
prompts with replacement, independently, and evaluates the statistic on the crossed grid
``x[seeds][:, prompts]`` (a two-way bootstrap: both the prompt set and the sampling noise
vary). The interval is the 2.5% and 97.5% percentile of the resampled statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["bootstrap_ci", "win_tie_loss", "head_to_head"]


def bootstrap_ci(arrays: Mapping[str, np.ndarray] | np.ndarray, stat: Callable[..., object], *, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``stat`` over (seed, prompt) resamples of every (S, N[, ...]) array.

    ``arrays``: one array or a mapping of arrays sharing their first two axes; ``stat`` takes the
    resampled array (or the mapping's arrays as keyword arguments) and returns a number or a
    vector of numbers; returns (low, high) of the same shape."""
    named = dict(arrays) if isinstance(arrays, Mapping) else {"x": np.asarray(arrays)}
    S, N = next(iter(named.values())).shape[:2]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        si, pi = rng.integers(0, S, S), rng.integers(0, N, N)
        sub = {k: v[si][:, pi] for k, v in named.items()}
        out.append(np.asarray(stat(**sub) if isinstance(arrays, Mapping) else stat(sub["x"]), dtype=np.float64))
    lo, hi = np.percentile(np.stack(out), [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return lo, hi


def win_tie_loss(diff: np.ndarray, margin: float) -> dict[str, float]:
    """% of samples where ``diff = r_policy - r_ref`` is > margin (win), within it (tie), < -margin (loss)."""
    d = np.asarray(diff, dtype=np.float64)
    return {"win": float(100 * (d > margin).mean()), "tie": float(100 * (np.abs(d) <= margin).mean()),
            "loss": float(100 * (d < -margin).mean())}


def _wtl_with_ci(diff: np.ndarray, margin: float, n_boot: int, seed: int) -> dict[str, object]:
    keys = ("win", "tie", "loss")
    out: dict[str, object] = dict(win_tie_loss(diff, margin))
    lo, hi = bootstrap_ci(diff, lambda x: [win_tie_loss(x, margin)[k] for k in keys], n_boot=n_boot, seed=seed)
    out["ci95"] = {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(keys)}
    return out


def head_to_head(policy, ref, *, margin: float = 0.05, n_boot: int = 1000, seed: int = 0) -> dict[str, object]:
    """``policy`` vs ``ref`` (two :class:`~raydprm.evaluate.judge.Judged` on the same prompts and seeds),
    paired per (seed, prompt): overall by the population's expected reward and per persona by that
    persona's, each with bootstrap 95% intervals."""
    return {"overall": _wtl_with_ci(policy.reward - ref.reward, margin, n_boot, seed),
            "per_persona": {p: _wtl_with_ci(policy.persona_reward[p] - ref.persona_reward[p], margin, n_boot, seed)
                            for p in ref.persona_reward}}
