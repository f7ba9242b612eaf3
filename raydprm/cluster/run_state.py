"""The run directory's manifest: completion records per stage and ``state.json``.

Each stage ``S`` writes ``<run_dir>/<S>/record.json`` when it finishes::

    {"stage": S, "key": sha256, "inputs": {NAME: hash}, "config": {...}, "outputs": {...},
     "started": unix time, "seconds": float}

``key`` hashes the stage's name, the config keys it reads and its inputs' hashes (the
upstream stages' keys and output digests), so a changed config key or a redone upstream
stage changes every downstream key. A stage whose record has the same key is not redone.
``<run_dir>/state.json`` is the summary: which stages are done, the PPO step of the last
checkpoint, restarts per role. Every JSON file is written atomically (a temp file in the same
directory, fsync, rename, fsync of the directory), so a SIGKILL or a power cut leaves the
previous version; a file damaged anyway (a bad disk, a hand edit) is refused in one line
naming it and the way out (:class:`DamagedFile`), never read as something else.

A PPO/align checkpoint directory is complete when its ``manifest.json`` is there: written
last, it lists every file's size and xxh3_128 digest (the digest weight sync uses), and
:func:`verify_checkpoint` checks them before a checkpoint is loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from raydprm.errors import RaydprmError, disk_full, is_disk_full

__all__ = ["RunState", "RunDirNotEmpty", "DamagedFile", "CheckpointDamaged", "stage_key", "dir_digest", "write_json",
           "read_json", "write_manifest", "verify_checkpoint", "copy_stages", "MANIFEST"]

MANIFEST = "manifest.json"

STAGES = ("sft", "collect", "reward", "ppo", "evaluate")


class RunDirNotEmpty(RaydprmError):
    """A fresh run was pointed at a directory that already holds a run."""


class DamagedFile(RaydprmError):
    """A file of the run directory cannot be read back (truncated, empty, garbled)."""


class CheckpointDamaged(RaydprmError):
    """A checkpoint directory is incomplete or its files do not match its manifest."""


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # a platform without directory fds: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, what: str = "a file") -> None:
    """``path`` holds ``data`` or its previous content, never a part: a temp file in the same
    directory, fsync, rename, fsync of the directory. A full disk is :class:`~raydprm.errors.DiskFull`
    naming ``path`` and ``what``, with the temp file removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, what) from None
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any, *, what: str = "a JSON file") -> None:
    """``data`` as JSON in ``path``, atomically (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, json.dumps(data, indent=1, default=str).encode(), what=what)


def read_json(path: Path, *, what: str, way_out: str) -> Any:
    """The JSON object in ``path``; a file that is not one is :class:`DamagedFile` naming ``path``,
    ``what`` it is and ``way_out``."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        reason = "empty" if Path(path).stat().st_size == 0 else f"not JSON: {type(e).__name__}: {e}"
        raise DamagedFile(f"'{path}' ({what}) is damaged ({reason}); {way_out}") from None
    if not isinstance(data, dict):
        raise DamagedFile(f"'{path}' ({what}) is damaged (a JSON {type(data).__name__}, not an object); {way_out}")
    return data


def _file_digest(path: Path) -> str:
    from raydprm.rollout.sync import DIGEST_ALGO, _hasher

    h = _hasher(DIGEST_ALGO)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(ckpt_dir: str | os.PathLike[str]) -> Path:
    """Write ``ckpt_dir/manifest.json`` (every file's size and digest), last: its presence marks the
    checkpoint complete."""
    from raydprm.rollout.sync import DIGEST_ALGO

    d = Path(ckpt_dir)
    files = {str(f.relative_to(d)): {"size": f.stat().st_size, "digest": _file_digest(f)}
             for f in sorted(p for p in d.rglob("*") if p.is_file() and p.name != MANIFEST)}
    write_json(d / MANIFEST, {"algo": DIGEST_ALGO, "files": files}, what="a checkpoint's manifest")
    return d / MANIFEST


def verify_checkpoint(ckpt_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointDamaged` naming the first file of ``ckpt_dir`` that is missing,
    has another size or another digest than its manifest says (or the missing manifest itself:
    a save that never finished)."""
    from raydprm.rollout.sync import _hasher

    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointDamaged(f"checkpoint '{d}' is missing")
    if not (d / MANIFEST).is_file():
        raise CheckpointDamaged(f"checkpoint '{d}' is incomplete (no {MANIFEST}: its save never finished)")
    try:
        man = read_json(d / MANIFEST, what="a checkpoint's manifest", way_out="the checkpoint cannot be trusted")
        algo, files = man["algo"], dict(man["files"])
        _hasher(algo)
    except (DamagedFile, KeyError, TypeError, ValueError, RaydprmError) as e:
        raise CheckpointDamaged(f"checkpoint '{d}' has a damaged {MANIFEST} ({e})") from None
    for rel, want in sorted(files.items()):
        f = d / rel
        if not f.is_file():
            raise CheckpointDamaged(f"checkpoint '{d}': '{rel}' is missing")
        if f.stat().st_size != want.get("size"):
            raise CheckpointDamaged(f"checkpoint '{d}': '{rel}' has {f.stat().st_size} bytes, "
                                    f"its manifest says {want.get('size')}")
        h = _hasher(algo)
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != want.get("digest"):
            raise CheckpointDamaged(f"checkpoint '{d}': '{rel}' does not match its {algo} digest (damaged on disk)")


def save_checkpoint_dir(d: Path, step: int, save: Callable[[Path], None],
                        progress: Callable[[], Mapping[str, Any]]) -> None:
    """A checkpoint directory written whole or not at all: ``save(d)`` (the learner's states), then
    ``progress()`` (which may write files of its own into ``d``) as ``progress.json``, then the manifest last (its presence says the checkpoint is complete). A save that
    fails (a full disk: one line naming the directory) leaves no directory behind."""
    shutil.rmtree(d, ignore_errors=True)  # a save of this step that never finished (or a damaged one)
    try:
        save(d)
        write_json(d / "progress.json", dict(progress()), what="a checkpoint's progress")
        write_manifest(d)
    except BaseException as e:
        shutil.rmtree(d, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full(d, f"the checkpoint of step {step}") from None
        raise


def newest_intact_checkpoint(candidates: Iterable[Path], key: str,
                             say: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | tuple[None, bool]:
    """The first of ``candidates`` (newest first) whose manifest verifies and whose progress.json is of
    stage key ``key``: ``(dir, progress)``; a damaged one is reported through ``say`` in one line and the
    next is tried. ``(None, damaged)`` when none is left (``damaged``: whether one was skipped as damaged)."""
    damaged = False
    for d in dict.fromkeys(candidates):
        try:
            verify_checkpoint(d)
            progress = read_json(d / "progress.json", what="a checkpoint's progress", way_out="")
            if progress.get("key") != key:  # another configuration's: never resumed from
                continue
            if not isinstance(progress.get("step"), int) or not isinstance(progress.get("history"), list):
                raise DamagedFile(f"'{d / 'progress.json'}' (a checkpoint's progress) has no step or history")
        except (CheckpointDamaged, DamagedFile) as e:
            damaged = True
            say(f"{str(e).rstrip('; ')}; trying the previous checkpoint")
            continue
        return d, progress
    return None, damaged


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
        self.data: dict[str, Any] = {"stages": {}, "ppo": {"step": 0, "checkpoint": None}, "restarts": {}}
        if p.is_file():
            self.data = read_json(p, what="the run's state", way_out=(
                f"remove it and resume with `raydprm run --resume {self.run_dir}` (the stage records say what is "
                "done; PPO continues from its newest intact checkpoint)"))
            for k, default in (("stages", {}), ("ppo", {"step": 0, "checkpoint": None}), ("restarts", {})):
                if not isinstance(self.data.setdefault(k, default), dict):
                    raise DamagedFile(f"'{p}' (the run's state) is damaged ('{k}' is not an object); remove it and "
                                      f"resume with `raydprm run --resume {self.run_dir}`")

    @staticmethod
    def check_fresh(run_dir: Path) -> None:
        """A fresh run refuses a directory that already has files in it."""
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunDirNotEmpty(f"run directory '{run_dir}' is not empty: continue that run with "
                                 f"`raydprm run --resume {run_dir}` or start a new one with run.name=<another name>")

    def record(self, stage: str) -> dict[str, Any] | None:
        p = self.run_dir / stage / "record.json"
        if not p.is_file():
            return None
        rec = read_json(p, what=f"the record of stage {stage}", way_out=(
            f"remove it and `raydprm run --resume {self.run_dir}` redoes that stage"))
        if not isinstance(rec.get("outputs"), dict) or "key" not in rec:
            raise DamagedFile(f"'{p}' (the record of stage {stage}) is damaged (no key or outputs); remove it and "
                              f"`raydprm run --resume {self.run_dir}` redoes that stage")
        return rec

    def done(self, stage: str, key: str) -> bool:
        """The stage completed with exactly this key (same config keys and inputs)."""
        rec = self.record(stage)
        return rec is not None and rec.get("key") == key

    def complete(self, stage: str, key: str, *, inputs: Mapping[str, str], config: Mapping[str, Any],
                 outputs: Mapping[str, Any], started: float) -> dict[str, Any]:
        rec = {"stage": stage, "key": key, "inputs": dict(inputs), "config": dict(config), "outputs": dict(outputs),
               "started": started, "seconds": time.time() - started}
        write_json(self.run_dir / stage / "record.json", rec, what=f"the record of stage {stage}")
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
        write_json(self.run_dir / "state.json", self.data, what="the run's state")


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
