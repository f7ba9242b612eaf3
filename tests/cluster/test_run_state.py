"""The run directory's manifest: stage keys, completion records, state.json, fresh-run rule; what a resume
can trust: checkpoint manifests, damaged files refused in one line, atomic writes, a full disk."""

import errno
import json
import os

import pytest

from raydprm.cluster.run_state import (
    CheckpointDamaged,
    DamagedFile,
    RunDirNotEmpty,
    RunState,
    dir_digest,
    stage_key,
    verify_checkpoint,
    write_json,
    write_manifest,
)
from raydprm.errors import DiskFull


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


# ---------------------------------------------------------------- what a resume can trust (issue 25, part 1)
def _zero_4k_mid_file(path):
    """The probe's damage: 4 KB of zeros in the middle of a file."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(min(4096, len(data) - mid))
    path.write_bytes(bytes(data))


def _fake_checkpoint(d, seed):
    import numpy as np

    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(np.random.default_rng(seed).bytes(64 * 1024))
    (d / "learner_state.json").write_text(json.dumps({"step": seed}))
    (d / "sub").mkdir()
    (d / "sub" / "rng_rank0.pt").write_bytes(b"\x01" * 100)


def test_a_checkpoint_manifest_catches_4k_of_zeros_a_missing_file_and_an_unfinished_save(tmp_path):
    d = tmp_path / "step_000002"
    _fake_checkpoint(d, 2)
    with pytest.raises(CheckpointDamaged, match="incomplete .no manifest.json"):
        verify_checkpoint(d)  # a save that never reached its manifest
    man = json.loads(write_manifest(d).read_text())
    assert man["algo"] == "xxh3_128" and sorted(man["files"]) == ["learner_state.json", "model.safetensors",
                                                                  "sub/rng_rank0.pt"]
    verify_checkpoint(d)  # intact: silent
    (d / "trial.json").write_text("{}")  # a file added after the save (Tune's trial.json) is not checked
    verify_checkpoint(d)
    _zero_4k_mid_file(d / "model.safetensors")
    with pytest.raises(CheckpointDamaged, match="'model.safetensors' does not match its xxh3_128 digest"):
        verify_checkpoint(d)
    _fake_checkpoint(tmp_path / "b", 3)
    write_manifest(tmp_path / "b")
    (tmp_path / "b" / "sub" / "rng_rank0.pt").unlink()
    with pytest.raises(CheckpointDamaged, match="'sub/rng_rank0.pt' is missing"):
        verify_checkpoint(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text('{"algo": "xxh3_128", "fi')
    with pytest.raises(CheckpointDamaged, match="damaged manifest.json"):
        verify_checkpoint(tmp_path / "b")


@pytest.mark.parametrize("content", ["", '{"stages": {"sft": {"done": tr', "\x00" * 64, "[1, 2]"],
                         ids=["empty", "truncated", "zeros", "not-an-object"])
def test_a_damaged_state_or_record_is_refused_in_one_line_naming_the_file_and_the_way_out(tmp_path, content):
    st = RunState(tmp_path)
    st.complete("sft", "k1", inputs={}, config={}, outputs={"path": "sft"}, started=0.0)
    (tmp_path / "sft" / "record.json").write_text(content)
    with pytest.raises(DamagedFile) as e:
        RunState(tmp_path).record("sft")
    msg = str(e.value)
    assert f"'{tmp_path / 'sft' / 'record.json'}' (the record of stage sft) is damaged" in msg
    assert f"remove it and `raydprm run --resume {tmp_path}` redoes that stage" in msg and "\n" not in msg
    (tmp_path / "state.json").write_text(content)
    with pytest.raises(DamagedFile) as e:
        RunState(tmp_path)
    assert f"'{tmp_path / 'state.json'}' (the run's state) is damaged" in str(e.value)
    assert "remove it and resume with `raydprm run --resume" in str(e.value)


def test_json_writes_are_atomic_and_fsynced_and_a_full_disk_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    write_json(p, {"v": 1})
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    write_json(p, {"v": 2})
    assert synced and json.loads(p.read_text()) == {"v": 2}

    real_replace = os.replace

    def crash(*a, **kw):  # killed between write and rename: the old version stays
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json(p, {"v": 3})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads(p.read_text()) == {"v": 2}

    real_open = open

    def full_disk_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "w" in mode:
            f.close()
            real_open(path, "wb").write(b"{\"v\": ")  # a part got written, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return f

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(DiskFull) as e:
        write_json(p, {"v": 4}, what="the run's state")
    monkeypatch.setattr("builtins.open", real_open)
    assert str(e.value).startswith(f"no space left on the device of '{p}' while writing the run's state")
    assert json.loads(p.read_text()) == {"v": 2} and sorted(x.name for x in tmp_path.iterdir()) == ["state.json"]
