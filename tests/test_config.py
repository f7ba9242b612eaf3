"""Config system: defaults, YAML + overrides, round trip, and clear rejections."""

import dataclasses

import pytest
import yaml

from raydprm.config import Config, PPOConfig, describe, from_dict, load_config, save_config
from raydprm.errors import ConfigError


def test_defaults_are_valid_and_laptop_sized():
    cfg = Config()
    assert cfg.rollout.engine == "transformers"
    assert cfg.ppo.num_workers == 1 and cfg.reward.num_workers == 1
    assert cfg.models.policy.startswith("tiny-")
    assert len(cfg.labels.names) == len(cfg.labels.rewards) == 6
    assert cfg.labels.rewards == (1.0, 0.5, -1.0, -1.0, -1.5, -3.0)


def test_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ppo.beta = 1.0  # type: ignore[misc]


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["ppo.beta=0.3", "crowd.mixture={scientist: 2, artist: 1}", "run.name=x"])
    path = save_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    again = load_config(path)
    assert again == cfg
    assert again.ppo.beta == 0.3 and again.crowd.mixture == {"scientist": 2.0, "artist": 1.0}


def test_yaml_then_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"ppo": {"beta": 0.2, "epochs": 3}, "rollout": {"engine": "vllm"}}))
    cfg = load_config(f, ["ppo.beta=0.5"])
    assert cfg.ppo.beta == 0.5 and cfg.ppo.epochs == 3 and cfg.rollout.engine == "vllm"


@pytest.mark.parametrize("override, key", [
    ("ppo.betaa=1", "ppo.betaa"),
    ("pppo.beta=1", "pppo"),
])
def test_unknown_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(None, [override])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'ppo.beta'"):
        load_config(None, ["ppo.betaa=1"])


@pytest.mark.parametrize("override, fragment", [
    ("ppo.beta=abc", "ppo.beta"),
    ("ppo.epochs=1.5", "ppo.epochs"),
    ("ppo.whiten_advantages=3", "ppo.whiten_advantages"),
    ("labels.rewards=[1, x]", "labels.rewards[1]"),
])
def test_wrong_types_are_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


@pytest.mark.parametrize("override, fragment, allowed", [
    ("rollout.engine=vlm", "rollout.engine", "'transformers', 'vllm'"),
    ("ppo.zero_stage=4", "ppo.zero_stage", "<= 3"),
    ("ppo.beta=-1", "ppo.beta", ">= 0"),
    ("reward.eval_fraction=1", "reward.eval_fraction", "< 1"),
])
def test_out_of_range_values_name_key_and_allowed(override, fragment, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value) and allowed in str(e.value)


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="labels.rewards"):
        load_config(None, ["labels.rewards=[1, 2]"])
    with pytest.raises(ConfigError, match="crowd.mixture.artist"):
        load_config(None, ["crowd.mixture={artist: -1}"])


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="ppo.kl_controller"):
        PPOConfig(kl_controller="pid")


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["ppo.beta"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_dict({"ppo": 3})


def test_override_method_and_describe():
    cfg = Config().override(["serve.port=9000"])
    assert cfg.serve.port == 9000
    rows = describe()
    keys = [r[0] for r in rows]
    assert "ppo.beta" in keys and all(r[3] for r in rows)  # every field documented


def test_config_default_labels_match_the_core_scale():
    from raydprm.config import LabelsConfig
    from raydprm.core import LabelScale

    hh, cfg = LabelScale.hh(), LabelsConfig()
    assert hh.names == cfg.names and hh.rewards == cfg.rewards
    assert hh.grid == cfg.grid


def test_exponent_floats_without_a_dot():
    """YAML 1.1 reads 3e-3 as a string; the config still takes it as a number."""
    assert load_config(None, ["reward.lr=3e-3"]).reward.lr == 0.003
    assert load_config(None, ["ppo.lr=1E-5"]).ppo.lr == 1e-5
    with pytest.raises(ConfigError, match="reward.lr"):
        load_config(None, ["reward.lr=3e-x"])
