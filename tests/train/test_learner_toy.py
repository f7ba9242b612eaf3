"""The toy PPO loop learns (reward = fraction of target tokens), and `raydprm learner toy`
runs end to end."""

import json

import pytest

from raydprm.cli import main
from raydprm.config import EngineSection, PPOConfig
from raydprm.train.learner import PPOLearner
from raydprm.train.learner_toy import default_targets, run_toy_ppo, target_token_reward

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]


def test_target_token_reward():
    assert target_token_reward([[1, 2, 1, 3], [], [5]], 1) == [0.5, 0.0, 0.0]
    assert target_token_reward([[1, 2, 3, 4]], [2, 4]) == [0.5]


def test_toy_ppo_increases_mean_reward(tiny_kit):
    ppo = PPOConfig(lr=3e-3, rollout_batch=32, minibatch=16, epochs=2)
    learner = PPOLearner(ppo, "tiny-gpt2", engine=EngineSection(micro_batch=16), seed=0)
    hist = run_toy_ppo(learner, "tiny-gpt2", steps=15, batch_size=32, max_new_tokens=8, seed=0, progress=False)
    rewards = [m["toy/reward"] for m in hist]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.04, rewards
    assert hist[-1]["ppo/kl"] > 0  # the policy moved away from the reference
    assert all(m["ppo/optimizer_steps"] == 4 for m in hist)


def test_default_targets_skip_special_tokens(tiny_kit):
    from raydprm.models.policy import load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    t = default_targets(tok)
    assert t and not set(t) & set(tok.all_special_ids) and all(i % 8 == 0 for i in t)


def test_cli_toy_smoke(tiny_kit, tmp_path, capsys):
    rc = main(["learner", "toy", "--smoke", "--no-progress", "--out", str(tmp_path / "hf"),
               f"run.output_dir={tmp_path}", "engine.engine=torch"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "toy PPO: 2 steps" in out and "exported policy" in out
    lines = (tmp_path / "demo" / "learner_toy" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "ppo/policy_loss" in json.loads(lines[0])
    assert (tmp_path / "hf" / "config.json").is_file()
    from raydprm.config import load_config

    saved = load_config(tmp_path / "demo" / "learner_toy" / "config.yaml")  # the run is reproducible
    assert saved.engine.engine == "torch" and saved.ppo.rollout_batch == 8


def test_cli_toy_bad_arguments(capsys):
    assert main(["learner", "toy", "--batch", "7"]) == 2
    assert "--batch 7 must be a multiple" in capsys.readouterr().err
    assert main(["learner", "toy", "--smoke", "engine.zero_stage=5"]) == 2
    assert "engine.zero_stage" in capsys.readouterr().err
