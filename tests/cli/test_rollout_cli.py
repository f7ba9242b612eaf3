"""`raydprm rollout generate|probe` end to end (transformers engine, in-process)."""

import json

from raydprm.cli import main


def test_rollout_cli_generate_json(capsys, tiny_policy):
    rc = main(["rollout", "generate", "--model", tiny_policy, "-p", "Hello", "-p", "The crowd",
               "--max-new-tokens", "6", "--n", "2", "--seed", "3", "--temperature", "0.9", "--json"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(r["token_ids"]) == len(r["logprobs"]) <= 6 for r in rows)
    assert rows[0]["prompt"] == "Hello" and rows[0]["finish_reason"] in ("stop", "length")


def test_rollout_cli_probe_and_plain_output(capsys, tiny_policy, tmp_path):
    assert main(["rollout", "probe", "--model", tiny_policy]) == 0
    assert "probe OK: engine=transformers" in capsys.readouterr().out
    f = tmp_path / "prompts.txt"
    f.write_text("first prompt\n\nsecond prompt\n")
    assert main(["rollout", "generate", "--model", tiny_policy, "--prompts-file", str(f), "rollout.temperature=0",
                 "rollout.max_new_tokens=4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("[0.0] (") and "'second prompt'" in out[1]


def test_rollout_cli_user_errors_are_one_line(capsys, tiny_policy):
    assert main(["rollout", "generate", "--model", tiny_policy, "-p", "x", "--top-p", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["raydprm: error: sampling.top_p = 0.0 must be > 0"]
    assert main(["rollout", "generate", "--model", tiny_policy]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["rollout", "generate", "-p", "x", "rollout.engine=tgi"]) == 2
    assert "rollout.engine" in capsys.readouterr().err
    assert main(["rollout", "generate", "--model", tiny_policy, "--prompts-file", "/nonexistent/p.txt"]) == 2
    assert "cannot read prompts file" in capsys.readouterr().err
