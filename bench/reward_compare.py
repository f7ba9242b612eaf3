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
   no vote noise, no Dirichlet prior).

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

from raydprm.config import Config
from raydprm.core.label_scale import LabelScale
from raydprm.models.dprm import DPRM
from raydprm.sim.personas import Population
from raydprm.train.reward import evaluate_reward_model, resolve_cost, train_reward
from raydprm.train.reward_data import RewardExamples, examples_from_dataset, simulate_store_export

LOSSES = {"DPRM_OT": dict(loss="ot", cost="reward_gap"),  # the paper's OT: cost = reward gap, exact
          "DPRM_OT_grid": dict(loss="ot", cost="grid_l1"),  # OT with a cost that separates tied rewards
          "DPRM_OT_sinkhorn": dict(loss="ot", cost="reward_gap", ot_method="sinkhorn"),  # entropic OT, smooth
          "DPRM_W": dict(loss="wasserstein"),  # W1 on the label index
          "DPRM_C": dict(loss="ce")}


def split3(ex: RewardExamples, seed: int, fval: float = 0.15, ftest: float = 0.25):
    perm = np.random.default_rng(seed).permutation(len(ex))
    nt, nv = int(round(ftest * len(ex))), int(round(fval * len(ex)))
    return ex.subset(sorted(perm[nt + nv:])), ex.subset(sorted(perm[nt:nt + nv])), ex.subset(sorted(perm[:nt]))


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
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one lr and seed")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_items, args.votes, args.epochs, args.lrs, args.seeds = 60, 6, 1, [1e-2], [0]
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
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "refs": refs,
                                               "seconds": secs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
