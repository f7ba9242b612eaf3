"""Config system: defaults, YAML + overrides, round trip, and clear rejections."""

import dataclasses

import pytest
import yaml

from raydprm.config import Config, PPOConfig, describe, from_dict, load_config, save_config
from raydprm.errors import ConfigError


def test_defaults_are_valid_and_laptop_sized():
    cfg = Config()
    assert cfg.rollout.engine == "transformers"
    assert cfg.engine.num_workers == 1 and cfg.reward.num_workers == 1
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
    ("engine.zero_stage=4", "engine.zero_stage", "<= 3"),
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


@pytest.mark.parametrize("key", ["ppo.zero_stage", "align.num_workers", "ppo.micro_batch", "align.engine",
                                 "ppo.reference", "align.offload_optimizer", "ppo.num_gpus_per_worker"])
def test_a_moved_engine_key_is_refused_naming_its_new_key(key, tmp_path):
    """ppo.* / align.* keys that moved to the one engine section fail in one line, on the command
    line and in a YAML file alike, never silently ignored."""
    sec, name = key.split(".")
    value = {"zero_stage": 2, "num_workers": 2, "micro_batch": 4, "engine": "torch", "reference": "x",
             "offload_optimizer": True, "num_gpus_per_worker": 1}[name]
    want = f"config key '{key}' moved to engine.{name}"
    with pytest.raises(ConfigError, match=want.replace(".", r"\.")) as e:
        load_config(None, [f"{key}={str(value).lower()}"])
    assert "\n" not in str(e.value)
    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump({sec: {name: value}}))
    with pytest.raises(ConfigError, match=want.replace(".", r"\.")):
        load_config(f)


def test_one_engine_section_no_field_declared_twice():
    """engine.* holds how a learner group runs; ppo.* and align.* keep only their algorithm's keys
    (and the optimisation keys that differ between them), no field in two of the three."""
    import dataclasses

    from raydprm.config import ALGO_ENGINE_KEYS, ENGINE_KEYS, AlignConfig, EngineSection

    engine = {f.name for f in dataclasses.fields(EngineSection)}
    ppo, align = ({f.name for f in dataclasses.fields(c)} for c in (PPOConfig, AlignConfig))
    assert set(ENGINE_KEYS) == engine and not engine & ppo and not engine & align
    assert set(ALGO_ENGINE_KEYS) <= ppo & align
    keys = [r[0] for r in describe()]
    assert {f"engine.{k}" for k in ENGINE_KEYS} <= set(keys)  # `config show --doc` lists the section


def test_the_engine_joins_each_algorithm_and_its_checks_name_the_real_keys():
    cfg = load_config(None, ["engine.num_workers=2", "engine.micro_batch=2", "engine.engine=torch",
                             "ppo.minibatch=8", "ppo.rollout_batch=16", "align.minibatch=4", "align.batch=8"])
    p, a = cfg.ppo_engine, cfg.align_engine
    assert (p.minibatch, p.worker_minibatch, p.grad_accum, p.engine, p.section) == (8, 4, 2, "torch", "ppo")
    assert (a.minibatch, a.worker_minibatch, a.grad_accum, a.num_workers, a.section) == (4, 2, 1, 2, "align")
    assert (p.lr, a.lr) == (cfg.ppo.lr, cfg.align.lr)
    with pytest.raises(ConfigError, match=r"config key 'align\.minibatch' = 6 must be a multiple of engine\.num_workers = 4"):
        load_config(None, ["engine.num_workers=4", "engine.micro_batch=1", "align.minibatch=6", "align.batch=12",
                           "ppo.minibatch=16", "pipeline.policies=[vanilla,dpo]"])
    # a run with no direct-alignment arm is not held to align.* (a learner group built for one checks it then)
    ppo_only = load_config(None, ["engine.num_workers=3", "engine.micro_batch=1", "ppo.minibatch=12", "ppo.rollout_batch=24"])
    with pytest.raises(ConfigError, match=r"'align\.minibatch' = 8 must be a multiple of engine\.num_workers = 3"):
        ppo_only.align_engine  # noqa: B018
    with pytest.raises(ConfigError, match=r"'engine\.micro_batch' = 3 must divide .* ppo\.minibatch / engine\.num_workers = 16"):
        load_config(None, ["engine.micro_batch=3"])
    with pytest.raises(ConfigError, match=r"'engine\.offload_params' needs engine\.zero_stage = 3"):
        load_config(None, ["engine.offload_params=true"])
