"""The run directory's manifest: completion records per stage and ``state.json``.

Each stage ``S`` writes ``<run_dir>/<S>/record.json`` when it finishes::

    {"stage": S, "key": sha256, "inputs": {NAME: hash}, "config": {...}, "outputs": {...},
     "started": unix time, "seconds": float}

``key`` hashes the stage's name, the config keys it reads and its inputs' hashes (the
upstream stages' keys and output digests), so a changed config key or a redone upstream
stage changes every downstream key. A stage whose record has the same key is not redone.
``<run_dir>/state.json`` is the summary: which stages are done, the PPO step of the last
checkpoint, restarts per role; every write is atomic (tmp + rename), so a SIGKILL leaves
the previous version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raydprm.errors import RaydprmError

__all__ = ["RunState", "RunDirNotEmpty", "stage_key", "dir_digest", "write_json", "copy_stages"]

STAGES = ("sft", "collect", "reward", "ppo", "evaluate")


class RunDirNotEmpty(RaydprmError):
    """A fresh run was pointed at a directory that already holds a run."""


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(stage: str, config: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """sha256 of what a stage's result depends on: its config keys and its inputs' hashes."""
    return _digest({"stage": stage, "config": config, "inputs": inputs})


def dir_digest(path: str | os.PathLike[str]) -> str:
    """``xxh3_128:<hex>`` over the relative names and bytes of every file under ``path`` (sorted).

    xxh3 (the hash weight sync already uses) runs at ~9 GB/s here, 6.8x SHA-256 (bench/RESULTS.md,
    issue 24). It guards against a changed or truncated file between stages, not against an
    adversary."""
    import xxhash  # comes with the `datasets` dependency

    root = Path(path)
    h = xxhash.xxh3_128()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return "xxh3_128:" + h.hexdigest()


class RunState:
    """Reads and writes the run directory's records and ``state.json``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        p = self.run_dir / "state.json"
        self.data: dict[str, Any] = json.loads(p.read_text()) if p.is_file() else {
            "stages": {}, "ppo": {"step": 0, "checkpoint": None}, "restarts": {}}

    @staticmethod
    def check_fresh(run_dir: Path) -> None:
        """A fresh run refuses a directory that already has files in it."""
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunDirNotEmpty(f"run directory '{run_dir}' is not empty: continue that run with "
                                 f"`raydprm run --resume {run_dir}` or start a new one with run.name=<another name>")

    def record(self, stage: str) -> dict[str, Any] | None:
        p = self.run_dir / stage / "record.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def done(self, stage: str, key: str) -> bool:
        """The stage completed with exactly this key (same config keys and inputs)."""
        rec = self.record(stage)
        return rec is not None and rec.get("key") == key

    def complete(self, stage: str, key: str, *, inputs: Mapping[str, str], config: Mapping[str, Any],
                 outputs: Mapping[str, Any], started: float) -> dict[str, Any]:
        rec = {"stage": stage, "key": key, "inputs": dict(inputs), "config": dict(config), "outputs": dict(outputs),
               "started": started, "seconds": time.time() - started}
        write_json(self.run_dir / stage / "record.json", rec)
        self.data["stages"][stage] = {"done": True, "key": key, "seconds": rec["seconds"]}
        self.save()
        return rec

    def invalidate(self, stage: str) -> None:
        """Forget a stage's completion (it is about to be redone)."""
        (self.run_dir / stage / "record.json").unlink(missing_ok=True)
        self.data["stages"].pop(stage, None)
        self.save()

    def set_ppo(self, step: int, checkpoint: str | None, key: str) -> None:
        self.data["ppo"] = {"step": step, "checkpoint": checkpoint, "key": key}
        self.save()

    def add_restarts(self, counts: Mapping[str, int]) -> None:
        r = self.data.setdefault("restarts", {})
        for role, n in counts.items():
            r[role] = int(r.get(role, 0)) + int(n)
        self.save()

    def save(self) -> None:
        self.data["updated"] = time.time()
        write_json(self.run_dir / "state.json", self.data)


def copy_stages(src: str | os.PathLike[str], dst: str | os.PathLike[str], stages: tuple[str, ...]) -> list[str]:
    """Copy the completed ``stages`` of run ``src`` (in order, up to the first not done) into the
    empty run ``dst``: each stage's directory, the run-relative files its outputs name (e.g.
    ``store.db``) and its line in state.json. Returns the stages copied.

    Only a seed: the next run in ``dst`` still compares every stage's key with its own config
    and inputs and redoes any that differ (a sweep's trials share their common stages this way)."""
    src, dst = Path(src), Path(dst)
    state, out = RunState(dst), []
    for stage in stages:
        rec = RunState(src).record(stage)
        if rec is None:
            break
        paths = {stage} | {v for v in rec["outputs"].values() if isinstance(v, str) and v and not Path(v).is_absolute()
                           and (src / v).exists()}
        for rel in sorted(paths):
            for suffix in ("", "-wal", "-shm") if (src / rel).is_file() else ("",):
                s, d = src / (rel + suffix), dst / (rel + suffix)
                if not s.exists() or d.exists():
                    continue
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(s, d) if s.is_dir() else shutil.copy2(s, d)
        state.data["stages"][stage] = {"done": True, "key": rec["key"], "seconds": rec["seconds"]}
        out.append(stage)
    if out:
        state.save()
    return out
