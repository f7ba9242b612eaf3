"""`raydprm experiments pbde|length-bias`: the density-estimation papers' toy experiments."""

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
    for q, handler in ((a, _pbde), (b, _length_bias)):
        q.add_argument("--out", required=True, metavar="DIR", help="Output directory (metrics.json, *.png).")
        q.add_argument("--quick", action="store_true", help="Small sizes for tests (well under a minute of CPU).")
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
