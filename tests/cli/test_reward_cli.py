"""`raydprm reward train|eval` and `raydprm serve --smoke` as a user runs them."""

import json

from raydprm.cli import main


def test_reward_cli_train_then_eval(tiny_kit, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["reward", "train", "--smoke", "--no-progress", f"run.output_dir={out}", "reward.loss=wasserstein"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["loss"] == "wasserstein" and res["steps"] >= 1
    best = out / "demo" / "reward" / "best"
    assert (best / "reward_model.json").is_file() and (out / "demo" / "reward" / "config.yaml").is_file()
    assert (out / "demo" / "store.db").is_file()  # --smoke filled the store from the simulated crowd
    rc = main(["reward", "eval", f"run.output_dir={out}", "crowd.n_items=48", "crowd.votes_per_item=6"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["items"] > 30 and 0 <= ev["ot_distance"] < 4 and "persona" in ev and "ece" in ev


def test_reward_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["reward", "eval", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["reward", "train", f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "store.db' does not exist" in err and "--simulate" in err and "Traceback" not in err
    assert main(["reward", "train", "reward.loss=hinge"]) == 2
    assert "reward.loss" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_reward_compare_bench_smoke(tiny_kit, capsys):
    """bench/reward_compare.py --smoke runs end to end and prints its table."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "reward_compare.py"
    spec = importlib.util.spec_from_file_location("reward_compare_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--losses", "DPRM_OT", "DPRM_C"]) == 0
    out = capsys.readouterr().out
    assert "| DPRM_OT |" in out and "| DPRM_C |" in out and "(uniform predictor)" in out
    assert "95% bootstrap (seeds x items)" in out and "| DPRM_OT - DPRM_C |" in out  # issue 11 part 4


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "reward_compare.py"
    spec = importlib.util.spec_from_file_location("reward_compare_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reward_compare_intervals_facts():
    """The comparison's intervals: a loss against itself differs by exactly 0 (not resolved); a
    constant shift is the difference with a zero-width interval (resolved); the t-interval is
    mean +- t_{0.975, S-1} s / sqrt(S)."""
    import numpy as np

    mod = _bench_module()
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.1, size=(5, 40))
    iv = mod.intervals({"A": a, "B": a.copy(), "C": a + 0.25}, n_boot=300)
    assert iv["diff"]["A - B"]["mean"] == 0 and iv["diff"]["A - B"]["boot95"] == [0.0, 0.0]
    assert not iv["diff"]["A - B"]["resolved"]
    lo, hi = iv["diff"]["A - C"]["boot95"]
    assert abs(lo + 0.25) < 1e-12 and abs(hi + 0.25) < 1e-12 and iv["diff"]["A - C"]["resolved"]
    m = iv["loss"]["A"]
    assert m["mean"] == a.mean() and m["boot95"][0] < a.mean() < m["boot95"][1]
    s = a.mean(1)
    half = 2.7764451051977987 * s.std(ddof=1) / np.sqrt(5)  # t_{0.975, 4}
    assert np.allclose(m["t95_seeds"], [s.mean() - half, s.mean() + half])
