"""The ``raydprm`` command line.

Each subcommand group lives in its own module of this package and exposes
``register(subparsers)``; heavy imports (torch, ray, ...) happen inside the handlers so
``raydprm --help`` stays fast.

Errors are one line on stderr, ``raydprm: error: ...``, and no traceback: user mistakes
(:class:`~raydprm.errors.RaydprmError`) and the environment's refusals (``OSError``: a
missing file, a read-only directory, a port in use) exit 2; anything else is a bug,
reported on one line as such with exit 1. ``raydprm --debug COMMAND`` (or
``RAYDPRM_DEBUG=1``) lets every exception through with its traceback. A full disk, however
deep it was found (a Ray actor's safetensors error, SQLite's "database or disk is full"), is
one line naming the path and exits 2. SIGTERM and SIGINT print one line and exit 143 and 130,
after every ``finally`` ran (actors, Serve and an owned Ray shut down), even where a Ray wait
turned the signal into another exception.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from raydprm.errors import (
    DiskFull,
    RaydprmError,
    install_signal_handlers,
    is_disk_full,
    received_signal,
    restore_signal_handlers,
)

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
    old_handlers = install_signal_handlers()
    try:
        args = parser.parse_args(argv)
        debug = debug or args.debug
        if getattr(args, "no_progress", False):
            from raydprm.cli.common import quiet_progress

            quiet_progress()
        rc = args.handler(args)
    except BaseException as e:  # noqa: BLE001 - every way out is one line (or the traceback with --debug)
        return _report(e, debug)
    finally:
        restore_signal_handlers(old_handlers)  # main() called in-process (tests) leaves the caller's handlers
    return int(rc or 0)


def _report(e: BaseException, debug: bool) -> int:
    """The one line (and exit status) for an exception that ended a command."""
    import signal

    sig = received_signal()
    if sig is not None:  # whatever the signal turned into on its way out (a Ray wait makes it SystemExit(1))
        how = "interrupted" if sig == signal.SIGINT else "terminated"
        print(f"raydprm: {how} by {signal.Signals(sig).name}", file=sys.stderr)
        return 128 + sig
    if isinstance(e, KeyboardInterrupt):
        print("raydprm: interrupted", file=sys.stderr)
        return 130
    if isinstance(e, SystemExit) or not isinstance(e, Exception) or debug:
        raise e
    if isinstance(e, DiskFull) or (isinstance(e, RaydprmError) and not (is_disk_full(e) and _failed_path(e))):
        print(f"raydprm: error: {_one_line(e)}", file=sys.stderr)
        return 2
    if is_disk_full(e):  # a library's error deep inside (an actor's, SQLite's): name the path it knows
        path = _failed_path(e)
        where = f" writing '{path}'" if path else ""
        print(f"raydprm: error: no space left on the device{where} ({_one_line(e, 200)}); free space there "
              "(or point the output elsewhere) and run again", file=sys.stderr)
        return 2
    if isinstance(e, OSError):  # the environment refused: a file, a directory, a port
        where = f" '{e.filename}'" if getattr(e, "filename", None) else ""
        print(f"raydprm: error: {_one_line(e.strerror or e)}{where}", file=sys.stderr)
        return 2
    # a bug: still one line, the traceback is one flag away
    print(f"raydprm: error: unexpected {type(e).__name__}: {_one_line(e, 300)} (a bug; rerun with "
          "`raydprm --debug ...` for the traceback)", file=sys.stderr)
    return 1


def _failed_path(e: BaseException | None) -> str | None:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "filename", None):
            return str(e.filename)
        e = getattr(e, "cause", None) or e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
