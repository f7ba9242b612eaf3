"""Learner -> rollout generators weight sync. Weights never pass through the driver.

The learner's rank 0 *publishes* each new policy version where the weights already are
(:func:`publish`, called inside the learner actor); the driver only moves the small
handle (:class:`WeightUpdate`: a manifest of names, shapes and xxh3-128 digests, object
refs of the buckets, and the learner's logprobs on the probe sequence), and every
generator pulls the buckets itself. Each generator checks what it received against the
manifest before loading anything, loads, scores the probe sequence and compares with
the learner's logprobs. A sync that fails either check, or does not finish within
``timeout_s``, raises :class:`~raydprm.rollout.sync.WeightSyncError`: it never hangs and
never leaves unverified weights serving.

Transports (``rollout.weight_sync``):

- ``object_store``: safetensors buckets of at most ``bucket_mb`` put into the object store
  by the learner; each generator fetches them one at a time, stages, verifies and loads
  with ``engine.load_weights``. Any engine.
- ``vllm_rpc``: the same buckets, forwarded by the generator into its vLLM workers through
  ``collective_rpc`` and a worker extension that stages, verifies and reloads in place.
- ``nccl``: a NCCL broadcast from inside the learner (rank 0 of a separate communicator,
  tensors on its GPU) to the vLLM workers, built on vLLM's stateless process group +
  PyNccl so it does not collide with the learner's own torch.distributed group
  (:class:`NcclSender`). GPUs only.

:func:`sync_policy` is the one driver-side call for all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from raydprm.rollout.sync import (
    WeightManifest,
    WeightSyncError,
    build_manifest,
    iter_buckets,
    send_by_broadcast,
)

__all__ = ["WeightUpdate", "WeightsLost", "publish", "NcclSender", "sync_policy", "TRANSPORTS", "check_transport"]

# transport name -> how the generator receives (``apply_update``'s ``via``); nccl is separate
TRANSPORTS: dict[str, str] = {"object_store": "load_weights", "vllm_rpc": "vllm_rpc", "nccl": "nccl"}


def check_transport(name: str) -> str:
    if name not in TRANSPORTS:
        raise WeightSyncError(f"unknown weight transport '{name}'; known: {', '.join(TRANSPORTS)}")
    return name


class WeightsLost(WeightSyncError):
    """A published update's buckets are gone from the object store: their owner (the learner rank
    that published them) died, e.g. with a lost node, or Ray lost the objects otherwise. Nothing was
    loaded; the version must be published again (:meth:`RolloutPool._catch_up` asks its source)."""


@dataclass
class WeightUpdate:
    """A published policy version: manifest, bucket refs (empty for nccl) and the learner's probe logprobs."""

    manifest: WeightManifest
    bucket_refs: list[Any]
    expected_probe: list[float]
    publish_s: float = 0.0  # what publishing took where the weights live (manifest + buckets into the store)

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def nbytes(self) -> int:
        return self.manifest.nbytes


def publish(state_dict: Mapping[str, torch.Tensor], version: int, expected_probe: Sequence[float],
            bucket_mb: int = 64, raw: bool = True) -> WeightUpdate:
    """Manifest + buckets of ``state_dict`` in the object store, owned by the calling process.

    Call it where the weights live (the learner's rank 0); only refs travel onwards.
    ``raw`` buckets (:class:`~raydprm.rollout.sync.RawBucket`) are the tensors' own bytes:
    ``ray.put`` copies them once into shared memory and a generator on the same node reads
    them in place; ``raw=False`` encodes safetensors bytes (what vLLM's workers take)."""
    manifest = build_manifest(state_dict, version)
    refs = [ray.put(payload) for payload in iter_buckets(state_dict, bucket_mb * 2**20, raw=raw)]
    return WeightUpdate(manifest, refs, list(expected_probe))


class NcclSender:
    """Rank 0 of the NCCL weight-broadcast group, living inside the learner's rank 0.

    ``world_size = 1 + replicas * tensor_parallel_size``; the generators' vLLM workers take
    ranks 1.. . :meth:`setup` blocks until every member joined ``host:port``."""

    def __init__(self) -> None:
        self.group: Any = None

    def setup(self, host: str, port: int, world_size: int) -> None:
        if not torch.cuda.is_available():
            raise WeightSyncError("weight transport nccl needs CUDA in the learner; use object_store or vllm_rpc")
        from raydprm.rollout.vllm_engine import nccl_group

        self.group = nccl_group(host, port, 0, world_size, torch.device("cuda", torch.cuda.current_device()))

    def send(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        if self.group is None:
            raise WeightSyncError("the NCCL weight group is not set up (NcclSender.setup first)")
        stream = torch.cuda.current_stream()
        send_by_broadcast(state_dict, lambda t: self.group.broadcast(t, src=0, stream=stream), torch.device("cuda"))
        torch.cuda.synchronize()


def sync_policy(learner: Any, rollout: Any, version: int, timeout_s: float | None = None) -> list[Any]:
    """Move the learner's current policy to every generator, verified; returns their reports.

    ``learner``: a :class:`~raydprm.cluster.learner_group.LearnerGroup`; ``rollout``: a
    :class:`~raydprm.cluster.rollout_actor.RolloutPool`. What reaches this (driver)
    process is the manifest, object refs and probe logprobs, never a tensor of weights."""
    cfg = rollout.cfg
    if check_transport(cfg.weight_sync) == "nccl":
        if not rollout.nccl_ready:
            host, port = learner.weight_group_address()
            world = 1 + rollout.num_replicas * cfg.tensor_parallel_size
            join = rollout.join_nccl_async(host, port, world, cfg.sync_timeout_s)
            learner.setup_weight_group(host, port, world)
            rollout.finish_join_nccl(join)
        manifest, probe = learner.prepare_broadcast(version, rollout.probe_ids)
        receive = rollout.receive_broadcast_async(manifest, probe, timeout_s)
        learner.broadcast_weights()
        return rollout.finish_receive(receive, version, timeout_s)
    raw = cfg.weight_sync == "object_store"
    update = learner.publish_weights(version, rollout.probe_ids, cfg.bucket_mb, raw=raw)
    # a generator restarted later is given this version again; should its buckets be lost with their owner
    # (the learner's node), the pool asks the learner to publish the same version again (see _catch_up)
    return rollout.sync_weights(update, timeout_s=timeout_s,
                                source=lambda v: learner.republish_weights(v, rollout.probe_ids, cfg.bucket_mb, raw=raw))
