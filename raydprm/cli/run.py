"""`raydprm run` (alias `raydprm demo`): the pipeline on the embedded default, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from raydprm.cli.common import add_config_args, check_model_refs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", aliases=["demo"], help="Run SFT -> collect -> reward -> PPO -> evaluate on Ray (resumable).",
        description="The RLHF pipeline as resumable stages on Ray, on the embedded default (local Ray, tiny "
        "models, simulated crowd, SQLite store). Writes config.yaml, state.json, one record per stage, "
        "report.json, report.md and report.png under <run.output_dir>/<run.name> (or the --resume directory) "
        "and prints that directory last.")
    add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="Continue a run from its last completed stage and PPO checkpoint (its config.yaml, plus "
                   "any overrides given; a stage whose inputs changed is redone).")
    p.add_argument("--compare", action="store_true",
                   help="Train and evaluate the paper's five policies (vanilla, bt, dprm_c, dprm_w, dprm_ot) on one "
                   "SFT and one store, equal PPO budgets, over --seeds seeds; run.name defaults to 'compare'.")
    p.add_argument("--policies", metavar="A,B,...", default=None,
                   help="The policies of a comparison (implies --compare), e.g. vanilla,bt,dprm_ot,dpo,crowd_dpo; "
                   "any of vanilla, bt, dprm_c, dprm_w, dprm_ot, the critic-free bt_grpo, bt_rloo, dprm_ot_grpo, "
                   "dprm_ot_rloo, the pluralistic dprm_ot_wg (group-conditioned DPRM-OT, worst_group objective) "
                   "and the direct-alignment algorithms (align.algo).")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="Seeds per policy of a comparison (pipeline.seeds, default 3).")
    p.add_argument("--smoke", action="store_true", help="Tiny sizes (for tests / a quick check).")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from raydprm.cluster.pipeline import Pipeline
    from raydprm.cluster.run_plan import SMOKE_OVERRIDES, resolve_run_dir, resume_dir
    from raydprm.config import load_config

    if args.resume and args.config:
        from raydprm.errors import ConfigError

        raise ConfigError("--resume takes the run's own config.yaml; pass overrides, not --config")
    base = resume_dir(args.resume) / "config.yaml" if args.resume else args.config
    # validate before work
    cfg = load_config(base, [*(SMOKE_OVERRIDES if args.smoke else []), *args.overrides, *_compare_overrides(args)])
    from raydprm.train.reward_data import config_with_store_labels

    cfg = config_with_store_labels(cfg)  # a run on a store takes the store's label scale
    # what would otherwise fail minutes in, inside a Ray actor, with a page of traceback
    check_model_refs(cfg, "models.policy", "models.reward_backbone", "models.tokenizer", "engine.reference",
                     "ppo.critic_model")
    from raydprm.cluster.placement import check_sizes

    check_sizes(cfg)  # also in the pipeline's pre-flight; here it comes before the pipeline's imports
    if not args.resume:
        _check_creatable(cfg)
    if cfg.store.path and Path(cfg.store.path).is_file():  # an existing store must agree with the config
        from raydprm.store import PreferenceStore

        PreferenceStore.from_config(cfg.store, cfg.labels, readonly=True).close()
    run_dir = resolve_run_dir(cfg, args.resume)
    logging.basicConfig(level=cfg.run.log_level, format="%(levelname)s %(name)s: %(message)s")
    Pipeline(cfg, run_dir, progress=not args.no_progress).fit()
    print(run_dir)
    return 0


def _compare_overrides(args: argparse.Namespace) -> list[str]:
    """--compare / --policies / --seeds as config overrides (so config.yaml records them and --resume keeps them)."""
    from raydprm.config import COMPARE_POLICIES
    from raydprm.errors import ConfigError

    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.policies is not None:
        names = [n.strip() for n in args.policies.split(",") if n.strip()]
        if not names:
            raise ConfigError("--policies needs at least one policy name, e.g. --policies vanilla,dprm_ot")
    elif args.compare:
        names = list(COMPARE_POLICIES)
    else:
        if args.seeds is not None:
            raise ConfigError("--seeds is for a comparison: add --compare (or --policies)")
        return []
    out = [f"pipeline.policies=[{','.join(names)}]"]
    if args.seeds is not None:
        out.append(f"pipeline.seeds={args.seeds}")
    if not args.resume and not any(o.startswith("run.name=") for o in args.overrides):
        out.append("run.name=compare")
    return out


def _check_creatable(cfg) -> None:
    """One line, before any work, when ``run.output_dir/run.name`` cannot be a directory."""
    from raydprm.errors import ConfigError

    d = cfg.run.run_dir
    for p in (d, *d.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"cannot create the run directory '{d}' (run.output_dir = '{cfg.run.output_dir}', "
                                  f"run.name = '{cfg.run.name}'): '{p}' is a file")
            return
