"""Learner -> rollout generators weight sync: one interface, three transports.

Every transport delivers a versioned :class:`~raydprm.rollout.sync.WeightManifest`
(name, dtype, shape and SHA-256 of every tensor) with the tensors; every replica checks
what it received against the manifest before loading anything, then scores the fixed
probe sequence and compares with the learner's ``expected_probe`` logprobs. A sync that
fails either check, or does not finish within ``timeout_s``, raises
:class:`~raydprm.rollout.sync.WeightSyncError`: it never hangs and never leaves
unverified weights serving.

Transports (registry :data:`TRANSPORTS`, by ``rollout.weight_sync``):

- ``object_store``: the state dict is cut into safetensors buckets of at most
  ``bucket_mb`` (:func:`publish`, ``ray.put`` per bucket); each replica fetches them one
  at a time, stages, verifies, loads with ``engine.load_weights``. Any engine; for CPUs
  and small models.
- ``vllm_rpc``: the same buckets, forwarded by the replica into its vLLM workers through
  ``collective_rpc`` and a worker extension that stages, verifies and reloads in place.
- ``nccl``: a NCCL broadcast group between the learner (rank 0, the process that calls
  :meth:`NcclTransport.sync`, tensors on its GPU) and the vLLM workers, built on vLLM's
  stateless process group + PyNccl so it does not collide with the learner's own
  torch.distributed group. GPUs only.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from tqdm.auto import tqdm

from raydprm.rollout.sync import (
    StageReport,
    WeightManifest,
    WeightSyncError,
    build_manifest,
    iter_buckets,
    send_by_broadcast,
)


@dataclass
class WeightUpdate:
    """A published update: the manifest plus ``ray.put`` refs of its buckets."""

    manifest: WeightManifest
    bucket_refs: list[Any]

    @property
    def version(self) -> int:
        return self.manifest.version


def publish(state_dict: Mapping[str, Any], version: int, bucket_mb: int = 64, progress: bool = False) -> WeightUpdate:
    """Manifest + buckets of ``state_dict`` in the object store (one bucket in memory at a time).

    Call it where the weights live (the learner) and hand the returned
    :class:`WeightUpdate` to :meth:`RolloutPool.sync_weights`: only refs travel."""
    manifest = build_manifest(state_dict, version)
    refs = []
    bar = tqdm(total=manifest.nbytes, unit="B", unit_scale=True, desc=f"publish weights v{version}",
               disable=not progress)
    for payload in iter_buckets(state_dict, bucket_mb * 2**20):
        refs.append(ray.put(payload))
        bar.update(len(payload))
    bar.close()
    return WeightUpdate(manifest, refs)


def _as_update(weights: Any, version: int, bucket_mb: int) -> WeightUpdate:
    if isinstance(weights, WeightUpdate):
        if weights.version != version:
            raise WeightSyncError(f"published update has version {weights.version}, sync asked for {version}")
        return weights
    if isinstance(weights, ray.ObjectRef):
        weights = ray.get(weights)
    if not isinstance(weights, Mapping):
        raise WeightSyncError(f"weights must be a state dict, an ObjectRef to one or a WeightUpdate, got {type(weights).__name__}")
    return publish(weights, version, bucket_mb)


def _gather(refs: list[Any], timeout_s: float, version: int, transport: str) -> list[StageReport]:
    from raydprm.cluster.rollout_actor import _wait

    return _wait(ray, refs, timeout_s, f"weight sync v{version} over {transport}")


class WeightTransport(ABC):
    """Moves one versioned state dict to every replica and returns their verified reports."""

    name = "?"

    @abstractmethod
    def sync(self, actors: Sequence[Any], weights: Any, version: int, expected_probe: Sequence[float],
             tolerance: float, timeout_s: float) -> list[StageReport]: ...


class ObjectStoreTransport(WeightTransport):
    """Buckets through the Ray object store; replicas load with ``engine.load_weights``."""

    name = "object_store"
    via = "load_weights"

    def __init__(self, bucket_mb: int = 64, **unused: Any) -> None:
        self.bucket_mb = bucket_mb

    def sync(self, actors, weights, version, expected_probe, tolerance, timeout_s):
        t0 = time.perf_counter()
        update = _as_update(weights, version, self.bucket_mb)
        refs = [a.receive_weights.remote(update.manifest, [update.bucket_refs], list(expected_probe), tolerance,
                                         timeout_s, self.via) for a in actors]
        reports = _gather(refs, timeout_s + 5.0, version, self.name)  # replicas enforce timeout_s themselves
        for r in reports:
            r.transport = self.name
            r.extra["wall_s"] = time.perf_counter() - t0
        return reports


class VllmRpcTransport(ObjectStoreTransport):
    """Buckets through the object store, then into the vLLM workers by ``collective_rpc``."""

    name = "vllm_rpc"
    via = "vllm_rpc"


class NcclTransport(WeightTransport):
    """NCCL broadcast from this process (rank 0, CUDA tensors) to the vLLM workers.

    ``setup`` must run once (it rendezvouses every worker with this process on
    ``host:port``); ``world_size = 1 + replicas * tensor_parallel_size``."""

    name = "nccl"

    def __init__(self, host: str = "127.0.0.1", port: int = 29555, tensor_parallel_size: int = 1,
                 **unused: Any) -> None:
        self.host, self.port, self.tp = host, port, tensor_parallel_size
        self.group = None

    def setup(self, actors: Sequence[Any], timeout_s: float = 120.0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise WeightSyncError("weight transport nccl needs CUDA in the learner process; use object_store or vllm_rpc")
        from raydprm.rollout.vllm_engine import nccl_group

        world = 1 + len(actors) * self.tp
        refs = [a.init_nccl.remote(self.host, self.port, 1 + i * self.tp, world, timeout_s) for i, a in enumerate(actors)]
        self.group = nccl_group(self.host, self.port, 0, world, torch.device("cuda", torch.cuda.current_device()))
        _gather(refs, timeout_s, 0, self.name)

    def sync(self, actors, weights, version, expected_probe, tolerance, timeout_s):
        import torch

        if self.group is None:
            self.setup(actors, timeout_s)
        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        if not isinstance(weights, Mapping):
            raise WeightSyncError("the nccl transport sends a state dict held by this process")
        manifest = build_manifest(weights, version)
        refs = [a.receive_nccl.remote(manifest, list(expected_probe), tolerance, timeout_s) for a in actors]
        stream = torch.cuda.current_stream()
        send_by_broadcast(weights, lambda t: self.group.broadcast(t, src=0, stream=stream), torch.device("cuda"))
        torch.cuda.synchronize()
        return _gather(refs, timeout_s, version, self.name)


TRANSPORTS: dict[str, type[WeightTransport]] = {
    "object_store": ObjectStoreTransport,
    "vllm_rpc": VllmRpcTransport,
    "nccl": NcclTransport,
}


def make_transport(name: str, **kwargs: Any) -> WeightTransport:
    if name not in TRANSPORTS:
        raise WeightSyncError(f"unknown weight transport '{name}'; known: {', '.join(TRANSPORTS)}")
    return TRANSPORTS[name](**kwargs)
