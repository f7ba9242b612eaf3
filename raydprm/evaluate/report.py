"""``report.json`` (the pipeline's machine-readable answer), ``report.md`` and plots.

``report.json``::

    {"policies": {NAME: {"label_pct": [L floats summing to 100], "expected_reward": float, "kl": float,
                         "seeds": int, "expected_reward_ci95": [lo, hi], "kl_ci95": [lo, hi]}},
     "head_to_head": {"NAME_vs_REF": {"overall": {"win": pct, "tie": pct, "loss": pct, "ci95": {...}},
                                      "per_persona": {PERSONA: {...}}}},
     "stages": {STAGE: {"seconds": float}}, "restarts": {ROLE: int}, "ppo": [per-step metrics]}

``expected_reward`` is ``label_pct . rewards / 100`` (the population's E[r] of the policy).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raydprm.evaluate.judge import Judged
from raydprm.evaluate.stats import bootstrap_ci, head_to_head

__all__ = ["POLICY_NAMES", "policy_name", "build_report", "write_report"]

log = logging.getLogger(__name__)

# reward.loss -> the name of the policy PPO trains against that reward model (the paper's Table 2)
POLICY_NAMES = {"bt": "bt", "ce": "dprm_c", "wasserstein": "dprm_w", "ot": "dprm_ot"}


def policy_name(reward_loss: str) -> str:
    return POLICY_NAMES[reward_loss]


def build_report(judged: Mapping[str, Judged], rewards: Sequence[float], *, refs: Sequence[str] = ("vanilla", "bt"),
                 margin: float = 0.05, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Policies' label shares, E[r] and KL (with 95% intervals) and head to head vs each ref present."""
    r = np.asarray(rewards, dtype=np.float64)
    policies = {}
    for name, j in judged.items():
        pct = j.label_pct
        er_lo, er_hi = bootstrap_ci(j.reward, lambda x: x.mean(), n_boot=n_boot, seed=seed)
        kl_lo, kl_hi = bootstrap_ci(j.kl, lambda x: x.mean(), n_boot=n_boot, seed=seed)
        policies[name] = {"label_pct": [float(x) for x in pct], "expected_reward": float(pct @ r / 100),
                          "kl": float(j.kl.mean()), "seeds": int(j.dist.shape[0]), "prompts": int(j.dist.shape[1]),
                          "expected_reward_ci95": [float(er_lo), float(er_hi)], "kl_ci95": [float(kl_lo), float(kl_hi)]}
    h2h = {}
    for ref in refs:
        if ref not in judged:
            continue
        for name, j in judged.items():
            if name != ref:
                h2h[f"{name}_vs_{ref}"] = head_to_head(j, judged[ref], margin=margin, n_boot=n_boot, seed=seed)
    return {"policies": policies, "head_to_head": h2h}


def _fmt_ci(ci: Sequence[float], digits: int = 1) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def write_report(report: Mapping[str, Any], run_dir: str | os.PathLike[str], label_names: Sequence[str],
                 samples: Sequence[Mapping[str, str]] = ()) -> Path:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``run_dir``; returns report.md's path."""
    d = Path(run_dir)
    tmp = d / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, d / "report.json")
    pol = report["policies"]
    lines = ["# raydprm run report", "",
             "SFT -> crowd votes into the store -> reward model -> PPO -> the simulated population judges each",
             "policy's samples on held-out prompts (intervals: bootstrap over prompts and seeds, 95%).", "",
             "## Labels of each policy's responses as judged by the population (%)", "",
             "| policy | " + " | ".join(label_names) + " | E[r] (95% CI) | KL to SFT (95% CI) |",
             "|---" * (len(label_names) + 3) + "|"]
    for name, p in pol.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in p["label_pct"])
                     + f" | {p['expected_reward']:.3f} {_fmt_ci(p['expected_reward_ci95'], 3)}"
                     + f" | {p['kl']:.2f} {_fmt_ci(p['kl_ci95'], 2)} |")
    for key, h in report.get("head_to_head", {}).items():
        o = h["overall"]
        lines += ["", f"## {key}: head to head, % of (prompt, seed) samples", "",
                  "| judge | win | tie | loss |", "|---|---|---|---|",
                  f"| population | {o['win']:.1f} {_fmt_ci(o['ci95']['win'])} | {o['tie']:.1f} "
                  f"{_fmt_ci(o['ci95']['tie'])} | {o['loss']:.1f} {_fmt_ci(o['ci95']['loss'])} |"]
        for persona, w in h["per_persona"].items():
            lines.append(f"| {persona} | {w['win']:.1f} {_fmt_ci(w['ci95']['win'])} | {w['tie']:.1f} "
                         f"{_fmt_ci(w['ci95']['tie'])} | {w['loss']:.1f} {_fmt_ci(w['ci95']['loss'])} |")
    ppo = report.get("ppo", [])
    if ppo:
        lines += ["", "## PPO", "", f"mean reward-model score of the rollouts: step 1 {ppo[0]['reward/mean']:.3f} -> "
                  f"step {ppo[-1]['step']} {ppo[-1]['reward/mean']:.3f}."]
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v['seconds']:.1f} |" for k, v in report.get("stages", {}).items()]
    lines += ["", "Restarts per role: " + (", ".join(f"{k} {v}" for k, v in report.get("restarts", {}).items())
                                           or "none")]
    if samples:
        lines += ["", "## Samples", ""]
        for s in samples:
            lines.append(f"- `{s['prompt']!r}`")
            lines += [f"  - {k}: `{v}`" for k, v in s.items() if k != "prompt"]
    (d / "report.md").write_text("\n".join(lines) + "\n")
    try:
        _plot(report, label_names, d / "report.png")
    except Exception as e:  # a missing font or backend must not lose the report
        log.warning("plot failed: %s", e)
    return d / "report.md"


def _plot(report: Mapping[str, Any], label_names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pol, ppo = report["policies"], report.get("ppo", [])
    h2h = report.get("head_to_head", {})
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    x = np.arange(len(label_names))
    w = 0.8 / max(1, len(pol))
    for i, (name, p) in enumerate(pol.items()):
        axes[0].bar(x + (i - (len(pol) - 1) / 2) * w, p["label_pct"], width=w,
                    label=f"{name} (E[r]={p['expected_reward']:.2f})")
    axes[0].set_xticks(x, [n.replace("_", "\n") for n in label_names], fontsize=7)
    axes[0].set_ylabel("% of responses")
    axes[0].set_title("population's labels of each policy")
    axes[0].legend(fontsize=8)
    if ppo:
        steps = [r["step"] for r in ppo]
        axes[1].plot(steps, [r["reward/mean"] for r in ppo], marker="o", label="reward")
        axes[1].plot(steps, [r.get("ppo/kl", 0.0) for r in ppo], marker="x", label="KL")
        axes[1].set_xlabel("PPO step")
        axes[1].legend(fontsize=8)
        axes[1].set_title("PPO: reward-model score and KL")
    for key, h in h2h.items():
        personas = list(h["per_persona"])
        axes[2].bar(np.arange(len(personas)), [h["per_persona"][p]["win"] for p in personas], alpha=0.6, label=key)
        axes[2].set_xticks(np.arange(len(personas)), personas, fontsize=7, rotation=30)
    axes[2].set_ylabel("win %")
    axes[2].set_title("head to head per persona")
    if h2h:
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
