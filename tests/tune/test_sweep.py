"""`raydprm sweep` end to end on CPU: a small sweep completes and writes its table and plots; an
interrupted sweep continues with --resume without redoing its finished trials.

Both run the tiny pipeline (sweeps/smoke.yaml, --smoke sizes) in trials of Ray Tune on a
local Ray instance the command starts; trials share their common stages (SFT, crowd, reward
model) by copying them, each trial's actors sit on its own placement group's bundles, and a
trial that runs in the process of an earlier one (Tune's actor reuse) takes over its warm pools."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydprm.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.ray
def test_small_sweep_beta_x_cost_writes_table_and_plots(tmp_path, capsys):
    rc = main(["sweep", "--smoke", str(ROOT / "sweeps" / "smoke.yaml"), f"run.output_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    sweep_dir = tmp_path / "smoke"
    assert out.strip().splitlines()[-1] == str(sweep_dir)  # the directory, printed last
    assert "2 trial(s) at once" in out
    assert "outlived the trials" not in out  # the last trials' warm pools were shut down with their processes
    rows = _rows(sweep_dir)
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows), rows
    assert {(float(r["ppo.beta"]), r["reward.cost"]) for r in rows} == {
        (b, c) for b in (0.01, 0.3) for c in ("reward_gap", "costs/harm_heavy.npy")}
    for r in rows:
        assert r["evaluated"] == "1" and r["steps"] == "2"
        assert -3.0 <= float(r["expected_reward"]) <= 1.0  # a population E[r] lies within the label rewards
        assert float(r["kl"]) == float(r["kl"])  # a number, not NaN
        assert 0.0 <= float(r["win_rate"]) <= 100.0
    er = [float(r["expected_reward"]) for r in rows]
    assert er == sorted(er, reverse=True)  # best first
    for plot in ("frontier.png", "by_cost.png"):
        assert (sweep_dir / plot).stat().st_size > 1000, plot
    assert "frontier.png" in (sweep_dir / "results.md").read_text()
    # trials with the same cost share their reward model; all four share SFT and the crowd's votes
    runs = sweep_dir / "runs"
    keys = {r["trial_id"]: {s: json.loads((runs / r["trial_id"] / s / "record.json").read_text())["key"]
                            for s in ("sft", "collect", "reward")} for r in rows}
    assert len({k["sft"] for k in keys.values()}) == 1 and len({k["collect"] for k in keys.values()}) == 1
    by_cost = {}
    for r in rows:
        by_cost.setdefault(r["reward.cost"], set()).add(keys[r["trial_id"]]["reward"])
    assert all(len(v) == 1 for v in by_cost.values()) and len(set().union(*by_cost.values())) == 2
    # two trials at once, never more (each trial's pipeline: config.yaml written first, report.json last)
    spans = [((runs / r["trial_id"] / "config.yaml").stat().st_mtime, (runs / r["trial_id"] / "report.json").stat().st_mtime)
             for r in rows]
    assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) == 2, spans
    # trials that ran one after another in one trial process (Tune's actor reuse) trained with the same
    # generator and reward processes (warm pools taken over), and the same learner unless the later
    # trial trained its own reward model (that task takes the learner's bundle); other processes, others
    by_proc: dict[int, list[tuple[dict, str]]] = {}
    for r in rows:
        d = runs / r["trial_id"]
        pids = json.loads((d / "ppo" / "record.json").read_text())["outputs"]["pids"]
        proc = json.loads((d / "placement.json").read_text())["trial"]["pid"]
        by_proc.setdefault(proc, []).append((pids, keys[r["trial_id"]]["reward"]))
    assert max(len(v) for v in by_proc.values()) >= 2, by_proc  # at least one trial's process was reused
    for here in by_proc.values():
        (first, rw), *later = here
        for pids, rw_later in later:
            assert pids["rollout"] == first["rollout"] and pids["reward"] == first["reward"], here
            assert (pids["learner"] == first["learner"]) == (rw_later == rw), here
    firsts = [{x for xs in v[0][0].values() for x in xs} for v in by_proc.values()]
    assert sum(map(len, firsts)) == len(set().union(*firsts)), by_proc
    # every actor of a trial sat on its role's bundle of the trial's own placement group
    from raydprm.cluster.run_plan import bundle_layout
    from raydprm.config import load_config

    _, offsets = bundle_layout(load_config(sweep_dir / "base_config.yaml"))
    for r in rows:
        where = json.loads((runs / r["trial_id"] / "placement.json").read_text())
        pg = where["trial"]["placement_group"]
        assert pg and set(where["actors"]) == {"rollout", "reward", "learner"}
        for role, actors in where["actors"].items():
            for rank, a in enumerate(actors):
                assert a["placement_group"] == pg and a["bundle"] == offsets[role] + rank, (role, a)
    # every trial reported each PPO step, and a Tune checkpoint with each pipeline checkpoint
    for r in rows:
        results = [json.loads(line) for p in sweep_dir.glob(f"*{r['trial_id']}*/result.json")
                   for line in p.read_text().splitlines()]
        steps = [x["step"] for x in results if "pipeline_done" not in x]
        assert steps == [1, 2], steps
        assert all("population/expected_reward" in x and "ppo/kl" in x for x in results)


@pytest.mark.slow
@pytest.mark.ray
def test_interrupted_sweep_resumes_without_redoing_finished_trials(tmp_path, capsys):
    space = tmp_path / "two.yaml"
    smoke = (ROOT / "sweeps" / "smoke.yaml").read_text().split("space:")[0].replace("max_concurrent: 2",
                                                                                     "max_concurrent: 1")
    # the second trial trains longer: it takes over the first one's warm actors and would otherwise end
    # before the interruption (its stages are copied, its processes started)
    space.write_text(smoke.replace("name: smoke", "name: two") + "space:\n  ppo.steps: {grid: [2, 100]}\n")
    cmd = [sys.executable, "-m", "raydprm.cli", "sweep", "--smoke", str(space), f"run.output_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sweep_dir = tmp_path / "two"
    deadline = time.monotonic() + 900
    try:
        def finished():  # Tune has the trial's last result (the trial function has returned)
            return [p for p in sweep_dir.glob("pipeline_trial_*/result.json") if "pipeline_done" in p.read_text()]

        while not finished() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(2)
        assert len(finished()) == 1, "no trial finished in time"

        def terminated():  # Tune's saved experiment state has the finished trial as TERMINATED
            return any("TERMINATED" in f.read_text() for f in sweep_dir.glob("experiment_state-*.json"))

        while not terminated() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        assert terminated(), "Tune never saved the finished trial as terminated"
        assert len(finished()) == 1  # one trial at once: the other is still running
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and stops
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_id = json.loads(finished()[0].read_text().splitlines()[-1])["trial_id"]
    assert (sweep_dir / "runs" / done_id / "report.json").is_file()
    before = {p: p.stat().st_mtime_ns for p in (sweep_dir / "runs" / done_id).rglob("*") if p.is_file()}

    rc = main(["sweep", "--resume", str(sweep_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip().splitlines()[-1] == str(sweep_dir)
    rows = _rows(sweep_dir)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows), rows
    assert sorted(int(r["ppo.steps"]) for r in rows) == [2, 100]
    after = {p: p.stat().st_mtime_ns for p in (sweep_dir / "runs" / done_id).rglob("*") if p.is_file()}
    assert after == before  # the finished trial's run directory was not touched
    other = [r["trial_id"] for r in rows if r["trial_id"] != done_id]
    assert len(other) == 1 and (sweep_dir / "runs" / other[0] / "report.json").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_pbt_clones_the_learner_of_the_better_trial(tmp_path, capsys):
    """Two trials, synchronous PBT half way through PPO, the worse half exploits the better: the
    exploited trial continues PPO from the other trial's checkpoint, with its own (perturbed) beta.
    (Synchronous, because tiny PPO steps take a fraction of a second: unsynchronised trials would
    rarely be in PPO at the same time.)"""
    space = tmp_path / "pbt.yaml"
    smoke = (ROOT / "sweeps" / "smoke.yaml").read_text().split("space:")[0]
    space.write_text(smoke.replace("name: smoke", "name: pbt") + """
scheduler:
  type: pbt
  synch: true
  perturbation_interval: 6
  quantile_fraction: 0.5
  resample_probability: 0.0
  mutations:
    ppo.beta: [0.01, 0.03, 0.1, 0.3]
space:
  ppo.beta: {grid: [0.01, 0.3]}
""")
    rc = main(["sweep", "--smoke", "--until", "ppo", str(space), f"run.output_dir={tmp_path}", "ppo.steps=10",
               "pipeline.checkpoint_every=2"])
    capsys.readouterr()
    assert rc == 0
    sweep_dir = tmp_path / "pbt"
    rows = _rows(sweep_dir)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows), rows
    ids = {r["trial_id"] for r in rows}
    cloned = []
    for tid in ids:
        log = sweep_dir / "runs" / tid / "restores.jsonl"
        for line in log.read_text().splitlines() if log.is_file() else []:
            rec = json.loads(line)
            if rec["from_trial"] != tid:
                cloned.append((tid, rec))
    assert cloned, "PBT exploited no trial"
    for _tid, rec in cloned:  # restored from the other trial's checkpoint, at a step it had reached
        assert rec["from_trial"] in ids and rec["step"] == 6
        assert rec["beta"] in (0.01, 0.03, 0.1, 0.3)


class _Pool:
    """A stand-in pool: a group with a restart hook and count, shut down once."""

    def __init__(self, name):
        from types import SimpleNamespace

        self.name, self.down = name, 0
        self.group = SimpleNamespace(on_restart=f"{name}-own-hook", restarts=0)

    def shutdown(self):
        self.down += 1


def test_a_trial_process_keeps_its_warm_pools_for_the_next_trial_and_shuts_them_down_when_through():
    from raydprm.cluster.warm import WarmPools
    from raydprm.config import Config
    from raydprm.tune import sweep as sw

    class Run:  # what a Pipeline gives its WarmPools: tracking wraps the pool's restart hook
        def __init__(self):
            self.tracked, self.said = [], []

        def track(self, pool, role):
            inner = pool.group.on_restart
            pool.group.on_restart = (self, inner)
            self.tracked.append(pool)
            return pool

        def untrack(self, pool):
            self.tracked.remove(pool)
            pool.shutdown()

    cfg, where = Config(), ("pg1", (("learner", 3), ("rollout", 1)))
    sw.close_warm()
    held = sw.trial_warm(cfg, where, reuse=True)
    assert isinstance(held, WarmPools) and held.persistent and held.enabled
    a = Run()
    held.adopt(True, a.said.append, a.track, a.untrack)  # what Pipeline(warm=held) does
    gen = held.get("rollout", {"replicas": 1}, lambda: _Pool("gen"), lambda p: None)
    lrn = held.get("learner", {"kind": "ppo"}, lambda: _Pool("lrn"), lambda p: None)
    held.done(gen)
    held.forget()  # fit's clean-up (shutdown_workers): persistent pools stay
    assert held.kept() == [gen, lrn] and gen.down == lrn.down == 0
    lrn.group.restarts = 2  # the first trial spent restarts
    # the next trial in this process, on the same placement group: the same pools, its own tracking
    assert sw.trial_warm(cfg, where, reuse=True) is held
    b = Run()
    held.adopt(True, b.said.append, b.track, b.untrack)
    assert b.tracked == [gen, lrn] and lrn.group.on_restart == (b, "lrn-own-hook") and lrn.group.restarts == 0
    reused = []
    assert held.get("rollout", {"replicas": 1}, lambda: _Pool("new"), reused.append) is gen and reused == [gen]
    # a trial on another placement group: the held pools go, new ones start
    again = sw.trial_warm(cfg, ("pg2", where[1]), reuse=True)
    assert again is not held and gen.down == lrn.down == 1 and again.kept() == []
    third = Run()
    again.adopt(True, third.said.append, third.track, third.untrack)
    new = again.get("learner", {"kind": "ppo"}, lambda: _Pool("new"), lambda p: None)
    # a trial that wants no warm actors (pipeline.warm_actors=false), or the process's end: all shut down
    assert sw.trial_warm(cfg.override(["pipeline.warm_actors=false"]), where, reuse=True) is None
    assert new.down == 1 and third.tracked == []
    sw.close_warm()
    assert sw._WARM == {"pools": None, "where": None}
    # the trial's trainable shuts them down when Tune stops its actor (the sweep's end, a failed trial)
    assert sw._ClosesWarmPools in sw.pipeline_trial.__mixins__
