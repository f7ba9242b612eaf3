"""Placement per role: `pipeline.layout = split | colocate`.

The pipeline (SMOKE_OVERRIDES) runs once under each layout with the same seed: the final
report and every PPO metric must be identical (CPU, where sleep and offload move nothing and
the order of computation is the same). During PPO each run checks where its actors are:
split puts generators, learner and reward actors in placement groups of their own; colocate
puts generator 0 and learner rank 0 in the same bundle of the same group (that bundle's CPUs
are exactly used up by the two of them), and the pair is in the state the turn-taking order
leaves it in after a step (generators: KV cache asleep; learner: optimizer and parameters
offloaded)."""

import pytest

from raydprm.cluster.placement import layout_groups, peak_resources
from raydprm.cluster.run_plan import SMOKE_OVERRIDES, bundle_layout, required_resources
from raydprm.config import load_config
from raydprm.errors import ConfigError

TIMING = ("ppo/tokens_per_s", "ppo/samples_per_s", "ppo/update_time_s")


# --------------------------------------------------------------------------- config and bundles (no Ray)

@pytest.mark.parametrize("bad, words", [
    (["engine.num_workers=2", "ppo.minibatch=8"], "rollout.num_replicas = 1 must equal engine.num_workers = 2"),
    (["rollout.num_gpus=1", "engine.num_gpus_per_worker=1"], "must be <= 1 (e.g. 0.5 each), got 1 + 1"),
    (["ppo.async_rollout=true"], "set ppo.async_rollout = false"),
    (["rollout.weight_sync=nccl"], "NCCL refuses (duplicate GPU)"),
])
def test_colocate_refuses_what_cannot_share_a_gpu(bad, words):
    with pytest.raises(ConfigError, match="'pipeline.layout' = 'colocate'") as e:
        load_config(None, ["pipeline.layout=colocate", *bad])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_split_bundles_are_unchanged_and_colocate_shares_the_learner_bundles():
    split = load_config(None, ["rollout.num_replicas=2", "engine.num_workers=2", "ppo.minibatch=8",
                               "rollout.num_gpus=0.5", "engine.num_gpus_per_worker=0.5"])
    b, off = bundle_layout(split)  # what a Tune trial reserves: one bundle per actor, as before
    assert off == {"driver": 0, "rollout": 1, "reward": 3, "learner": 4, "store": 6, "reference": 7}
    assert b[1] == b[2] == {"CPU": 1.0, "GPU": 0.5} and b[6] == {"CPU": 0.1}
    co = split.override(["pipeline.layout=colocate"])
    b, off = bundle_layout(co)
    assert off["rollout"] == off["learner"] == 2 and len(b) == 1 + 1 + 2 + 1 + 2
    assert b[2] == b[3] == {"CPU": 2.0, "GPU": 1.0}  # one GPU per (generator, learner rank) pair
    assert set(layout_groups(co)) == {"policy", "reward", "store", "reference"}
    assert set(layout_groups(split)) == {"rollout", "reward", "learner", "store", "reference"}


def test_preflight_need_is_the_largest_stage_of_the_layout():
    split = load_config(None, ["rollout.num_gpus=1", "engine.num_gpus_per_worker=1"])
    need = required_resources(split)
    # ppo: rollout 1 + learner 1 GPU = evaluate: policy pool 1 + reference pool 1; CPUs of ppo: 1 + 1 + 1 + 0.1
    assert (need.gpu, need.cpu) == (2.0, 3.1) and "pipeline.layout = split" in need.detail
    co = load_config(None, ["pipeline.layout=colocate", "rollout.num_gpus=0.5", "engine.num_gpus_per_worker=0.5"])
    need = peak_resources(co)
    # colocate: the pair's one GPU + evaluate's reference generator (0.5)
    assert need.gpu == 1.5 and "policy 1 x {CPU 2, GPU 1}" in need.detail


def test_preflight_names_the_layout_and_what_it_places(tmp_path, capsys):
    from raydprm.cli import main

    rc = main(["run", "--no-progress", f"run.output_dir={tmp_path}", "run.name=co", "pipeline.layout=colocate",
               "rollout.num_gpus=0.5", "engine.num_gpus_per_worker=0.5", "ray.num_cpus=4"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("raydprm: error:")]
    assert rc == 2 and len(err) == 1, err
    assert "GPU needs 1.5, the cluster has 0" in err[0] and "pipeline.layout = colocate" in err[0]
    assert "policy 1 x {CPU 2, GPU 1}" in err[0]


# --------------------------------------------------------------------------- the two layouts on Ray

def _check_placement(pipe, step, layout, seen):
    """During PPO: which group each role's actors are in, and the turn-taking state after a step."""
    import ray

    from raydprm.cluster.learner_group import LearnerActor
    from raydprm.cluster.rollout_actor import RolloutGenerator

    if step != 1:
        return
    groups = {role: g for role, g in (("rollout", pipe.rollout.group), ("learner", pipe.learner.group),
                                      ("reward", pipe.reward.group))}
    # a lambda travels by value (a function of this test module would be imported by the actor)
    where = lambda actor: __import__("ray").get_runtime_context().get_placement_group_id()  # noqa: E731
    pg = {role: ray.get(g.actors[0].__ray_call__.remote(where)) for role, g in groups.items()}
    own = {role: g.placement.placement_group.id.hex() for role, g in groups.items()}
    assert pg == own  # each actor really runs in the group its ActorGroup was given
    assert all(g.placement.bundle_offset == 0 for g in groups.values())
    free, total = ray.available_resources(), ray.cluster_resources()
    for role in ("rollout", "learner"):
        key = f"CPU_group_0_{pg[role]}"  # bundle 0 of the role's group
        seen[role] = (pg[role], total[key], free.get(key, 0.0))
    seen["reward"] = (pg["reward"],)
    seen["asleep"] = pipe.rollout.group.rank0(RolloutGenerator.info)["asleep"]
    seen["offloaded"] = pipe.learner.group.rank0(LearnerActor.info)["offloaded"]
    seen["groups"] = pipe.own_placement.live


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from raydprm.cluster.pipeline import Pipeline
    from raydprm.cluster.run_plan import resolve_run_dir

    out = tmp_path_factory.mktemp("layouts")
    got = {}
    for layout in ("split", "colocate"):
        cfg = load_config(None, [*SMOKE_OVERRIDES, "ray.num_cpus=4", f"run.output_dir={out}", f"run.name={layout}",
                                 f"pipeline.layout={layout}"])
        seen: dict = {}
        report = Pipeline(cfg, resolve_run_dir(cfg), progress=False,
                          on_step=lambda p, s, lay=layout, seen=seen: _check_placement(p, s, lay, seen)).fit()
        got[layout] = (report, seen)
    return got


def _final(report):
    ppo = [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in report["ppo"]]
    return report["policies"], report["head_to_head"], ppo


@pytest.mark.slow
@pytest.mark.ray
def test_split_and_colocate_give_identical_results(runs):
    (split, _), (co, _) = runs["split"], runs["colocate"]
    assert len(split["ppo"]) == 2 and split["ppo"][-1]["ppo/policy_loss"] == co["ppo"][-1]["ppo/policy_loss"]
    assert _final(split) == _final(co)  # equal, not close
    assert all(r["time/swap_s"] == 0.0 for r in split["ppo"]) and all(r["time/swap_s"] >= 0.0 for r in co["ppo"])


@pytest.mark.slow
@pytest.mark.ray
def test_actors_land_on_the_bundles_of_their_layout(runs):
    _, s = runs["split"]
    assert len({s["rollout"][0], s["learner"][0], s["reward"][0]}) == 3  # three groups of their own
    assert s["rollout"][1:] == (1.0, 0.0) and s["learner"][1:] == (1.0, 0.0)  # each bundle: its one actor
    assert s["asleep"] == [] and s["offloaded"] == []
    assert s["groups"] == ["rollout", "reward", "learner"]  # PPO placed its roles; earlier stages released theirs
    _, c = runs["colocate"]
    assert c["rollout"][0] == c["learner"][0] != c["reward"][0]  # one group for the pair
    # bundle 0 of that group holds 2 CPUs and both actors (1 CPU each) use them up: they share it
    assert c["rollout"][1:] == c["learner"][1:] == (2.0, 0.0)
    # after a step: generators woke their weights to load the update, their KV cache waits for the
    # next generate; the learner's optimizer state and parameters are offloaded (no-ops on the CPU)
    assert c["asleep"] == ["kv_cache"] and c["offloaded"] == ["optimizer", "params"]
    assert c["groups"] == ["policy", "reward"]
