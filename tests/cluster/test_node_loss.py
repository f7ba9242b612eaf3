"""A worker node of a multi-node cluster lost mid-PPO (issue 25, part 2).

A ``ray.cluster_utils.Cluster`` of a head (no CPUs: the driver only) and two 2-CPU workers runs
the tiny pipeline; PPO's three roles (rollout, reward, learner: one CPU each, each on a
placement group of its own) cannot all fit on one worker, so they are spread over both. After
PPO step 1 the worker that holds the rollout generator is removed (its processes killed, as a
preempted VM) and a fresh 2-CPU worker joins (as an autoscaler would replace it). The lost
roles' placement-group bundles are rescheduled where there is room (the new node, or the
surviving worker when it has a CPU free), their actors restarted there (the learner group
from its last checkpoint), and the run ends with exactly the metrics of the uninterrupted
run on the same cluster. The restarted generator's catch-up cannot re-send
the last weight update when its buckets died with their owner (the learner, when it shared
the lost node): it asks the learner to publish that version again (a learner restarted from
its checkpoint makes the run redo the step and publish anew; ``RolloutPool._catch_up``, unit
tests in ``test_rollout_pool.py``). The time from the removal to the end of the next
step is printed (docs/hardening.md, "Faults").

``serial``: it starts a Ray cluster of its own (three raylets) and wants the machine's CPUs.
``Cluster.shutdown()`` ends only that cluster's processes (``Node.kill_all_processes`` of its
own nodes), never another Ray instance on the machine; ``RAY_TMPDIR`` points at a private
directory while it runs, because ``Cluster`` advertises its address in
``<temp dir>/ray/ray_current_cluster``, where any other address-less ``ray.init()`` on the
machine would otherwise find it and connect to it.
"""

import json
import time

import pytest
from test_pipeline import TINY, _copy_before_ppo, _final

from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.serial]

NODE = {"num_cpus": 2, "object_store_memory": 150 * 1024**2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import os

    import ray
    from ray.cluster_utils import Cluster

    # Cluster writes its address to <temp dir>/ray/ray_current_cluster, where every address-less
    # ray.init() on the machine would find it and connect to this cluster instead of starting its
    # own: a private temp dir keeps it (and its sessions) to this test
    old_tmp = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("raytmp"))
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150 * 1024**2})
    workers = [c.add_node(**NODE) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="raydprm", log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp


def _node_of(actor) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=60)


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The uninterrupted run on the same cluster (split and colocate give identical results,
    tests/cluster/test_layouts.py)."""
    from raydprm.cluster.pipeline import Pipeline

    out = tmp_path_factory.mktemp("node_loss_ref")
    cfg = load_config(None, [*TINY, f"run.output_dir={out}", "run.name=ref"])
    return out / "ref", Pipeline(cfg, out / "ref", progress=False).fit()


# split: whether the learner shares the lost node with the generator is Ray's choice (when it does, the
# generator's catch-up finds the last update's buckets dead with their owner and asks the learner, which
# restarts from its checkpoint); colocate: it always does (one bundle holds both), and the generator dies
# during the sync that follows the learner's restart
@pytest.mark.parametrize("layout", ["split", "colocate"])
def test_a_worker_node_lost_mid_ppo_is_replaced_and_the_run_ends_as_uninterrupted(cluster, reference, layout,
                                                                                   tmp_path, capsys):
    from raydprm.cluster.pipeline import Pipeline

    c, workers = cluster
    ref_dir, reference = reference
    dst = tmp_path / "lost"
    _copy_before_ppo(ref_dir, dst)
    seen: dict = {}

    def on_step(pipe, step):
        if step == 1:
            nodes = {role: _node_of(getattr(pipe, role).group.actors[0]) for role in ("rollout", "reward", "learner")}
            seen["nodes"] = nodes
            assert len(set(nodes.values())) == 2, nodes  # the roles are spread over both workers
            victim = next(w for w in workers if w.node_id == nodes["rollout"])
            seen["lost_roles"] = sorted(r for r, n in nodes.items() if n == victim.node_id)
            seen["victim"] = victim.node_id
            c.remove_node(victim, allow_graceful=False)  # a preempted VM: every process of the node killed
            workers.remove(victim)
            workers.append(c.add_node(**NODE))  # its replacement joins
            seen["t_lost"] = time.monotonic()
        if step == 2:
            seen["recovered_s"] = time.monotonic() - seen["t_lost"]
            seen["nodes_after"] = {role: _node_of(getattr(pipe, role).group.actors[0])
                                   for role in ("rollout", "reward", "learner")}

    cfg = load_config(dst / "config.yaml", [f"pipeline.layout={layout}"])
    got = Pipeline(cfg, dst, progress=False, on_step=on_step).fit()
    out = capsys.readouterr().out
    assert _final(got) == _final(reference)  # the same final metrics as the uninterrupted run
    if layout == "colocate":
        assert seen["lost_roles"] == ["learner", "rollout"]
    live = {w.node_id for w in workers}  # the surviving worker and the new one
    for role in seen["lost_roles"]:  # each lost role was restarted where there was room: a node still alive
        assert got["restarts"][role] >= 1, (role, got["restarts"], out)
        assert seen["nodes_after"][role] != seen["victim"] and seen["nodes_after"][role] in live, (role, seen)
    events = [json.loads(x) for x in (dst / "restarts.jsonl").read_text().splitlines()]
    assert sorted({e["role"] for e in events}) == seen["lost_roles"]
    step_s = [r["time/step_s"] for r in got["ppo"] if "time/step_s" in r]
    print(f"\n[node loss, {layout}] roles on the lost node: {seen['lost_roles']}; from its removal to the end of the "
          f"next PPO step: {seen['recovered_s']:.1f} s (a step without faults: "
          f"{min(step_s) if step_s else float('nan'):.1f} s)")
    with capsys.disabled():
        print(f"[node loss, {layout}] recovered in {seen['recovered_s']:.1f} s; lost roles {seen['lost_roles']}")
