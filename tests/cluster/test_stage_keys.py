"""Stage keys name what each stage reads (raydprm.cluster.stage_keys): pure, no Ray."""

import copy
import json

import pytest

from raydprm.cluster.run_state import RunState, dir_digest
from raydprm.cluster.stage_keys import (
    KEY_VERSION,
    NOT_READ,
    OPERATIONAL,
    READS,
    check_key_version,
    key_of,
    read_fields,
)
from raydprm.config import Config, apply_overrides, from_dict
from raydprm.errors import RaydprmError

INPUTS = {"sft": {}, "collect": {"sft": "d0"}, "reward": {"data": "d1"}, "ppo": {"sft": "d0", "reward": "d2"},
          "align": {"sft": "d0", "data": "d1"}, "evaluate": {"sft": "d0", "policy": "d3"}}


def _leaves(c):
    return [(sec, name) for sec in c for name in c[sec]]


def _changed(c, sec, name):
    d = copy.deepcopy(c)
    d[sec][name] = ["<changed>", d[sec][name]]  # unequal to every value the field had
    return d


CONFIGS = {  # the gates open and shut: a single run, live votes (drift keys), a comparison (policies, seeds)
    "single": Config().to_dict(),
    "drift": from_dict(apply_overrides(Config().to_dict(), ["pipeline.live_votes=2"])).to_dict(),
    "vllm": from_dict(apply_overrides(Config().to_dict(), ["rollout.engine=vllm"])).to_dict(),
    "rollout_logprobs": from_dict(apply_overrides(Config().to_dict(), ["ppo.use_rollout_logprobs=true"])).to_dict(),
    "compare": from_dict(apply_overrides(Config().to_dict(), ["pipeline.policies=[vanilla,dprm_ot,dpo]"])).to_dict(),
}


@pytest.mark.parametrize("which", sorted(CONFIGS))
@pytest.mark.parametrize("stage", sorted(READS))
def test_a_stage_key_changes_with_exactly_the_fields_it_reads(stage, which):
    c = CONFIGS[which]
    key, config = key_of(stage, c, INPUTS[stage])
    reads = set(read_fields(stage, c))
    assert reads and set(config) == reads | {"key_version"}
    for sec, name in _leaves(c):
        other = key_of(stage, _changed(c, sec, name), INPUTS[stage])[0]
        f = f"{sec}.{name}"
        assert (other != key) == (f in reads), f"{stage}: {f} {'read' if f in reads else 'not read'}"
    for name in INPUTS[stage]:  # every input is read
        assert key_of(stage, c, {**INPUTS[stage], name: "other"})[0] != key


def test_the_issue_s_cases_and_what_each_stage_must_read():
    c = Config().to_dict()
    assert "models.reward_backbone" not in read_fields("sft", c)  # a new reward backbone never reruns SFT
    for f in ("rollout.num_replicas", "rollout.sync_timeout_s", "rollout.batch_size", "models.reward_backbone"):
        assert f not in read_fields("collect", c)  # nor rebuilds the store
    assert {"models.policy", "sft.lr", "run.seed"} <= set(read_fields("sft", c))
    assert {"rollout.temperature", "rollout.max_new_tokens", "crowd.mixture", "store.prior"} <= \
        set(read_fields("collect", c))
    assert "rollout.kv_cache_memory_mb" not in read_fields("collect", c)
    assert "rollout.kv_cache_memory_mb" in read_fields("collect", CONFIGS["vllm"])  # vLLM's batching may change tokens
    assert "reward.scalar" not in read_fields("reward", c) and "reward.scalar" in read_fields("ppo", c)
    assert "pipeline.drift_step" not in read_fields("ppo", c)  # drift keys only with live votes
    assert "pipeline.drift_step" in read_fields("ppo", CONFIGS["drift"])
    assert "pipeline.seeds" in read_fields("evaluate", CONFIGS["compare"])
    assert "pipeline.seeds" not in read_fields("evaluate", c)
    # a comparison's per-arm stages are keyed like the single run's stages of their kind
    assert read_fields("dprm_ot/seed1/ppo", c) == read_fields("ppo", c)


def test_the_pluralistic_arm_has_its_own_reward_and_ppo_keys_and_shares_sft_and_collect():
    from raydprm.cluster.run_plan import arms

    cfg = from_dict(apply_overrides(Config().to_dict(), ["pipeline.policies=[dprm_ot,dprm_ot_wg]", "pipeline.seeds=1"]))
    ot, wg = (a.cfg.to_dict() for a in arms(cfg))
    for stage in ("sft", "collect"):  # one SFT and one store for every policy
        assert key_of(stage, ot, INPUTS[stage])[0] == key_of(stage, wg, INPUTS[stage])[0]
    for stage in ("reward", "ppo"):  # a group-conditioned reward model, PPO on the worst group's soft minimum
        assert key_of(stage, ot, INPUTS[stage])[0] != key_of(stage, wg, INPUTS[stage])[0]
        assert "reward.conditioning" in read_fields(stage, wg)
    assert {"reward.objective", "reward.objective_tau"} <= set(read_fields("ppo", wg))


@pytest.mark.parametrize("override", ["reward.objective=cvar_groups", "reward.objective_tau=0.5",
                                      "reward.objective_alpha=0.5", "reward.objective_kappa=2.0"])
def test_a_group_objective_keys_ppo_and_never_retrains_the_reward_model(override):
    """reward.objective* weigh the groups of a group-conditioned DPRM in PPO's scalar readout
    (RewardActor); training never reads them, so changing one reruns PPO on the same reward model."""
    base = ["reward.conditioning=group", "reward.objective=worst_group"]
    c = from_dict(apply_overrides(Config().to_dict(), base)).to_dict()
    other = from_dict(apply_overrides(Config().to_dict(), [*base, override])).to_dict()
    assert key_of("reward", c, INPUTS["reward"])[0] == key_of("reward", other, INPUTS["reward"])[0]
    assert key_of("ppo", c, INPUTS["ppo"])[0] != key_of("ppo", other, INPUTS["ppo"])[0]
    assert not {f for f in read_fields("reward", c) if f.startswith("reward.objective")}


def test_the_engine_section_keys_ppo_and_align_but_no_other_stage():
    """engine.* (one section for every learner group) is read by the learner stages only; its
    operational fields (CPUs per rank, collective timeout, JIT ops) by none."""
    c = Config().to_dict()
    for f in ("engine.zero_stage", "engine.micro_batch", "engine.num_workers", "engine.reference"):
        assert f in read_fields("ppo", c) and f in read_fields("align", c)
        assert not any(f in read_fields(s, c) for s in ("sft", "collect", "reward", "evaluate"))
    for f in ("engine.num_cpus_per_worker", "engine.dist_timeout_s", "engine.ds_jit_ops"):
        assert f not in read_fields("ppo", c) and f not in read_fields("align", c)
    assert not [f for s in READS for f in read_fields(s, c) if f.split(".")[1] in ("zero_stage", "num_workers")
                and not f.startswith(("engine.", "reward."))]


def test_a_finished_stage_is_skipped_when_only_fields_it_does_not_read_change(tmp_path):
    """RunState.done (the pipeline's skip) under the keys of a --resume with other overrides."""
    base = Config().to_dict()
    state = RunState(tmp_path)
    for stage in ("sft", "collect"):
        key, config = key_of(stage, base, INPUTS[stage])
        state.complete(stage, key, inputs=INPUTS[stage], config=config, outputs={}, started=0.0)
    resumed = from_dict(apply_overrides(base, ["models.reward_backbone=tiny-gpt2", "rollout.num_replicas=3",
                                               "rollout.sync_timeout_s=5", "ray.max_restarts=0"])).to_dict()
    assert state.done("sft", key_of("sft", resumed, {})[0])
    assert state.done("collect", key_of("collect", resumed, INPUTS["collect"])[0])
    hotter = from_dict(apply_overrides(base, ["rollout.temperature=0.7"])).to_dict()
    assert state.done("sft", key_of("sft", hotter, {})[0])
    assert not state.done("collect", key_of("collect", hotter, INPUTS["collect"])[0])


def test_every_config_field_is_read_by_a_stage_or_declared_unread():
    """A field added to a section no stage reads whole (run, models, pipeline) must be declared: read
    by the stages whose result it changes (READS) or unread (NOT_READ / OPERATIONAL)."""
    c = Config().to_dict()
    read = {f for which in CONFIGS.values() for stage in READS for f in read_fields(stage, which)}
    unread = {f"{sec}.{name}" for sec, name in _leaves(c)} - read
    declared = {f"{sec}.{name}" for sec, name in _leaves(c) if f"{sec}.*" in NOT_READ} | (NOT_READ | OPERATIONAL)
    assert unread <= declared, f"declare in raydprm/cluster/stage_keys.py: {sorted(unread - declared)}"
    assert not {f for f in NOT_READ if not f.endswith(".*")} & read


def test_a_new_field_of_a_read_section_counts_as_read():
    c = Config().to_dict()
    c["ppo"]["some_future_key"] = 1
    assert "ppo.some_future_key" in read_fields("ppo", c)


def test_a_declared_field_counts_once_the_config_has_it():
    c = Config().to_dict()
    c["pipeline"].pop("crowd", None)
    assert "pipeline.crowd" not in read_fields("collect", c)  # a config without it (another raydprm)
    key_of("collect", c, INPUTS["collect"])
    c["pipeline"]["crowd"] = "store"
    assert "pipeline.crowd" in read_fields("collect", c) and "pipeline.crowd" not in read_fields("sft", c)


def test_undeclared_inputs_are_refused():
    with pytest.raises(ValueError, match="declares inputs"):
        key_of("reward", Config().to_dict(), {"data": "d", "sft": "d0"})
    key_of("evaluate", Config().to_dict(), {"sft": "d0", "dpo/seed0/policy": "a", "dprm_ot/seed0/policy": "b"})


def test_dir_digest_is_xxh3_of_names_and_bytes(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "a.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "m" / "sub" / "b.json").write_text("{}")
    d = dir_digest(tmp_path / "m")
    assert d.startswith("xxh3_128:") and d == dir_digest(tmp_path / "m")
    (tmp_path / "m" / "sub" / "b.json").rename(tmp_path / "m" / "sub" / "c.json")  # a renamed file counts
    assert dir_digest(tmp_path / "m") != d


def test_resume_refuses_a_run_keyed_by_the_older_scheme(tmp_path):
    check_key_version(tmp_path)  # no state.json yet: a fresh run
    state = RunState(tmp_path)
    key, config = key_of("sft", Config().to_dict(), {})
    state.complete("sft", key, inputs={}, config=config, outputs={}, started=0.0)
    check_key_version(tmp_path)  # this scheme's records resume
    rec = json.loads((tmp_path / "sft" / "record.json").read_text())
    rec["config"] = {"models": {}, "sft": {}, "seed": 0}  # as written before stage keys v2
    (tmp_path / "sft" / "record.json").write_text(json.dumps(rec))
    with pytest.raises(RaydprmError, match=f"older raydprm .*stage 'sft'.*v{KEY_VERSION}.*run.name="):
        check_key_version(tmp_path)
