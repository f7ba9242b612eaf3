"""``report.json`` (the pipeline's machine-readable answer), ``report.md`` and plots.

``report.json``::

    {"policies": {NAME: {"label_pct": [L floats summing to 100], "expected_reward": float, "kl": float,
                         "seeds": int, "expected_reward_ci95": [lo, hi], "kl_ci95": [lo, hi]}},
     "head_to_head": {"NAME_vs_REF": {"overall": {"win": pct, "tie": pct, "loss": pct, "ci95": {...}},
                                      "per_persona": {PERSONA: {...}}}},
     "stages": {STAGE: {"seconds": float}}, "restarts": {ROLE: int}, "ppo": [per-step metrics]}

``expected_reward`` is ``label_pct . rewards / 100`` (the population's E[r] of the policy).

Per rater group (each persona of the simulated crowd, or each group of an imported store judged
by the gold model) every policy also gets::

    "groups": {GROUP: {"expected_reward": float, "ci": [lo, hi], "label_pct": [L floats],
                       "distance": float}},
    "worst_group": {"group": str, "expected_reward": float, "ci": [lo, hi]},
    "disparity": float, "disparity_ci95": [lo, hi]

``worst_group`` is the group of least E[r] (its value is the minimum of the per-group values),
``disparity`` the best group's E[r] minus the worst's; intervals come from the same bootstrap
as the population's. ``distance`` (with a reference per group: each group's own label
distribution over the crowd's items, e.g. its votes in the store) is the 1-Wasserstein distance
on the reward scale, sum_l |F_a(l) - F_b(l)| (r_(l+1) - r_(l)), between the label distribution the
policy earns from the group and the group's own.
Every head-to-head entry has ``expected_reward_diff`` (mean E[r] difference with its interval);
a pipeline run's, with per-group verdicts, also ``worst_group_diff`` and ``disparity_diff`` (each
``{"mean": float, "ci95": [lo, hi]}``; the worst group's E[r] and the disparity recomputed inside
each paired resample: :func:`pair_group_diffs`).
A comparison (`raydprm run --compare`) adds per policy ``expected_reward_per_seed`` (one value per
training seed), head-to-head entries for every pair of policies (not only against vanilla and bt),
``compare`` (policies, seeds, budgets) and ``curves`` (training curves averaged over seeds);
intervals then resample whole training seeds (:mod:`raydprm.evaluate.stats`).
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

__all__ = ["POLICY_NAMES", "CURVE_KEYS", "policy_name", "build_report", "group_summary", "pair_group_diffs", "reward_w1",
           "curves", "write_report"]

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


def reward_w1(a: Sequence[float], b: Sequence[float], rewards: Sequence[float]) -> float:
    """1-Wasserstein distance between label distributions a, b (L,) on the reward scale (ground
    cost |r_i - r_j|): sum over labels sorted by reward of |F_a - F_b| times the reward gap."""
    r = np.asarray(rewards, dtype=np.float64)
    order = np.argsort(r, kind="stable")
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    pa, pb = pa[order] / pa.sum(), pb[order] / pb.sum()
    gaps = np.diff(r[order])  # (L - 1,)
    return float(np.abs(np.cumsum(pa)[:-1] - np.cumsum(pb)[:-1]) @ gaps)


def group_summary(j: Judged, rewards: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                  groups: Sequence[int] | None = None,
                  reference: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Per-group E[r] with 95% intervals and label shares, the worst group and the disparity of one
    policy (module doc); empty without per-group verdicts."""
    names = list(j.persona_reward)
    if not names:
        return {}
    x = np.stack([j.persona_reward[g] for g in names], -1)  # (S, N, G) each group's E[r] per sample

    def stat(v: np.ndarray) -> np.ndarray:
        m = v.mean((0, 1))  # (G,)
        return np.concatenate([m, [m.min(), m.max() - m.min()]])

    lo, hi = bootstrap_ci(x, stat, n_boot=n_boot, seed=seed, groups=groups)
    means = x.mean((0, 1))
    out: dict[str, Any] = {"groups": {}}
    for k, g in enumerate(names):
        entry: dict[str, Any] = {"expected_reward": float(means[k]), "ci": [float(lo[k]), float(hi[k])]}
        if j.group_dist and g in j.group_dist:
            d = j.group_dist[g]
            entry["label_pct"] = [float(v) for v in 100.0 * d.reshape(-1, d.shape[-1]).mean(0)]
            if reference and g in reference:
                entry["distance"] = reward_w1(entry["label_pct"], reference[g], rewards)
        out["groups"][g] = entry
    w = int(np.argmin(means))
    G = len(names)
    out["worst_group"] = {"group": names[w], "expected_reward": float(means[w]), "ci": [float(lo[G]), float(hi[G])]}
    out["disparity"] = float(means.max() - means.min())
    out["disparity_ci95"] = [float(lo[G + 1]), float(hi[G + 1])]
    return out


def build_report(judged: Mapping[str, Judged], rewards: Sequence[float], *, refs: Sequence[str] = ("vanilla", "bt"),
                 margin: float = 0.05, n_boot: int = 1000, seed: int = 0,
                 seed_groups: Sequence[int] | None = None,
                 group_reference: Mapping[str, Sequence[float]] | None = None,
                 all_pairs: bool = False, group_diffs: bool = False) -> dict[str, Any]:
    """Policies' label shares, E[r] and KL (with 95% intervals), per-group E[r], worst group and
    disparity (:func:`group_summary`), and head to head vs each ref present (with ``all_pairs``:
    every pair of policies, each once, the given refs' pairs first and unchanged); each pair's
    E[r] difference and, with ``group_diffs`` and per-group verdicts, its worst-group and
    disparity differences (:func:`pair_group_diffs`).

    ``seed_groups``: the training seed of each sample row (a comparison); intervals then resample
    whole training seeds, and each policy gets its E[r] per training seed. ``group_reference``:
    each group's own label distribution (L,), to which each policy's is compared."""
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
        policies[name].update(group_summary(j, r, reference=group_reference, **boot))
    h2h = {}
    if all_pairs:  # every other policy becomes a reference too, after the given ones (in judged's order)
        refs = (*refs, *(n for n in judged if n not in refs))
    for ref in refs:
        if ref not in judged:
            continue
        for name, j in judged.items():
            if name != ref and not (name in refs and refs.index(name) < refs.index(ref)):  # no mirrored pairs
                d = j.reward - judged[ref].reward
                lo, hi = bootstrap_ci(d, lambda x: x.mean(), **boot)
                h2h[f"{name}_vs_{ref}"] = {**head_to_head(j, judged[ref], margin=margin, **boot),
                                           "expected_reward_diff": {"mean": float(d.mean()),
                                                                    "ci95": [float(lo), float(hi)]},
                                           **(pair_group_diffs(j, judged[ref], **boot) if group_diffs else {})}
    return {"policies": policies, "head_to_head": h2h}


def pair_group_diffs(a: Judged, b: Judged, *, n_boot: int = 1000, seed: int = 0,
                groups: Sequence[int] | None = None) -> dict[str, Any]:
    """``worst_group_diff`` and ``disparity_diff`` of policy ``a`` minus ``b`` (mean and 95% interval),
    empty unless both have per-group verdicts of the same groups.

    Paired: each resample draws the same rows (whole training seeds with ``groups``) and prompts for
    both policies (the resampling of their ``expected_reward_diff``: same seed), and recomputes
    inside it each policy's per-group means m_g, its worst group's E[r] min_g m_g and its
    disparity max_g m_g - min_g m_g; the worst groups of a and b may differ."""
    names = list(b.persona_reward)
    if not names or set(a.persona_reward) != set(names):
        return {}
    xa = np.stack([a.persona_reward[g] for g in names], -1)  # (S, N, G)
    xb = np.stack([b.persona_reward[g] for g in names], -1)  # (S, N, G)

    def stat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ma, mb = a.mean((0, 1)), b.mean((0, 1))  # (G,) each policy's per-group E[r]
        return np.array([ma.min() - mb.min(), (ma.max() - ma.min()) - (mb.max() - mb.min())])

    point = stat(xa, xb)
    lo, hi = bootstrap_ci({"a": xa, "b": xb}, stat, n_boot=n_boot, seed=seed, groups=groups)
    return {key: {"mean": float(point[k]), "ci95": [float(lo[k]), float(hi[k])]}
            for k, key in enumerate(("worst_group_diff", "disparity_diff"))}


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
    judge = report.get("judge")
    if judge:  # a store crowd: the store's votes and a learned gold judge, not the simulated population
        intro = ["SFT -> the store's votes (training items) -> reward model -> PPO -> a learned gold judge scores "
                 "each policy's samples on the held-out items' prompts (intervals: bootstrap over prompts and seeds, "
                 "95%).", "", f"**The judge is a learned model, not people**: {judge['description']}"]
    has_groups = any("worst_group" in p for p in pol.values())
    lines = ["# raydprm run report", "", *intro, "",
             f"## Labels of each policy's responses as judged by the {'judge' if judge else 'population'} (%)", "",
             "| policy | " + " | ".join(label_names) + " | E[r] (95% CI) | KL to SFT (95% CI) |"
             + (" worst group E[r] (95% CI) | disparity (95% CI) |" if has_groups else ""),
             "|---" * (len(label_names) + 3 + 2 * has_groups) + "|"]
    for name, p in pol.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in p["label_pct"])
                     + f" | {p['expected_reward']:.3f} {_fmt_ci(p['expected_reward_ci95'], 3)}"
                     + f" | {p['kl']:.2f} {_fmt_ci(p['kl_ci95'], 2)} |"
                     + (f" {p['worst_group']['group']} {p['worst_group']['expected_reward']:.3f} "
                        f"{_fmt_ci(p['worst_group']['ci'], 3)} | {p['disparity']:.3f} "
                        f"{_fmt_ci(p['disparity_ci95'], 3)} |" if "worst_group" in p else
                        (" | |" if has_groups else "")))
    lines += ["", KL_NOTE]
    if has_groups:
        gnames = list(dict.fromkeys(g for p in pol.values() for g in p.get("groups", {})))
        lines += ["", "## E[r] per rater group (95% CI)", "",
                  "| policy | " + " | ".join(gnames) + " |", "|---" * (len(gnames) + 1) + "|"]
        for name, p in pol.items():
            gs = p.get("groups", {})
            lines.append(f"| {name} | " + " | ".join(
                f"{gs[g]['expected_reward']:.3f} {_fmt_ci(gs[g]['ci'], 3)}" if g in gs else "" for g in gnames) + " |")
        if any("distance" in e for p in pol.values() for e in p.get("groups", {}).values()):
            lines += ["", "W1 (reward scale) between the labels each policy earns from a group and the group's own "
                      "labels of the crowd's items:", "", "| policy | " + " | ".join(gnames) + " |",
                      "|---" * (len(gnames) + 1) + "|"]
            for name, p in pol.items():
                gs = p.get("groups", {})
                lines.append(f"| {name} | " + " | ".join(
                    f"{gs[g]['distance']:.3f}" if "distance" in gs.get(g, {}) else "" for g in gnames) + " |")
    fit = report.get("reward_fit")
    if fit:
        lines += ["", "## Held-out fit of each reward model per rater group", "",
                  "| reward model | group | OT | W1 | CE | ECE | items |", "|---|---|---|---|---|---|---|"]
        for model_name, per in fit.items():
            for g, m in per.items():
                lines.append(f"| {model_name} | {g} | {m['ot_distance']:.3f} | {m.get('w1', float('nan')):.3f} | "
                             f"{m['ce']:.3f} | {m['ece']:.3f} | {m['items']} |")
    if judge and judge.get("verdict"):
        lines += ["", "## The gold judge's verdict", "", judge["verdict"]]
    if cmp:
        lines += ["", "E[r] per training seed: " + "; ".join(
            f"{n} " + ", ".join(f"{x:.3f}" for x in p.get("expected_reward_per_seed", [])) for n, p in pol.items())]
    diffs = {k: h for k, h in report.get("head_to_head", {}).items() if "expected_reward_diff" in h}
    if diffs:
        wg = any("worst_group_diff" in h for h in diffs.values())

        def cell(d: Mapping[str, Any] | None) -> str:
            if d is None:
                return " | |"
            return (f" {d['mean']:+.3f} {_fmt_ci(d['ci95'], 3)} | "
                    f"{'yes' if d['ci95'][0] > 0 or d['ci95'][1] < 0 else 'no'} |")

        lines += ["", "## Differences of E[r] (resolved: the 95% interval excludes 0)", "",
                  "| pair | mean difference (95% CI) | resolved |"
                  + (" worst-group E[r] difference (95% CI) | resolved | disparity difference (95% CI) | resolved |"
                     if wg else ""), "|---" * (3 + 4 * wg) + "|"]
        lines += [f"| {k} |" + cell(h["expected_reward_diff"])
                  + (cell(h.get("worst_group_diff")) + cell(h.get("disparity_diff")) if wg else "")
                  for k, h in diffs.items()]
    for key, h in report.get("head_to_head", {}).items():
        o = h["overall"]
        lines += ["", f"## {key}: head to head, % of (prompt, seed) samples", "",
                  "| judge | win | tie | loss |", "|---|---|---|---|",
                  f"| {'judge (population)' if judge else 'population'} | {o['win']:.1f} {_fmt_ci(o['ci95']['win'])} | {o['tie']:.1f} "
                  f"{_fmt_ci(o['ci95']['tie'])} | {o['loss']:.1f} {_fmt_ci(o['ci95']['loss'])} |"]
        for persona, w in h["per_persona"].items():
            lines.append(f"| {persona} | {w['win']:.1f} {_fmt_ci(w['ci95']['win'])} | {w['tie']:.1f} "
                         f"{_fmt_ci(w['ci95']['tie'])} | {w['loss']:.1f} {_fmt_ci(w['ci95']['loss'])} |")
    ppo = report.get("ppo", [])
    if ppo:
        lines += ["", "## PPO", "", f"mean reward-model score of the rollouts: step 1 {ppo[0]['reward/mean']:.3f} -> "
                  f"step {ppo[-1]['step']} {ppo[-1]['reward/mean']:.3f}."]
        if POP in ppo[0] and np.isfinite(ppo[0][POP]):  # NaN: no simulated population (a store crowd)
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
    has_groups = any(p.get("groups") for p in pol.values())
    fig, axes = plt.subplots(1, 3 + has_groups, figsize=(15 + 5 * has_groups, 3.8))
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
    key = POP if ppo_curves and all(POP in c and np.isfinite(c[POP]).any() for c in ppo_curves.values()) \
        else "reward/mean"
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
    axes[2].set_title("head to head vs vanilla, per rater group (persona)")
    if h2h:
        axes[2].legend(fontsize=7, ncol=min(4, len(h2h)), loc="upper center")
    if has_groups:  # each group's E[r] of each policy, with its 95% interval
        gnames = list(dict.fromkeys(g for p in pol.values() for g in p.get("groups", {})))
        w3 = 0.8 / max(1, len(pol))
        for i, (name, p) in enumerate(pol.items()):
            gs = p.get("groups", {})
            xs = [k + (i - (len(pol) - 1) / 2) * w3 for k, g in enumerate(gnames) if g in gs]
            ys = [gs[g]["expected_reward"] for g in gnames if g in gs]
            err = [[y - gs[g]["ci"][0] for g, y in zip([g for g in gnames if g in gs], ys)],
                   [gs[g]["ci"][1] - y for g, y in zip([g for g in gnames if g in gs], ys)]]
            axes[3].errorbar(xs, ys, yerr=np.clip(err, 0, None), fmt="o", color=colour[name], capsize=3,
                             label=f"{name} (worst {p['worst_group']['group']})")
        axes[3].set_xticks(np.arange(len(gnames)), gnames, fontsize=7, rotation=30)
        axes[3].set_ylabel("group's E[r] (95% CI)")
        axes[3].set_title("per rater group")
        axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
