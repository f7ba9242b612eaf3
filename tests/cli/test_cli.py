"""The console script: --help everywhere, info, one-line errors for user mistakes."""

import subprocess
import sys

import pytest

from raydprm.cli import COMMAND_MODULES, build_parser, main


def _run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "raydprm.cli", *args], capture_output=True, text=True, timeout=timeout)


def _subcommands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_has_help(capsys):
    cmds = list(_subcommands(build_parser()))
    assert ("info",) in cmds and ("config", "show") in cmds
    for cmd in cmds:
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0, cmd
        assert "usage:" in capsys.readouterr().out


def test_command_modules_are_importable():
    import importlib

    for m in COMMAND_MODULES:
        assert hasattr(importlib.import_module(f"raydprm.cli.{m}"), "register")


def test_info_prints_versions():
    out = _run("info", "--timeout", "0.2")
    assert out.returncode == 0, out.stderr
    for name in ("torch", "ray", "transformers", "deepspeed", "vllm", "devices", "ray cluster"):
        assert name in out.stdout


def test_misspelled_key_in_config_file_is_one_line_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ppo:\n  betaa: 1\n")
    out = _run("config", "check", "--config", str(f))
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "ppo.betaa" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_every_config_command_rejects_the_misspelled_key(tmp_path, capsys):
    """Any subcommand that takes --config refuses an unknown key before doing work
    (required arguments are filled with dummies: the config error must come first)."""
    f = tmp_path / "bad.yaml"
    f.write_text("ppo:\n  betaa: 1\n")
    import argparse

    def takes_config(parser):
        return any("--config" in a.option_strings for a in parser._actions)

    def leaves(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if takes_config(sub):
                        yield (*prefix, name), sub
                    yield from leaves(sub, (*prefix, name))

    def dummies(parser):
        argv = []
        for a in parser._actions:
            if a.dest == "overrides" or isinstance(a, argparse._SubParsersAction):
                continue
            if not a.option_strings and a.nargs not in ("*", "?"):
                argv.append(str(tmp_path / "dummy"))
            elif a.option_strings and a.required:
                argv += [a.option_strings[0], str(tmp_path / "dummy")]
        return argv

    cmds = list(leaves(build_parser()))
    assert len(cmds) >= 3
    for cmd, sub in cmds:
        rc = main([*cmd, *dummies(sub), "--config", str(f)])
        err = capsys.readouterr().err
        assert rc == 2, cmd
        assert "ppo.betaa" in err and len(err.strip().splitlines()) == 1, (cmd, err)


def test_config_show_and_override():
    out = _run("config", "show", "ppo.beta=0.25")
    assert out.returncode == 0 and "beta: 0.25" in out.stdout
    bad = _run("config", "show", "rollout.engine=vlm")
    assert bad.returncode == 2 and "rollout.engine" in bad.stderr and "Traceback" not in bad.stderr
