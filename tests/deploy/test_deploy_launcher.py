"""The cluster-launcher files (clusters/aws.yaml, clusters/gcp.yaml) as Ray reads them.

Checked with Ray's own code: `prepare_config` + `validate_config` (what `ray up` runs before
touching a cloud), Ray's rsync argument builder fed to a real rsync, and the node types'
resources. No cloud account is touched.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = {"aws": ROOT / "clusters" / "aws.yaml", "gcp": ROOT / "clusters" / "gcp.yaml"}
ROLES = ("generator", "learner", "reward")
# what the autoscaler imports to talk to each cloud (ray/autoscaler/_private/<cloud>/)
SDK = {"aws": "boto3", "gcp": "google-api-python-client"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    tomllib = pytest.importorskip("tomli")


def _load(cloud: str) -> dict:
    return yaml.safe_load(LAUNCHERS[cloud].read_text())


@pytest.fixture(params=sorted(LAUNCHERS))
def cloud(request) -> str:
    return request.param


def test_launcher_passes_rays_own_validation(cloud):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(cloud)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # ray-schema.json + Ray's cross-field checks; raises on any error
    assert prepared["provider"]["type"] == cloud
    assert set(prepared["available_node_types"]) == set(raw["available_node_types"])


def test_launcher_node_types_cpu_head_and_one_gpu_type_per_role_at_zero(cloud):
    doc = _load(cloud)
    types = doc["available_node_types"]
    head = types[doc["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "GPU" not in head["resources"]
    for role in ROLES:
        t = types[role]
        assert t["resources"]["GPU"] >= 1 and t["labels"]["raydprm.io/role"] == role
    workers = [t for name, t in types.items() if name != doc["head_node_type"]]
    assert all(t["min_workers"] == 0 for t in workers)
    # a CPU-only type exists, so CPU-only actors do not start GPU nodes
    assert any("GPU" not in t["resources"] and t["resources"]["CPU"] > 0 for t in workers)
    assert types["learner"]["resources"]["GPU"] > 1  # one node holds a trial's data-parallel ranks
    from ray._private.label_utils import validate_label_key, validate_node_labels

    for t in workers:  # Ray's own label checks (ray start refuses a bad key)
        validate_node_labels(t["labels"])
        assert all(validate_label_key(k) is None for k in t["labels"])


def test_launcher_installs_with_bootstrap_gpu_extra_and_cloud_sdk_on_head(cloud):
    doc = _load(cloud)
    head = " ".join(doc["head_setup_commands"])
    worker = " ".join(doc["worker_setup_commands"])
    for cmds in (head, worker):
        assert "bash scripts/bootstrap.sh" in cmds and "pip install" not in cmds
    assert f"RAYDPRM_EXTRAS=gpu,{cloud} " in head and "RAYDPRM_EXTRAS=gpu " in worker
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.split("==")[0] == SDK[cloud] and "==" in req for req in extras[cloud])
    # every command that runs Ray uses the venv the bootstrap made
    for cmd in doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]:
        assert "~/venv/bin/ray " in cmd


def test_launcher_enables_token_auth_and_keeps_dashboard_off_the_network(cloud):
    doc = _load(cloud)
    starts = [c for c in doc["head_start_ray_commands"] + doc["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert doc["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # Ray's default token path
    assert not any("dashboard-host" in c for c in starts)  # localhost only: reached via `ray dashboard`


def _rsync_listing(src: Path, dst: Path, options: dict) -> set[str]:
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    args = SSHCommandRunner._create_rsync_filter_args(None, options)  # what `ray up` passes
    out = subprocess.run(["rsync", "-a", "--out-format=%n", *args, f"{src}/", str(dst)],
                         check=True, capture_output=True, text=True).stdout
    return {line.rstrip("/") for line in out.splitlines() if line.strip()}


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_launcher_rsync_filters_keep_venv_git_runs_cache_off_the_nodes(cloud, tmp_path):
    doc = _load(cloud)
    assert doc["file_mounts"]["~/raydprm"] == "."
    src = tmp_path / "checkout"
    for rel in (".venv/lib/torch.so", ".git/HEAD", "runs/demo/metrics.json", ".cache/hf/model.bin",
                "raydprm/__pycache__/x.pyc", "raydprm/config.py", "jobs/run.py", "scripts/bootstrap.sh",
                "pyproject.toml", "constraints.txt", "clusters/aws.yaml", "sweeps/beta.yaml", "store.db"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    shutil.copy(ROOT / ".gitignore", src / ".gitignore")
    copied = _rsync_listing(src, tmp_path / "node", {"rsync_exclude": doc["rsync_exclude"],
                                                     "rsync_filter": doc["rsync_filter"]})
    for kept in ("raydprm/config.py", "jobs/run.py", "scripts/bootstrap.sh", "pyproject.toml",
                 "constraints.txt", "sweeps/beta.yaml"):
        assert kept in copied, kept
    for gone in (".venv", ".git", "runs", ".cache", "raydprm/__pycache__", "store.db"):
        assert not any(p == gone or p.startswith(gone + "/") for p in copied), gone


def test_launcher_outputs_dir_is_shared_by_nfs_from_the_head(cloud):
    doc = _load(cloud)
    head = " ".join(doc["head_setup_commands"])
    worker = " ".join(doc["worker_setup_commands"])
    assert "/srv/raydprm" in head and "exportfs" in head
    assert "$RAY_HEAD_IP:/srv/raydprm /srv/raydprm" in worker


def test_job_entrypoints_delegate_to_the_cli():
    # the scripts the cluster files launch are thin wrappers of the CLI
    src = (ROOT / "jobs" / "demo.py").read_text()
    assert 'main(["demo"' in src
