"""A resume trusts only what verifies (issue 25, part 1): Pipeline.save_checkpoint writes a manifest
last, load_checkpoint verifies it and falls back past a damaged newest checkpoint; a full disk
during a save leaves no checkpoint directory. The learner is a stand-in that writes and reads
files as LearnerGroup does (no Ray): what is tested is the driver's bookkeeping."""

import errno
import json

import numpy as np
import pytest

from raydprm.cluster.pipeline import Pipeline
from raydprm.config import load_config
from raydprm.errors import DiskFull


class FileLearner:
    """Writes a model file whose bytes depend on the step; ``load`` remembers what it read."""

    def __init__(self):
        self.step, self.loaded = 0, []

    def save(self, d):
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.safetensors").write_bytes(np.random.default_rng(self.step).bytes(32 * 1024))
        (d / "learner_state.json").write_text(json.dumps({"step": self.step}))
        return str(d)

    def load(self, d):
        self.loaded.append(d.name)
        self.step = json.loads((d / "learner_state.json").read_text())["step"]


def _pipe(tmp_path, capsys=None):
    cfg = load_config(None, ["pipeline.keep_checkpoints=3", f"run.output_dir={tmp_path}", "run.name=r"])
    pipe = Pipeline(cfg, tmp_path / "r", progress=False)
    pipe.learner = FileLearner()
    return pipe


def _train(pipe, key, steps):
    history = []
    for step in range(1, steps + 1):
        pipe.learner.step = step
        history.append({"step": step, "reward/mean": step / 10})
        pipe.save_checkpoint(key, step, list(history))


def _ckpt(pipe, step):
    return pipe.run_dir / "ppo" / "ckpt" / f"step_{step:06d}"


def test_a_resume_falls_back_past_a_damaged_newest_checkpoint_and_says_so_in_one_line(tmp_path, capsys):
    pipe = _pipe(tmp_path)
    _train(pipe, "k", 3)
    assert all((_ckpt(pipe, s) / "manifest.json").is_file() for s in (1, 2, 3))
    model = _ckpt(pipe, 3) / "model.safetensors"  # the probe: 4 KB of zeros mid-file, then --resume
    data = bytearray(model.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    model.write_bytes(bytes(data))
    capsys.readouterr()

    again = _pipe(tmp_path)  # what --resume builds
    step, history = again.load_checkpoint("k")
    assert (step, again.learner.loaded, again.learner.step) == (2, ["step_000002"], 2)
    assert [h["step"] for h in history] == [1, 2]
    lines = [x for x in capsys.readouterr().out.splitlines() if "damaged" in x]
    assert len(lines) == 1 and "step_000003': 'model.safetensors' does not match its xxh3_128 digest" in lines[0]
    assert "trying the previous checkpoint" in lines[0]


@pytest.mark.parametrize("damage", ["garbled progress", "no manifest", "progress of another key"])
def test_garbled_progress_or_an_unfinished_save_is_skipped_too(tmp_path, damage):
    pipe = _pipe(tmp_path)
    _train(pipe, "k", 2)
    d = _ckpt(pipe, 2)
    if damage == "garbled progress":
        (d / "progress.json").write_text('{"key": "k", "st')
    elif damage == "no manifest":
        (d / "manifest.json").unlink()
    else:  # not damage: a checkpoint of another PPO configuration is never resumed from
        (d / "progress.json").write_text(json.dumps({"key": "other", "step": 2, "history": []}))
        from raydprm.cluster.run_state import write_manifest

        write_manifest(d)
    again = _pipe(tmp_path)
    assert again.load_checkpoint("k")[0] == 1 and again.learner.loaded == ["step_000001"]


def test_every_checkpoint_damaged_or_state_json_lost_still_resumes_from_what_verifies(tmp_path):
    pipe = _pipe(tmp_path)
    _train(pipe, "k", 2)
    (pipe.run_dir / "state.json").unlink()  # the way out a damaged state.json's message names
    again = _pipe(tmp_path)
    assert again.load_checkpoint("k")[0] == 2  # the newest intact checkpoint of this key, found on disk
    for s in (1, 2):
        (_ckpt(pipe, s) / "learner_state.json").write_text("{}")
    assert _pipe(tmp_path).load_checkpoint("k") == (0, [])  # nothing to trust: PPO starts over


def test_a_full_disk_during_a_checkpoint_save_names_the_directory_and_leaves_none(tmp_path, monkeypatch):
    pipe = _pipe(tmp_path)
    _train(pipe, "k", 1)

    class FullDisk(FileLearner):
        def save(self, d):
            super().save(d)  # a part is on disk, then the disk is full (as a Ray actor reports it)
            raise RuntimeError("learner: 'save' failed on rank 0: SafetensorError: Error while serializing: "
                               "IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    pipe.learner = FullDisk()
    with pytest.raises(DiskFull) as e:
        pipe.save_checkpoint("k", 2, [])
    assert str(e.value).startswith(f"no space left on the device of '{_ckpt(pipe, 2)}' while writing the "
                                   "checkpoint of step 2")
    assert not _ckpt(pipe, 2).exists() and _pipe(tmp_path).load_checkpoint("k")[0] == 1

    def enospc(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    pipe.learner = FileLearner()
    monkeypatch.setattr("raydprm.cluster.run_state.write_manifest", enospc)
    with pytest.raises(DiskFull):
        pipe.save_checkpoint("k", 2, [])
    assert not _ckpt(pipe, 2).exists()
