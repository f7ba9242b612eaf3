"""The ``raydprm`` command line.

Each subcommand group lives in its own module of this package and exposes
``register(subparsers)``; heavy imports (torch, ray, ...) happen inside the handlers so
``raydprm --help`` stays fast.

Errors are one line on stderr, ``raydprm: error: ...``, and no traceback: user mistakes
(:class:`~raydprm.errors.RaydprmError`) and the environment's refusals (``OSError``: a
missing file, a read-only directory, a port in use) exit 2; anything else is a bug,
reported on one line as such with exit 1. ``raydprm --debug COMMAND`` (or
``RAYDPRM_DEBUG=1``) lets every exception through with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from raydprm.errors import RaydprmError

# Modules of this package that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = ["info", "config_cmd", "models_cmd", "run", "sweep", "rollout", "reward", "serve", "learner", "store", "experiments", "doctor"]


class UsageError(RaydprmError):
    """A command line that argparse cannot parse (unknown flag, bad value)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``raydprm: error:`` line (not usage + message), and every
    leaf command (one without subcommands) parses its options and positionals intermixed: options
    and ``key=value`` overrides in any order (``sweep SPACE.yaml --smoke run.name=x``). Plain
    argparse stops filling a ``nargs='*'`` positional at the first option, so the overrides after
    it were "unrecognized arguments". The subcommand action hands the rest of the line to the leaf's
    ``parse_known_args``, which is where the intermixed parse goes in."""

    _intermixing = False  # set while parse_known_intermixed_args calls back into parse_known_args

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="raydprm",
        description="Distributional preference reward modelling + PPO on Ray. "
        "Every subcommand has --help.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="Show the full traceback of an error (also: RAYDPRM_DEBUG=1).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"raydprm.cli.{name}").register(sub)
    for path, leaf in leaves(parser):
        # one grammar: every command takes --no-progress (no bar at all, the libraries' included)
        if not any("--no-progress" in a.option_strings for a in leaf._actions):
            leaf.add_argument("--no-progress", action="store_true",
                              help="No progress bars (the libraries' too: datasets, transformers, the hub).")
        leaf.set_defaults(command_name=" ".join(["raydprm", *path]))
    return parser


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(names, parser)`` of every command without subcommands (an alias's parser once)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        seen: set[int] = set()
        for name, p in action.choices.items():
            if id(p) not in seen:
                seen.add(id(p))
                yield from leaves(p, (*path, name))


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("RAYDPRM_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line, not only first
    try:
        args = parser.parse_args(argv)
        debug = debug or args.debug
        if getattr(args, "no_progress", False):
            from raydprm.cli.common import quiet_progress

            quiet_progress()
        rc = args.handler(args)
    except KeyboardInterrupt:
        print("raydprm: interrupted", file=sys.stderr)
        return 130
    except RaydprmError as e:
        if debug:
            raise
        print(f"raydprm: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment refused: a file, a directory, a port
        if debug:
            raise
        where = f" '{e.filename}'" if getattr(e, "filename", None) else ""
        print(f"raydprm: error: {_one_line(e.strerror or e)}{where}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line, the traceback is one flag away
        if debug:
            raise
        print(f"raydprm: error: unexpected {type(e).__name__}: {_one_line(e, 300)} (a bug; rerun with "
              "`raydprm --debug ...` for the traceback)", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
