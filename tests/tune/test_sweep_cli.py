"""`raydprm sweep` refuses bad invocations with one line (exit 2) before Ray starts."""

import pytest

from raydprm.cli import main


@pytest.mark.parametrize("argv, words", [
    (["sweep"], "give one sweep file"),
    (["sweep", "a.yaml", "b.yaml"], "give one sweep file"),
    (["sweep", "missing.yaml"], "does not exist"),
    (["sweep", "--resume", "{tmp}"], "not a sweep directory"),
    (["sweep", "--max-concurrent", "-1", "x.yaml"], "--max-concurrent must be >= 0"),
])
def test_sweep_cli_errors(tmp_path, capsys, argv, words):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1, err


def test_a_bad_key_in_the_space_is_named_before_ray_starts(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("space:\n  ppo.beta: {loguniform: [-1, 1]}\n")
    rc = main(["sweep", str(tmp_path / "s.yaml"), f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "space.ppo.beta" in err and "0 < low" in err
    assert not (tmp_path / "s").exists()


def test_an_existing_sweep_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("space:\n  ppo.beta: {grid: [0.1]}\n")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".raydprm-sweep.json").write_text("{}")
    rc = main(["sweep", str(tmp_path / "s.yaml"), f"run.output_dir={tmp_path}"])
    assert rc == 2 and "--resume" in capsys.readouterr().err
