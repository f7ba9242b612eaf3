"""`kill -9` of a command that owns a local Ray (`raydprm serve`, `raydprm run`): Ray's fate-sharing
ends the raylet and the GCS with it, but the dashboard and runtime-env agents then spend Ray's
hard-coded 60 s trying to report the raylet's death to the dead GCS (measured 60-80 s on a loaded
machine). The owner's reaper wakes the moment the owner is gone and ends them (issue 25, part 4)."""

import os
import time

import psutil
import pytest

from tests.cluster.test_runtime import _session_procs, _start_owner

BOUND_S = 20.0  # well under Ray's 60 s, with room for a loaded 2-core machine


def _agents_of(session: str) -> list[psutil.Process]:
    """The raylet's agents: their command line is only their title (``ray::DashboardAgent``), so they
    are found as the children of the session's raylet."""
    out = []
    for pid in _session_procs(session):
        try:
            p = psutil.Process(pid)
            if p.name() == "raylet":
                out += [c for c in p.children() if "Agent" in " ".join(c.cmdline())]
        except psutil.Error:
            continue
    return out


def _alive(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_a_sigkilled_owners_agents_are_ended_by_its_reaper_at_once(tmp_path):
    p, session, _ = _start_owner(tmp_path)
    agents = _agents_of(session)
    assert len(agents) == 2
    reapers = [pid for pid in _session_procs(session) if "psutil" in " ".join(psutil.Process(pid).cmdline())]
    assert len(reapers) == 1 and psutil.Process(reapers[0]).ppid() == p.pid  # one reaper, the owner's child
    t0 = time.monotonic()
    p.kill()  # SIGKILL: the owner runs no finally
    p.wait(timeout=30)
    while (_alive(agents) or _session_procs(session)) and time.monotonic() - t0 < BOUND_S:
        time.sleep(0.2)
    left = _alive(agents) + _session_procs(session)
    assert left == [], f"{len(left)} processes of the killed owner's Ray still alive after {BOUND_S:g} s"
    print(f"the killed owner's Ray processes were gone {time.monotonic() - t0:.1f} s after the SIGKILL")


def test_the_reaper_ends_what_names_the_session_and_nothing_else(tmp_path):
    """The reaper's program, without Ray: a stand-in 'agent' naming the session dies when the pipe's
    writer goes away; a process naming another session lives; the reaper exits."""
    import subprocess
    import sys

    from raydprm.cluster import runtime as rt_mod

    mine, other = str(tmp_path / "session_mine"), str(tmp_path / "session_other")
    # one names the session on its command line; one is titled like Ray's agents and only writes a log there
    titled = ("import setproctitle, sys, time; f = open(sys.argv[1] + '/agent.log', 'w'); "
              "setproctitle.setproctitle('ray::DashboardAgent'); time.sleep(600)")
    os.makedirs(mine)
    agents = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", mine]),
              subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", other])]
    try:
        import setproctitle  # noqa: F401 - Ray's own dependency
        agents.append(subprocess.Popen([sys.executable, "-c", titled, mine]))
    except ImportError:
        pass
    try:
        reaper, w = rt_mod._start_reaper(mine)
        time.sleep(0.5)
        assert reaper.poll() is None and agents[0].poll() is None  # nothing happens while the owner holds the pipe
        os.close(w)  # what the kernel does when the owner dies
        reaper.wait(timeout=30)
        assert agents[0].wait(timeout=30) == -9 and agents[1].poll() is None
        assert all(a.wait(timeout=30) == -9 for a in agents[2:])  # found by its log, not its title
    finally:
        for a in agents:
            a.kill()
            a.wait()
