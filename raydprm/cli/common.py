"""Arguments shared by subcommands: ``--config FILE`` and ``key.sub=value`` overrides."""

from __future__ import annotations

import argparse

from raydprm.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", default=None,
                   help="YAML config file (see `raydprm config show`).")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="Config overrides, e.g. ppo.beta=0.1 rollout.engine=vllm")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
