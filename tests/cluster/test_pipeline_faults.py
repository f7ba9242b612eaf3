"""Faults inside a `raydprm run`: a reward replica or a learner rank killed mid-PPO.

Both runs continue from the reference run's directory as it was after the reward stage
(the session's ``reference`` fixture in conftest.py, test_pipeline's helpers) and must end with exactly
the reference's metrics: the reward replica is a deterministic function of its checkpoint
(a new one loads the same file), and a learner group restarted from its last checkpoint
(policy, critic, optimizer, KL controller, RNG) redoes the lost step as the uninterrupted run
did it (same prompts, same sampling seed, the generators re-synced to the checkpoint)."""

import json

import pytest
from helpers import kill_actor
from test_pipeline import _copy_before_ppo, _final

from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _events(run_dir):
    path = run_dir / "restarts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _rerun_ppo(reference, dst, on_step, overrides=()):
    """The reference run's directory as it was before PPO, run on from there with ``on_step``."""
    from raydprm.cluster.pipeline import Pipeline

    _copy_before_ppo(reference[0], dst)
    return Pipeline(load_config(dst / "config.yaml", list(overrides)), dst, progress=False, on_step=on_step).fit()


def _kill_after_step_1(role, rank, seen, dst):
    """An ``on_step`` that kills rank ``rank`` of pool ``role`` after PPO step 1 and records the
    pool's info before and after, and the restart counts in ``dst/state.json`` after step 2."""
    def on_step(pipe, step):
        pool = getattr(pipe, role)
        if step == 1:
            seen["before"] = pool.info()
            kill_actor(pool.group.actors[rank])
        if step == 2:
            seen["after"] = pool.info()
            seen["counted"] = json.loads((dst / "state.json").read_text())["restarts"]
    return on_step


def test_killed_reward_replica_is_restarted_reloads_its_model_and_the_run_completes(reference, tmp_path, capsys):
    report = reference[1]
    dst = tmp_path / "reward_killed"
    seen = {}
    got = _rerun_ppo(reference, dst, _kill_after_step_1("reward", 0, seen, dst))
    assert got["restarts"]["reward"] >= 1 and got["restarts"]["learner"] == 0
    assert json.loads((dst / "state.json").read_text())["restarts"]["reward"] == got["restarts"]["reward"]
    assert seen["counted"] == {"reward": 1}  # in state.json as it happened: a run killed mid-stage keeps it
    # the new replica loaded the run's reward model itself, from the checkpoint the lost one had
    before, after = seen["before"][0], seen["after"][0]
    assert after["source"] == before["source"] and after["version"] == 0
    assert after["source"].startswith(str(dst / "reward"))
    events = _events(dst)
    assert [(e["role"], e["stage"], e["mode"], e["after_ppo_step"]) for e in events] == [
        ("reward", "ppo", "actor", 1)]
    assert events[0]["ranks"] == [0] and events[0]["restart"] == 1
    assert "reward: restarted rank(s) [0] during ppo" in capsys.readouterr().out
    assert _final(got) == _final(report)  # a deterministic replica scores exactly as the lost one did


def _pids(infos):
    return {i["pid"] for i in infos}


def test_killed_learner_restarts_the_group_from_its_checkpoint_and_the_run_completes(reference, tmp_path, capsys):
    report = reference[1]
    dst = tmp_path / "learner_killed"
    seen = {}
    got = _rerun_ppo(reference, dst, _kill_after_step_1("learner", -1, seen, dst))
    out = capsys.readouterr().out
    assert got["restarts"]["learner"] >= 1 and got["restarts"]["reward"] == 0
    assert not _pids(seen["before"]) & _pids(seen["after"])  # every rank is a new process
    events = _events(dst)
    assert [(e["role"], e["stage"], e["mode"], e["after_ppo_step"]) for e in events] == [
        ("learner", "ppo", "group", 1)]
    assert events[0]["restart"] == 1 and events[0]["max_restarts"] == load_config(dst / "config.yaml").ray.max_restarts
    assert "learner: restarted the whole group during ppo" in out
    assert "the group restarted from its last checkpoint" in out and "PPO resumes after step 1" in out
    assert _final(got) == _final(report)  # the redone step 2 is the uninterrupted run's step 2


def test_one_rank_of_a_two_rank_learner_killed_mid_ppo_restarts_the_group_and_ends_as_uninterrupted(
        reference, tmp_path):
    """Two learner ranks share a process group: killing one mid-PPO restarts both from the last
    checkpoint, and the run ends with exactly the metrics of the same two-rank run left alone."""
    two = ["engine.num_workers=2", "engine.num_cpus_per_worker=0.5"]
    seen = {}
    runs = {"alone": _rerun_ppo(reference, tmp_path / "alone", None, two),
            "killed": _rerun_ppo(reference, tmp_path / "killed",
                                 _kill_after_step_1("learner", 1, seen, tmp_path / "killed"), two)}
    assert runs["alone"]["restarts"]["learner"] == 0 and runs["killed"]["restarts"]["learner"] == 1
    assert len(seen["before"]) == 2 and not _pids(seen["before"]) & _pids(seen["after"])  # both ranks are new
    events = _events(tmp_path / "killed")
    assert [(e["role"], e["mode"], e["ranks"], e["after_ppo_step"]) for e in events] == [
        ("learner", "group", [0, 1], 1)]
    assert _final(runs["killed"]) == _final(runs["alone"])


def test_killed_generator_during_async_rollout_is_restarted_and_ends_as_uninterrupted(reference, tmp_path):
    """ppo.async_rollout: generator 0 killed after step 1 is dead when step 2 submits the rollouts
    of step 3 (before the learner trains); RolloutPool.collect restarts it with the current
    weights, its slice is generated again with the same seed, and the run ends exactly as the
    same async run left alone (never with a private error escaping the actor group)."""
    on = ["ppo.async_rollout=true"]
    seen = {}
    runs = {"alone": _rerun_ppo(reference, tmp_path / "alone", None, on),
            "killed": _rerun_ppo(reference, tmp_path / "killed",
                                 _kill_after_step_1("rollout", 0, seen, tmp_path / "killed"), on)}
    assert runs["alone"]["restarts"]["rollout"] == 0 and runs["killed"]["restarts"]["rollout"] == 1
    assert seen["before"][0]["pid"] != seen["after"][0]["pid"]
    assert [(e["role"], e["mode"], e["ranks"], e["after_ppo_step"]) for e in _events(tmp_path / "killed")] == [
        ("rollout", "actor", [0], 1)]
    assert [r["rollout/policy_lag"] for r in runs["killed"]["ppo"]] == [0.0, 1.0, 1.0]
    assert _final(runs["killed"]) == _final(runs["alone"])
