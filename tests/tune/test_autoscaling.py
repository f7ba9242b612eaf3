"""A sweep on Ray's fake multi-node cluster (autoscaler v1) that needs more CPUs than the head:
the autoscaler adds workers, the sweep finishes, the idle workers are removed.

SERIAL: ``AutoscalingCluster.start`` runs ``ray stop --force``, which ends every Ray process on
the machine; run this test alone (``pytest -m serial tests/tune/test_autoscaling.py``).

The pip wheel of Ray lacks ``autoscaler/_private/fake_multi_node/example.yaml``, which
``AutoscalingCluster`` reads as its base config, so the base config is written here (the
fields of that file: a fake_multinode provider without node updaters, no setup commands)."""

import copy
import csv
import os
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.serial, pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]

BASE_CONFIG = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {},
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,  # an idle worker goes after ~6 s
    "docker": {},
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [],
}


def _cluster(head_cpus: int, worker_cpus: int, max_workers: int):
    from ray.cluster_utils import AutoscalingCluster

    class InlineAutoscalingCluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            cfg = copy.deepcopy(BASE_CONFIG)
            cfg["available_node_types"] = copy.deepcopy(worker_node_types)
            cfg["available_node_types"]["ray.head.default"] = {"resources": head_resources, "node_config": {},
                                                                "max_workers": 0}
            cfg.update(config_kwargs)
            return cfg

    return InlineAutoscalingCluster(
        head_resources={"CPU": head_cpus},
        worker_node_types={"ray.worker.cpu": {"resources": {"CPU": worker_cpus, "object_store_memory": 10**9},
                                              "node_config": {}, "min_workers": 0, "max_workers": max_workers}})


def test_sweep_scales_the_cluster_up_and_back_down(tmp_path, capsys, monkeypatch):
    import ray

    from raydprm.cli import main

    # AutoscalingCluster runs the `ray` command: the one next to this interpreter
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    cluster = _cluster(head_cpus=1, worker_cpus=4, max_workers=2)
    cluster.start()
    alive_max = [1]
    stop = threading.Event()
    try:
        ray.init(address="auto")

        def watch():
            while not stop.is_set():
                alive_max[0] = max(alive_max[0], sum(n["Alive"] for n in ray.nodes()))
                time.sleep(1)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        # one trial reserves 3.1 CPUs (sweeps/smoke.yaml --smoke): more than the head's 1
        space = tmp_path / "scale.yaml"
        smoke = (ROOT / "sweeps" / "smoke.yaml").read_text().split("space:")[0]
        space.write_text(smoke.replace("name: smoke", "name: scale") + "space:\n  ppo.beta: {grid: [0.01, 0.3]}\n")
        rc = main(["sweep", "--smoke", "--until", "ppo", str(space), f"run.output_dir={tmp_path}",
                   "ray.preflight_timeout_s=300"])
        out = capsys.readouterr().out
        assert rc == 0, out
        with open(tmp_path / "scale" / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 2 and all(r["status"] == "done" for r in rows), rows
        assert alive_max[0] >= 2, "the autoscaler added no worker"
        deadline = time.monotonic() + 180
        while sum(n["Alive"] for n in ray.nodes()) > 1 and time.monotonic() < deadline:
            time.sleep(2)
        assert sum(n["Alive"] for n in ray.nodes()) == 1, "idle workers were not removed"
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()
