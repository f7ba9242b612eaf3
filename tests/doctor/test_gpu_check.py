"""The GPU acceptance check (bench/gpu_check.py, raydprm doctor --gpu) proven on the CPU:
``--cpu-dry-run`` runs every check that can run here, from a plain checkout (raydprm found
through the script's own path), without ray or vllm, and writes a report that says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raydprm.doctor import checks
from raydprm.doctor.checks import Plan, Recorder, overall_status, plan_for
from raydprm.doctor.report import render_markdown, run_one

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tiny_kit, tmp_path_factory):
    """One ``--cpu-dry-run`` of the script, as a user runs it: from another directory, no
    PYTHONPATH (so raydprm must come from the checkout that holds the script)."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-dry-run", "--out", str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report, (out / "gpu_check.md").read_text(), out


def _items(report, check):
    c = next(c for c in report["checks"] if c["name"] == check)
    return c, {i["name"]: i for i in c["items"]}


def test_dry_run_passes_and_reports_every_check(dry_run):
    proc, report, md, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["mode"] == "cpu-dry-run" and report["status"] == "pass"
    assert [c["name"] for c in report["checks"]] == list(checks.CHECKS)
    env = report["environment"]
    assert env["versions"]["torch"] and env["versions"]["transformers"] and env["device_count"] == 0
    assert env["raydprm_from"] == str(REPO)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {"kit": "pass", "ot": "pass", "learner": "pass", "rollout": "pass", "sync": "pass",
                      "nccl": "skip"}, {c["name"]: c.get("reason") for c in report["checks"]}
    nccl = report["checks"][-1]
    assert "NCCL" in nccl["reason"]
    for c in report["checks"]:
        if c["status"] != "pass":
            continue
        assert c["seconds"] <= c["budget_s"]
        assert c["raydprm_file"].startswith(str(REPO / "raydprm")), c["raydprm_file"]  # the checkout, not an install
        assert "ray" not in c["loaded"] and "vllm" not in c["loaded"], (c["name"], c["loaded"])
        assert (out / c["log"]).is_file()
    # the markdown says the same: header, each check, the skipped one with its reason
    assert md.startswith("# raydprm GPU check (cpu-dry-run): PASS")
    for name in checks.CHECKS:
        assert f"## {name}: {status[name]}" in md
    assert "## Skipped" in md and "nccl / (all): no CUDA device" in md


def test_dry_run_figures_state_facts(dry_run):
    _, report, _, _ = dry_run
    _, ot = _items(report, "ot")
    tri = ot["triton_vs_torch_B1e+02"]
    try:
        import triton  # noqa: F401

        assert tri["status"] == "pass" and tri["figures"]["max_abs_diff_same_iterations"] <= checks.OT_EQ_ATOL
    except ImportError:
        assert tri["status"] == "skip" and "triton" in tri["reason"]
    for cost in ("reward_gap", "grid_l1"):  # the same solver on the same device: bit-identical
        f = ot[f"exact_{cost}_device_vs_cpu"]["figures"]
        assert f["max_abs_diff_value"] == 0 and f["max_abs_diff_grad"] == 0 and f["rows_grad_differ"] == 0
    bound = ot["sinkhorn_vs_exact_bound"]["figures"]
    assert -1e-4 <= bound["min_gap"] <= bound["max_gap"] <= bound["bound_eps_log_L"] + 1e-4

    learner, li = _items(report, "learner")
    assert learner["figures"]["deepspeed"] == "importable"
    cmp_ = li["deepspeed_zero2_fp32_vs_cpu"]
    assert cmp_["status"] == "pass" and cmp_["figures"]["engine"] == "deepspeed"
    assert all(v <= 1e-4 for v in cmp_["figures"]["abs_diff"].values())
    step = li["deepspeed_zero2_bf16_step"]
    assert step["status"] == "pass" and step["figures"]["zero_stage"] == 2 and step["figures"]["update_s"] > 0

    _, ro = _items(report, "rollout")
    plan = plan_for(cpu_dry_run=True)
    assert ro["hf_engine_float32_tokens_per_s"]["figures"]["tokens"] == plan.rollout_prompts * plan.rollout_new_tokens
    assert ro["logprobs_engine_vs_learner_float32"]["figures"]["max_abs_diff"] <= checks.ROLLOUT_FP32_ATOL
    assert ro["logprobs_engine_vs_learner_bfloat16"]["status"] == "info"

    _, sy = _items(report, "sync")
    assert sy["manifest_and_buckets_on_device"]["figures"]["buckets"] > 1  # bucketing split the model
    assert sy["verified_update_into_engine_on_device"]["figures"]["probe_max_diff"] <= checks.SYNC_PROBE_TOL
    assert sy["stage_device_buffers_and_refuse_tampered"]["figures"]["tampered_refused"] is True
    ipc = sy["ipc_handover_two_processes"]["figures"]
    assert ipc["digest_verified"] and "shared memory" in ipc["path"]
    assert ipc["ms_per_GB"] > 0 and ipc["copy_floor_ms_per_GB"] > 0


def test_learner_check_degrades_without_deepspeed(tiny_kit, tmp_path, monkeypatch):
    """deepspeed missing on the GPU node: the steps run on the torch engine, ZeRO-2 is skipped with why."""
    monkeypatch.setattr(checks, "deepspeed_import_error", lambda: "ModuleNotFoundError: No module named 'deepspeed'")
    res = checks.run_check("learner", plan_for(cpu_dry_run=True), tmp_path / "learner.json")
    items = {i["name"]: i for i in res["items"]}
    assert items["torch_fp32_vs_cpu"]["status"] == "pass"
    assert items["torch_bf16_step"]["status"] == "pass"
    ds = items["deepspeed_zero2_bf16_step"]
    assert ds["status"] == "skip" and "No module named 'deepspeed'" in ds["reason"] and "wheels" in ds["reason"]
    assert res["status"] == "pass"


def test_an_item_that_raises_is_isolated_and_a_budget_kills(tmp_path):
    rec = Recorder("x", tmp_path / "x.json", budget_s=100)
    with rec.item("boom"):
        raise ZeroDivisionError("1/0")
    with rec.item("fine") as it:
        it["figures"] = {"v": 1}
    with rec.item("late"):
        rec.need(1000)
        raise AssertionError("not reached: skipped for the budget")
    res = rec.finish()
    st = {i["name"]: (i["status"], i["reason"]) for i in res["items"]}
    assert st["boom"] == ("error", "ZeroDivisionError: 1/0") and st["fine"] == ("pass", None)
    assert st["late"][0] == "skip" and "budget" in st["late"][1]
    assert res["status"] == "error" and json.loads((tmp_path / "x.json").read_text())["status"] == "error"
    assert overall_status(["skip", "info"]) == "pass" and overall_status(["skip"]) == "skip"
    assert overall_status(["pass", "fail"]) == "fail"


def test_a_check_past_its_budget_is_killed_and_reported(tmp_path, monkeypatch):
    plan = plan_for(cpu_dry_run=True)
    plan = Plan(**{**plan.__dict__, "budgets": {**plan.budgets, "ot": 0.5}})
    (tmp_path / "checks").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "plan.json").write_text(plan.to_json())
    res = run_one("ot", plan, tmp_path)  # torch alone takes longer than 0.5 s to import
    assert res["status"] == "timeout" and "killed at its budget" in res["reason"]
    md = render_markdown({"mode": "cpu-dry-run", "status": "timeout", "seconds": 1.0, "command": "x",
                          "environment": {"date_utc": "d", "device": "cpu", "device_count": 0, "python": "3",
                                          "platform": "p", "raydprm_from": "r", "versions": {
                                              "torch": "t", "triton": None, "transformers": "x", "deepspeed": None}},
                          "checks": [res]})
    assert "| ot: " in md and "timeout" in md


def test_gpu_mode_without_a_gpu_skips_everything_with_the_reason(tmp_path, monkeypatch):
    import torch

    from raydprm.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["doctor", "--gpu", "--quick", "--out", str(tmp_path)]) == 2
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "no_gpu" and report["mode"] == "quick"
    assert report["command"] == f"raydprm doctor --gpu --out {tmp_path} --quick"
    assert all(c["status"] == "skip" and "no CUDA device" in c["reason"] for c in report["checks"])


def test_doctor_cli_refuses_bad_options(tmp_path, capsys):
    from raydprm.cli import main

    assert main(["doctor", "--out", str(tmp_path)]) == 2
    assert "--gpu" in capsys.readouterr().err
    assert main(["doctor", "--gpu", "--only", "ot,bogus", "--out", str(tmp_path)]) == 2
    assert "unknown check(s) bogus" in capsys.readouterr().err


def test_allreduce_between_ranks_on_gloo():
    """The two-rank path the NCCL check takes on a multi-GPU node, here with gloo on the CPU."""
    fig = checks.allreduce_between_ranks(2, "gloo", "cpu", 1 << 20)
    assert fig["sum_correct"] and fig["ranks"] == 2 and fig["bus_GB_per_s"] > 0
