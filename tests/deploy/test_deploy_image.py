"""docker/Dockerfile installs raydprm with exactly scripts/bootstrap.sh's steps.

The Dockerfile runs the bootstrap script itself (no pip line of its own), so the two cannot
drift; these tests pin that, and run the real script against a recording fake interpreter
to show what the image's settings (RAYDPRM_VENV=the image's Python, RAYDPRM_EXTRAS=gpu) make
it do: torch first under constraints.txt, then raydprm with the gpu extra under it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def env_of(ins) -> dict[str, str]:
    env = {}
    for word, rest in ins:
        if word == "ENV":
            env.update(dict(tok.split("=", 1) for tok in shlex.split(rest)))
    return env


def test_dockerfile_base_is_rays_cuda_image_of_the_pinned_ray():
    ins = instructions()
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG")
    assert ins[[w for w, _ in ins].index("FROM")] == ("FROM", "${RAY_IMAGE}")
    image = args["RAY_IMAGE"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py311-cu"), image
    assert ray.__version__ == "2.60.0"


def test_dockerfile_installs_only_through_bootstrap_with_the_gpu_extra():
    ins = instructions()
    runs = [a for w, a in ins if w == "RUN"]
    assert runs == ["bash scripts/bootstrap.sh"]
    env = env_of(ins)
    assert env["RAYDPRM_EXTRAS"].split(",")[0] == "gpu" and "cpu" not in env["RAYDPRM_EXTRAS"].split(",")
    assert env["RAYDPRM_VENV"] == "/home/ray/anaconda3"  # the rayproject/ray image's Python prefix
    # the whole checkout is in the image before the script runs (it installs -e . from it)
    copy_i = next(i for i, (w, a) in enumerate(ins) if w == "COPY" and a.split()[-2:] == [".", "."])
    assert copy_i < next(i for i, (w, _) in enumerate(ins) if w == "RUN")


def test_dockerignore_keeps_environments_and_outputs_out_of_the_image():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv", "runs", ".cache"} <= ignored


def _fake_python(prefix: Path, log: Path) -> None:
    """An interpreter at prefix/bin/python that records its argv and succeeds."""
    exe = prefix / "bin" / "python"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="sha256sum (coreutils) is not installed")
def test_bootstrap_with_the_images_settings_installs_torch_then_gpu_extra_under_constraints(tmp_path):
    env_img = env_of(instructions())
    prefix, log = tmp_path / "anaconda3", tmp_path / "calls.log"
    _fake_python(prefix, log)
    env = dict(os.environ, RAYDPRM_VENV=str(prefix), RAYDPRM_EXTRAS=env_img["RAYDPRM_EXTRAS"],
               PYTHON="/nonexistent/python3")  # an existing prefix is used as is: no venv is made
    script = ROOT / "scripts" / "bootstrap.sh"
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True)
    calls = log.read_text().splitlines()
    installs = [c for c in calls if " install " in f" {c} "]
    assert installs == [
        "-m pip --disable-pip-version-check install -q -c constraints.txt torch==2.13.0",
        "-m pip --disable-pip-version-check install -q -c constraints.txt -e .[gpu]",
    ]
    assert (prefix / ".raydprm-stamp").read_text().strip().endswith("-gpu")
    # a second run with nothing changed is a no-op
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True)
    assert log.read_text().splitlines() == calls
