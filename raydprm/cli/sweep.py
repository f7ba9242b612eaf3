"""`raydprm sweep SPACE.yaml [key=value ...]`: a Ray Tune sweep of the pipeline (raydprm.tune)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="Ray Tune sweep of the pipeline over dotted config keys (SPACE.yaml; resumable).",
        description="Runs one pipeline per trial of the search space in SPACE.yaml (see sweeps/ and "
        "docs/sweeps.md) with Ray Tune, each trial on a placement group of its own actors' bundles. "
        "Writes results.csv, results.md and plots into <run.output_dir>/<sweep name> (or the --resume "
        "directory) and prints that directory last.")
    p.add_argument("args", nargs="*", metavar="SPACE.yaml | key.sub=value",
                   help="The sweep file, then config overrides applied to every trial (e.g. ppo.steps=10).")
    p.add_argument("--resume", metavar="SWEEP_DIR", default=None,
                   help="Continue an interrupted sweep (Tuner.restore): finished trials stay, unfinished ones "
                   "continue from their last checkpoint. Takes the sweep's saved config; no overrides.")
    p.add_argument("--smoke", action="store_true", help="Tiny sizes (the pipeline's and the sweep file's smoke keys).")
    p.add_argument("--max-concurrent", type=int, default=0, metavar="N",
                   help="At most N trials at once (default: the sweep file's max_concurrent, else what fits).")
    p.add_argument("--until", choices=("ppo", "evaluate"), default=None,
                   help="Last pipeline stage of each trial (default evaluate: the held-out population judges "
                   "each trial's policy).")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from raydprm.cluster.run_plan import SMOKE_OVERRIDES
    from raydprm.cluster.runtime import in_ray_job
    from raydprm.config import load_config
    from raydprm.errors import ConfigError
    from raydprm.tune.space import load_space

    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if args.max_concurrent < 0:
        raise ConfigError("--max-concurrent must be >= 0")
    if args.resume:
        sweep_dir = Path(args.resume).resolve()
        marker = sweep_dir / ".raydprm-sweep.json"
        if not marker.is_file():
            raise ConfigError(f"--resume {args.resume}: not a sweep directory (no .raydprm-sweep.json)")
        if overrides or args.smoke:
            raise ConfigError("--resume continues with the sweep's saved config: no overrides and no --smoke")
        saved = json.loads(marker.read_text())
        base = load_config(sweep_dir / "base_config.yaml")
        if files:
            space = load_space(files[0], base=base)
        else:
            from raydprm.tune.sweep import load_saved_space

            space = load_saved_space(sweep_dir)
        until = args.until or saved.get("until", "evaluate")
    else:
        if len(files) != 1:
            raise ConfigError(f"give one sweep file (SPACE.yaml) and key=value overrides, got {files or 'none'}")
        head = load_space(files[0], check=False)
        base = load_config(head.base_config, [*head.overrides, *(SMOKE_OVERRIDES if args.smoke else []),
                                              *(head.smoke if args.smoke else []), *overrides])
        space = load_space(files[0], base=base)
        from raydprm.cluster.placement import check_sizes

        check_sizes(base)  # before Tune starts (every trial checks its own config in its pre-flight)
        out = Path(base.run.output_dir)
        if in_ray_job() and not out.is_absolute():
            raise ConfigError(f"run.output_dir = '{out}' is relative: inside a Ray job give an absolute path every "
                              "node mounts (e.g. run.output_dir=/mnt/raydprm/runs)")
        name = base.run.name if any(o.startswith("run.name=") for o in overrides) else space.name
        sweep_dir = (out / name).resolve()
        if (sweep_dir / ".raydprm-sweep.json").exists():
            raise ConfigError(f"sweep directory '{sweep_dir}' already holds a sweep: continue it with "
                              f"`raydprm sweep --resume {sweep_dir}` or name a new one with run.name=<name>")
        until = args.until or "evaluate"
    logging.basicConfig(level=base.run.log_level, format="%(levelname)s %(name)s: %(message)s")
    from raydprm.tune.sweep import run_sweep

    run_sweep(space, base, sweep_dir, resume=bool(args.resume), cap=args.max_concurrent, until=until)
    print(sweep_dir)
    return 0
