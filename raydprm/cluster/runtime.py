"""The one place that starts or attaches to Ray. Every command goes through :func:`connect`.

    with connect(cfg.ray, need=Resources(cpu=3.1), what="raydprm demo") as rt:
        ...                                  # actors, tasks; rt.started says who owns Ray

Where it attaches:

- ``ray.address`` (config) or ``$RAY_ADDRESS`` set, or running inside a Ray Job (the job
  supervisor sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and ``RAY_ADDRESS``): attach to that
  cluster. Inside a job no runtime env is passed: the job's own runtime env already
  applies to every worker, and Ray refuses to merge a second one that sets the same keys
  ("Failed to merge the Job's runtime env"). A driver attaching from outside a job passes
  the offline/cache variables (``HF_*``, ``RAYDPRM_*``, ...) so remote workers see them.
- otherwise start a local instance sized to what the run reserves (a 2-core laptop runs
  the embedded default oversubscribed instead of waiting for CPUs forever), and own it:
  it is shut down on exit, on SIGTERM and on SIGINT, with every process of its session
  (the dashboard and runtime-env agents ignore SIGTERM and would outlive the raylet by a
  minute); a signal during Ray's own start-up ends the processes that start-up began (this
  process's new descendants). A SIGKILLed owner cannot clean up: Ray's raylet and GCS die with
  it (Ray fate-shares them), but its agents then spend 60 s trying to tell the dead GCS
  (Ray's hard-coded timeout). A reaper (:func:`_start_reaper`: a small process that waits on
  a pipe only the owner holds, so it wakes the moment the owner is gone, however it died)
  ends them at once; a reaper that is itself gone is backed up by the next command that
  starts a local instance, which ends what a dead owner left.

Pre-flight (:func:`preflight`): the CPUs, GPUs and memory a run will reserve are compared
with the cluster's; on a cluster the autoscaler is asked once
(``ray.autoscaler.sdk.request_resources``) and given ``ray.preflight_timeout_s``; the
request is cleared when the run ends. A shortfall is one error naming each missing
resource. A local instance cannot grow, so a local shortfall (e.g. GPUs) fails at once.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from raydprm.errors import RaydprmError, Terminated, note_signal, on_signal

__all__ = ["Resources", "RayRuntime", "connect", "preflight", "in_ray_job", "InsufficientResources",
           "cleanup_stale_local_ray", "end_processes_naming"]

log = logging.getLogger(__name__)

JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint
FORWARDED_ENV_PREFIXES = ("HF_", "RAYDPRM_", "TRANSFORMERS_", "TOKENIZERS_", "VLLM_")


class InsufficientResources(RaydprmError):
    """The cluster does not have (and did not scale up to) what the run reserves."""


@dataclass(frozen=True)
class Resources:
    """Logical resources a run reserves at its peak (``memory`` in bytes, 0 = not checked)."""

    cpu: float = 0.0
    gpu: float = 0.0
    memory: float = 0.0
    bundles: tuple[Mapping[str, float], ...] = field(default=())
    detail: str = ""  # what reserves it (e.g. the layout and the largest stage's groups), named in a shortfall

    def as_dict(self) -> dict[str, float]:
        out = {"CPU": self.cpu, "GPU": self.gpu, "memory": self.memory}
        return {k: v for k, v in out.items() if v > 0}


def in_ray_job() -> bool:
    """True inside the entrypoint of a ``ray job submit``."""
    return JOB_ENV_VAR in os.environ


@dataclass
class RayRuntime:
    """What :func:`connect` did: ``started`` a local instance, or attached to ``address``."""

    started: bool
    address: str | None
    in_job: bool
    autoscaler_requested: bool = False
    session_dir: str | None = None  # the owned instance's session directory (its processes name it)
    _old_handlers: dict[int, Any] = field(default_factory=dict, repr=False)
    _reaper: tuple[Any, int] | None = field(default=None, repr=False)  # (its Popen, the pipe's write end)

    def close(self) -> None:
        """Clear the autoscaler request; shut Ray down if this runtime started it. Idempotent."""
        if self.autoscaler_requested:
            try:
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[])
            except Exception as e:  # noqa: BLE001 - the cluster may already be gone
                log.debug("clearing the autoscaler request failed: %s", e)
            self.autoscaler_requested = False
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()
        if self.started and ray.is_initialized():
            ray.shutdown()
            if self.session_dir:  # the agents ignore SIGTERM: end what outlived the raylet
                end_processes_naming(self.session_dir, timeout_s=5.0)  # the reaper names it too
            _forget_local(os.getpid())
        if self._reaper is not None:
            proc, fd = self._reaper
            self._reaper = None
            os.close(fd)  # a reaper still there wakes, finds nothing left and exits
            try:
                proc.wait(timeout=10)
            except Exception as e:  # noqa: BLE001 - bookkeeping only
                log.debug("the reaper did not exit: %s", e)
        self.started = False


def _names(text: str, marker: str) -> bool:
    """``text`` names ``marker`` as a whole (a session ``..._123`` is not named by ``..._1234``)."""
    return re.search(re.escape(marker) + r"(?!\w)", text) is not None


def _of_session(p: Any, marker: str) -> bool:
    """``p``'s command line names ``marker``, or ``p`` is a Ray process (its title ``ray::...``: the
    agents and workers replace their command line with it) writing a file under ``marker`` (its logs)."""
    cmd = p.info["cmdline"] or []
    if any(_names(part, marker) for part in cmd):
        return True
    return bool(cmd) and cmd[0].startswith("ray::") and any(_names(f.path, marker) for f in p.open_files())





def _start_reaper(session_dir: str) -> tuple[Any, int]:
    """Start the reaper of an owned local instance: it holds the read end of a pipe whose write end
    only this process holds (not inherited by Ray's processes: close-on-exec), so it wakes the moment
    this process is gone, however it died, and ends the processes naming ``session_dir`` (the
    dashboard and runtime-env agents that Ray's fate-sharing leaves for ~60 s). Its own session, so a
    Ctrl-C to the terminal's process group does not end it first. Returns (Popen, write end)."""
    import subprocess
    import sys

    r, w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _REAPER, str(r), session_dir], pass_fds=(r,),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return proc, w


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def _state_dir() -> Path:
    base = os.environ.get("RAYDPRM_CACHE") or Path.home() / ".cache" / "raydprm"
    return Path(base) / "ray-local"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remember_local(session_name: str) -> None:
    d = _state_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{os.getpid()}.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "session": session_name, "started": time.time()}))
    tmp.replace(d / f"{os.getpid()}.json")


def _forget_local(pid: int) -> None:
    (_state_dir() / f"{pid}.json").unlink(missing_ok=True)


def cleanup_stale_local_ray() -> list[int]:
    """End the processes of local Ray instances whose owning raydprm process is dead.

    Returns the pids it signalled. Only processes whose command line names the dead
    owner's session directory are touched, so a recycled pid is never hit."""
    d = _state_dir()
    killed: list[int] = []
    if not d.is_dir():
        return killed
    for rec_file in d.glob("*.json"):
        try:
            rec = json.loads(rec_file.read_text())
            owner, session = int(rec["pid"]), str(rec["session"])
        except (OSError, ValueError, KeyError, TypeError):
            rec_file.unlink(missing_ok=True)
            continue
        if _pid_alive(owner) or not session.startswith("session_"):
            continue
        ended = end_processes_naming(session)
        killed += ended
        if ended:
            log.warning("ended %d process(es) left by a killed raydprm run (pid %d, %s)", len(ended), owner, session)
        rec_file.unlink(missing_ok=True)
    return killed


def end_processes_naming(marker: str, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process of a Ray instance named by ``marker`` (a Ray session directory or a
    ``--temp-dir``): its command line names it, or it is a ``ray::`` process whose logs are under it
    (:func:`_of_session`). Waits for them and returns their pids. Other Ray instances are untouched."""
    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and _of_session(p, marker):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return _kill(procs, timeout_s)


def _kill(procs: list[Any], timeout_s: float) -> list[int]:
    """SIGKILL ``procs`` (psutil processes), wait up to ``timeout_s`` for them; the pids killed."""
    import psutil

    killed = []
    for p in procs:
        try:
            p.kill()
            killed.append(p.pid)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)
    return killed


# The reaper's program (psutil only: no Ray, no raydprm; the functions above, by their source): block on
# the pipe until the owner is gone (EOF: it exited or was killed, even by SIGKILL), then end the session.
_REAPER = "import os, re, sys\nfrom typing import Any\n" + "".join(
    inspect.getsource(f) for f in (_names, _of_session, end_processes_naming, _kill)) + """
fd, marker = int(sys.argv[1]), sys.argv[2]
try:
    while os.read(fd, 64):
        pass
except OSError:
    pass
end_processes_naming(marker, timeout_s=10.0)
"""


def _descendants() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _init(**kwargs: Any) -> None:
    """``ray.init``; a signal (or any error) during its start-up ends the
    processes it began (the raylet's agents are found while the raylet still holds them) and
    unwinds as :class:`~raydprm.errors.Terminated` (Ray's own start-up handler turns SIGTERM into
    ``SystemExit(15)``)."""

    before = {p.pid for p in _descendants()}
    try:
        ray.init(**kwargs)
    except BaseException as e:
        began = [p for p in _descendants() if p.pid not in before]
        try:
            ray.shutdown()
        except BaseException as e2:  # noqa: BLE001 - ending what is left matters more
            log.debug("ray.shutdown after a failed start: %s", e2)
        _kill(began, timeout_s=10)
        if isinstance(e, SystemExit) and e.code == signal.SIGTERM:  # Ray's handler: sys.exit(signum)
            note_signal(signal.SIGTERM)
            raise Terminated(signal.SIGTERM) from None
        raise


def connect(ray_cfg: Any, need: Resources | None = None, what: str = "raydprm",
            local_num_cpus: int | None = None) -> RayRuntime:
    """Attach to a cluster or start a local instance (see the module docstring); then pre-flight ``need``.

    Returns a :class:`RayRuntime`; call ``close()`` (or use :func:`ray_session`) when done.
    Already inside an initialised Ray (a Tune trial, a test fixture): attaches to nothing,
    starts nothing, and owns nothing."""
    need = need or Resources()
    before = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; close() puts this one back
    if ray.is_initialized():
        rt = RayRuntime(started=False, address=None, in_job=in_ray_job())
    else:
        address = getattr(ray_cfg, "address", "") or os.environ.get("RAY_ADDRESS") or None
        namespace = getattr(ray_cfg, "namespace", "raydprm")
        job = in_ray_job()
        if address or job:
            env = None if job else {"env_vars": _forwarded_env()}
            try:
                _init(address=address or "auto", namespace=namespace, runtime_env=env, log_to_driver=job)
            except ConnectionError as e:
                raise RaydprmError(f"cannot reach the Ray cluster at {address or 'auto'}: {e}") from None
            rt = RayRuntime(started=False, address=address, in_job=job)
        else:
            cleanup_stale_local_ray()
            n = local_num_cpus or getattr(ray_cfg, "num_cpus", 0) or max(os.cpu_count() or 1, math.ceil(need.cpu))
            _init(num_cpus=n, namespace=namespace, include_dashboard=False, log_to_driver=False)
            rt = RayRuntime(started=True, address=None, in_job=False)
            try:
                node = ray._private.worker._global_node
                rt.session_dir = node.get_session_dir_path()
                _remember_local(node.session_name)
                rt._reaper = _start_reaper(rt.session_dir)
            except Exception as e:  # noqa: BLE001 - bookkeeping only
                log.debug("could not record the local Ray session: %s", e)
        try:  # SIGTERM unwinds like Ctrl-C (ray.init replaced the handler), so Serve, actors and Ray shut down
            signal.signal(signal.SIGTERM, on_signal)
            rt._old_handlers[signal.SIGTERM] = before if before is not None else signal.SIG_DFL
        except ValueError:  # not the main thread: the caller owns signal handling
            pass
    try:
        preflight(need, what=what, timeout_s=getattr(ray_cfg, "preflight_timeout_s", 300.0),
                  can_scale=not rt.started, runtime=rt)
    except BaseException:
        rt.close()
        raise
    return rt


@contextmanager
def ray_session(ray_cfg: Any, need: Resources | None = None, what: str = "raydprm") -> Iterator[RayRuntime]:
    """``with ray_session(cfg.ray, need) as rt:`` — :func:`connect`, then ``close()`` whatever happens."""
    rt = connect(ray_cfg, need, what)
    try:
        yield rt
    finally:
        rt.close()


def _missing(need: Mapping[str, float], have: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    return {k: (v, float(have.get(k, 0.0))) for k, v in need.items() if v > float(have.get(k, 0.0)) + 1e-9}


def _fmt(name: str, v: float) -> str:
    return f"{v / 2**30:.1f} GiB" if name == "memory" else f"{v:g}"


def preflight(need: Resources, *, what: str = "the run", timeout_s: float = 300.0, can_scale: bool = True,
              runtime: RayRuntime | None = None) -> None:
    """Check that the cluster has ``need``; ask the autoscaler once and wait up to ``timeout_s`` if not.

    Raises :class:`InsufficientResources` listing every missing resource."""
    want = need.as_dict()
    if not want:
        return
    missing = _missing(want, ray.cluster_resources())
    if not missing:
        return
    waited = 0.0
    if can_scale and timeout_s > 0:
        from ray.autoscaler.sdk import request_resources

        bundles = list(need.bundles) or [{k: v for k, v in want.items() if k != "memory"}]
        request_resources(bundles=[dict(b) for b in bundles])
        if runtime is not None:
            runtime.autoscaler_requested = True
        t0 = time.monotonic()
        while missing and time.monotonic() - t0 < timeout_s:
            time.sleep(min(5.0, max(0.1, timeout_s / 20)))
            missing = _missing(want, ray.cluster_resources())
        waited = time.monotonic() - t0
        if not missing:
            return
    parts = [f"{k} needs {_fmt(k, n)}, the cluster has {_fmt(k, h)}" for k, (n, h) in sorted(missing.items())]
    tail = (f" (waited {waited:.0f} s for the autoscaler)" if waited else
            " (a local Ray instance cannot grow: lower the replicas/workers or their GPUs, or attach to a cluster "
            "with ray.address)" if not can_scale else "")
    detail = f" [{need.detail}]" if need.detail else ""
    raise InsufficientResources(f"not enough Ray resources for {what}: " + "; ".join(parts) + tail + detail)
