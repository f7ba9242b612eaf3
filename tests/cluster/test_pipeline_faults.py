"""Faults inside a `raydprm run`: a reward replica or a learner rank killed mid-PPO.

Both runs continue from the reference run's directory as it was after the reward stage
(test_pipeline's fixture and helpers, run again in this module) and must end with exactly
the reference's metrics: the reward replica is a deterministic function of its checkpoint
(a new one loads the same file), and a learner group restarted from its last checkpoint
(policy, critic, optimizer, KL controller, RNG) redoes the lost step as the uninterrupted run
did it (same prompts, same sampling seed, the generators re-synced to the checkpoint)."""

import json

import pytest
import test_pipeline
from helpers import kill_actor
from test_pipeline import _copy_before_ppo, _final

from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

reference = test_pipeline.reference  # its module fixture: the uninterrupted tiny run, once for this module


def _events(run_dir):
    path = run_dir / "restarts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _rerun_ppo(reference, dst, on_step):
    """The reference run's directory as it was before PPO, run on from there with ``on_step``."""
    from raydprm.cluster.pipeline import Pipeline

    _copy_before_ppo(reference[0], dst)
    return Pipeline(load_config(dst / "config.yaml"), dst, progress=False, on_step=on_step).fit()


def test_killed_reward_replica_is_restarted_reloads_its_model_and_the_run_completes(reference, tmp_path, capsys):

    report = reference[1]
    dst = tmp_path / "reward_killed"
    seen = {}

    def kill_reward(pipe, step):
        if step == 1:
            seen["before"] = pipe.reward.info()[0]
            kill_actor(pipe.reward.group.actors[0])
        if step == 2:
            seen["after"] = pipe.reward.info()[0]
            seen["counted"] = json.loads((dst / "state.json").read_text())["restarts"]

    got = _rerun_ppo(reference, dst, kill_reward)
    assert got["restarts"]["reward"] >= 1 and got["restarts"]["learner"] == 0
    assert json.loads((dst / "state.json").read_text())["restarts"]["reward"] == got["restarts"]["reward"]
    assert seen["counted"] == {"reward": 1}  # in state.json as it happened: a run killed mid-stage keeps it
    # the new replica loaded the run's reward model itself, from the checkpoint the lost one had
    assert seen["after"]["source"] == seen["before"]["source"] and seen["after"]["version"] == 0
    assert seen["after"]["source"].startswith(str(dst / "reward"))
    events = _events(dst)
    assert [(e["role"], e["stage"], e["mode"], e["after_ppo_step"]) for e in events] == [
        ("reward", "ppo", "actor", 1)]
    assert events[0]["ranks"] == [0] and events[0]["restart"] == 1
    assert "reward: restarted rank(s) [0] during ppo" in capsys.readouterr().out
    assert _final(got) == _final(report)  # a deterministic replica scores exactly as the lost one did


def test_killed_learner_restarts_the_group_from_its_checkpoint_and_the_run_completes(reference, tmp_path, capsys):

    report = reference[1]
    dst = tmp_path / "learner_killed"
    pids = {}

    def kill_learner(pipe, step):
        if step == 1:
            pids["before"] = [i["pid"] for i in pipe.learner.info()]
            kill_actor(pipe.learner.group.actors[-1])
        if step == 2:
            pids["after"] = [i["pid"] for i in pipe.learner.info()]

    got = _rerun_ppo(reference, dst, kill_learner)
    out = capsys.readouterr().out
    assert got["restarts"]["learner"] >= 1 and got["restarts"]["reward"] == 0
    assert not set(pids["before"]) & set(pids["after"])  # every rank is a new process
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
    from raydprm.cluster.pipeline import Pipeline

    two = ["ppo.num_workers=2", "ppo.num_cpus_per_worker=0.5"]
    runs, pids = {}, {}

    def kill_rank_1(pipe, step):
        if step == 1:
            pids["before"] = [i["pid"] for i in pipe.learner.info()]
            kill_actor(pipe.learner.group.actors[1])
        if step == 2:
            pids["after"] = [i["pid"] for i in pipe.learner.info()]

    for name, on_step in (("alone", None), ("killed", kill_rank_1)):
        dst = tmp_path / name
        _copy_before_ppo(reference[0], dst)
        cfg = load_config(dst / "config.yaml", two)
        runs[name] = Pipeline(cfg, dst, progress=False, on_step=on_step).fit()
    assert runs["alone"]["restarts"]["learner"] == 0 and runs["killed"]["restarts"]["learner"] == 1
    assert len(pids["before"]) == 2 and not set(pids["before"]) & set(pids["after"])  # both ranks are new
    events = _events(tmp_path / "killed")
    assert [(e["role"], e["mode"], e["ranks"], e["after_ppo_step"]) for e in events] == [
        ("learner", "group", [0, 1], 1)]
    assert _final(runs["killed"]) == _final(runs["alone"])
