"""Live preference shift (pipeline.live_votes / drift_step / drift_mixture / refresh_every): votes on
the policy's samples land in the store during PPO, the crowd changes at drift_step, the reward
replicas are refreshed every K steps (and not at all with refresh off), and a resumed run keeps
the drift state (store position, refreshed model, refresh count)."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from raydprm.cluster.drift import crowd_mixture, live_votes
from raydprm.config import load_config
from raydprm.errors import ConfigError
from raydprm.sim.personas import Population, load_personas

TINY = ["sft.n_examples=48", "sft.epochs=1", "sft.batch_size=16", "crowd.n_items=24", "crowd.votes_per_item=4",
        "reward.epochs=1", "ppo.steps=4", "ppo.rollout_batch=4", "ppo.minibatch=4", "engine.micro_batch=4",
        "ppo.epochs=1", "engine.engine=torch", "rollout.max_new_tokens=8", "pipeline.checkpoint_every=2",
        "reward.num_replicas=2", "ray.num_cpus=5", "store.half_life_s=120"]
DRIFT = ["pipeline.live_votes=3", "pipeline.drift_step=2", "pipeline.drift_mixture={teenager: 1}",
         "pipeline.refresh_every=2", "pipeline.refresh_epochs=1", "pipeline.step_seconds=60"]
K_VOTES, DRIFT_STEP = 3, 2


# ---------------------------------------------------------------------- without Ray

def test_config_rules_name_the_key():
    for bad, key in ((["pipeline.drift_step=2"], "pipeline.drift_step"),
                     (["pipeline.refresh_every=2"], "pipeline.refresh_every"),
                     (["pipeline.live_votes=1", "pipeline.drift_mixture={teenager: 1}"], "pipeline.drift_mixture"),
                     (["pipeline.live_votes=1", "pipeline.drift_step=2", "pipeline.drift_mixture={teenager: -1}"],
                      "pipeline.drift_mixture.teenager"),
                     (["pipeline.live_votes=1", "pipeline.drift_step=41", "pipeline.drift_mixture={teenager: 1}"],
                      "pipeline.drift_step")):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            load_config(None, bad)


def test_crowd_mixture_changes_at_drift_step_and_votes_are_deterministic():
    cfg = load_config(None, [*TINY, *DRIFT])
    assert crowd_mixture(cfg, 1) == {} and crowd_mixture(cfg, 2) == crowd_mixture(cfg, 4) == {"teenager": 1.0}
    pop = Population(load_personas(), {"teenager": 1.0})
    prompts = ["How do I water a fern?"] * 3
    responses = ["Water it weekly.", "  ", "Water it weekly."]  # a blank one gets no votes; repeats do
    v = live_votes(pop, prompts, responses, votes_per_item=4, seed=7, ts=123.0)
    assert len(v) == 2 * 4 and {x["persona"] for x in v} == {"teenager"} and {x["ts"] for x in v} == {123.0}
    assert len({x["vote_id"] for x in v}) == 8
    assert v == live_votes(pop, prompts, responses, votes_per_item=4, seed=7, ts=123.0)


def test_live_votes_follow_the_mixtures_label_distribution():
    """Empirical label shares of 3000 votes of the shifted crowd (teenager) on 30 world items: within
    total variation 0.02 of its exact distribution (Eq. P1 averaged over items), and 0.05 or more
    away from the uniform crowd's (the two differ by 0.08 on these items)."""
    from raydprm.sim.personas import simulated_items

    items = simulated_items(30, seed=3)
    prompts, responses = [p for p, _ in items], [r for _, r in items]
    new, old = Population(load_personas(), {"teenager": 1.0}), Population(load_personas())
    votes = live_votes(new, prompts, responses, votes_per_item=100, seed=1, ts=0.0)
    emp = np.bincount([v["label"] for v in votes], minlength=6) / len(votes)
    tv_new = 0.5 * np.abs(emp - new.true_distributions(prompts, responses).mean(0)).sum()
    tv_old = 0.5 * np.abs(emp - old.true_distributions(prompts, responses).mean(0)).sum()
    assert len(votes) == 3000 and tv_new < 0.02 and tv_old > 0.05


def test_store_backup_is_a_consistent_copy(tmp_path):
    from raydprm.store import PreferenceStore

    with PreferenceStore(tmp_path / "a.db") as s:
        s.add_votes([{"vote_id": f"v{i}", "prompt": "p", "response": f"r{i % 3}", "persona": "teacher",
                      "label": i % 6} for i in range(20)])
        s.backup(tmp_path / "b.db")
        s.add_votes([{"vote_id": "later", "prompt": "p", "response": "r0", "persona": "teacher", "label": 0}])
    with PreferenceStore(tmp_path / "b.db", readonly=True) as b:
        assert b.count_votes() == 20 and b.count_items() == 3
        got = {r: b.distribution("p", r) for r in ("r0", "r1", "r2")}
    with PreferenceStore(tmp_path / "a.db", readonly=True) as a:
        assert got["r1"] == a.distribution("p", "r1") and got["r0"] != a.distribution("p", "r0")


# ---------------------------------------------------------------------- tiny pipeline runs

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=5, include_dashboard=False, log_to_driver=False, namespace="raydprm-test-drift")
    yield
    ray.shutdown()


def _watch(seen):
    """on_step: what the store and the reward replicas hold after each PPO step."""
    def on_step(pipe, step):
        seen[step] = {"votes": pipe.drift.store.count_votes(), "info": pipe.reward.info()}
    return on_step


def _run(cfg, run_dir, on_step=None):
    from raydprm.cluster.pipeline import Pipeline

    return Pipeline(cfg, run_dir, progress=False, on_step=on_step, until="ppo").fit()["ppo"]


@pytest.fixture(scope="module")
def on_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("drift")
    cfg = load_config(None, [*TINY, *DRIFT, f"run.output_dir={out}", "run.name=arm_on"])
    seen = {}
    hist = _run(cfg, out / "arm_on", _watch(seen))
    return cfg, out / "arm_on", hist, seen


def _live_votes(run_dir):
    """(persona, label, ts, prompt, response) of every live vote in the run's PPO store."""
    db = sqlite3.connect(f"file:{run_dir / 'ppo' / 'store.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT v.persona, v.label, v.ts, i.prompt, i.response FROM votes v JOIN items i "
                          "ON i.item_id = v.item_id WHERE v.source = 'live' ORDER BY v.seq").fetchall()
    finally:
        db.close()


def _collect_votes(run_dir):
    db = sqlite3.connect(f"file:{run_dir / 'store.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.ray
def test_votes_land_in_the_store_during_ppo(on_run):
    cfg, run_dir, hist, seen = on_run
    n0 = _collect_votes(run_dir)  # the collect stage's store is untouched; PPO votes into its copy
    assert n0 == json.loads((run_dir / "collect" / "record.json").read_text())["outputs"]["votes"]
    prev = n0
    for t in range(1, 5):
        rec = hist[t - 1]
        n_samples = cfg.ppo.rollout_batch  # every sample gets K votes unless its text is blank
        assert rec["drift/votes_added"] % K_VOTES == 0 and 0 < rec["drift/votes_added"] <= n_samples * K_VOTES
        assert seen[t]["votes"] == rec["drift/store_votes"] == prev + rec["drift/votes_added"]
        prev = seen[t]["votes"]
    live = _live_votes(run_dir)
    assert len(live) == sum(r["drift/votes_added"] for r in hist) == prev - n0
    # votes carry the logical clock ts_t = T0 + t * step_seconds
    rec = json.loads((run_dir / "collect" / "record.json").read_text())
    t0 = rec["started"] + rec["seconds"]
    steps = sorted({round((ts - t0) / cfg.pipeline.step_seconds, 6) for _, _, ts, _, _ in live})
    assert steps == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.slow
@pytest.mark.ray
def test_the_crowd_changes_at_drift_step(on_run):
    _, run_dir, hist, _ = on_run
    rec = json.loads((run_dir / "collect" / "record.json").read_text())
    t0 = rec["started"] + rec["seconds"]
    live = [(p, lab, round((ts - t0) / 60), pr, r) for p, lab, ts, pr, r in _live_votes(run_dir)]
    before = [v for v in live if v[2] < DRIFT_STEP]
    after = [v for v in live if v[2] >= DRIFT_STEP]
    assert before and after
    assert {v[0] for v in after} == {"teenager"}  # the new mixture's only persona
    assert len({v[0] for v in before}) > 1  # the uniform crowd of crowd.mixture
    assert [r["drift/shifted"] for r in hist] == [0.0, 1.0, 1.0, 1.0]
    # judged rewards: the current crowd is the old one before the shift and the new one after
    for r in hist:
        assert r["drift/judged"] == (r["drift/judged_new"] if r["drift/shifted"] else r["drift/judged_old"])


@pytest.mark.slow
@pytest.mark.ray
def test_reward_model_is_refreshed_every_k_steps_and_replicas_agree(on_run):
    import torch

    cfg, run_dir, hist, seen = on_run
    assert [r["drift/refreshed"] for r in hist] == [0.0, 1.0, 0.0, 1.0]
    assert [r["drift/refreshes"] for r in hist] == [0.0, 1.0, 1.0, 2.0]
    versions = {t: [i["version"] for i in seen[t]["info"]] for t in seen}
    assert versions == {1: [0, 0], 2: [1, 1], 3: [1, 1], 4: [2, 2]}
    for t, want in ((1, run_dir / "reward" / "best"), (3, run_dir / "ppo" / "drift" / "refresh_000002" / "best"),
                    (4, run_dir / "ppo" / "drift" / "refresh_000004" / "best")):
        assert {Path(i["source"]).resolve() for i in seen[t]["info"]} == {want.resolve()}
    heads = [torch.load(d / "head.pt", weights_only=True)["weight"] for d in
             (run_dir / "reward" / "best", run_dir / "ppo" / "drift" / "refresh_000002" / "best",
              run_dir / "ppo" / "drift" / "refresh_000004" / "best")]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    assert hist[1]["drift/refresh_delta"] > 0 and hist[3]["drift/refresh_delta"] > 0
    log = json.loads((run_dir / "ppo" / "drift" / "refreshes.json").read_text())
    assert [e["step"] for e in log] == [2, 4] and [e["versions"] for e in log] == [[1, 1], [2, 2]]
    # the refresh trains on the whole store: the collect items plus the live items so far
    assert log[1]["items"] > log[0]["items"] >= cfg.crowd.n_items


@pytest.mark.slow
@pytest.mark.ray
def test_refresh_off_leaves_the_reward_model_unchanged(on_run, tmp_path):
    from raydprm.cluster.run_state import copy_stages

    cfg, run_dir, hist_on, _ = on_run
    off = tmp_path / "arm_off"
    assert copy_stages(run_dir, off, ("sft", "collect", "reward")) == ["sft", "collect", "reward"]
    seen = {}
    hist = _run(cfg.override([f"run.output_dir={tmp_path}", "run.name=arm_off", "pipeline.refresh_every=0"]), off,
                _watch(seen))
    assert all(r["drift/refreshed"] == 0 and r["drift/refreshes"] == 0 for r in hist)
    assert all([i["version"] for i in seen[t]["info"]] == [0, 0] for t in seen)
    assert all(Path(i["source"]).resolve() == (off / "reward" / "best").resolve() for t in seen for i in seen[t]["info"])
    assert not (off / "ppo" / "drift" / "refresh_000002").exists()
    # the same seed: identical to the refresh-on run until the first refresh changes the reward (after step 2)
    for a, b in zip(hist[:2], hist_on[:2]):
        assert a["reward/mean"] == b["reward/mean"] and a["drift/store_votes"] == b["drift/store_votes"]
    assert hist[2]["reward/mean"] != hist_on[2]["reward/mean"]


class _Crash(Exception):
    pass


@pytest.mark.slow
@pytest.mark.ray
def test_resume_keeps_the_drift_state(on_run, tmp_path):
    """Killed after step 3 (checkpoint at step 2, after the first refresh; step 3's votes already in
    the store): the resumed run restores the store and the refreshed model of step 2 and ends
    exactly like the uninterrupted run."""
    from raydprm.cluster.run_state import copy_stages

    cfg, run_dir, hist_on, _ = on_run
    d = tmp_path / "resumed"
    copy_stages(run_dir, d, ("sft", "collect", "reward"))
    c = cfg.override([f"run.output_dir={tmp_path}", "run.name=resumed"])

    def crash(pipe, step):
        if step == 3:
            raise _Crash
    with pytest.raises(_Crash):
        _run(c, d, crash)
    progress = json.loads((d / "ppo" / "ckpt" / "step_000002" / "progress.json").read_text())
    assert progress["drift"]["refreshes"] == 1 and progress["drift"]["model_dir"].endswith("refresh_000002/best")
    assert (d / "ppo" / "ckpt" / "step_000002" / "store.db").is_file()
    seen = {}
    hist = _run(c, d, _watch(seen))
    assert sorted(seen) == [3, 4]  # resumed after step 2
    assert [i["version"] for i in seen[3]["info"]] == [1, 1]  # the refreshed model of step 2, reloaded
    strip = [{k: v for k, v in r.items() if not k.startswith("time/") and k not in
              ("ppo/tokens_per_s", "ppo/samples_per_s", "ppo/update_time_s")} for r in hist]
    want = [{k: v for k, v in r.items() if not k.startswith("time/") and k not in
             ("ppo/tokens_per_s", "ppo/samples_per_s", "ppo/update_time_s")} for r in hist_on]
    assert strip == want
    assert len(_live_votes(d)) == len(_live_votes(run_dir))
