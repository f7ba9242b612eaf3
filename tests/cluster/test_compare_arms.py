"""A comparison's arms: which policies are trained, under which seeds, with which configs."""

import dataclasses

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


def test_the_pluralistic_policy_is_ppo_against_a_group_conditioned_dprm_with_the_worst_group_objective():
    from raydprm.config import PLURAL_POLICIES, POLICIES, RewardConfig

    cfg = load_config(None, ["pipeline.policies=[vanilla,dprm_ot,dprm_ot_wg,crowd_dpo]", "pipeline.seeds=2",
                             "run.seed=3"])
    by = {(a.name, a.seed_index): a for a in arms(cfg)}
    wg, ot = by["dprm_ot_wg", 1], by["dprm_ot", 1]
    assert (wg.kind, wg.prefix, wg.cfg.run.seed) == ("ppo", "dprm_ot_wg/seed1/", 4)
    assert (wg.cfg.reward.loss, wg.cfg.reward.conditioning, wg.cfg.reward.objective) == ("ot", "group", "worst_group")
    assert (ot.cfg.reward.conditioning, ot.cfg.reward.objective) == ("none", "population")  # unchanged by the table
    assert wg.cfg.ppo == ot.cfg.ppo == cfg.ppo and wg.cfg.rollout == cfg.rollout  # the same PPO budget
    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    assert all(set(v) <= fields for v in PLURAL_POLICIES.values()) and set(PLURAL_POLICIES) <= set(POLICIES)


def test_a_policy_whose_fields_do_not_fit_the_run_s_config_is_named_in_one_line():
    import pytest

    from raydprm.errors import ConfigError

    cfg = load_config(None, ["pipeline.policies=[dprm_ot_wg,bt]", "reward.loss=ot", "reward.conditioning=group"])
    with pytest.raises(ConfigError, match=r"^policy 'bt' of pipeline.policies: .*'reward.conditioning' = 'group'"):
        arms(cfg)


def test_warm_pools_reuse_a_pool_of_the_same_shape_and_start_another_shape_anew_saying_why():
    from raydprm.cluster.warm import WarmPools, learner_shape

    said, live, made = [], [], []

    def create(name):
        def make():
            made.append(name)
            return name
        return make

    warm = WarmPools(True, said.append, lambda p, role: live.append(p) or p, live.remove)
    engine = load_config(None, []).engine
    a = warm.get("learner", learner_shape("ppo", engine), create("a"), lambda p: said.append(f"reset {p}"))
    warm.done(a)  # kept for the next arm
    b = warm.get("learner", learner_shape("ppo", dataclasses.replace(engine, micro_batch=2)), create("b"),
                 lambda p: said.append(f"reset {p}"))
    assert a == b == "a" and made == ["a"] and said == ["reset a"] and live == ["a"]
    c = warm.get("learner", learner_shape("align", engine), create("c"), lambda p: None)
    assert c == "c" and live == ["c"] and warm.roles == ["learner"]  # the PPO learner shut down first
    assert said[-1] == "  learner: new actors, the warm ones cannot take this shape (kind 'ppo' -> 'align')"
    warm.drop("learner")
    assert live == [] and warm.roles == []

    cold = WarmPools(False, said.append, lambda p, role: live.append(p) or p, live.remove)
    d = cold.get("rollout", {"replicas": 1}, create("d"), lambda p: None)
    cold.done(d)  # pipeline.warm_actors = false: every stage's pools are shut down after it
    assert live == [] and cold.roles == [] and cold.get("rollout", {"replicas": 1}, create("e"), None) == "e"
