"""bench/scaling_model.py: the paper model's formulas hold and its calibration reproduces
OpenRLHF's published 7B figures it was fitted to."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def sm():
    path = Path(__file__).resolve().parents[2] / "bench" / "scaling_model.py"
    spec = importlib.util.spec_from_file_location("bench_scaling_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_memory_formulas(sm):
    """ZeRO-3 shards all 16 bytes per parameter over G (M1); ZeRO-2 keeps the bf16 weights whole (M2)."""
    m, hw, w = sm.LLAMA_7B, sm.H100, sm.Workload()
    z3 = sm.Layout("z3", 8, gen=2, actor=2, critic=2, ref=1, rm=1, tp=1, zero=3)
    z2 = replace(z3, zero=2)
    act = sm.memory(m, hw, z3, w)["learner"] - 16 * m.params / 2 / sm.GB
    assert act > 0
    assert sm.memory(m, hw, z2, w)["learner"] == pytest.approx((2 * m.params + 14 * m.params / 2) / sm.GB + act)


def test_time_formulas_scale_as_stated(sm):
    """Training compute is 8 N Tok / (G eta F) (T1); a forward pass 2 N Tok / (G eta F) (F1);
    more GPUs or more HBM bandwidth never slow generation down."""
    m, hw, w, e = sm.LLAMA_7B, sm.H100, sm.Workload(), sm.Efficiency()
    tok = w.prompts * (w.prompt_len + w.resp_len)
    _, tr = sm.train_time(m, hw, 8, 3, w, e)
    assert tr["compute_s"] == pytest.approx(8 * m.params * tok / (8 * e.train * hw.flops))
    assert sm.fwd_time(m, hw, 4, w, e) == pytest.approx(2 * sm.fwd_time(m, hw, 8, w, e))
    t = [sm.gen_time(m, hw, g, 1, w, e)[0] for g in (2, 4, 8, 16)]
    assert t == sorted(t, reverse=True)
    assert sm.gen_time(m, sm.H200, 4, 1, w, e)[0] < sm.gen_time(m, hw, 4, 1, w, e)[0]


def test_calibration_reproduces_openrlhf(sm):
    """At 40% of HBM bandwidth in decode the model gives OpenRLHF's published 7B generation phase
    (481.86 s) within 5% and predicts its training phase (403.29 s) within 10%."""
    lay, w, e = sm.calibration()
    r = sm.step(sm.LLAMA_7B, sm.A800, lay, w, e)
    assert r["gen_s"] + r["score_s"] == pytest.approx(481.86, rel=0.05)
    assert r["train_s"] == pytest.approx(403.29, rel=0.10)


def test_main_prints_every_layout(sm, capsys):
    out = sm.main([])
    assert sum(k.count("|") == 2 for k in out) == 2 * sum(len(lays) for _, lays in sm.LAYOUTS.values())
    assert all(v["step_s"] > 0 for k, v in out.items() if not k.startswith("calibration"))
    assert "calibration" in capsys.readouterr().out
