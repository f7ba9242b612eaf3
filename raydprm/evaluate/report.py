"""``report.json`` (the pipeline's machine-readable answer), ``report.md`` and plots.

``report.json``::

    {"policies": {NAME: {"label_pct": [L floats summing to 100], "expected_reward": float, "kl": float,
                         "seeds": int, "expected_reward_ci95": [lo, hi], "kl_ci95": [lo, hi]}},
     "head_to_head": {"NAME_vs_REF": {"overall": {"win": pct, "tie": pct, "loss": pct, "ci95": {...}},
                                      "per_persona": {PERSONA: {...}}}},
     "stages": {STAGE: {"seconds": float}}, "restarts": {ROLE: int}, "ppo": [per-step metrics]}

``expected_reward`` is ``label_pct . rewards / 100`` (the population's E[r] of the policy).
A comparison (`raydprm run --compare`) adds per policy ``expected_reward_per_seed`` (one value per
training seed), per head-to-head entry ``expected_reward_diff`` (mean E[r] difference with its
interval), ``compare`` (policies, seeds, budgets) and ``curves`` (training curves averaged over
seeds); intervals then resample whole training seeds (:mod:`raydprm.evaluate.stats`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raydprm.config import PPO_POLICY_LOSS
from raydprm.evaluate.judge import Judged
from raydprm.evaluate.stats import bootstrap_ci, head_to_head

__all__ = ["POLICY_NAMES", "CURVE_KEYS", "policy_name", "build_report", "curves", "write_report"]

log = logging.getLogger(__name__)

# reward.loss -> the name of the policy PPO trains against that reward model (the paper's Table 2)
POLICY_NAMES = {loss: name for name, loss in PPO_POLICY_LOSS.items()}
# training-curve metrics a comparison averages over seeds (PPO's and direct alignment's)
CURVE_KEYS = ("population/expected_reward", "reward/mean", "ppo/kl", "ppo/kl_exact", "align/loss", "align/margin")
# how the report's KL to SFT and its KL curves are measured (named in report.md)
KL_NOTE = ("KL to SFT: the exact per-token KL(pi || pi_SFT) over the vocabulary, summed along each response "
           "sampled from the policy and averaged over responses (never negative; the one-sample estimate "
           "sum_t log pi(y_t) - log pi_SFT(y_t) has the same mean but more variance and can be negative). "
           "The PPO KL curves are the same exact KL to the PPO reference on each step's rollouts (ppo/kl_exact); "
           "the training penalty keeps its own estimator (ppo.kl_estimator, logged as ppo/kl).")
POP = "population/expected_reward"  # the population's E[r] of a PPO step's samples: one scale for every policy


def policy_name(reward_loss: str) -> str:
    return POLICY_NAMES[reward_loss]


def build_report(judged: Mapping[str, Judged], rewards: Sequence[float], *, refs: Sequence[str] = ("vanilla", "bt"),
                 margin: float = 0.05, n_boot: int = 1000, seed: int = 0,
                 seed_groups: Sequence[int] | None = None) -> dict[str, Any]:
    """Policies' label shares, E[r] and KL (with 95% intervals) and head to head vs each ref present.

    ``seed_groups``: the training seed of each sample row (a comparison); intervals then resample
    whole training seeds, and each policy gets its E[r] per training seed."""
    r = np.asarray(rewards, dtype=np.float64)
    g = None if seed_groups is None or len(set(seed_groups)) < 2 else list(seed_groups)
    boot = dict(n_boot=n_boot, seed=seed, groups=g)
    policies = {}
    for name, j in judged.items():
        pct = j.label_pct
        er_lo, er_hi = bootstrap_ci(j.reward, lambda x: x.mean(), **boot)
        kl_lo, kl_hi = bootstrap_ci(j.kl, lambda x: x.mean(), **boot)
        policies[name] = {"label_pct": [float(x) for x in pct], "expected_reward": float(pct @ r / 100),
                          "kl": float(j.kl.mean()), "seeds": int(len(set(g)) if g else j.dist.shape[0]),
                          "samples_per_prompt": int(j.dist.shape[0]), "prompts": int(j.dist.shape[1]),
                          "expected_reward_ci95": [float(er_lo), float(er_hi)], "kl_ci95": [float(kl_lo), float(kl_hi)]}
        if g:
            ga = np.asarray(g)
            policies[name]["expected_reward_per_seed"] = [float(j.reward[ga == k].mean()) for k in dict.fromkeys(g)]
    h2h = {}
    for ref in refs:
        if ref not in judged:
            continue
        for name, j in judged.items():
            if name != ref and not (name in refs and refs.index(name) < refs.index(ref)):  # no mirrored pairs
                d = j.reward - judged[ref].reward
                lo, hi = bootstrap_ci(d, lambda x: x.mean(), **boot)
                h2h[f"{name}_vs_{ref}"] = {**head_to_head(j, judged[ref], margin=margin, **boot),
                                           "expected_reward_diff": {"mean": float(d.mean()),
                                                                    "ci95": [float(lo), float(hi)]}}
    return {"policies": policies, "head_to_head": h2h}


def curves(histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]]) -> dict[str, dict[str, list[float]]]:
    """Per policy, each :data:`CURVE_KEYS` metric its training histories (one per seed) all have,
    averaged over seeds step by step (over the steps every seed reached)."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, runs in histories.items():
        runs = [h for h in runs if h]
        if not runs:
            continue
        n = min(len(h) for h in runs)
        c: dict[str, list[float]] = {"step": [float(runs[0][i]["step"]) for i in range(n)]}
        for key in CURVE_KEYS:
            if all(key in h[i] for h in runs for i in range(n)):
                c[key] = [float(np.mean([h[i][key] for h in runs])) for i in range(n)]
        out[name] = c
    return out


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
    cmp = report.get("compare")
    intro = (["SFT and crowd votes into the store once; then each policy under each of "
              f"{cmp['seeds']} seeds (reward model + {cmp['ppo_steps']} PPO steps, or {cmp['align_steps']} "
              "direct-alignment updates); the simulated population judges every policy's samples on the same "
              f"{cmp['prompts']} held-out prompts (intervals: bootstrap over prompts and training seeds, 95%)."]
             if cmp else
             ["SFT -> crowd votes into the store -> reward model -> PPO -> the simulated population judges each",
              "policy's samples on held-out prompts (intervals: bootstrap over prompts and seeds, 95%)."])
    lines = ["# raydprm run report", "", *intro, "",
             "## Labels of each policy's responses as judged by the population (%)", "",
             "| policy | " + " | ".join(label_names) + " | E[r] (95% CI) | KL to SFT (95% CI) |",
             "|---" * (len(label_names) + 3) + "|"]
    for name, p in pol.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in p["label_pct"])
                     + f" | {p['expected_reward']:.3f} {_fmt_ci(p['expected_reward_ci95'], 3)}"
                     + f" | {p['kl']:.2f} {_fmt_ci(p['kl_ci95'], 2)} |")
    lines += ["", KL_NOTE]
    if cmp:
        lines += ["", "E[r] per training seed: " + "; ".join(
            f"{n} " + ", ".join(f"{x:.3f}" for x in p.get("expected_reward_per_seed", [])) for n, p in pol.items())]
    diffs = {k: h["expected_reward_diff"] for k, h in report.get("head_to_head", {}).items()
             if "expected_reward_diff" in h}
    if diffs:
        lines += ["", "## Differences of E[r] (resolved: the 95% interval excludes 0)", "",
                  "| pair | mean difference (95% CI) | resolved |", "|---|---|---|"]
        lines += [f"| {k} | {d['mean']:+.3f} {_fmt_ci(d['ci95'], 3)} | "
                  f"{'yes' if d['ci95'][0] > 0 or d['ci95'][1] < 0 else 'no'} |" for k, d in diffs.items()]
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
        if POP in ppo[0]:
            lines[-1] += (f" The population's expected reward of the same rollouts: {ppo[0][POP]:.3f} -> "
                          f"{ppo[-1][POP]:.3f}.")
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
    h2h = {k: h for k, h in report.get("head_to_head", {}).items() if k.endswith("_vs_vanilla")}
    trained = [n for n in pol if n != "vanilla"]
    one = {k: [r[k] for r in ppo] for k in ("step", POP, "reward/mean", "ppo/kl", "ppo/kl_exact") if ppo and k in ppo[0]}
    cur = report.get("curves") or ({trained[0] if len(trained) == 1 else "policy": one} if ppo else {})
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    # one colour per policy in every panel (vanilla's only appears in the first)
    names = list(dict.fromkeys([*pol, *cur, *(k.replace("_vs_vanilla", "") for k in h2h)]))
    colour = {n: f"C{i % 10}" for i, n in enumerate(names)}
    x = np.arange(len(label_names))
    w = 0.8 / max(1, len(pol))
    for i, (name, p) in enumerate(pol.items()):
        axes[0].bar(x + (i - (len(pol) - 1) / 2) * w, p["label_pct"], width=w, color=colour[name],
                    label=f"{name} (E[r]={p['expected_reward']:.2f})")
    axes[0].set_xticks(x, [n.replace("_", "\n") for n in label_names], fontsize=7)
    axes[0].set_ylabel("% of responses")
    axes[0].set_ylim(0, 1.5 * max([max(p["label_pct"]) for p in pol.values()], default=100))  # room for the legend
    axes[0].set_title("population's labels of each policy")
    axes[0].legend(fontsize=7, ncol=2, loc="upper right")
    ppo_curves = {n: c for n, c in cur.items() if "reward/mean" in c}
    # the population's E[r] when every curve has it (one scale for BT-RM and the DPRMs), else the
    # reward model's own score (a report written before the population was judged every step)
    key = POP if ppo_curves and all(POP in c for c in ppo_curves.values()) else "reward/mean"
    if ppo_curves:
        kl_ax = axes[1].twinx()
        # the exact KL (never negative); the penalty's estimate only in a report written before it was logged
        kl_key = "ppo/kl_exact" if all("ppo/kl_exact" in c for c in ppo_curves.values()) else "ppo/kl"
        for name, c in ppo_curves.items():
            axes[1].plot(c["step"], c[key], color=colour[name], label=name)
            if kl_key in c:
                kl_ax.plot(c["step"], c[kl_key], color=colour[name], ls="--", alpha=0.7)
        axes[1].set_xlabel("PPO step")
        axes[1].set_ylabel("population's E[r] of the rollouts (solid)" if key == POP
                           else "reward model's score (solid)")
        kl_ax.set_ylabel("KL to the reference (dashed" + (", exact)" if kl_key == "ppo/kl_exact" else ")"))
        axes[1].legend(fontsize=7)
        axes[1].set_title("PPO: reward and KL" + (" (mean over seeds)" if report.get("curves") else ""))
    w2 = 0.8 / max(1, len(h2h))
    for i, (key, h) in enumerate(h2h.items()):
        personas = list(h["per_persona"])
        name = key.replace("_vs_vanilla", "")
        axes[2].bar(np.arange(len(personas)) + (i - (len(h2h) - 1) / 2) * w2,
                    [h["per_persona"][p]["win"] for p in personas], width=w2, color=colour[name], label=name)
        axes[2].set_xticks(np.arange(len(personas)), personas, fontsize=7, rotation=30)
    axes[2].set_ylabel("win % vs vanilla")
    axes[2].set_ylim(0, 100)  # room above the bars for the legend
    axes[2].set_title("head to head vs vanilla, per persona")
    if h2h:
        axes[2].legend(fontsize=7, ncol=min(4, len(h2h)), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
