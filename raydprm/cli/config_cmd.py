"""`raydprm config show|check`: print the resolved config or validate a file."""

from __future__ import annotations

import argparse

import yaml

from raydprm.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="Show or check a configuration.",
                       description="Show the resolved config (defaults + file + overrides) or check a file.")
    csub = p.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    show = csub.add_parser("show", help="Print the resolved config as YAML (with --doc: every key, its default, allowed values and meaning).")
    add_config_args(show)
    show.add_argument("--doc", action="store_true", help="List every key with its allowed values and documentation.")
    show.set_defaults(handler=_show)
    check = csub.add_parser("check", help="Validate a config file and overrides (sizes against the policy's positions too); exit 0 if valid.")
    add_config_args(check)
    check.set_defaults(handler=_check)


def _show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.doc:
        from raydprm.config import describe

        for key, default, allowed, doc in describe():
            print(f"{key} = {default!r}\n    {doc} Allowed: {allowed}.")
        return 0
    print(yaml.safe_dump(cfg.to_dict(mask_secrets=True), sort_keys=False), end="")  # secrets as <redacted>
    return 0


def _check(args: argparse.Namespace) -> int:
    from raydprm.cluster.placement import check_sizes

    cfg = config_from_args(args)
    check_sizes(cfg)  # the sizes against the policy's positions, as the run's pre-flight does
    print("config OK")
    return 0
