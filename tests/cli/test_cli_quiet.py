"""Quiet means quiet, and a read-only command refuses what it cannot apply (issue 25, part 5).

Before: "Saving the dataset", "Creating json from Arrow format" and "Loading weights" bars went to a
non-terminal stderr even with --no-progress; `store stats labels.names=[...]` was accepted silently."""

import os
import subprocess
import sys

import pytest

from raydprm.cli import build_parser, leaves, main

BARS = ("Saving the dataset", "Creating json from Arrow format", "Loading weights", "it/s]", "%|")


def _run(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.endswith("DISABLE_PROGRESS_BARS") and k != "TQDM_DISABLE"}
    return subprocess.run([sys.executable, "-m", "raydprm.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small simulated store (made in this process: the bars are asked of the subprocesses)."""
    d = tmp_path_factory.mktemp("quiet")
    assert main(["store", "simulate", "--db", str(d / "s.db"), "--n", "6", "--votes-per-item", "2"]) == 0
    return d


@pytest.mark.parametrize("argv", [
    ["store", "export", "--db", "s.db", "--out", "d"],  # datasets: "Saving the dataset"
    ["store", "export", "--db", "s.db", "--out", "e.jsonl"],  # datasets: "Creating json from Arrow format"
    ["rollout", "generate", "-p", "hi", "--max-new-tokens", "2"],  # transformers: "Loading weights"
])
def test_no_progress_silences_the_libraries_bars(store, argv):
    loud = _run(*argv, cwd=store)
    assert loud.returncode == 0 and any(b in loud.stderr for b in BARS), loud.stderr  # the bars this is about
    quiet = _run(*argv[:2], "--no-progress", *argv[2:], cwd=store)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(b in quiet.stderr for b in BARS), quiet.stderr


def test_every_command_takes_no_progress():
    for path, leaf in leaves(build_parser()):
        assert any("--no-progress" in a.option_strings for a in leaf._actions), path


@pytest.mark.parametrize("cmd", [["store", "stats"], ["store", "export", "--out", "x.jsonl"]])
def test_a_read_only_command_refuses_settings_it_cannot_apply(store, cmd, capsys):
    db = str(store / "s.db")
    before = (store / "s.db").read_bytes()
    rc = main([*cmd, "--db", db, "labels.names=[a,b,c,d,e,f]"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot apply 'labels.names'" in err and len(err.strip().splitlines()) == 1, err
    assert (store / "s.db").read_bytes() == before and not (store / "x.jsonl").exists()
    # what it applies is still accepted (the store's own prior: checked against it, not changed)
    assert main(["store", "stats", "--db", db, "store.prior=1.0", f"run.output_dir={store}"]) == 0
