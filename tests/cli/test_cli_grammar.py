"""One grammar for every subcommand: options and ``key=value`` overrides in any order (issue 25, part 6).

The walk below visits every leaf command of the parser (a command without subcommands), builds a
command line from its own options, and parses it with the positionals before, between and after
the options: all orders must give the same namespace.
"""

import argparse

import pytest

from raydprm.cli import build_parser, main


def _leaves(parser, prefix=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        seen = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias (`demo` for `run`) is the same parser
                continue
            seen.add(id(sub))
            yield from _leaves(sub, (*prefix, name))


def _options(parser) -> list[list[str]]:
    """One argv chunk per option of ``parser``: the flag, plus a value it accepts."""
    out = []
    for a in parser._actions:
        if not a.option_strings or isinstance(a, argparse._HelpAction):
            continue
        if a.nargs == 0:  # store_true / store_const
            out.append([a.option_strings[-1]])
        else:
            out.append([a.option_strings[-1], str(a.choices[0]) if a.choices else "1"])
    return out


def _positionals(parser) -> list[str]:
    out = []
    for a in parser._actions:
        if a.option_strings or isinstance(a, argparse._SubParsersAction):
            continue
        if a.nargs in ("*", "+"):
            out += ["ppo.beta=0.1", "run.name=x"]
        elif a.nargs != "?":
            out.append("thing")
    return out


LEAVES = list(_leaves(build_parser()))


def test_the_walk_sees_every_command():
    names = {" ".join(cmd) for cmd, _ in LEAVES}
    assert {"run", "sweep", "config check", "store stats", "store init", "rollout generate", "serve"} <= names
    assert len(LEAVES) >= 20


@pytest.mark.parametrize("cmd,parser", LEAVES, ids=[" ".join(c) for c, _ in LEAVES])
def test_options_and_overrides_in_any_order(cmd, parser):
    top = build_parser()
    opts, pos = _options(parser), _positionals(parser)
    flat = [x for chunk in opts for x in chunk]
    half = len(pos) // 2
    orders = [[*pos, *flat], [*flat, *pos], [*pos[:half], *flat, *pos[half:]],
              [*[x for chunk in reversed(opts) for x in chunk], *pos]]
    if opts:  # a positional between every two options
        mixed, rest = [], list(pos)
        for chunk in opts:
            mixed += chunk + rest[:1]
            rest = rest[1:]
        orders.append(mixed + rest)
    parsed = [vars(top.parse_args([*cmd, *argv])) for argv in orders]
    for argv, ns in zip(orders[1:], parsed[1:]):
        assert ns == parsed[0], (cmd, argv)


def test_every_command_with_a_config_takes_overrides():
    for cmd, parser in LEAVES:
        dests = {a.dest for a in parser._actions}
        if "config" in dests:
            assert "overrides" in dests, cmd


def test_sweep_takes_overrides_after_an_option(capsys):
    """`raydprm sweep SPACE --smoke k=v` was 'unrecognized arguments'; now the overrides reach the sweep."""
    ns = build_parser().parse_args(["sweep", "sweeps/beta.yaml", "--smoke", "run.output_dir=x", "--until", "ppo",
                                    "ppo.steps=2"])
    assert ns.args == ["sweeps/beta.yaml", "run.output_dir=x", "ppo.steps=2"] and ns.smoke and ns.until == "ppo"
    # through main: a bad override is reported as the config error, not as an unknown argument
    rc = main(["sweep", "sweeps/beta.yaml", "--smoke", "ppo.betaa=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "ppo.betaa" in err and "unrecognized" not in err, err


def test_unknown_option_is_still_one_line():
    with pytest.raises(Exception) as e:
        build_parser().parse_args(["config", "check", "ppo.beta=1", "--nope"])
    assert "unrecognized arguments: --nope" in str(e.value)
