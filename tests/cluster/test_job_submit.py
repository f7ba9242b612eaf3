"""`ray job submit` of jobs/run.py --smoke to a head started by `ray start --head` (token auth on),
with a runtime env that sets env vars: the job must attach without passing a second runtime
env (Ray refuses to merge two that set the same keys) and end SUCCEEDED.

The head runs in its own --temp-dir on free ports and is ended by killing exactly the
processes whose command line names that directory, so other Ray instances on the machine
survive (`ray stop` would end every Ray process here).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.serial]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_head(temp_dir: str) -> None:
    from raydprm.cluster.runtime import end_processes_naming

    end_processes_naming(temp_dir, timeout_s=20)


@pytest.fixture
def ray_head(tmp_path_factory):
    temp_dir = str(tmp_path_factory.mktemp("rayhead"))
    dash = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = {"--port": _free_port(), "--dashboard-port": dash, "--ray-client-server-port": _free_port(),
             "--node-manager-port": _free_port(), "--object-manager-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
             "--runtime-env-agent-port": _free_port(), "--metrics-export-port": _free_port()}
    cmd = [str(BIN / "ray"), "start", "--head", "--num-cpus=4", f"--temp-dir={temp_dir}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", *[f"{k}={v}" for k, v in ports.items()]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _kill_head(temp_dir)


def test_job_submit_with_env_vars_succeeds_under_token_auth(ray_head, tmp_path):
    address, env = ray_head
    out_dir = tmp_path / "out"
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                "RAYDPRM_CACHE": os.environ["RAYDPRM_CACHE"], "TOKENIZERS_PARALLELISM": "false"},
                   "excludes": [".git", ".venv", ".cache", "runs", "*.db"]}
    client_env = {**env, "RAY_AUTH_MODE": "token"}  # the client side of Ray 2.60's token auth
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps(runtime_env), "--",
           sys.executable, "jobs/run.py", "--smoke", "--no-progress", f"run.output_dir={out_dir}", "run.name=job"]
    t0 = time.time()
    res = subprocess.run(cmd, env=client_env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    log = res.stdout[-4000:] + res.stderr[-4000:]
    assert res.returncode == 0, log
    assert re.search(r"Job '\S+' succeeded", res.stdout), log  # ray's CLI: "Job 'raysubmit_...' succeeded"
    assert "Failed to merge" not in log
    assert (out_dir / "job" / "report.md").is_file() and (out_dir / "job" / "report.json").is_file()
    assert time.time() - t0 < 1200
