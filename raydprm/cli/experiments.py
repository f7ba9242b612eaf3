"""`raydprm experiments pbde|length-bias|drift`: the density-estimation papers' toy experiments, and
the live-preference-shift experiment of the pipeline (reward-model refresh on vs off)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiments", help="Reproduce the PBDE paper's toy experiments (CPU, minutes).",
                       description="Toy experiments of 'A density estimation perspective on learning from "
                       "pairwise human preferences' (Dumoulin et al., TMLR 2024). Each writes PNG plots and "
                       "metrics.json under --out and prints its distance table.")
    esub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    a = esub.add_parser("pbde", help="1-D toys: BT recovers p*, DPO/Eq. 18 optima, misspecification, mixture fix, "
                        "SLiC and IPO sweeps.",
                        description="The 1-D setting of the paper: TV and KL to each theoretical optimum, mode "
                        "masses, the mixture model's learned weights.")
    b = esub.add_parser("length-bias", help="Tiny LMs as short/long annotators: Luce vs length-normalised rule, "
                        "annotator vs density mixtures.",
                        description="Table 2 and Figure 6 of the paper at toy scale.")
    c = esub.add_parser("drift", help="Live preference shift: the crowd changes mid-PPO; PPO with the reward model "
                        "refreshed from the store vs never refreshed, judged by the new crowd.",
                        description="Runs SFT -> collect -> reward once and PPO twice on Ray (pipeline.refresh_every "
                        "as configured vs 0), with the crowd voting on the policy's samples and switching to "
                        "pipeline.drift_mixture at pipeline.drift_step; the population judges the SFT and both tuned "
                        "policies under the new and the old mixture. Writes refresh_on/, refresh_off/, "
                        "drift_report.json, drift_report.md and drift_reward.png under --out (docs/pipeline.md).")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Config overrides on top of the experiment's settings (e.g. pipeline.drift_step=5).")
    c.add_argument("--no-progress", action="store_true", help="No progress bars.")
    for q, handler in ((a, _pbde), (b, _length_bias), (c, _drift)):
        q.add_argument("--out", required=True, metavar="DIR", help="Output directory (metrics.json, *.png).")
        q.add_argument("--quick", action="store_true", help="Small sizes for tests (well under a minute of CPU)."
                       if q is not c else "Tiny sizes (a few minutes of CPU).")
        q.add_argument("--seed", type=int, default=0, help="Seed (default 0).")
        q.set_defaults(handler=handler)


def _threads() -> None:
    import torch

    torch.set_num_threads(1)  # tiny models: extra intra-op threads only add contention


def _pbde(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from raydprm.experiments import pbde

    _threads()
    s = replace(pbde.QUICK if args.quick else pbde.FULL, seed=args.seed)
    pbde.run(args.out, settings=s)
    return 0


def _length_bias(args: argparse.Namespace) -> int:
    from raydprm.experiments import length_bias

    _threads()
    length_bias.run(args.out, quick=args.quick, seed=args.seed)
    return 0


def _drift(args: argparse.Namespace) -> int:
    from raydprm.experiments import drift

    rep = drift.run(args.out, quick=args.quick, seed=args.seed, overrides=args.overrides,
                    progress=not args.no_progress)
    for key in ("new_mixture", "old_mixture"):
        pol = rep[key]["policies"]
        print(f"{key}: E[r] " + ", ".join(f"{n} {pol[n]['expected_reward']:.3f}" for n in pol))
    print(args.out)
    return 0
