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
