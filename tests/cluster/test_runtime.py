"""The one Ray runtime: attach vs start, no second runtime env inside a job, pre-flight that
names what is missing, SIGTERM that shuts an owned Ray down, and cleanup of what a
SIGKILLed owner left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from raydprm.cluster import runtime as rt_mod
from raydprm.cluster.runtime import InsufficientResources, Resources
from raydprm.config import RayConfig

pytestmark = [pytest.mark.ray]


def _session_procs(session: str) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(session in part for part in p.info["cmdline"] or []):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_inside_a_job_no_runtime_env_is_passed(monkeypatch):
    """Ray refuses to merge a driver runtime env that sets the job's env vars again; inside
    a job the runtime attaches with none. Outside a job, attaching forwards HF_* etc."""
    calls = []
    monkeypatch.setattr(rt_mod.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(rt_mod.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(rt_mod, "preflight", lambda *a, **kw: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(rt_mod.JOB_ENV_VAR, json.dumps({"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}}))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    r = rt_mod.connect(RayConfig())
    assert calls[-1]["runtime_env"] is None and calls[-1]["address"] == "127.0.0.1:6379"
    assert r.in_job and not r.started
    r.close()
    monkeypatch.delenv(rt_mod.JOB_ENV_VAR)
    r = rt_mod.connect(RayConfig(address="10.0.0.1:6379"))
    assert calls[-1]["address"] == "10.0.0.1:6379"
    assert calls[-1]["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert not r.in_job and not r.started
    r.close()


def test_preflight_names_every_missing_resource_and_fails_fast_locally(monkeypatch):
    monkeypatch.setattr(rt_mod.ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 8 * 2**30})
    t0 = time.monotonic()
    with pytest.raises(InsufficientResources) as e:
        rt_mod.preflight(Resources(cpu=3, gpu=4, memory=16 * 2**30), what="raydprm run", can_scale=False)
    msg = str(e.value)
    assert time.monotonic() - t0 < 1
    assert "GPU needs 4, the cluster has 0" in msg and "CPU needs 3, the cluster has 2" in msg
    assert "memory needs 16.0 GiB, the cluster has 8.0 GiB" in msg and "cannot grow" in msg
    rt_mod.preflight(Resources(cpu=2), can_scale=False)  # enough: silent


def test_preflight_asks_the_autoscaler_once_then_gives_up_after_its_deadline(monkeypatch):
    asked = []
    import ray.autoscaler.sdk as sdk

    monkeypatch.setattr(sdk, "request_resources", lambda **kw: asked.append(kw))
    monkeypatch.setattr(rt_mod.ray, "cluster_resources", lambda: {"CPU": 2.0})
    runtime = rt_mod.RayRuntime(started=False, address="x", in_job=False)
    with pytest.raises(InsufficientResources, match="waited 1 s for the autoscaler"):
        rt_mod.preflight(Resources(gpu=2), timeout_s=1.0, runtime=runtime)
    assert asked == [{"bundles": [{"GPU": 2}]}] and runtime.autoscaler_requested
    runtime.close()  # clears the request
    assert asked[-1] == {"bundles": []} and not runtime.autoscaler_requested


OWNER = textwrap.dedent("""
    import os, sys, time
    from raydprm.cluster.runtime import connect
    from raydprm.config import RayConfig
    rt = connect(RayConfig(num_cpus=1))
    import ray
    print(ray._private.worker._global_node.session_name, flush=True)
    try:
        time.sleep(600)
    finally:
        print("cleaned", flush=True)
        rt.close()
""")


def _wait_for_agents(session: str, timeout_s: float = 60.0) -> None:
    """Poll until the session's raylet has started its agents (the processes a signal must not orphan)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in _session_procs(session):
            try:
                p = psutil.Process(pid)
                if p.name() != "raylet":
                    continue
                kids = " ".join(" ".join(c.cmdline()) for c in p.children())
            except psutil.Error:
                continue
            if all(a in kids for a in ("DashboardAgent", "RuntimeEnvAgent")):
                return
        time.sleep(0.2)
    raise AssertionError(f"the raylet of {session} started no agents within {timeout_s:g} s")


def _start_owner(tmp_path):
    env = {**os.environ, "RAYDPRM_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    session = p.stdout.readline().strip()
    assert session.startswith("session_"), session
    _wait_for_agents(session)
    return p, session, env


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_shut_an_owned_ray_down(tmp_path, sig):
    p, session, _ = _start_owner(tmp_path)
    assert _session_procs(session)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0 and "cleaned" in out
    if sig == signal.SIGTERM:
        assert p.returncode == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while _session_procs(session) and time.monotonic() < deadline:
        time.sleep(1)
    assert _session_procs(session) == [], "Ray processes outlived a SIGTERMed owner"


@pytest.mark.slow
def test_next_start_ends_what_a_sigkilled_owner_left(tmp_path, monkeypatch):
    p, session, env = _start_owner(tmp_path)
    p.kill()
    p.wait(timeout=30)
    monkeypatch.setenv("RAYDPRM_CACHE", env["RAYDPRM_CACHE"])
    killed = rt_mod.cleanup_stale_local_ray()
    assert _session_procs(session) == []
    assert not list((tmp_path / "cache" / "ray-local").glob("*.json"))  # the record is gone too
    assert isinstance(killed, list)


# ---------------------------------------------------------------- signals through the CLI (issue 25, part 4)
CLI_OWNER = textwrap.dedent("""
    import argparse, sys, time
    import raydprm.cli as cli

    def handler(args):
        import ray
        from raydprm.cluster.runtime import connect
        from raydprm.config import RayConfig
        rt = connect(RayConfig(num_cpus=1))
        try:
            print(ray._private.worker._global_node.session_name, flush=True)
            ray.get(ray.remote(lambda: time.sleep(600)).remote())  # the signal arrives inside a Ray wait
        finally:
            print("cleaned", flush=True)
            rt.close()

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(debug=False, handler=handler)

    cli.build_parser = Parser
    sys.exit(cli.main([]))
""")


def _agents(session: str) -> list[str]:
    import psutil

    out = []
    for pid in _session_procs(session):
        try:
            out.append(" ".join(psutil.Process(pid).cmdline())[:80])
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_a_ray_wait_prints_one_line_exits_128_plus_it_and_leaves_no_agent(tmp_path, sig):
    env = {**os.environ, "RAYDPRM_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([sys.executable, "-c", CLI_OWNER], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    session = p.stdout.readline().strip()
    assert session.startswith("session_"), session
    deadline = time.monotonic() + 60  # until the raylet's agents are up (what used to be left behind)
    while not any("Agent" in a or "agent" in a for a in _agents(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert "cleaned" in out
    assert p.returncode == 128 + sig, (p.returncode, err)  # not 1 (a Ray wait's SystemExit) nor 15
    lines = [x for x in err.splitlines() if x.startswith("raydprm:")]
    assert lines == [f"raydprm: {'terminated' if sig == signal.SIGTERM else 'interrupted'} by "
                     f"{signal.Signals(sig).name}"], err
    assert _agents(session) == [], "Ray processes of the run's session outlived it"


STARTUP_OWNER = textwrap.dedent("""
    import argparse, sys
    import raydprm.cli as cli

    def handler(args):
        from raydprm.cluster.runtime import connect
        from raydprm.config import RayConfig
        connect(RayConfig(num_cpus=1)).close()
        print("started", flush=True)  # the signal came too late: the test retries earlier

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(debug=False, handler=handler)

    cli.build_parser = Parser
    sys.exit(cli.main([]))
""")


@pytest.mark.slow
def test_sigterm_during_rays_start_up_exits_143_and_leaves_none_of_its_processes(tmp_path):
    import psutil

    env = {**os.environ, "RAYDPRM_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([sys.executable, "-c", STARTUP_OWNER], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    owner = psutil.Process(p.pid)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the raylet is up: its agents are starting (the window of the probe)
        try:
            kids = owner.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        seen.update({k.pid: k for k in kids})
        if any("raylet" in (k.name() or "") for k in kids if k.is_running()):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    seen.update({k.pid: k for k in owner.children(recursive=True)})
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert "started" not in out, "Ray's start-up finished before the signal (the test raced; rerun)"
    assert p.returncode == 143, (p.returncode, err)
    assert [x for x in err.splitlines() if x.startswith("raydprm:")] == ["raydprm: terminated by SIGTERM"], err
    time.sleep(1)
    left = [k for k in seen.values() if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes of the interrupted start-up are still running: {[k.name() for k in left]}"
