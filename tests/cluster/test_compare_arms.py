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
