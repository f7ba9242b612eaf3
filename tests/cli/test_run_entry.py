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


def test_compare_flags_become_config_overrides():
    import pytest

    from raydprm.cli.run import _compare_overrides
    from raydprm.config import load_config
    from raydprm.errors import ConfigError

    p = build_parser()
    ov = _compare_overrides(p.parse_args(["run", "--compare"]))
    cfg = load_config(None, ov)
    assert cfg.pipeline.policies == ("vanilla", "bt", "dprm_c", "dprm_w", "dprm_ot") and cfg.pipeline.seeds == 3
    assert cfg.run.name == "compare"  # never into the single run's runs/demo
    ov = _compare_overrides(p.parse_args(["run", "--policies", "vanilla, dpo,crowd_dpo", "--seeds", "2", "run.name=x"]))
    cfg = load_config(None, ["run.name=x", *ov])
    assert cfg.pipeline.policies == ("vanilla", "dpo", "crowd_dpo") and cfg.pipeline.seeds == 2 and cfg.run.name == "x"
    assert _compare_overrides(p.parse_args(["run"])) == []
    with pytest.raises(ConfigError, match="--seeds is for a comparison"):
        _compare_overrides(p.parse_args(["run", "--seeds", "2"]))
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        _compare_overrides(p.parse_args(["run", "--compare", "--seeds", "0"]))
    with pytest.raises(ConfigError, match="unknown policy 'ppo'; choose among vanilla, bt"):
        load_config(None, _compare_overrides(p.parse_args(["run", "--policies", "vanilla,ppo"])))
    with pytest.raises(ConfigError, match="names bt twice"):
        load_config(None, ["pipeline.policies=[bt,bt]"])
