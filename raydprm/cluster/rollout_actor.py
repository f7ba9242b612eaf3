"""Rollout generator actors and the pool that spreads prompts over them.

:class:`RolloutGenerator` is a thin Ray actor around one engine replica
(:mod:`raydprm.rollout`); :class:`RolloutPool` starts ``rollout.num_replicas`` of them
with the CPUs/GPUs of :class:`~raydprm.config.RolloutConfig`, splits a batch of prompts
into contiguous slices (one per replica), gathers the responses back in prompt order,
and pushes new weights to every replica with a verified sync
(:mod:`raydprm.cluster.weight_sync`)::

    pool = RolloutPool(cfg.rollout, model="tiny-gpt2")
    responses = pool.generate(prompts)                       # ordered like prompts (x n)
    pool.sync_weights(policy.state_dict(), version=1,
                      expected_probe=probe_logprobs(policy, pool.probe_ids))
    pool.shutdown()

A replica whose last sync loaded weights that then failed the probe refuses to generate
(:class:`~raydprm.rollout.sync.WeightSyncError`) until a sync succeeds: stale or wrong
weights are never served silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from raydprm.errors import RaydprmError
from raydprm.rollout.engine import Prompt, Response
from raydprm.rollout.sampling import SamplingParams
from raydprm.rollout.sync import StageReport, WeightManifest, WeightSyncError, apply_update, probe_sequence


class RolloutGenerator:
    """One engine replica (wrap with ``ray.remote``; :class:`RolloutPool` does)."""

    def __init__(self, engine: str, model: str, engine_kwargs: Mapping[str, Any], replica: int = 0,
                 probe_length: int = 32) -> None:
        from raydprm.rollout.engine import make_engine

        self.replica = replica
        self.engine = make_engine(engine, model, **dict(engine_kwargs))
        self.probe_ids = probe_sequence(self.engine.vocab_size, probe_length)

    def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "engine": self.engine.name, "pid": os.getpid(),
                "weight_version": self.engine.weight_version, "vocab_size": self.engine.vocab_size,
                "probe_ids": self.probe_ids}

    def _check_verified(self) -> None:
        if self.engine.weight_version < 0:
            raise WeightSyncError(f"rollout replica {self.replica} holds weights that failed verification; "
                                  "sync again before generating")

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams, first_index: int = 0) -> list[Response]:
        self._check_verified()
        return self.engine.generate(prompts, sampling, first_index)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        return self.engine.score(sequences)

    def receive_weights(self, manifest: WeightManifest, bucket_refs: list[list[ray.ObjectRef]],
                        expected_probe: Sequence[float], tolerance: float, timeout_s: float,
                        via: str = "load_weights") -> StageReport:
        """Fetch buckets from the object store (``bucket_refs[0]``: wrapped so Ray does not
        resolve them all at once), verify, load, probe. Bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s

        def payloads():
            for ref in bucket_refs[0]:
                left = deadline - time.monotonic()
                try:
                    yield ray.get(ref, timeout=max(left, 0.001))
                except ray.exceptions.GetTimeoutError:
                    raise WeightSyncError(f"weight sync v{manifest.version}: replica {self.replica} timed out "
                                          f"after {timeout_s:g} s fetching buckets from the object store") from None

        rep = apply_update(self.engine, manifest, payloads(), self.probe_ids, expected_probe, tolerance,
                           via=via, deadline=deadline)
        rep.replica = self.replica
        return rep

    def init_nccl(self, host: str, port: int, rank_offset: int, world_size: int, timeout_s: float) -> list[int]:
        if not hasattr(self.engine, "nccl_init"):
            raise WeightSyncError(f"weight transport nccl needs the vllm engine, not '{self.engine.name}'")
        return self.engine.nccl_init(host, port, rank_offset, world_size, timeout=timeout_s)

    def receive_nccl(self, manifest: WeightManifest, expected_probe: Sequence[float], tolerance: float,
                     timeout_s: float) -> StageReport:
        from raydprm.rollout.sync import check_probe

        t0 = time.perf_counter()
        self.engine.weight_version = -1
        rep = self.engine.nccl_receive(manifest, timeout=timeout_s)
        if rep.digest != manifest.digest:
            raise WeightSyncError(f"weight sync v{manifest.version}: NCCL-received checksum differs from the learner's")
        rep.probe_max_diff = check_probe(expected_probe, self.engine.score([self.probe_ids])[0], tolerance,
                                         manifest.version)
        self.engine.weight_version = manifest.version
        rep.seconds, rep.transport, rep.replica = time.perf_counter() - t0, "nccl", self.replica
        return rep

    def shutdown(self) -> bool:
        self.engine.shutdown()
        return True


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` slices of ``range(n)`` over ``parts`` (sizes differ by <= 1)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


class RolloutPool:
    """``num_replicas`` :class:`RolloutGenerator` actors behind one ordered interface."""

    def __init__(self, cfg: Any, model: str, dtype: str = "float32", startup_timeout_s: float = 600.0) -> None:
        from raydprm.rollout.engine import engine_kwargs

        if not ray.is_initialized():
            raise RaydprmError("RolloutPool needs a running Ray instance (ray.init() first)")
        self.cfg = cfg
        self.default_sampling = SamplingParams.from_config(cfg)
        Actor = ray.remote(RolloutGenerator).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
        kw = engine_kwargs(cfg, dtype)
        self.actors = [Actor.remote(cfg.engine, model, kw, i, cfg.probe_length) for i in range(cfg.num_replicas)]
        infos = _wait(ray, [a.info.remote() for a in self.actors], startup_timeout_s,
                      f"starting {cfg.num_replicas} '{cfg.engine}' rollout replica(s)")
        self.probe_ids: list[int] = infos[0]["probe_ids"]
        self.vocab_size: int = infos[0]["vocab_size"]
        self.version = 0

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | None = None,
                 timeout_s: float | None = None) -> list[Response]:
        """Responses for every prompt (``n`` per prompt), in prompt order, spread over replicas."""
        sampling = sampling or self.default_sampling
        prompts = list(prompts)
        slices = [s for s in split_evenly(len(prompts), len(self.actors)) if s[1] > s[0]]
        refs = [self.actors[k].generate.remote(prompts[a:b], sampling, a) for k, (a, b) in enumerate(slices)]
        parts = _wait(ray, refs, timeout_s, "generating rollouts")
        return [r for part in parts for r in part]

    def sync_weights(self, weights: Any, version: int, expected_probe: Sequence[float],
                     transport: Any = None, timeout_s: float | None = None) -> list[StageReport]:
        """Push new weights to every replica and verify them (checksum + probe).

        ``weights``: a state dict, an ``ObjectRef`` to one, or a prepared
        :class:`~raydprm.cluster.weight_sync.WeightUpdate`. ``transport``: a name
        (default ``rollout.weight_sync``) or a transport object. Raises
        :class:`WeightSyncError` on failed verification or after ``timeout_s`` (default
        ``rollout.sync_timeout_s``).
        """
        from raydprm.cluster.weight_sync import make_transport

        if version <= self.version:
            raise WeightSyncError(f"weight version {version} is not newer than the pool's current version {self.version}")
        tr = transport if transport is not None and not isinstance(transport, str) else \
            make_transport(transport or self.cfg.weight_sync, bucket_mb=self.cfg.bucket_mb)
        reports = tr.sync(self.actors, weights, version, expected_probe, tolerance=self.cfg.probe_tolerance,
                          timeout_s=timeout_s or self.cfg.sync_timeout_s)
        self.version = version
        return reports

    def versions(self) -> list[int]:
        return [i["weight_version"] for i in _wait(ray, [a.info.remote() for a in self.actors], 60, "reading versions")]

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Shut engines down (frees vLLM's /dev/shm files), then kill the actors."""
        try:
            _wait(ray, [a.shutdown.remote() for a in self.actors], timeout_s, "shutting rollout engines down")
        except Exception:  # the actors are killed either way
            pass
        for a in self.actors:
            ray.kill(a)
        self.actors = []


def _wait(ray_mod: Any, refs: list[Any], timeout_s: float | None, what: str) -> list[Any]:
    """``ray.get`` with a deadline; a timeout becomes a clear error naming the pending tasks."""
    ready, pending = ray_mod.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        idx = [i for i, r in enumerate(refs) if r in pending]
        for r in pending:
            ray_mod.cancel(r, force=False)
        err = WeightSyncError if "weight" in what else RaydprmError
        raise err(f"{what} timed out after {timeout_s:g} s (no answer from replica(s) {idx})")
    try:
        return ray_mod.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, RaydprmError):  # a clear error from the replica: re-raise it as is
            raise cause from None
        raise
