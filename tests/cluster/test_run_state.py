"""The run directory's manifest: stage keys, completion records, state.json, fresh-run rule."""

import json

import pytest

from raydprm.cluster.run_state import RunDirNotEmpty, RunState, dir_digest, stage_key


def test_stage_key_depends_on_config_and_inputs_only():
    k = stage_key("reward", {"lr": 1e-3, "loss": "ot"}, {"data": "abc"})
    assert k == stage_key("reward", {"loss": "ot", "lr": 1e-3}, {"data": "abc"})  # key order does not matter
    assert k != stage_key("reward", {"lr": 2e-3, "loss": "ot"}, {"data": "abc"})
    assert k != stage_key("reward", {"lr": 1e-3, "loss": "ot"}, {"data": "abd"})
    assert k != stage_key("ppo", {"lr": 1e-3, "loss": "ot"}, {"data": "abc"})


def test_records_and_state_survive_a_new_reader(tmp_path):
    st = RunState(tmp_path)
    st.complete("sft", "k1", inputs={}, config={"a": 1}, outputs={"path": "sft"}, started=0.0)
    st.set_ppo(4, "ppo/ckpt/step_000004", "kp")
    st.add_restarts({"rollout": 1})
    st.add_restarts({"rollout": 1, "learner": 1})
    again = RunState(tmp_path)  # what a resumed process reads
    assert again.done("sft", "k1") and not again.done("sft", "k2") and not again.done("collect", "k1")
    assert again.record("sft")["outputs"] == {"path": "sft"}
    assert again.data["ppo"] == {"step": 4, "checkpoint": "ppo/ckpt/step_000004", "key": "kp"}
    assert again.data["restarts"] == {"rollout": 2, "learner": 1}
    again.invalidate("sft")
    assert not RunState(tmp_path).done("sft", "k1")
    assert "sft" not in json.loads((tmp_path / "state.json").read_text())["stages"]


def test_fresh_run_needs_an_empty_dir_and_digest_sees_every_byte(tmp_path):
    RunState.check_fresh(tmp_path / "absent")
    RunState.check_fresh(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"\x00\x01")
    with pytest.raises(RunDirNotEmpty, match="--resume .*run.name"):
        RunState.check_fresh(tmp_path)
    d = dir_digest(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"\x00\x02")
    assert dir_digest(tmp_path / "m") != d
