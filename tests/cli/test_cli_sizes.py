"""Sizes checked against the model before any work (issue 25, part 3): rollout.max_new_tokens + the
prompt length must fit the policy's positions. Before, `rollout.max_new_tokens=1000` on the 256-position
kit policy failed ~23 s in, inside the generator (IndexError in the position embedding), and
`rollout generate --max-new-tokens 1000` printed "unexpected IndexError"."""

import json

import pytest

from raydprm.cli import main
from raydprm.cluster.placement import check_sizes, model_positions, peak_resources
from raydprm.config import ConfigError, load_config


def test_positions_of_kit_models_and_local_directories(tmp_path):
    assert model_positions("tiny-gpt2") == 256 and model_positions("small-gpt2") == 1024
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "opt", "max_position_embeddings": 512}))
    assert model_positions(str(tmp_path)) == 512
    assert model_positions("org/unknown-hub-model") is None  # unknown offline: left to the loader


@pytest.mark.parametrize("new,prompt,ok", [(64, 192, True), (65, 192, False), (1000, 192, False), (248, 8, True),
                                           (249, 8, False)])
def test_prompt_plus_response_must_fit_the_positions(new, prompt, ok):
    cfg = load_config(None, [f"rollout.max_new_tokens={new}", f"rollout.max_prompt_tokens={prompt}"])
    if ok:
        check_sizes(cfg)
        return
    with pytest.raises(ConfigError) as e:
        check_sizes(cfg)
    msg = str(e.value)
    assert f"= {new + prompt} tokens" in msg and "256 positions" in msg and "'tiny-gpt2'" in msg
    assert f"at most {256 - prompt}" in msg


def test_the_reference_policy_is_checked_too(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_positions": 128}))
    cfg = load_config(None, [f"engine.reference={tmp_path}", "rollout.max_prompt_tokens=100"])
    with pytest.raises(ConfigError, match=r"128 positions .* \(engine.reference\)"):
        check_sizes(cfg)


def test_the_run_preflight_refuses_before_ray():
    with pytest.raises(ConfigError, match="rollout.max_new_tokens"):
        peak_resources(load_config(None, ["rollout.max_new_tokens=1000"]))


@pytest.mark.parametrize("argv,fragment", [
    (["config", "check", "rollout.max_new_tokens=1000"], "rollout.max_new_tokens (1000)"),
    (["rollout", "generate", "--max-new-tokens", "1000", "-p", "hi"], "--max-new-tokens (1000)"),
    (["run", "--smoke", "--no-progress", "rollout.max_new_tokens=1000", "run.output_dir=OUT"],
     "rollout.max_new_tokens (1000)"),
])
def test_commands_refuse_impossible_sizes_in_one_line(tmp_path, capsys, argv, fragment):
    rc = main([a.replace("OUT", str(tmp_path / "runs")) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "256 positions" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_config_check_accepts_what_fits(capsys):
    assert main(["config", "check", "rollout.max_new_tokens=64"]) == 0
    assert "config OK" in capsys.readouterr().out
