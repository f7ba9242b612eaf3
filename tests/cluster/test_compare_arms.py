"""A comparison's arms: which policies are trained, under which seeds, with which configs."""

from raydprm.cluster.run_plan import arms
from raydprm.config import load_config


def test_a_single_run_trains_the_ppo_policy_of_reward_loss_without_prefix():
    (arm,) = arms(load_config(None, ["reward.loss=ce", "run.seed=4"]))
    assert (arm.name, arm.kind, arm.prefix, arm.cfg.run.seed) == ("dprm_c", "ppo", "", 4)
    assert arm.stage("ppo") == "ppo"  # the stage names and directories of a single run are unchanged


def test_a_comparison_is_seed_major_and_sets_each_arms_seed_and_loss():
    cfg = load_config(None, ["pipeline.policies=[vanilla,bt,dprm_w,crowd_dpo]", "pipeline.seeds=2", "run.seed=10"])
    got = [(a.name, a.seed_index, a.prefix, a.kind, a.cfg.run.seed) for a in arms(cfg)]
    assert got == [("bt", 0, "bt/seed0/", "ppo", 10), ("dprm_w", 0, "dprm_w/seed0/", "ppo", 10),
                   ("crowd_dpo", 0, "crowd_dpo/seed0/", "align", 10),
                   ("bt", 1, "bt/seed1/", "ppo", 11), ("dprm_w", 1, "dprm_w/seed1/", "ppo", 11),
                   ("crowd_dpo", 1, "crowd_dpo/seed1/", "align", 11)]
    by = {(a.name, a.seed_index): a.cfg for a in arms(cfg)}
    assert by["bt", 0].reward.loss == "bt" and by["dprm_w", 1].reward.loss == "wasserstein"
    assert by["crowd_dpo", 1].align.algo == "crowd_dpo"
    # everything else is the run's own: equal PPO budgets, one SFT and one store
    assert {c.ppo for c in by.values()} == {cfg.ppo} and {c.sft for c in by.values()} == {cfg.sft}


def test_critic_free_policies_sample_groups_with_the_same_responses_per_step_as_ppo():
    cfg = load_config(None, ["pipeline.policies=[vanilla,dprm_ot,dprm_ot_grpo,bt_rloo]", "pipeline.seeds=1",
                             "ppo.rollout_batch=16", "ppo.minibatch=8"])
    by = {a.name: a for a in arms(cfg)}
    assert {n: a.kind for n, a in by.items()} == {"dprm_ot": "ppo", "dprm_ot_grpo": "ppo", "bt_rloo": "ppo"}
    grpo, rloo, ppo = by["dprm_ot_grpo"].cfg, by["bt_rloo"].cfg, by["dprm_ot"].cfg
    assert (grpo.reward.loss, grpo.ppo.advantage, grpo.rollout.n_per_prompt) == ("ot", "grpo", 4)
    assert (rloo.reward.loss, rloo.ppo.advantage, rloo.rollout.n_per_prompt) == ("bt", "rloo", 4)
    assert (ppo.ppo.advantage, ppo.rollout.n_per_prompt) == ("gae", 1)
    assert grpo.ppo.rollout_batch == rloo.ppo.rollout_batch == ppo.ppo.rollout_batch == 16  # responses per step
    assert not grpo.ppo.uses_critic and ppo.ppo.uses_critic


def test_group_estimators_refuse_a_group_of_one_in_one_line():
    import pytest

    from raydprm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'ppo.advantage' = rloo needs .* rollout.n_per_prompt = 1"):
        load_config(None, ["ppo.advantage=rloo"])
    with pytest.raises(ConfigError, match=r"'rollout.n_per_prompt' = 3 must divide ppo.rollout_batch = 32"):
        load_config(None, ["ppo.advantage=grpo", "rollout.n_per_prompt=3"])
    assert load_config(None, ["ppo.advantage=reinforce_pp"]).ppo.advantage == "reinforce_pp"  # no group needed
