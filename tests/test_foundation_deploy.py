"""Deployment files are well-formed and point at entry points that exist."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_kuberay_rayjob_shape():
    doc = yaml.safe_load((ROOT / "clusters" / "kuberay-rayjob-demo.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    script = spec["entrypoint"].split()[1]
    assert (ROOT / script).is_file()
    rc = spec["rayClusterSpec"]
    assert rc["rayVersion"] == "2.60.0" and rc["enableInTreeAutoscaling"] is True
    assert rc["headGroupSpec"]["template"]["spec"]["containers"]
    for g in rc["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_cluster_launcher_shape():
    doc = yaml.safe_load((ROOT / "clusters" / "aws-cpu.yaml").read_text())
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in doc, key
    assert doc["head_node_type"] in doc["available_node_types"]
    assert any("constraints.txt" in c for c in doc["setup_commands"])  # torch stays pinned
    assert sum(t["max_workers"] for t in doc["available_node_types"].values()) <= doc["max_workers"]


def test_job_entrypoint_delegates_to_the_cli():
    src = (ROOT / "jobs" / "demo.py").read_text()
    assert 'main(["demo"' in src
