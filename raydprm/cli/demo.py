"""`raydprm demo`: the end-to-end path on the embedded default (local Ray, tiny models, SQLite)."""

from __future__ import annotations

import argparse

from raydprm.cli.common import add_config_args, check_model_refs, config_from_args, ensure_run_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="Run SFT -> crowd -> store -> DPRM -> PPO -> evaluation end to end on Ray.",
        description="Every component once, as Ray actors, on the embedded default (tiny models, simulated "
        "crowd, SQLite store). Writes config.yaml, report.md, metrics.json and demo.png under "
        "<run.output_dir>/<run.name>. Takes a few minutes on a laptop CPU.")
    add_config_args(p)
    p.add_argument("--smoke", action="store_true", help="Tiny sizes (for tests / a quick check): ~1 minute.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # validate before any work
    if args.smoke:
        from raydprm.cluster.demo import SMOKE_OVERRIDES

        cfg = cfg.override([*SMOKE_OVERRIDES, *args.overrides])
    # what would otherwise fail minutes in, inside a Ray actor, with a page of traceback
    check_model_refs(cfg, "models.policy", "models.reward_backbone", "models.tokenizer", "ppo.reference",
                     "ppo.critic_model")
    run_dir = ensure_run_dir(cfg)
    from raydprm.store import PreferenceStore

    # the store's parameters agree with the config, the file is writable and not corrupt
    PreferenceStore.from_config(cfg.store, cfg.labels, default_path=run_dir / "store.db").close()
    import logging

    logging.basicConfig(level=cfg.run.log_level, format="%(levelname)s %(name)s: %(message)s")
    from raydprm.cluster.demo import run_demo

    run_demo(cfg, progress=not args.no_progress)
    return 0
