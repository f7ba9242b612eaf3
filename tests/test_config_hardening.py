"""Issue 14, finding 7 (config side) and part 7: non-finite floats, integer bounds, duplicate
keys, cross-field rules, masked secrets; and Hypothesis fuzzing of the config parser: any
YAML text or override is either a Config or one ConfigError, never another exception."""

import dataclasses
import math
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raydprm.config import (
    MASK,
    Config,
    ConfigError,
    ServeConfig,
    describe,
    load_config,
    save_config,
    secret_keys,
)


@pytest.mark.parametrize("text,fragment", [
    ("ppo:\n  beta: .inf\n", "'ppo.beta' = inf is not a finite number"),  # old code: accepted from YAML
    ("ppo:\n  beta: -.inf\n", "not a finite number"),
    ("labels:\n  rewards: [1, .inf, 0, 0, 0, 0]\n", "'labels.rewards[1]' = inf is not a finite number"),
    ("crowd:\n  mixture: {ceo: .inf}\n", "'crowd.mixture.ceo' = inf is not a finite number"),
    ("ppo:\n  steps: 99999999999999999999999\n", "'ppo.steps' = 99999999999999999999999 is out of range"),
    ("ppo:\n  beta: 0.1\n  beta: 0.2\n", "duplicate key 'beta' at line 3 (first at line 2)"),
    ("serve:\n  min_replicas: 3\n  max_replicas: 2\n", "'serve.min_replicas' = 3 must be <= serve.max_replicas = 2"),
    ("serve:\n  auth_token: a\n  auth_token_file: /x\n", "both set"),
])
def test_finding7_loose_config_input_is_refused(tmp_path, text, fragment):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        load_config(f)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_every_float_key_refuses_non_finite_and_every_int_key_is_bounded():
    for key, default, _, _ in describe():
        sec, name = key.split(".")
        if isinstance(default, float):
            for bad in ("inf", "-inf", "nan"):
                with pytest.raises(ConfigError, match=f"'{key}'"):
                    Config().override([f"{key}=.{bad}" if bad != "-inf" else f"{key}=-.inf"])
        elif isinstance(default, int) and not isinstance(default, bool):
            with pytest.raises(ConfigError, match=f"'{key}'"):
                Config().override([f"{key}={2 ** 64}"])


def test_secrets_are_masked_when_shown_or_saved_and_the_mask_reads_back_as_unset(tmp_path):
    assert secret_keys() == ["serve.auth_token"]
    cfg = Config(serve=ServeConfig(auth_token="hunter2"))
    assert cfg.to_dict()["serve"]["auth_token"] == "hunter2"  # overrides round-trip keeps it
    assert cfg.override(["ppo.beta=0.1"]).serve.auth_token == "hunter2"
    assert cfg.to_dict(mask_secrets=True)["serve"]["auth_token"] == MASK
    saved = save_config(cfg, tmp_path)
    assert "hunter2" not in saved.read_text()
    assert load_config(saved).serve.auth_token == ""
    assert Config().to_dict(mask_secrets=True)["serve"]["auth_token"] == ""  # nothing to hide: shown empty


def test_token_from_a_file(tmp_path, monkeypatch):
    from raydprm.serve.app import resolve_token

    monkeypatch.setenv("RAYDPRM_SERVE_TOKEN", "from-env")
    assert resolve_token(ServeConfig()) == "from-env"
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert resolve_token(ServeConfig(auth_token_file=str(f))) == "from-file"


def test_store_parameters_default_to_the_stores_own():
    cfg = Config()
    assert cfg.store.prior is None and cfg.store.half_life_s is None
    assert Config().override(["store.half_life_s=3600"]).store.half_life_s == 3600.0


# --------------------------------------------------------------------------- fuzzing

KEYS = [k for k, *_ in describe()]
SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=12)
           | st.sampled_from([".inf", "-.inf", ".nan", "1e999", "0x10", "~", "[]", "{}", "yes", "3e-3"]))
YAML_VALUE = st.recursive(SCALARS, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=6), k,
                                                                                         max_size=3), max_leaves=8)
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _ok_or_config_error(fn):
    try:
        cfg = fn()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert isinstance(cfg, Config)
    for f in dataclasses.fields(cfg):  # whatever was accepted is finite and in range
        for v in dataclasses.asdict(getattr(cfg, f.name)).values():
            if isinstance(v, float):
                assert math.isfinite(v)
            if isinstance(v, int):
                assert -(2 ** 63) <= v < 2 ** 63
    return cfg


@FUZZ
@given(key=st.sampled_from(KEYS) | st.text(string.ascii_letters + "._", max_size=20), value=YAML_VALUE)
def test_fuzz_overrides_are_a_config_or_one_config_error(key, value):
    raw = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    _ok_or_config_error(lambda: Config().override([f"{key}={raw}"]))


@FUZZ
@given(doc=st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(Config)]) | st.text(max_size=6),
                           st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS]) | st.text(max_size=6),
                                           YAML_VALUE, max_size=4) | YAML_VALUE, max_size=3)
       | YAML_VALUE, raw=st.text(max_size=80) | st.binary(max_size=80))
def test_fuzz_config_files_are_a_config_or_one_config_error(tmp_path, doc, raw):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(doc))
    _ok_or_config_error(lambda: load_config(f))
    f.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    _ok_or_config_error(lambda: load_config(f))


# --------------------------------------------------------------------------- issue 25, part 3

@pytest.mark.parametrize("name,why", [
    ("../escaped", "contains a path separator"), ("/abs/x", "is an absolute path"), ("", "is empty"),
    ("  ", "is empty"), ("..", "relative directory reference"), (".", "relative directory reference"),
    ("a/b", "contains a path separator"), ("a\\\\b", "contains a path separator"),
])
def test_run_name_is_one_path_component(name, why):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"run.name='{name}'"])
    assert "'run.name'" in str(e.value) and why in str(e.value)


@pytest.mark.parametrize("name", ["demo", "1e-3", "my run.v2", "a..b", "compare"])
def test_run_name_accepts_plain_names(name):
    assert load_config(None, [f"run.name='{name}'"]).run.name == name


@pytest.mark.parametrize("argv", [
    ["run", "--smoke", "--no-progress", "run.name=../escaped"],
    ["store", "init", "run.name=ABS"],
    ["store", "init", "run.name=../escaped"],
])
def test_no_command_writes_outside_the_output_dir(tmp_path, capsys, argv):
    """`run --smoke run.output_dir=/tmp/a run.name=../escaped` wrote /tmp/escaped/config.yaml; `store init
    run.name=/abs/x` wrote /abs/x/store.db. Now: refused in one line, before any work, nothing written."""
    from raydprm.cli import main

    out = tmp_path / "a"
    argv = [a.replace("ABS", str(tmp_path / "abs" / "x")) for a in argv] + [f"run.output_dir={out}"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "run.name" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither escaped/, abs/ nor a/


def test_an_integer_of_any_length_is_one_line_naming_file_line_and_key(tmp_path):
    """A 4,400-digit integer crashed the parser ('unexpected ValueError': Python's int-string limit)."""
    f = tmp_path / "c.yaml"
    f.write_text("ppo:\n  beta: 0.1\n  steps: " + "9" * 4400 + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert f"config file '{f}'" in msg and "line 3" in msg and "'ppo.steps'" in msg and "4400 digits" in msg
    assert len(msg) < 300
    with pytest.raises(ConfigError) as e:
        load_config(None, ["ppo.steps=" + "9" * 4400])
    assert "'ppo.steps'" in str(e.value) and "4400 digits" in str(e.value) and len(str(e.value)) < 300
    with pytest.raises(ConfigError, match=r"line 2: config key 'crowd.mixture.ceo' = an integer of 5000 digits"):
        load_config(None, ["crowd.mixture={a: 1,\n ceo: " + "1" * 5000 + "}"])


@pytest.mark.parametrize("text,line,key", [
    ('run:\n  name: "\\ud800"\n', 2, "run.name"),
    ('crowd:\n  mixture: {"x\\udc00": 1}\n', 2, "crowd.mixture"),
    ('rollout:\n  n: 1\n  stop: [a, "\\udfff"]\n', 3, "rollout.stop[1]"),
])
def test_a_lone_surrogate_is_one_line_naming_file_line_and_key(tmp_path, text, line, key):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert f"config file '{f}'" in msg and f"line {line}, key '{key}'" in msg and "lone surrogate" in msg, msg
    msg.encode("utf-8")  # the message itself is printable


def test_a_lone_surrogate_override_is_refused_by_the_cli(capsys):
    from raydprm.cli import main

    rc = main(["config", "check", 'run.name="\\ud800"'])
    err = capsys.readouterr().err
    assert rc == 2 and "lone surrogate" in err and "'run.name'" in err and len(err.strip().splitlines()) == 1
