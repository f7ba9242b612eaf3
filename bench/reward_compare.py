"""DPRM_OT vs DPRM_W vs DPRM_C on the simulated crowd, identical budgets.

The paper's claim (arXiv 2402.09764): training the DPRM with an OT loss whose cost
follows the label geometry fits crowd distributions better than cross-entropy or an
ordinal Wasserstein loss. Here, with the tiny offline backbone:

1. the simulated crowd (``raydprm.sim``, 6 personas) votes ``--votes`` times on each of
   ``--n-items`` world items; votes go into a real preference store (SQLite) whose
   export (posterior means) is the training data;
2. items are split (seeded) into train / validation / test;
3. each loss is trained for the same number of optimizer steps at each learning rate of
   ``--lrs`` and each seed; the checkpoint and the learning rate are chosen on
   validation OT distance (the same selection rule for every loss);
4. reported on the test items: mean OT distance (cost ``reward_gap``, and ``grid_l1``),
   expected-reward error and CE, both against the store's targets (what was trained
   on) and against the crowd's *exact* distributions (Eq. P1 of ``sim.personas``;
   no vote noise, no Dirichlet prior);
5. 95% intervals for each loss's mean test OT distance and for every pairwise difference
   of losses (issue 11, part 4), from the per-item distances laid out (seeds x test items):
   a two-way percentile bootstrap (``raydprm.evaluate.stats.bootstrap_ci``: each resample
   draws the seeds and the test items with replacement, the same draws for every loss, so
   differences are paired), and as a cross-check a paired Student t-interval over the
   seeds' item-averaged values (training randomness only; the test items held fixed). A
   difference is called *resolved* when its bootstrap interval excludes 0.

    python bench/reward_compare.py                 # full run (minutes on 2 CPU cores)
    python bench/reward_compare.py --smoke         # seconds; checks the script runs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sstats

from raydprm.config import Config
from raydprm.core.label_scale import LabelScale
from raydprm.evaluate.stats import bootstrap_ci
from raydprm.models.dprm import DPRM
from raydprm.sim.personas import Population
from raydprm.train.reward import evaluate_reward_model, resolve_cost, train_reward
from raydprm.train.reward_data import RewardExamples, examples_from_dataset, simulate_store_export
from raydprm.train.reward_metrics import ot_distance

LOSSES = {"DPRM_OT": dict(loss="ot", cost="reward_gap"),  # the paper's OT: cost = reward gap, exact
          "DPRM_OT_grid": dict(loss="ot", cost="grid_l1"),  # OT with a cost that separates tied rewards
          "DPRM_OT_sinkhorn": dict(loss="ot", cost="reward_gap", ot_method="sinkhorn"),  # entropic OT, smooth
          "DPRM_W": dict(loss="wasserstein"),  # W1 on the label index
          "DPRM_C": dict(loss="ce")}


def split3(ex: RewardExamples, seed: int, fval: float = 0.15, ftest: float = 0.25):
    perm = np.random.default_rng(seed).permutation(len(ex))
    nt, nv = int(round(ftest * len(ex))), int(round(fval * len(ex)))
    return ex.subset(sorted(perm[nt + nv:])), ex.subset(sorted(perm[nt:nt + nv])), ex.subset(sorted(perm[:nt]))


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student t-interval of the mean of ``x`` (S,) with S - 1 degrees of freedom (nan if S < 2)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = sstats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def intervals(per_item: dict[str, np.ndarray], n_boot: int, seed: int = 0) -> dict[str, dict]:
    """Means and 95% intervals of each loss's (S, N) per-item values and of every pairwise
    difference (row minus column loss; paired over the same resampled seeds and items)."""
    names = list(per_item)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]

    def stat(**x):
        m = {k: v.mean() for k, v in x.items()}
        return [m[k] for k in names] + [m[a] - m[b] for a, b in pairs]

    lo, hi = bootstrap_ci(per_item, stat, n_boot=n_boot, seed=seed)
    point = stat(**per_item)
    out: dict[str, dict] = {"loss": {}, "diff": {}}
    for i, k in enumerate(names):
        out["loss"][k] = {"mean": float(point[i]), "boot95": [float(lo[i]), float(hi[i])],
                          "t95_seeds": list(t_interval(per_item[k].mean(1)))}
    for j, (a, b) in enumerate(pairs, start=len(names)):
        d = per_item[a].mean(1) - per_item[b].mean(1)  # (S,) paired by seed
        ci = [float(lo[j]), float(hi[j])]
        out["diff"][f"{a} - {b}"] = {"mean": float(point[j]), "boot95": ci, "t95_seeds": list(t_interval(d)),
                                     "resolved": bool(ci[0] > 0 or ci[1] < 0)}
    return out


def interval_lines(title: str, iv: dict[str, dict]) -> list[str]:
    f = "[{:.4f}, {:.4f}]".format
    lines = [f"**{title}**", "", "| loss | mean | 95% bootstrap (seeds x items) | 95% t over seeds |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.4f} | {f(*v['boot95'])} | {f(*v['t95_seeds'])} |" for k, v in iv["loss"].items()]
    lines += ["", "| difference | mean | 95% bootstrap (seeds x items) | 95% t over seeds | resolved (bootstrap excludes 0) |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:+.4f} | {f(*v['boot95'])} | {f(*v['t95_seeds'])} | "
              f"{'yes' if v['resolved'] else 'no'} |" for k, v in iv["diff"].items()]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-items", type=int, default=480)
    ap.add_argument("--votes", type=int, default=12, help="votes per item")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backbone", default="tiny-opt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model)")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    ap.add_argument("--targets", choices=("store", "true"), default="store",
                    help="train on the store's posterior means (default) or on the crowd's exact distributions")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the 95%% intervals")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one lr, two seeds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_items, args.votes, args.epochs, args.lrs, args.seeds = 60, 6, 1, [1e-2], [0, 1]
        args.n_boot = 200
    torch.set_num_threads(args.threads)
    cfg = Config().override([f"crowd.n_items={args.n_items}", f"crowd.votes_per_item={args.votes}"])
    scale = LabelScale.from_config(cfg.labels)
    costs = {"reward_gap": resolve_cost("reward_gap", scale), "grid_l1": resolve_cost("grid_l1", scale)}
    pop = Population.from_config(cfg.crowd)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ds = simulate_store_export(Path(tmp) / "store.db", crowd_cfg=cfg.crowd, store_cfg=cfg.store,
                                   labels_cfg=cfg.labels, seed=0)
        ex = examples_from_dataset(ds, scale.num_labels)
        if args.targets == "true":  # no vote noise, no prior: the mechanism in isolation
            ex = RewardExamples(ex.prompts, ex.responses, torch.tensor(pop.true_distributions(ex.prompts, ex.responses)),
                                ex.persona_names, ex.persona_counts)
        train, val, test = split3(ex, seed=0)
        true_test = RewardExamples(test.prompts, test.responses,
                                   torch.tensor(pop.true_distributions(test.prompts, test.responses)))
        store_test = test
        print(f"items: {len(ex)} (train {len(train)}, val {len(val)}, test {len(test)}); "
              f"{args.votes} votes/item; backbone {args.backbone}", file=sys.stderr)
        losses = {k: LOSSES[k] for k in args.losses}
        results: dict[str, list[dict]] = {k: [] for k in losses}
        # per-item held-out OT distance (reward-gap cost), (S, N) per loss, for the intervals
        per_item: dict[str, dict[str, list]] = {"true": {k: [] for k in losses}, "store": {k: [] for k in losses}}
        for name, kw in losses.items():
            for seed in args.seeds:
                best = None
                for lr in args.lrs:
                    rc = cfg.override([f"reward.{k}={v}" for k, v in kw.items()] + [
                        f"reward.epochs={args.epochs}", f"reward.batch_size={args.batch_size}", f"reward.lr={lr!r}",
                        "reward.patience=0", "reward.eval_every=0"]).reward
                    out = Path(tmp) / f"{name}-{seed}-{lr}"
                    res = train_reward(train, scale=scale, reward_cfg=rc, backbone=args.backbone, out_dir=out,
                                       seed=seed, eval_data=val, tb_dir=None, progress=False)
                    v = res.best_metrics["ot_distance"]
                    if best is None or v < best[0]:
                        best = (v, lr, res.best_dir, res.steps)
                _, lr, best_dir, steps = best
                model = DPRM.load(best_dir, scale)
                row = {"seed": seed, "lr": lr, "steps": steps, "val_ot": best[0]}
                for tag, data in (("store", test), ("true", true_test)):
                    m = evaluate_reward_model(model, data, scale, costs["reward_gap"])
                    m_grid = evaluate_reward_model(model, data, scale, costs["grid_l1"])
                    row[tag] = {"ot_reward_gap": m["ot_distance"], "ot_grid_l1": m_grid["ot_distance"],
                                "er_error": m["er_error"], "ce": m["ce"], "ece": m["ece"],
                                "rank_corr": m["rank_corr"]}
                    mu = model.score(data.prompts, data.responses).distribution.double()  # (N, L)
                    d = ot_distance(mu, data.targets, costs["reward_gap"]).numpy()  # (N,)
                    assert abs(d.mean() - m["ot_distance"]) < 1e-4, "per-item OT must average to the reported mean"
                    per_item[tag][name].append(d)
                results[name].append(row)
                print(f"{name} seed {seed}: lr {lr:g}, {steps} steps, test/true OT {row['true']['ot_reward_gap']:.4f} "
                      f"ER err {row['true']['er_error']:.4f}", file=sys.stderr)
        # reference points: the uniform predictor and the train-set mean distribution
        mean_mu = train.targets.mean(0, keepdim=True)
        refs = {}
        for tag, data in (("store", test), ("true", true_test)):
            for ref_name, mu in (("uniform", torch.full_like(data.targets, 1 / 6)),
                                 ("train_mean", mean_mu.expand_as(data.targets)),
                                 ("training target itself", store_test.targets)):
                from raydprm.train.reward_metrics import distribution_metrics

                m = distribution_metrics(mu, data.targets, scale.reward_tensor(), costs["reward_gap"])
                refs.setdefault(ref_name, {})[tag] = {"ot_reward_gap": m["ot_distance"], "er_error": m["er_error"],
                                                      "ce": m["ce"]}
    ivs = {tag: intervals({k: np.stack(v) for k, v in per_item[tag].items()}, args.n_boot) for tag in per_item}
    secs = time.perf_counter() - t0

    def agg(name, tag, key):
        xs = [r[tag][key] for r in results[name]]
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    lines = [f"Machine: {platform.machine()} container, {torch.get_num_threads()} torch thread(s), CPU only; "
             f"date {date.today().isoformat()}; wall {secs:.0f} s.",
             f"Data: {len(ex)} simulated items x {args.votes} votes (6 personas) -> SQLite store export; "
             f"trained on {'the store posterior means' if args.targets == 'store' else 'the exact crowd distributions'}; "
             f"split train {len(train)} / val {len(val)} / test {len(test)}. Backbone {args.backbone}; "
             f"{args.epochs} epochs x batch {args.batch_size} for every loss; lr chosen from {args.lrs} on val OT; "
             f"seeds {args.seeds} (mean ± std).", "",
             "| loss | test OT (reward_gap) vs crowd truth | test ER error vs truth | test OT vs store targets "
             "| test ER error vs store | test OT (grid_l1) vs truth | CE vs truth | rank corr |",
             "|---|---|---|---|---|---|---|---|"]
    for name in losses:
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (agg(name, "true", "ot_reward_gap"), agg(name, "true", "er_error"),
                                                   agg(name, "store", "ot_reward_gap"),
                                                   agg(name, "store", "er_error"),
                                                   agg(name, "true", "ot_grid_l1"), agg(name, "true", "ce"),
                                                   agg(name, "true", "rank_corr"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for ref_name, d in refs.items():
        lines.append(f"| ({ref_name} predictor) | {d['true']['ot_reward_gap']:.4f} | {d['true']['er_error']:.4f} | "
                     f"{d['store']['ot_reward_gap']:.4f} | {d['store']['er_error']:.4f} | - | {d['true']['ce']:.4f} | - |")
    n_test = len(per_item["true"][next(iter(losses))][0])
    lines += ["", f"95% intervals of the mean held-out OT distance (reward-gap cost) over {len(args.seeds)} seeds x "
                  f"{n_test} test items ({args.n_boot} two-way bootstrap resamples; differences paired; "
                  f"'resolved' = the bootstrap interval excludes 0):", ""]
    lines += interval_lines("vs crowd truth", ivs["true"]) + [""] + interval_lines("vs store targets", ivs["store"])
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "refs": refs,
                                               "intervals": ivs, "seconds": secs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
