"""Rollout generator actors and the pool that spreads prompts over them.

:class:`RolloutGenerator` is a thin Ray actor around one engine replica
(:mod:`raydprm.rollout`); :class:`RolloutPool` is an :class:`~raydprm.cluster.group.ActorGroup`
of ``rollout.num_replicas`` of them with the CPUs/GPUs of :class:`~raydprm.config.RolloutConfig`.
It splits a batch of prompts into contiguous slices (one per replica), gathers the
responses back in prompt order, and has every replica pull a published weight update
(:mod:`raydprm.cluster.weight_sync`; the learner publishes, the driver only passes the
handle)::

    pool = RolloutPool.create(cfg.rollout, model="tiny-gpt2")
    responses = pool.generate(prompts)                       # ordered like prompts (x n)
    pending = pool.submit(prompts); ...; responses = pool.collect(pending)   # the same, overlapped with other work
    sync_policy(learner_group, pool, version=1)              # learner publishes, replicas pull + verify
    pool.shutdown()

A replica that dies is restarted (``ray.max_restarts``) and given the last verified
update before it serves again. Should that update's buckets be gone (their owner, the learner
rank that published them, died with its node), the pool asks the learner to publish the same
version again and accepts it only if its manifest digest is the lost update's, bit for bit
(:meth:`RolloutPool._catch_up`); otherwise the replica refuses to generate until the next sync.

Colocated with a learner rank (``pipeline.layout = colocate``) the pool sleeps while the
learner trains (:meth:`RolloutPool.sleep`: the engine gives its device memory back) and
each replica wakes what a call needs on its own (weights to load an update; weights and
KV cache to generate or score).

A replica whose last sync loaded weights that then failed the probe refuses to generate
(:class:`~raydprm.rollout.sync.WeightSyncError`) until a sync succeeds: stale or wrong
weights are never served silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from raydprm.cluster.group import ActorGroup, Placement, peak_rss_mb
from raydprm.cluster.weight_sync import TRANSPORTS, WeightsLost, WeightUpdate, check_transport
from raydprm.rollout.engine import Prompt, Response, RolloutError
from raydprm.rollout.sampling import SamplingParams
from raydprm.rollout.sync import StageReport, WeightManifest, WeightSyncError, apply_update, probe_sequence


class RolloutGenerator:
    """One engine replica (a plain class; :class:`RolloutPool` runs it as a Ray actor)."""

    def __init__(self, engine: str, model: str, engine_kwargs: Mapping[str, Any], replica: int = 0,
                 probe_length: int = 32) -> None:
        from raydprm.rollout.engine import make_engine

        self.replica = replica
        self.engine = make_engine(engine, model, **dict(engine_kwargs))
        self.weights_dir: str | None = model  # where the current weights are on disk (None after a sync)
        self._hf_copy: tuple[str, Any] | None = None  # (dir, transformers model) for vocab_logprobs
        self.probe_ids = probe_sequence(self.engine.vocab_size, probe_length)
        self.busy_s = 0.0  # seconds spent generating (for the share of a step spent outside compute)
        self.asleep: set[str] = set()  # what sleep() released and no call has woken yet
        self.swap_s = 0.0  # seconds spent sleeping and waking (colocated layout)

    def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "engine": self.engine.name, "pid": os.getpid(),
                "weight_version": self.engine.weight_version, "vocab_size": self.engine.vocab_size,
                "probe_ids": self.probe_ids, "busy_s": self.busy_s, "peak_rss_mb": peak_rss_mb(),
                "asleep": sorted(self.asleep), "swap_s": self.swap_s}

    def sleep(self) -> bool:
        """Give the device to a colocated learner: the engine drops its KV cache and moves its
        weights to host memory (a no-op on the CPU)."""
        if not self.asleep:
            t0 = time.perf_counter()
            self.engine.sleep()
            self.asleep = {"weights", "kv_cache"}
            self.swap_s += time.perf_counter() - t0
        return True

    def wake(self, tags: Sequence[str] = ("weights", "kv_cache")) -> bool:
        """Take back what :meth:`sleep` released, for ``tags`` (every call below wakes what it needs)."""
        todo = [t for t in tags if t in self.asleep]
        if todo:
            t0 = time.perf_counter()
            self.engine.wake_up(todo)
            self.asleep.difference_update(todo)
            self.swap_s += time.perf_counter() - t0
        return True

    def _check_verified(self) -> None:
        if self.engine.weight_version < 0:
            raise WeightSyncError(f"rollout replica {self.replica} holds weights that failed verification; "
                                  "sync again before generating")

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams, first_index: int = 0) -> list[Response]:
        self._check_verified()
        self.wake()
        t0 = time.perf_counter()
        try:
            return self.engine.generate(prompts, sampling, first_index)
        finally:
            self.busy_s += time.perf_counter() - t0

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        self.wake()
        return self.engine.score(sequences)

    def vocab_logprobs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[Any]:
        """Full-vocabulary log-probabilities (T_i, V) at the positions predicting ``seq_i[starts[i]:]``
        (an exact KL needs whole rows; an engine reports sampled tokens only). The transformers
        engine's own model answers; another engine's weights are read from the directory they were
        loaded from (a checkpoint, as evaluation loads them)."""
        import torch

        from raydprm.rollout.hf_engine import teacher_forced_vocab_logprobs

        self.wake()
        model = getattr(self.engine, "model", None)
        if not isinstance(model, torch.nn.Module):
            if self.weights_dir is None:
                raise RolloutError(f"rollout replica {self.replica} ({self.engine.name}) holds synced weights that are "
                                   "on no disk: full-vocabulary logprobs need a checkpoint (load_checkpoint)")
            if self._hf_copy is None or self._hf_copy[0] != self.weights_dir:
                from transformers import AutoModelForCausalLM

                from raydprm.models.tiny import resolve_model

                hf = AutoModelForCausalLM.from_pretrained(resolve_model(self.weights_dir)).eval()
                self._hf_copy = (self.weights_dir, hf)
            model = self._hf_copy[1]
        return teacher_forced_vocab_logprobs(model, sequences, starts, getattr(self.engine, "pad_id", 0) or 0)

    def vocab_logprobs_stored(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[Any]:
        """:meth:`vocab_logprobs`, each sequence's rows put into the object store: one ref per sequence
        (T x V floats each stay out of the driver, which passes the refs on to :meth:`kl_of`)."""
        return [ray.put(rows) for rows in self.vocab_logprobs(sequences, starts)]

    def kl_of(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], policy_rows: Sequence[Any]) -> list[float]:
        """Exact KL(policy || this model) of each response ``seq_i[starts[i]:]``: sum_t KL_t over the
        vocabulary, from the policy's rows (``policy_rows``: refs from :meth:`vocab_logprobs_stored`)
        and this model's own."""
        import torch

        from raydprm.core.kl import kl_from_logits

        mine = self.vocab_logprobs(sequences, starts)
        theirs = ray.get(list(policy_rows))
        return [float(kl_from_logits(torch.tensor(p), torch.tensor(q)).sum()) for p, q in zip(theirs, mine)]

    def load_checkpoint(self, model_dir: str, version: int | None = None) -> int:
        """Load the weights of an HF directory written by ``export_hf`` (same architecture) from
        disk into the engine, in this process (they never pass through the driver). ``version``:
        the engine's ``weight_version`` from now on (0: as an engine started on that directory;
        None keeps it). Returns the number of tensors loaded."""
        from pathlib import Path

        from safetensors.torch import load_file

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise RolloutError(f"'{model_dir}' holds no *.safetensors weights to load")
        n = self.engine.load_weights([item for f in files for item in load_file(str(f)).items()])
        self.weights_dir = str(model_dir)
        if version is not None:
            self.engine.weight_version = version
        return n

    def receive_weights(self, update: WeightUpdate, tolerance: float, timeout_s: float,
                        via: str = "load_weights") -> StageReport:
        """Fetch the update's buckets from the object store one at a time (the refs travel
        inside ``update``, so Ray does not resolve them all at once), verify, load, probe.
        Bounded by ``timeout_s``."""
        manifest = update.manifest
        deadline = time.monotonic() + timeout_s
        self.wake(("weights",))  # the KV cache stays released until the next generate

        def payloads():
            for ref in update.bucket_refs:
                left = deadline - time.monotonic()
                try:
                    yield ray.get(ref, timeout=max(left, 0.001))
                except ray.exceptions.GetTimeoutError:
                    raise WeightSyncError(f"weight sync v{manifest.version}: replica {self.replica} timed out "
                                          f"after {timeout_s:g} s fetching buckets from the object store") from None
                except ray.exceptions.ObjectLostError as e:  # OwnerDiedError among them: the publisher died
                    raise WeightsLost(f"weight sync v{manifest.version}: replica {self.replica} cannot fetch the "
                                      f"update's buckets: {type(e).__name__} (their owner, the learner rank that "
                                      "published them, or the node holding them is gone)") from None

        self.weights_dir = None  # the synced weights are on no disk
        rep = apply_update(self.engine, manifest, payloads(), self.probe_ids, update.expected_probe, tolerance,
                           via=via, deadline=deadline)
        rep.replica = self.replica
        return rep

    def mark_unverified(self) -> int:
        """Refuse to generate until a sync succeeds (a restart whose catch-up failed: the engine holds
        its initial weights, which are not the pool's version). Returns the weight version (-1)."""
        self.engine.weight_version = -1
        self.weights_dir = None
        return self.engine.weight_version

    def init_nccl(self, host: str, port: int, rank_offset: int, world_size: int, timeout_s: float) -> list[int]:
        if not hasattr(self.engine, "nccl_init"):
            raise WeightSyncError(f"weight transport nccl needs the vllm engine, not '{self.engine.name}'")
        return self.engine.nccl_init(host, port, rank_offset, world_size, timeout=timeout_s)

    def receive_nccl(self, manifest: WeightManifest, expected_probe: Sequence[float], tolerance: float,
                     timeout_s: float) -> StageReport:
        from raydprm.rollout.sync import check_probe

        t0 = time.perf_counter()
        self.engine.weight_version = -1
        self.weights_dir = None  # the synced weights are on no disk
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


@dataclass(frozen=True)
class PendingRollout:
    """Generation in flight (:meth:`RolloutPool.submit`): the calls made, to ask again after a restart."""

    per_rank: list[tuple[tuple[Any, ...], dict[str, Any]]]
    refs: list[Any]


class RolloutPool:
    """``rollout.num_replicas`` :class:`RolloutGenerator` actors behind one ordered interface."""

    def __init__(self, group: ActorGroup, cfg: Any) -> None:
        self.group, self.cfg = group, cfg
        self.default_sampling = SamplingParams.from_config(cfg)
        info = group.rank0(RolloutGenerator.info)
        self.probe_ids: list[int] = info["probe_ids"]
        self.vocab_size: int = info["vocab_size"]
        self.version = 0
        self.nccl_ready = False
        self._last_update: WeightUpdate | None = None
        # who can publish the pool's version again (sync_policy: the learner), should _last_update's buckets be lost
        self._source: Callable[[int], WeightUpdate] | None = None
        self._checkpoint: str | None = None  # the HF directory the replicas last loaded (load_checkpoint)
        self._replacing = False  # a sync or load_checkpoint is giving every replica new weights right now

    @classmethod
    def create(cls, cfg: Any, model: str | os.PathLike[str], *, dtype: str = "float32", placement: Placement | None = None,
               max_restarts: int = 0, startup_timeout_s: float = 600.0, sleep_mode: bool = False) -> RolloutPool:
        """Start the generators (rank ``i`` on bundle ``i`` of ``placement``) and wait until they are up.
        ``sleep_mode``: the engines can give their GPU memory back (:meth:`sleep`; vLLM's sleep mode)."""
        from raydprm.rollout.engine import engine_kwargs

        check_transport(cfg.weight_sync)
        kw = engine_kwargs(cfg, dtype) | ({"sleep_mode": True} if sleep_mode else {})
        model = os.fspath(model)  # a pathlib.Path (ensure_tiny_models' dirs) as a str
        group = ActorGroup(RolloutGenerator, cfg.num_replicas, role=f"rollout ({cfg.engine})",
                           init=lambda rank: ((cfg.engine, model, kw, rank, cfg.probe_length), {}),
                           resources={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}, placement=placement,
                           max_restarts=max_restarts, restart="actor")
        group.start(startup_timeout_s)
        pool = cls(group, cfg)
        group.on_restart = pool._catch_up
        return pool

    @property
    def num_replicas(self) -> int:
        return self.group.num_actors

    @property
    def restarts(self) -> int:
        return self.group.restarts

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | None = None,
                 timeout_s: float | None = None) -> list[Response]:
        """Responses for every prompt (``n`` per prompt), in prompt order, spread over replicas."""
        return self.collect(self.submit(prompts, sampling), timeout_s)

    def submit(self, prompts: Sequence[Prompt], sampling: SamplingParams | None = None) -> PendingRollout:
        """Start generating (one contiguous slice of ``prompts`` per replica); :meth:`collect` waits.
        Async rollout submits the next step's prompts before the learner trains on this step's."""
        sampling = sampling or self.default_sampling
        prompts = list(prompts)
        slices = [s for s in split_evenly(len(prompts), self.num_replicas) if s[1] > s[0]]
        per_rank = [((prompts[a:b], sampling, a), {}) for a, b in slices]
        return PendingRollout(per_rank, self.group.submit(RolloutGenerator.generate, per_rank))

    def collect(self, pending: PendingRollout, timeout_s: float | None = None) -> list[Response]:
        """The responses of :meth:`submit`, in prompt order. A replica that died meanwhile is
        restarted (with the last verified weights) and its slice generated again, exactly as a
        synchronous :meth:`generate` would (same weights, same sampling seed)."""
        parts = self.group.gather(RolloutGenerator.generate, pending.per_rank, pending.refs, timeout_s=timeout_s)
        return [r for part in parts for r in part]

    def score(self, sequences: Sequence[Sequence[int]], timeout_s: float | None = None) -> list[list[float]]:
        """Teacher-forced logprobs of every sequence under the replicas' current weights, in order."""
        seqs = [list(s) for s in sequences]
        slices = [s for s in split_evenly(len(seqs), self.num_replicas) if s[1] > s[0]]
        parts = self.group.each(RolloutGenerator.score, [((seqs[a:b],), {}) for a, b in slices], timeout_s=timeout_s)
        return [row for part in parts for row in part]

    def vocab_logprobs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
                       timeout_s: float | None = None) -> list[Any]:
        """Full-vocabulary log-probabilities (T_i, V) of every sequence from ``starts[i]`` on, in order
        (:meth:`RolloutGenerator.vocab_logprobs`)."""
        seqs, starts = [list(s) for s in sequences], list(starts)
        slices = [s for s in split_evenly(len(seqs), self.num_replicas) if s[1] > s[0]]
        parts = self.group.each(RolloutGenerator.vocab_logprobs, [((seqs[a:b], starts[a:b]), {}) for a, b in slices],
                                timeout_s=timeout_s)
        return [row for part in parts for row in part]

    def vocab_logprobs_stored(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
                              timeout_s: float | None = None) -> list[Any]:
        """One object-store ref per sequence to its full-vocabulary rows (they never reach the driver)."""
        seqs, starts = [list(s) for s in sequences], list(starts)
        slices = [s for s in split_evenly(len(seqs), self.num_replicas) if s[1] > s[0]]
        parts = self.group.each(RolloutGenerator.vocab_logprobs_stored,
                                [((seqs[a:b], starts[a:b]), {}) for a, b in slices], timeout_s=timeout_s)
        return [ref for part in parts for ref in part]

    def kl_of(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], policy_rows: Sequence[Any],
              timeout_s: float | None = None) -> list[float]:
        """Exact KL(policy || this pool's model) per response (:meth:`RolloutGenerator.kl_of`), in order."""
        seqs, starts, rows = [list(s) for s in sequences], list(starts), list(policy_rows)
        slices = [s for s in split_evenly(len(seqs), self.num_replicas) if s[1] > s[0]]
        parts = self.group.each(RolloutGenerator.kl_of, [((seqs[a:b], starts[a:b], rows[a:b]), {}) for a, b in slices],
                                timeout_s=timeout_s)
        return [k for part in parts for k in part]

    def sync_weights(self, update: WeightUpdate, timeout_s: float | None = None,
                     source: Callable[[int], WeightUpdate] | None = None) -> list[StageReport]:
        """Every replica pulls ``update`` from the object store, verifies and loads it.

        ``update`` comes from :func:`~raydprm.cluster.weight_sync.publish`, called where the
        weights live. Raises :class:`WeightSyncError` on a failed check or after ``timeout_s``
        (default ``rollout.sync_timeout_s``). ``source(version)`` publishes the current weights
        again as ``version`` (the learner's :meth:`~LearnerGroup.republish_weights`): a replica
        restarted after ``update``'s buckets were lost is caught up from it (:meth:`_catch_up`)."""
        if not isinstance(update, WeightUpdate):
            raise WeightSyncError(f"sync_weights takes a published WeightUpdate (weight_sync.publish), "
                                  f"got {type(update).__name__}")
        if update.version <= self.version:
            raise WeightSyncError(f"weight version {update.version} is not newer than the pool's current "
                                  f"version {self.version}")
        if self.cfg.weight_sync == "nccl":
            raise WeightSyncError("rollout.weight_sync=nccl syncs by broadcast from the learner (sync_policy)")
        timeout_s = timeout_s or self.cfg.sync_timeout_s
        t0 = time.perf_counter()
        self._replacing = True
        try:
            reports = self._receive(update, list(range(self.num_replicas)), timeout_s)
        finally:
            self._replacing = False
        for r in reports:
            r.extra["wall_s"] = time.perf_counter() - t0
        self.version, self._last_update, self._checkpoint, self._source = update.version, update, None, source
        return reports

    def _receive(self, update: WeightUpdate, ranks: list[int], timeout_s: float) -> list[StageReport]:
        via = TRANSPORTS[self.cfg.weight_sync]
        # replicas enforce timeout_s themselves; the group's deadline only catches a dead one
        reports = self.group.each(RolloutGenerator.receive_weights,
                                  [((update, self.cfg.probe_tolerance, timeout_s, via), {})] * len(ranks),
                                  ranks=ranks, timeout_s=timeout_s + 5.0)
        for r in reports:
            r.transport = self.cfg.weight_sync
        return reports

    def load_checkpoint(self, model_dir: str | os.PathLike[str], timeout_s: float | None = None,
                        version: int | None = None) -> None:
        """Every replica loads another policy of the same architecture from an HF directory (e.g.
        each trained policy in turn for evaluation, without starting new actors); a restarted
        replica loads it again. ``version=0``: the pool and its engines start counting weight
        versions again, as a pool started on ``model_dir`` (warm reuse for another training run,
        whose first sync is version 1); None keeps the current version."""
        self._replacing = True  # a replica restarted meanwhile is given the directory by the retried call, so
        try:  # the version is explicit: a restarted replica has none of its own to keep
            self.group.all(RolloutGenerator.load_checkpoint, str(model_dir), self.version if version is None else version,
                           timeout_s=timeout_s)
        finally:
            self._replacing = False
        self._last_update, self._checkpoint, self._source = None, str(model_dir), None
        if version is not None:
            self.version = version

    def use_config(self, cfg: Any) -> None:
        """Warm reuse for another arm: its ``rollout`` section's sampling defaults, timeouts and
        tolerances (the engines' constructor arguments must be the pool's: a new pool otherwise)."""
        self.cfg, self.default_sampling = cfg, SamplingParams.from_config(cfg)

    def _catch_up(self, group: ActorGroup, ranks: list[int]) -> None:
        """A restarted replica starts from the initial weights: give it the last verified update
        (or the checkpoint the pool last loaded).

        The update's buckets may be gone (:class:`WeightsLost`: their owner, the learner rank that
        published them, died, e.g. with the node it shared with this replica). Then the pool's
        source (the learner) publishes its current weights again as the same version, and they are
        taken only if their manifest digest equals the lost update's: the very weights of that
        version, verified by checksum and probe as any sync. A learner that died too restarts from
        its last checkpoint and :class:`~raydprm.cluster.group.GroupRestarted` goes to the caller,
        whose recovery publishes a newer version to every replica. Whatever fails here leaves the
        restarted replicas refusing to generate until a sync succeeds, never serving initial weights
        under the pool's version.

        A replica restarted in the middle of a sync (or ``load_checkpoint``) needs no catch-up: the
        retried call gives it the new weights (e.g. the learner restarted on a lost node, loaded
        its checkpoint and publishes; the generator that shared the node dies in that sync, and the
        old update's buckets died with the old learner). It is marked unverified until then."""
        if self._replacing:
            self._mark_unverified(group, ranks)
            return
        try:
            if self._checkpoint is not None and self._last_update is None:
                group.each(RolloutGenerator.load_checkpoint, [((self._checkpoint, self.version), {})] * len(ranks),
                           ranks=ranks)
            elif self.cfg.weight_sync == "nccl":
                self.nccl_ready = False  # the broadcast group must be formed again, with the new replica
            elif self._last_update is not None:
                try:
                    self._receive(self._last_update, ranks, self.cfg.sync_timeout_s)
                except WeightsLost as lost:
                    self._receive_again(ranks, lost)
        except BaseException:
            self._mark_unverified(group, ranks)
            raise

    def _receive_again(self, ranks: list[int], lost: WeightsLost) -> None:
        """Catch ``ranks`` up from the source's fresh copy of the pool's version (see :meth:`_catch_up`)."""
        old = self._last_update
        v = old.version
        if self._source is None:
            raise WeightSyncError(f"rollout replica(s) {ranks} restarted, but the buckets of weight version {v} are "
                                  f"lost ({lost}) and the pool knows no learner to publish them again; sync a newer "
                                  "version (sync_policy)") from None
        fresh = self._source(v)  # GroupRestarted when the learner died too: the caller publishes anew
        if fresh.version != v or fresh.manifest.digest != old.manifest.digest:
            raise WeightSyncError(f"rollout replica(s) {ranks} restarted, but the buckets of weight version {v} are "
                                  f"lost ({lost}) and the learner now holds other weights (v{fresh.version}, digest "
                                  f"{fresh.manifest.digest[:12]}, not {old.manifest.digest[:12]}): version {v} exists "
                                  "nowhere; they refuse to generate until the next sync") from None
        self._receive(fresh, ranks, self.cfg.sync_timeout_s)
        self._last_update = fresh  # live buckets for the next restart

    def _mark_unverified(self, group: ActorGroup, ranks: list[int]) -> None:
        """Best effort: a replica that died again is restarted (and caught up) by the next call anyway."""
        refs = group.submit(RolloutGenerator.mark_unverified, [((), {})] * len(ranks), ranks=ranks)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30)
        for r in ready:
            try:
                ray.get(r)
            except Exception:  # noqa: BLE001 - the replica died again: it is restarted on its next call
                pass

    # ------------------------------------------------------------------ nccl (driven by sync_policy)
    def join_nccl_async(self, host: str, port: int, world_size: int, timeout_s: float) -> list[Any]:
        tp = self.cfg.tensor_parallel_size
        return self.group.submit(RolloutGenerator.init_nccl,
                                 [((host, port, 1 + i * tp, world_size, timeout_s), {}) for i in range(self.num_replicas)])

    def finish_join_nccl(self, refs: list[Any]) -> None:
        self.group.wait(refs, "init_nccl", timeout_s=self.cfg.sync_timeout_s)
        self.nccl_ready = True

    def receive_broadcast_async(self, manifest: WeightManifest, expected_probe: Sequence[float],
                                timeout_s: float | None) -> list[Any]:
        if manifest.version <= self.version:
            raise WeightSyncError(f"weight version {manifest.version} is not newer than the pool's current "
                                  f"version {self.version}")
        args = (manifest, list(expected_probe), self.cfg.probe_tolerance, timeout_s or self.cfg.sync_timeout_s)
        return self.group.submit(RolloutGenerator.receive_nccl, [(args, {})] * self.num_replicas)

    def finish_receive(self, refs: list[Any], version: int, timeout_s: float | None) -> list[StageReport]:
        reports = self.group.wait(refs, f"weight sync v{version} over nccl",
                                  timeout_s=(timeout_s or self.cfg.sync_timeout_s) + 5.0)
        self.version = version
        return reports

    def sleep(self) -> None:
        """Every replica gives its device memory back (colocated learner's turn)."""
        self.group.all(RolloutGenerator.sleep)

    def wake(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        self.group.all(RolloutGenerator.wake, tuple(tags))

    def info(self) -> list[dict[str, Any]]:
        """Every replica's :meth:`RolloutGenerator.info`, in rank order."""
        return self.group.all(RolloutGenerator.info, timeout_s=60)

    def versions(self) -> list[int]:
        return [i["weight_version"] for i in self.info()]

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Shut engines down (frees vLLM's /dev/shm files), then kill the actors."""
        self.group.shutdown(RolloutGenerator.shutdown, timeout_s)


KL_TO_REFERENCE = ("the exact per-token KL(pi || pi_SFT) over the vocabulary, summed along each response "
                   "sampled from the policy (never negative)")


def sample_with_kl(pool: RolloutPool, ref: RolloutPool, prompts: Sequence[Prompt],
                   sampling: SamplingParams, chunk: int = 16) -> tuple[list[str], list[float]]:
    """One sample y per prompt x from ``pool`` and its KL to ``ref`` (:data:`KL_TO_REFERENCE`)::

        KL(x, y) = sum_t sum_v pi(v | x, y_<t) (log pi(v | x, y_<t) - log pi_ref(v | x, y_<t))

    (0 for an empty response). Unlike the one-sample estimate sum_t log pi(y_t) - log pi_ref(y_t),
    it is never negative and carries no sampling noise of the tokens y_t themselves. The policy's
    full-vocabulary rows (T x V floats per response) go from its generators to the reference's
    through the object store, ``chunk`` responses at a time; the driver gets the KLs only."""
    gen = pool.generate(prompts, sampling)
    kl = [0.0] * len(gen)
    todo = [i for i, r in enumerate(gen) if r.token_ids]
    for a in range(0, len(todo), chunk):
        idx = todo[a:a + chunk]
        seqs = [gen[i].prompt_ids + gen[i].token_ids for i in idx]
        starts = [len(gen[i].prompt_ids) for i in idx]
        for i, k in zip(idx, ref.kl_of(seqs, starts, pool.vocab_logprobs_stored(seqs, starts))):
            kl[i] = k  # sum_t KL_t
    return [r.text for r in gen], kl
