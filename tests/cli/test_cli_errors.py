"""Issue 14, findings 5 and 7 (CLI side): every command answers every bad input of the issue
(and their like) with one ``raydprm: error:`` line, a non-zero exit and no traceback;
``--debug`` shows the traceback. A table of bad inputs per command, like the config tests."""

import os
import socket
import subprocess
import sys

import pytest

from raydprm.cli import main


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Placeholders of the table -> paths in a fresh directory (also the working directory,
    so default run directories land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYDPRM_SERVE_TOKEN", raising=False)
    (tmp_path / "regular").write_text("I am a file, not a directory\n")
    (tmp_path / "inf.yaml").write_text("ppo:\n  beta: .inf\n")
    (tmp_path / "dup.yaml").write_text("ppo:\n  beta: 0.1\n  lr: 0.1\n  beta: 0.2\n")
    (tmp_path / "dupsec.yaml").write_text("ppo:\n  beta: 0.1\nserve:\n  port: 1\nppo:\n  lr: 0.1\n")
    (tmp_path / "latin1.yaml").write_bytes("run:\n  name: d\xe9mo\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "bad.jsonl").write_text('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": \n')
    (tmp_path / "hh.jsonl").write_text('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", '
                                       '"rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "empty_token").write_text("\n")
    assert main(["store", "init", "--db", str(tmp_path / "store.db"), "store.half_life_s=60"]) == 0
    return {"dir": str(tmp_path), "file": str(tmp_path / "regular"), "store": str(tmp_path / "store.db"),
            **{k: str(tmp_path / f"{k}.yaml") for k in ("inf", "dup", "dupsec", "latin1", "list", "deep")},
            "badhh": str(tmp_path / "bad.jsonl"), "hh": str(tmp_path / "hh.jsonl"), "model": str(tmp_path / "model"),
            "empty_token": str(tmp_path / "empty_token")}


BIG = "9" * 30
# (command line with {placeholders}, a fragment the error line must contain)
CASES = {
    "config check": [
        (["--config", "{inf}"], "'ppo.beta' = inf is not a finite number"),
        (["ppo.beta=.inf"], "not a finite number"),
        (["ppo.lr=.nan"], "not a finite number"),
        (["ppo.beta=1e999"], "not a finite number"),
        ([f"ppo.steps={BIG}"], "'ppo.steps' = " + BIG + " is out of range"),
        (["ppo.steps=" + "9" * 400], "an integer of 400 digits"),
        ([f"ppo.lr={BIG}{BIG}"], "is out of range"),
        (["--config", "{dup}"], "duplicate key 'beta' at line 4 (first at line 2)"),
        (["--config", "{dupsec}"], "duplicate key 'ppo' at line 5"),
        (["crowd.mixture={{a: 1, a: 2}}"], "duplicate key 'a'"),
        (["serve.min_replicas=3", "serve.max_replicas=2"], "'serve.min_replicas' = 3 must be <= serve.max_replicas"),
        (["serve.max_text_chars=20000"], "must be <= store.max_text_chars"),
        (["rollout.tensor_parallel_size=2"], "needs rollout.engine = 'vllm'"),
        (["--config", "{latin1}"], "is not UTF-8 text"),
        (["--config", "{list}"], "must hold a mapping"),
        (["--config", "{deep}"], "nested too deeply"),
        (["--config", "{dir}/none.yaml"], "does not exist"),
        (["serve.auth_token=hunter2"], "secret on the command line"),
        (["serve.auth_token=hunter2", "serve.auth_token_file=x"], "secret on the command line"),
        (["store.prior=0"], "'store.prior' = 0.0 is out of range"),
        (["ppo.betaa=1"], "unknown config key 'ppo.betaa'"),
        (["--nope"], "unrecognized arguments: --nope"),
    ],
    "config show": [(["serve.auth_token=x"], "secret on the command line")],
    "info": [(["--timeout", "soon"], "invalid float value: 'soon'")],
    "models build": [(["tiny-llama"], "unknown kit model(s) tiny-llama")],
    "store init": [
        (["--db", "{file}/s.db"], "is a regular file"),
        (["--db", "{dir}"], "is a directory"),
        (["--db", "{dir}/n.db", "store.synchronous=OFF"], "store.synchronous"),
        (["--db", "{store}", "store.half_life_s=0"], "store.half_life_s = 60.0"),
    ],
    "store stats": [
        (["--db", "{dir}/typo/x.db"], "does not exist"),
        (["--db", "{file}"], "is corrupt or not an SQLite file"),
        (["--db", "{store}", "store.prior=3"], "store.prior = 1.0"),
    ],
    "store export": [
        (["--db", "{store}", "--out", "{file}/x.jsonl"], "cannot write the export"),
        (["--db", "{store}", "--out", "{dir}/e", "--mixture", "ceo=abc"], "must look like persona=weight"),
        (["--db", "{store}", "--out", "{dir}/e", "--mixture", "ceo=-1"], "finite weight >= 0"),
        (["--db", "{store}", "--out", "{dir}/e", "--mixture", "ceo=inf"], "finite weight >= 0"),
        (["--db", "{store}", "--out", "{dir}/e", "--mixture", "pirate=1"], "groups the store does not have: ['pirate']"),
        (["--db", "{store}", "--out", "{dir}/e", "--smoothing", "2"], "smoothing"),
        (["--db", "{store}", "--out", "{dir}/e", "--min-votes", "-1"], "out of range"),
        (["--db", "{dir}/none.db", "--out", "{dir}/e"], "does not exist"),
    ],
    "store import": [
        (["--db", "{store}", "--file", "{hh}", "--limit", "-5"], "--limit: -5 is out of range"),
        (["--db", "{store}", "--file", "{hh}", "--limit", f"{BIG}"], "out of range"),
        (["--db", "{store}", "--file", "{dir}/none.jsonl"], "does not exist"),
        (["--db", "{store}", "--file", "{badhh}"], "line 1: malformed JSON"),
        (["--db", "{store}", "--file", "{hh}", "--chosen-label", "great"], "chosen_label 'great' is not a label"),
        (["--db", "{store}", "--file", "{hh}", "--persona", ""], "persona id"),
    ],
    "store simulate": [
        (["--db", "{store}", "--n", "0"], "--n: 0 is out of range"),
        (["--db", "{store}", "--mixture", "pirate=1"], "pirate"),
        (["--db", "{store}", "--n", "2", "store.half_life_s=0"], "store.half_life_s = 60.0"),
        (["--db", "{store}", "--seed", "-1"], "out of range"),
    ],
    "store reconfigure": [
        (["--db", "{store}"], "nothing to reconfigure"),
        (["--db", "{dir}/none.db", "store.prior=2"], "does not exist"),
        (["--db", "{store}", "store.half_life_s=-1"], "out of range"),
    ],
    "rollout generate": [
        (["--model", "/nonexistent/model", "--prompt", "hi"], "'/nonexistent/model': no such model directory"),
        (["--prompt", "hi", "models.policy=/nonexistent/model"], "no such model directory"),
        (["--model", "tiny-gpt2"], "no prompts"),
        (["--prompts-file", "{dir}/none.txt"], "cannot read prompts file"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
    ],
    "rollout probe": [(["--model", "/nonexistent/model"], "no such model directory")],
    "demo": [
        (["--smoke", "models.policy=/nonexistent/model"], "'models.policy' = '/nonexistent/model'"),
        (["--smoke", "run.output_dir={file}"], "cannot create the run directory"),
        (["--smoke", "store.path={store}", "store.half_life_s=0"], "store.half_life_s = 60.0"),
        (["--smoke", "run.output_dir=s3://bucket/runs"], "'run.output_dir' = 's3://bucket/runs' is a storage URI"),
    ],
    "learner toy": [
        (["--smoke", "run.output_dir={file}"], "cannot create the run directory"),
        (["--smoke", "models.policy=/nonexistent/model"], "no such model directory"),
        (["--batch", "3"], "--batch 3 must be a multiple"),
        (["--workers", "0"], "must be >= 1"),
    ],
    "reward train": [
        (["--smoke", "models.reward_backbone=/nonexistent/model"], "no such model directory"),
        (["--smoke", "run.output_dir={file}"], "is a regular file"),
        (["store.path={dir}/none.db"], "does not exist"),
        (["store.path={store}", "labels.names=[a, b]", "labels.rewards=[1, 0]", "labels.grid=null"], "labels"),
    ],
    "reward eval": [(["--model", "{dir}/none"], "does not exist")],
    "serve": [
        (["--model", "{dir}/none"], "does not exist"),
        (["--model", "{model}", "serve.auth_token=x"], "secret on the command line"),
        (["--model", "{model}", "serve.auth_token_file={dir}/none"], "cannot read serve.auth_token_file"),
        (["--model", "{model}", "serve.auth_token_file={empty_token}"], "must hold one token"),
        (["--model", "{model}", "serve.port=PORT"], "is already in use"),
        (["--model", "{model}", "serve.host=no-such-host.invalid", "--no-store"], "does not resolve"),
        (["--model", "{model}", "store.path={file}/s.db", "serve.port=FREE"], "is a regular file"),
    ],
}
TABLE = [(cmd, args, frag) for cmd, rows in CASES.items() for args, frag in rows]


@pytest.mark.parametrize("cmd,args,fragment", TABLE, ids=[f"{c.replace(' ', '-')}-{i}" for i, (c, _, _) in
                                                         enumerate(TABLE)])
def test_every_bad_input_is_one_error_line(files, capsys, cmd, args, fragment):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = str(listener.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = str(s.getsockname()[1])
    argv = [*cmd.split(), *[a.format(**files).replace("PORT", port).replace("FREE", free) for a in args]]
    try:
        rc = main(argv)
    finally:
        listener.close()
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc not in (0, None), (argv, captured.out)
    assert len(lines) == 1 and lines[0].startswith("raydprm: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert fragment in lines[0], lines[0]
    assert rc == 2, lines[0]  # a user's mistake or the environment, not a bug


def test_one_line_in_a_real_process_and_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]]))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "raydprm.cli", *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)

    out = run("rollout", "generate", "--model", "/nonexistent/model", "--prompt", "hi")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr  # old code: 48 lines
    assert out.stderr.startswith("raydprm: error: ")
    for debug in (["--debug", "store", "stats", "--db", "x.db"], ["store", "stats", "--db", "x.db", "--debug"]):
        out = run(*debug)
        assert out.returncode != 0 and "Traceback" in out.stderr and "StoreError" in out.stderr
    assert not (tmp_path / "x.db").exists()


def test_a_bug_is_one_line_too(monkeypatch, capsys):
    import raydprm.cli.info as info

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError: a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "info"])


def test_config_show_masks_secrets(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("serve:\n  auth_token: hunter2\n")
    assert main(["config", "show", "--config", str(f)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "auth_token: <redacted>" in out
    from raydprm.config import load_config, save_config

    cfg = load_config(f)
    assert cfg.serve.auth_token == "hunter2"
    saved = save_config(cfg, tmp_path / "run")
    assert "hunter2" not in saved.read_text()
    assert load_config(saved).serve.auth_token == ""  # the mask read back means "not given"
