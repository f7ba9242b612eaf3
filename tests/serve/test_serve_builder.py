"""raydprm.serve.builder: the reward application built from Serve's plain ``args`` dict
(KubeRay RayService / `serve deploy`). Every malformed dict fails with one line naming the
key; a valid one goes through Serve's own builder call and binds the model it names."""

from __future__ import annotations

import pytest

from raydprm.config import LabelsConfig, load_config
from raydprm.errors import ConfigError, RaydprmError
from raydprm.serve.builder import BuilderArgs, app_builder, parse_builder_args, resolve_builder_args


@pytest.mark.parametrize("args,match", [
    ({"modle_dir": "/m"}, r"unknown key args\.modle_dir; did you mean 'model_dir'\?"),
    ({"tokn": "x"}, r"unknown key args\.tokn \(keys: config, overrides, model_dir"),
    ({"model_dir": 3}, r"args\.model_dir must be a string, got int"),
    ({"config": ["a.yaml"]}, r"args\.config must be a string, got list"),
    ({"store_actor": {"name": "s"}}, r"args\.store_actor must be a string"),
    ({"store_namespace": 1.5}, r"args\.store_namespace must be a string"),
    ({"overrides": "ppo.beta=0.1"}, r"args\.overrides must be a list of 'key\.sub=value' strings or a mapping"),
    ({"overrides": ["ppo.beta=0.1", "ppo.beta"]}, r"args\.overrides\[1\] = 'ppo\.beta' must be a 'key\.sub=value'"),
    ({"overrides": [3]}, r"args\.overrides\[0\] = 3 must be"),
    ({"overrides": {"ppo..beta": 1}}, r"args\.overrides has a key 'ppo\.\.beta' that is not a dotted config key"),
    (["model_dir"], r"args must be a mapping of config, overrides"),
])
def test_builder_args_errors_are_one_line_naming_the_key(args, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_builder_args(args)
    assert "\n" not in str(e.value)


def test_builder_args_config_mistakes_name_the_dotted_config_key():
    with pytest.raises(ConfigError, match="unknown config key 'ppo.betta'"):
        resolve_builder_args({"overrides": ["ppo.betta=0.1"]})
    with pytest.raises(ConfigError, match="'serve.num_cpus' = -1.0 is out of range"):
        resolve_builder_args({"overrides": {"serve.num_cpus": -1}})
    with pytest.raises(ConfigError, match="config file '/nonexistent.yaml' does not exist"):
        resolve_builder_args({"config": "/nonexistent.yaml"})


def test_builder_args_mapping_and_list_overrides_give_the_same_config():
    as_map = {"ppo.beta": 0.05, "run.name": "x", "serve.max_replicas": 3, "reward.cost": "ordinal"}
    _, a, _ = resolve_builder_args({"overrides": as_map})
    _, b, _ = resolve_builder_args({"overrides": [f"{k}={v}" for k, v in as_map.items()]})
    assert a == b == load_config(None, [f"{k}={v}" for k, v in as_map.items()])
    assert a.ppo.beta == 0.05 and a.serve.max_replicas == 3
    # strings that YAML would read as other types survive the mapping form unchanged
    _, c, _ = resolve_builder_args({"overrides": {"run.name": "1e-3"}})
    assert c.run.name == "1e-3"


def test_builder_args_model_dir_defaults_like_the_cli(tmp_path):
    assert parse_builder_args(None) == parse_builder_args({}) == BuilderArgs()
    _, _, d = resolve_builder_args({"overrides": [f"run.output_dir={tmp_path}", "run.name=r1"]})
    assert d == str(tmp_path / "r1" / "reward" / "best")
    _, _, d = resolve_builder_args({"overrides": [f"run.output_dir={tmp_path}", "reward.model_dir=/models/m"]})
    assert d == "/models/m"
    _, _, d = resolve_builder_args({"model_dir": "/x", "overrides": ["reward.model_dir=/models/m"]})
    assert d == "/x"


def test_builder_refuses_a_directory_without_a_reward_model(tmp_path):
    with pytest.raises(RaydprmError, match="is not a trained reward model directory"):
        app_builder({"model_dir": str(tmp_path)})


@pytest.fixture(scope="module")
def saved_model(tiny_kit, tmp_path_factory):
    import torch

    from raydprm.models.dprm import DPRM, label_scale_from_config

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("runs")
    DPRM.from_backbone("tiny-opt", label_scale_from_config(LabelsConfig()), max_length=32).save(
        run / "k8s" / "reward" / "best")
    return run


def test_builder_through_serves_own_builder_call_binds_the_named_model(saved_model, monkeypatch):
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from raydprm.serve.http import token_digest

    monkeypatch.setenv("RAYDPRM_SERVE_TOKEN", "from-a-secret")
    args = {"overrides": {"run.output_dir": str(saved_model), "run.name": "k8s", "serve.num_cpus": 2,
                          "serve.min_replicas": 1, "serve.max_replicas": 3},
            "store_actor": "raydprm-preference-store"}
    app = call_user_app_builder_with_args_if_necessary(app_builder, args)
    assert isinstance(app, Application)
    bound = app._bound_deployment
    model_dir, _scale, _reward_cfg, serve_cfg, digest, store, namespace, threads = bound.init_args
    assert model_dir == str((saved_model / "k8s" / "reward" / "best").resolve())
    assert digest == token_digest("from-a-secret") and "from-a-secret" not in repr(bound.init_args)
    assert (store, namespace, threads) == ("raydprm-preference-store", "raydprm", 2)
    assert serve_cfg.max_replicas == 3
