"""`raydprm run --compare`: one SFT and one store, each policy under each seed in stages of its own,
one evaluation of all of them on the same prompts; resumed, every stage is skipped."""

import json

import pytest

from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = ["sft.n_examples=48", "sft.epochs=1", "sft.batch_size=16", "crowd.n_items=64", "crowd.votes_per_item=4",
        "reward.epochs=1", "ppo.steps=2", "ppo.rollout_batch=4", "ppo.minibatch=4", "engine.micro_batch=4",
        "ppo.epochs=1", "engine.engine=torch", "rollout.max_new_tokens=8", "pipeline.eval_prompts=6",
        "pipeline.eval_seeds=1", "pipeline.bootstrap=100", "align.steps=2", "align.batch=4", "align.minibatch=4",
        "ray.num_cpus=4", "pipeline.policies=[vanilla,bt,crowd_dpo]", "pipeline.seeds=2"]


def test_compare_trains_each_policy_per_seed_and_judges_them_on_the_same_prompts(tmp_path):
    from raydprm.cluster.pipeline import Pipeline
    from raydprm.cluster.run_plan import resolve_run_dir

    cfg = load_config(None, [*TINY, f"run.output_dir={tmp_path}", "run.name=cmp"])
    run_dir = resolve_run_dir(cfg)
    report = Pipeline(cfg, run_dir, progress=False).fit()

    state = json.loads((run_dir / "state.json").read_text())
    assert list(state["stages"]) == ["sft", "collect", "bt/seed0/reward", "bt/seed0/ppo", "crowd_dpo/seed0/align",
                                     "bt/seed1/reward", "bt/seed1/ppo", "crowd_dpo/seed1/align", "evaluate"]
    meta = json.loads((run_dir / "bt" / "seed0" / "reward" / "best" / "reward_model.json").read_text())
    assert meta["kind"] == "bt"  # PPO of the BT policy ran against a Bradley-Terry reward model
    h0 = json.loads((run_dir / "bt" / "seed0" / "ppo" / "history.json").read_text())
    h1 = json.loads((run_dir / "bt" / "seed1" / "ppo" / "history.json").read_text())
    assert len(h0) == len(h1) == 2 and h0[0]["reward/mean"] != h1[0]["reward/mean"]  # the seed reached PPO
    al = json.loads((run_dir / "crowd_dpo" / "seed1" / "align" / "history.json").read_text())
    assert len(al) == 2 and all(0.5 <= r["align/target"] < 1.0 for r in al)  # the crowd's soft labels
    assert (run_dir / "crowd_dpo" / "seed0" / "align" / "policy" / "config.json").is_file()

    rewards = cfg.labels.rewards
    assert list(report["policies"]) == ["vanilla", "bt", "crowd_dpo"]
    for p in report["policies"].values():
        assert abs(sum(p["label_pct"]) - 100) < 1e-6 and p["seeds"] == 2 and p["prompts"] == 6
        assert abs(p["expected_reward"] - sum(a * b for a, b in zip(p["label_pct"], rewards)) / 100) < 1e-9
        assert len(p["expected_reward_per_seed"]) == 2
    assert report["policies"]["vanilla"]["kl"] == 0.0
    assert set(report["head_to_head"]) == {"bt_vs_vanilla", "crowd_dpo_vs_vanilla", "crowd_dpo_vs_bt"}
    assert report["compare"] == {"policies": ["vanilla", "bt", "crowd_dpo"], "seeds": 2, "eval_seeds": 1,
                                 "prompts": 6, "ppo_steps": 2, "align_steps": 2}
    assert set(report["curves"]) == {"bt", "crowd_dpo"} and len(report["curves"]["bt"]["reward/mean"]) == 2
    assert set(report["stage_totals"]) == {"sft", "collect", "reward", "ppo", "align", "evaluate"}
    assert report["restarts"] == {"rollout": 0, "reward": 0, "learner": 0}
    assert (run_dir / "report.png").is_file() and "| crowd_dpo_vs_bt |" in (run_dir / "report.md").read_text()

    again = Pipeline(load_config(run_dir / "config.yaml"), run_dir, progress=False).fit()  # --resume of a done run
    assert again["policies"] == report["policies"]
    assert json.loads((run_dir / "state.json").read_text())["stages"] == state["stages"]
