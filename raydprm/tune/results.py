"""A sweep's results: ``results.csv``, ``results.md`` (best first) and plots (no Ray here).

Columns of ``results.csv`` (one row per trial):

    trial_id, status               done | stopped (by a scheduler) | error
    <dotted key> ...               one per swept key, with the trial's value (a cost's name or file,
                                   a mixture's name); for crowd.mixture also crowd.mixture.<persona>
                                   with the normalised weight
    expected_reward, kl            held-out evaluation of the PPO policy by the population, and its
                                   KL to the SFT policy (when ``evaluated``); else the last PPO step's
                                   population E[r] of its samples and the learner's KL
    evaluated                      1 when the evaluate stage ran
    win_rate, vanilla_expected_reward   head to head vs the SFT policy (evaluated only)
    dprm_reward, ppo_kl, kl_coef, ot_distance, steps, metric, error

Plots: ``frontier.png`` (expected reward against KL, coloured by ``ppo.beta``, with the
Pareto frontier), ``by_cost.png`` (the metric per cost matrix, when ``reward.cost`` is swept),
``persona_weight.png`` (the metric against each persona's weight, when ``crowd.mixture`` is swept).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raydprm.tune.space import SweepSpace

__all__ = ["result_row", "write_results", "read_results", "pareto_front", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("expected_reward", "kl", "evaluated", "win_rate", "vanilla_expected_reward", "dprm_reward",
                  "ppo_kl", "kl_coef", "ot_distance", "steps", "metric")


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def result_row(space: SweepSpace, labels: Mapping[str, Any], metrics: Mapping[str, Any], *, trial_id: str,
               status: str, error: str = "") -> dict[str, Any]:
    """One trial's row from its Tune config (labels) and its last reported metrics."""
    row: dict[str, Any] = {"trial_id": trial_id, "status": status}
    for key in space.swept:
        label = labels.get(key, "")
        row[key] = label
        if key == "crowd.mixture":
            names = sorted(_personas(space))
            mix = space.param(key).resolve(label) if label != "" else {}
            mix = mix or dict.fromkeys(names, 1.0)  # an empty mixture is the uniform population
            total = sum(mix.values())
            for name in names:
                row[f"crowd.mixture.{name}"] = mix.get(name, 0.0) / total if total > 0 else math.nan
    evaluated = "eval/expected_reward" in metrics
    row.update({
        "expected_reward": _num(metrics.get("eval/expected_reward" if evaluated else "population/expected_reward")),
        "kl": _num(metrics.get("eval/kl" if evaluated else "ppo/kl")),
        "evaluated": int(evaluated),
        "win_rate": _num(metrics.get("eval/win_rate")),
        "vanilla_expected_reward": _num(metrics.get("eval/vanilla_expected_reward")),
        "dprm_reward": _num(metrics.get("reward/mean")),
        "ppo_kl": _num(metrics.get("ppo/kl")),
        "kl_coef": _num(metrics.get("ppo/kl_coef")),
        "ot_distance": _num(metrics.get("reward/ot_distance")),
        "steps": 0 if math.isnan(step := _num(metrics.get("step"))) else int(step),
        "metric": _num(metrics.get(space.metric)),
        "error": error,
    })
    return row


def _personas(space: SweepSpace) -> set[str]:
    try:
        p = space.param("crowd.mixture")
    except KeyError:
        return set()
    return {name for v in p.values.values() if isinstance(v, Mapping) for name in v}


def _sort_key(row: Mapping[str, Any]) -> tuple[int, float]:
    v = _num(row.get("expected_reward"))
    return (0 if row.get("status") == "done" else 1 if row.get("status") == "stopped" else 2,
            math.inf if math.isnan(v) else -v)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (kl, reward) points no other point beats with less or equal KL and more reward, by KL."""
    front, best = [], -math.inf
    for kl, r in sorted(p for p in points if not (math.isnan(p[0]) or math.isnan(p[1]))):
        if r > best:
            front.append((kl, r))
            best = r
    return front


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def write_results(sweep_dir: str | Path, space: SweepSpace, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write results.csv, results.md and the plots into ``sweep_dir``; returns their paths."""
    d = Path(sweep_dir)
    rows = sorted(rows, key=_sort_key)
    cols = ["trial_id", "status", *space.swept]
    for r in rows:
        cols += [k for k in r if k not in cols and k.startswith("crowd.mixture.")]
    cols += [*METRIC_COLUMNS, "error"]
    out = {"csv": d / "results.csv", "md": d / "results.md"}
    with open(out["csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in cols})
    shown = [c for c in cols if c not in ("error", "metric", "kl_coef")]
    lines = [f"# Sweep {space.name}", "", *([space.description, ""] if space.description else []),
             f"{len(rows)} trial(s), best first by `expected_reward` (held-out population E[r] when `evaluated` = 1). "
             f"Scheduler: {space.scheduler.type}; metric `{space.metric}` ({space.mode}).", "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in shown) + " |" for r in rows]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", *[f"- {r['trial_id']}: {r['error']}" for r in errors]]
    plots = _plots(d, space, rows)
    if plots:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in plots.values()]]
    out["md"].write_text("\n".join(lines) + "\n")
    out.update(plots)
    return out


def read_results(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _plots(d: Path, space: SweepSpace, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out: dict[str, Path] = {}
    ok = [r for r in rows if not math.isnan(_num(r["expected_reward"]))]
    if not ok:
        return out
    er = np.array([_num(r["expected_reward"]) for r in ok])
    kl = np.array([_num(r["kl"]) for r in ok])

    fig, ax = plt.subplots(figsize=(6, 4.2))
    if "ppo.beta" in space.swept:
        beta = np.array([_num(r["ppo.beta"]) for r in ok])
        sc = ax.scatter(kl, er, c=np.log10(beta), cmap="viridis", s=40, zorder=3)
        fig.colorbar(sc, ax=ax, label="log10 ppo.beta")
        for x, y, b in zip(kl, er, beta):
            ax.annotate(f"{b:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    else:
        ax.scatter(kl, er, s=40, zorder=3)
    front = pareto_front(list(zip(kl.tolist(), er.tolist())))
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="tab:red", lw=1, label="frontier")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("KL(policy || SFT)")
    ax.set_ylabel("population E[r]")
    ax.set_title(f"{space.name}: reward-KL frontier across beta")
    fig.tight_layout()
    out["frontier"] = d / "frontier.png"
    fig.savefig(out["frontier"], dpi=110)
    plt.close(fig)

    if "reward.cost" in space.swept:
        costs = sorted({str(r["reward.cost"]) for r in ok})
        fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(costs)), 4))
        for i, c in enumerate(costs):
            ys = [_num(r["expected_reward"]) for r in ok if str(r["reward.cost"]) == c]
            ax.bar(i, float(np.mean(ys)), color="tab:blue", alpha=0.35)
            ax.scatter([i] * len(ys), ys, color="tab:blue", zorder=3, s=25)
        ax.set_xticks(range(len(costs)), [Path(c).name for c in costs], rotation=20, fontsize=8)
        ax.set_ylabel("population E[r]")
        ax.set_title("metric per cost matrix (bar = mean over trials)")
        fig.tight_layout()
        out["by_cost"] = d / "by_cost.png"
        fig.savefig(out["by_cost"], dpi=110)
        plt.close(fig)

    names = sorted(k for k in (ok[0] if ok else {}) if k.startswith("crowd.mixture."))
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False, sharey=True)
        for ax, k in zip(axes[0], names):
            ax.scatter([_num(r[k]) for r in ok], er, s=25)
            ax.set_xlabel(f"weight of {k.rsplit('.', 1)[-1]}")
        axes[0][0].set_ylabel("population E[r]")
        fig.suptitle("metric against persona weight")
        fig.tight_layout()
        out["persona_weight"] = d / "persona_weight.png"
        fig.savefig(out["persona_weight"], dpi=110)
        plt.close(fig)
    return out
