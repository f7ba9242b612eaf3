"""`raydprm run` entry points: the CLI command, its `demo` alias and the Ray job script."""

from pathlib import Path

from raydprm.cli import COMMAND_MODULES, build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_run_is_a_command_and_demo_is_its_alias():
    assert "run" in COMMAND_MODULES
    p = build_parser()
    a, b = p.parse_args(["run", "--resume", "x"]), p.parse_args(["demo", "--smoke", "ppo.steps=2"])
    assert a.handler is b.handler and a.resume == "x" and b.smoke and b.overrides == ["ppo.steps=2"]


def test_job_script_delegates_to_run_and_make_demo_calls_run():
    assert 'main(["run", *sys.argv[1:]])' in (ROOT / "jobs" / "run.py").read_text()
    assert "raydprm.cli run" in (ROOT / "Makefile").read_text()
