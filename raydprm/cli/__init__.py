"""The ``raydprm`` command line.

Each subcommand group lives in its own module of this package and exposes
``register(subparsers)``; heavy imports (torch, ray, ...) happen inside the handlers so
``raydprm --help`` stays fast. User mistakes (:class:`~raydprm.errors.RaydprmError`)
print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from raydprm.errors import RaydprmError

# Modules of this package that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = ["info", "config_cmd", "models_cmd", "run", "rollout", "reward", "serve", "learner", "store"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydprm",
        description="Distributional preference reward modelling + PPO on Ray. "
        "Every subcommand has --help.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"raydprm.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.handler(args)
    except RaydprmError as e:
        print(f"raydprm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raydprm: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
