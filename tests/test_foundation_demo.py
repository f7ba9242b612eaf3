"""The end-to-end demo runs every stage on local Ray and writes a reproducible run dir."""

import json

import pytest
import yaml

from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed]


def _array_bytes(obj, seen=None) -> tuple[int, int]:
    """(bytes in torch tensors, bytes in numpy arrays) reachable from ``obj``."""
    import numpy as np
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size(), 0
    if isinstance(obj, np.ndarray):
        return 0, obj.nbytes
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else \
        vars(obj).values() if hasattr(obj, "__dict__") and not isinstance(obj, type) else ()
    t = n = 0
    for x in items:
        a, b = _array_bytes(x, seen)
        t, n = t + a, n + b
    return t, n


def test_demo_smoke_end_to_end(tmp_path, monkeypatch):
    """Every stage runs, and the driver never receives the policy's weights: the learner
    publishes them and the generators pull them (every ray.get in this process is watched)."""
    import ray

    from raydprm.cluster.demo import SMOKE_OVERRIDES, run_demo

    received = []
    real_get = ray.get

    def watched_get(refs, *a, **kw):
        out = real_get(refs, *a, **kw)
        received.append(_array_bytes(out))
        return out

    monkeypatch.setattr(ray, "get", watched_get)
    cfg = load_config(None, [*SMOKE_OVERRIDES, f"run.output_dir={tmp_path}", "run.name=smoke", "ray.num_cpus=4"])
    metrics = run_demo(cfg, progress=False)
    policy_bytes = sum(f.stat().st_size for f in (tmp_path / "smoke" / "policy").glob("*.safetensors"))
    assert policy_bytes > 1_000_000 and len(received) > 20
    assert sum(t for t, _ in received) == 0, "a torch tensor reached the driver"
    assert max(n for _, n in received) < policy_bytes / 100  # score arrays only, never a weight matrix
    run_dir = tmp_path / "smoke"
    for f in ("config.yaml", "report.md", "metrics.json", "demo.png", "store.db"):
        assert (run_dir / f).is_file(), f
    # the saved config reproduces the run's config exactly
    assert load_config(run_dir / "config.yaml") == cfg
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["ppo"]["steps"] == 2
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["sft"]["final_loss"] < m["sft"]["first_loss"]
    assert m["store"]["votes"] == metrics["store"]["votes"] > 0
    assert len(m["ppo"]) == 2 and all("ppo/policy_loss" in r for r in m["ppo"])
    ev = m["eval"]
    for k in ("vanilla", "dprm_ot"):
        assert abs(sum(ev[k]["label_pct"]) - 100) < 1e-6
    assert set(ev["dprm_ot_vs_vanilla"]) == {"scientist", "teacher", "politician", "teenager", "ceo", "artist"}
    assert (run_dir / "policy" / "config.json").is_file()  # exported HF policy
    assert "Vanilla" in (run_dir / "report.md").read_text() or "vanilla" in (run_dir / "report.md").read_text()
