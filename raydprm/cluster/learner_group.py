"""The PPO learner as a group of Ray actors forming one torch.distributed process group.

:class:`LearnerActor` is a thin typed shell over :class:`raydprm.train.learner.PPOLearner`
(one rank each; gloo on CPU, NCCL when the actor has a GPU); :class:`LearnerGroup` is the
driver-side handle over an :class:`~raydprm.cluster.group.ActorGroup` of them that calls
every rank and returns rank 0's answer::

    group = LearnerGroup.create(cfg.ppo, cfg.models.policy, engine=cfg.engine, seed=cfg.run.seed)
    metrics = group.update(batch)            # RolloutBatch -> {"ppo/policy_loss": ..., ...}
    update = group.publish_weights(v, probe_ids, bucket_mb)   # rank 0 publishes; only refs come back
    group.save(ckpt_dir); group.load(ckpt_dir); group.export_hf(out_dir)
    group.reset(other_policy, seed=1)        # warm: the same processes become a fresh learner of another policy
    group.shutdown()

The policy's weights never come to the driver: rank 0 puts them into the object store
(or broadcasts them over NCCL) itself, see :mod:`raydprm.cluster.weight_sync`.

Restarts: the ranks share a torch process group, so a dead rank restarts the whole group
(``max_restarts``); the group rejoins and loads the last checkpoint saved through
:meth:`LearnerGroup.save`, and the call raises
:class:`~raydprm.cluster.group.GroupRestarted` so the driver redoes the steps since then.

Rendezvous: rank 0 picks its node IP and a free port; every rank then joins
``tcp://ip:port`` concurrently (``setup``), so no port is hard-coded and several groups can
share a node. Each actor reserves ``engine.num_cpus_per_worker`` CPUs and
``engine.num_gpus_per_worker`` GPUs, optionally inside a placement group bundle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from raydprm.cluster.group import ActorGroup, Placement, peak_rss_mb
from raydprm.cluster.weight_sync import NcclSender, WeightUpdate, publish
from raydprm.config import EngineConfig, EngineSection, PPOConfig
from raydprm.rollout.sync import WeightManifest, build_manifest
from raydprm.train.rollout_batch import RolloutBatch

__all__ = ["LearnerActor", "LearnerGroup"]


class LearnerActor:
    """One learner rank. Construct, then ``setup(master_addr, master_port)`` on every rank at once.

    ``build`` is the learner class of this group: :class:`~raydprm.train.learner.PPOLearner`
    (PPO) or :class:`~raydprm.train.direct_alignment.DirectAlignmentLearner` (DPO, IPO, SLiC,
    RRHF, crowd DPO); both take ``master_addr``/``master_port`` and the keyword arguments
    in ``learner_kwargs`` and offer update/save/load/export_hf."""

    def __init__(self, build: Callable[..., Any], learner_kwargs: dict[str, Any], num_threads: int = 0):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self._build, self._args = build, dict(learner_kwargs)
        self._learner = None
        self._master: tuple[str, int] | None = None  # the rendezvous setup joined (reset builds again on it)
        self._offloaded: set[str] = set()  # parts offload() moved that no call has needed since
        self._nccl: NcclSender | None = None
        self._pending_broadcast: dict[str, Any] | None = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port on it (asked of rank 0 for the rendezvous)."""
        from raydprm.train.ds_engine import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the learner (blocks until every rank joined)."""
        self._master = (master_addr, master_port)
        self._learner = self._build(master_addr=master_addr, master_port=master_port, **self._args)
        return os.getpid()

    def reset(self, overrides: dict[str, Any]) -> int:
        """Become the learner a fresh rank would be, built with ``overrides`` of its keyword
        arguments (``policy``, ``seed``, ``ppo``/``align``, ...): model, reference, optimizer,
        KL controller, step and every RNG are built afresh exactly as :meth:`setup` builds them
        (which seeds first); only the process and its torch.distributed group stay. Collective
        under DeepSpeed: every rank calls it. Returns this process's pid."""
        import gc

        import torch

        if self._master is None:
            raise RuntimeError("reset() before setup(): this rank has no learner to replace")
        self._learner, self._pending_broadcast = None, None
        self._offloaded.clear()
        gc.collect()  # the old model and optimizer go before the new ones load
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._args = {**self._args, **overrides}
        return self.setup(*self._master)

    def _use(self, needs: Sequence[str] = ("optimizer", "params")) -> Any:
        """The learner, with what a call ``needs`` back on its device (every call that computes
        uses this; publishing needs the parameters only, so the optimizer state stays away)."""
        if self._offloaded.intersection(needs):
            self._learner.reload()
            self._offloaded.clear()
        return self._learner

    def offload(self, parts: Sequence[str] = ("optimizer", "params")) -> list[str]:
        """Colocated layout: give the GPU to the rollout engine (what moved; nothing on the CPU or
        for a learner without offload, e.g. the direct-alignment one)."""
        off = getattr(self._learner, "offload", None)
        if off is None:
            return []
        self._offloaded.update(parts)
        return off(tuple(parts))

    def update(self, batch: RolloutBatch | Any) -> dict[str, float]:
        return self._use().update(batch)

    def evaluate(self, batch: Any) -> dict[str, float]:
        return self._use().evaluate(batch)

    def publish_weights(self, version: int, probe_ids: Sequence[int], bucket_mb: int,
                        raw: bool = True) -> WeightUpdate | None:
        """Gather the policy (collective under ZeRO-3: every rank calls this) and, on rank 0,
        put it into the object store as a verified update; other ranks return None."""
        state = self._use(("params",)).policy_state_dict()
        probe = self._learner.score([list(probe_ids)])[0]
        if self._learner.rank != 0:
            return None
        t0 = time.perf_counter()
        update = publish(state, version, probe, bucket_mb, raw)
        update.publish_s = time.perf_counter() - t0
        return update

    def republish_weights(self, version: int, probe_ids: Sequence[int], bucket_mb: int,
                          raw: bool = True) -> WeightUpdate | None:
        """:meth:`publish_weights` again between steps (a restarted generator's catch-up whose copy of
        the update was lost), leaving offloaded what was offloaded (colocated: the generators' turn)."""
        was = tuple(sorted(self._offloaded))
        update = self.publish_weights(version, probe_ids, bucket_mb, raw)
        if was:
            self.offload(was)
        return update

    def weight_group_address(self) -> tuple[str, int]:
        return self.address()

    def setup_weight_group(self, host: str, port: int, world_size: int) -> None:
        if self._learner.rank == 0:
            self._nccl = NcclSender()
            self._nccl.setup(host, port, world_size)

    def prepare_broadcast(self, version: int, probe_ids: Sequence[int]) -> tuple[WeightManifest, list[float]] | None:
        """Gather the policy (every rank) and keep it on rank 0 for :meth:`broadcast_weights`."""
        state = self._use(("params",)).policy_state_dict()
        probe = self._learner.score([list(probe_ids)])[0]
        if self._learner.rank != 0:
            return None
        self._pending_broadcast = state
        return build_manifest(state, version), probe

    def broadcast_weights(self) -> None:
        if self._learner.rank == 0:
            state, self._pending_broadcast = self._pending_broadcast, None
            self._nccl.send(state)

    def policy_state_dict(self) -> dict[str, Any]:
        return self._use(("params",)).policy_state_dict()

    def full_state_dict(self) -> dict[str, Any]:
        return self._use(("params",)).full_state_dict()

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        return self._use(("params",)).score(sequences)

    def save(self, ckpt_dir: str) -> str:
        return str(self._use().save(ckpt_dir))

    def load(self, ckpt_dir: str) -> None:
        self._use().load(ckpt_dir)

    def export_hf(self, out_dir: str) -> str | None:
        out = self._use().export_hf(out_dir)
        return None if out is None else str(out)

    def info(self) -> dict[str, Any]:
        """Rank, engine, step, beta, device, pid and this process's peak RSS (MiB)."""
        lr = self._learner
        return {"rank": lr.rank, "world_size": lr.world_size, "engine": lr.engine.name, "step": lr.step,
                "kl_coef": getattr(lr, "kl_coef", None), "device": str(getattr(lr, "device", "")), "pid": os.getpid(),
                "peak_rss_mb": peak_rss_mb(), "offloaded": sorted(self._offloaded)}

    def shutdown(self) -> None:
        from raydprm.train.ds_engine import destroy_process_group

        destroy_process_group()


class LearnerGroup:
    """Driver-side handle of ``engine.num_workers`` :class:`LearnerActor` ranks."""

    def __init__(self, group: ActorGroup, spec: dict[str, Any] | None = None) -> None:
        self.group = group
        self.last_checkpoint: str | None = None
        # {"kw": the learner's keyword arguments, "res": its config section}: what a (re)started rank
        # builds; reset() changes it, so a rank restarted after a reset builds the reset learner
        self._spec = spec if spec is not None else {}

    @classmethod
    def create(cls, ppo: PPOConfig, policy: str | os.PathLike[str], *, engine: EngineSection | None = None,
               seed: int = 0, dtype: str = "float32",
               trust_remote_code: bool = False, placement: Placement | None = None, max_restarts: int = 0,
               timeout_s: float | None = None) -> LearnerGroup:
        """PPO ranks (rank ``i`` on bundle ``i`` of ``placement``), started and joined into one group."""
        from raydprm.train.learner import PPOLearner

        engine = engine or EngineSection()
        gpu = engine.num_gpus_per_worker > 0
        kw = dict(ppo=ppo, policy=os.fspath(policy), engine=engine, seed=seed, device="cuda" if gpu else "cpu",
                  dtype=dtype,
                  trust_remote_code=trust_remote_code)
        return cls._start(PPOLearner, kw, engine, placement, max_restarts, timeout_s, role="learner")

    @classmethod
    def create_aligner(cls, align: Any, policy: str | os.PathLike[str], *, engine: EngineSection | None = None,
                       seed: int = 0,
                       placement: Placement | None = None,
                       max_restarts: int = 0, timeout_s: float | None = None) -> LearnerGroup:
        """Direct-alignment ranks (``align.algo``: dpo, ipo, slic, slic_rso, rrhf, crowd_dpo) on the same
        actor group, DeepSpeed engine, checkpoints and restart policy as PPO; ``update`` takes a
        :class:`~raydprm.train.direct_alignment.PairBatch`."""
        from raydprm.train.direct_alignment import DirectAlignmentLearner

        engine = engine or EngineSection()
        EngineConfig.of(engine, align)  # engine.* against align.*: refused here, before any rank starts
        kw = dict(align=align, policy=os.fspath(policy), engine=engine, seed=seed,
                  device="cuda" if engine.num_gpus_per_worker > 0 else "cpu")
        return cls._start(DirectAlignmentLearner, kw, engine, placement, max_restarts, timeout_s, role="aligner")

    @classmethod
    def _start(cls, build: Callable[..., Any], kw: dict[str, Any], res: Any, placement: Placement | None,
               max_restarts: int, timeout_s: float | None, role: str) -> LearnerGroup:
        threads = max(1, int(res.num_cpus_per_worker))
        spec = {"kw": dict(kw), "res": res}
        group = ActorGroup(LearnerActor, res.num_workers, role=role,
                           init=lambda rank: ((build, {**spec["kw"], "rank": rank}, threads), {}),
                           resources={"num_cpus": res.num_cpus_per_worker, "num_gpus": res.num_gpus_per_worker},
                           placement=placement, max_restarts=max_restarts, restart="group",
                           timeout_s=timeout_s or res.dist_timeout_s)
        learner = cls(group, spec)
        group.on_restart = learner._rejoin
        group.start()
        try:
            learner._rendezvous()
        except BaseException:
            group.shutdown()
            raise
        return learner

    def _rendezvous(self) -> None:
        """Rank 0 picks its node IP and a free port; every rank joins ``tcp://ip:port`` at once."""
        addr, port = self.group.rank0(LearnerActor.address)
        self.group.all(LearnerActor.setup, addr, port)

    def _rejoin(self, group: ActorGroup, ranks: list[int]) -> None:
        """After a whole-group restart: form the process group again and load the last checkpoint."""
        self._rendezvous()
        if self.last_checkpoint is not None:
            self.group.all(LearnerActor.load, self.last_checkpoint)

    def reset(self, policy: str, *, seed: int, **overrides: Any) -> list[int]:
        """Warm reuse: every rank becomes, in its own process, the learner that :meth:`create` (or
        :meth:`create_aligner`) would start on ``policy`` with ``seed`` and ``overrides`` of the
        other arguments (``ppo=``/``align=``, ``engine=`` a section with the same workers and resources, ``dtype=``):
        fresh policy, reference, optimizer, KL controller, step 0 and seeded RNGs, bit for bit.
        The last checkpoint is forgotten and a rank restarted from now on builds the reset learner.
        Returns the ranks' pids (unchanged: no process is started)."""
        from raydprm.errors import RaydprmError

        if "kw" not in self._spec:
            raise RaydprmError("only a learner group started by LearnerGroup.create/create_aligner can be reset")
        res = overrides.get("engine")
        if res is not None:
            old = self._spec["res"]
            keep = ("num_workers", "num_cpus_per_worker", "num_gpus_per_worker")
            if any(getattr(res, k) != getattr(old, k) for k in keep):
                raise RaydprmError("a learner group resets only to the same engine.num_workers/num_cpus_per_worker/"
                                   f"num_gpus_per_worker ({', '.join(str(getattr(old, k)) for k in keep)}); "
                                   f"another shape needs a new group")
            self._spec["res"] = res
        kw = {"policy": policy, "seed": seed, **overrides}
        self._spec["kw"] = {**self._spec["kw"], **kw}
        self.last_checkpoint = None
        return self.group.all(LearnerActor.reset, kw)

    @property
    def world_size(self) -> int:
        return self.group.num_actors

    @property
    def restarts(self) -> int:
        return self.group.restarts

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One PPO update on every rank (the batch is put in the object store once)."""
        ref = ray.put(batch)
        return self.group.all(LearnerActor.update, ref)[0]

    def evaluate(self, batch: Any) -> dict[str, float]:
        """The aligner's loss on ``batch`` without a step (every rank computes; rank 0 answers)."""
        return self.group.all(LearnerActor.evaluate, ray.put(batch))[0]

    def publish_weights(self, version: int, probe_ids: Sequence[int], bucket_mb: int,
                        raw: bool = True) -> WeightUpdate:
        """Rank 0 publishes the current policy into the object store; returns the handle only."""
        return self.group.all(LearnerActor.publish_weights, version, list(probe_ids), bucket_mb, raw)[0]

    def republish_weights(self, version: int, probe_ids: Sequence[int], bucket_mb: int,
                          raw: bool = True) -> WeightUpdate:
        """Publish the current policy again as ``version`` (fresh buckets, owned by the live rank 0),
        for generators whose copy of that version's update was lost with its owner; offloaded parts
        stay offloaded. The caller checks that the weights are still those of ``version`` (the
        manifest's digest): a learner that trained or restarted since holds another policy. A dead
        rank restarts the group from its last checkpoint (:class:`GroupRestarted`), as any call."""
        return self.group.all(LearnerActor.republish_weights, version, list(probe_ids), bucket_mb, raw)[0]

    def weight_group_address(self) -> tuple[str, int]:
        return self.group.rank0(LearnerActor.weight_group_address)

    def setup_weight_group(self, host: str, port: int, world_size: int) -> None:
        self.group.rank0(LearnerActor.setup_weight_group, host, port, world_size)

    def prepare_broadcast(self, version: int, probe_ids: Sequence[int]) -> tuple[WeightManifest, list[float]]:
        return self.group.all(LearnerActor.prepare_broadcast, version, list(probe_ids))[0]

    def broadcast_weights(self) -> None:
        self.group.rank0(LearnerActor.broadcast_weights)

    def policy_state_dict(self) -> dict[str, Any]:
        """The policy's weights, gathered into this process: for tools that sample in the
        driver (``raydprm learner toy``); the RLHF loop uses :meth:`publish_weights`."""
        return self.group.all(LearnerActor.policy_state_dict)[0]

    def full_state_dict(self) -> dict[str, Any]:
        """Actor-critic weights (policy, value head, critic); for tests and exports, not the PPO loop."""
        return self.group.all(LearnerActor.full_state_dict)[0]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of ``sequences`` under the current policy (every rank
        computes: under ZeRO-3 the forward is collective; rank 0 answers)."""
        return self.group.all(LearnerActor.score, sequences)[0]

    def save(self, ckpt_dir: str | os.PathLike[str]) -> str:
        d = str(Path(ckpt_dir).resolve())
        out = self.group.all(LearnerActor.save, d)[0]
        self.last_checkpoint = d
        return out

    def load(self, ckpt_dir: str | os.PathLike[str]) -> None:
        d = str(Path(ckpt_dir).resolve())
        self.group.all(LearnerActor.load, d)
        self.last_checkpoint = d

    def export_hf(self, out_dir: str | os.PathLike[str]) -> str:
        d = str(Path(out_dir).resolve())
        return self.group.all(LearnerActor.export_hf, d)[0]

    def offload(self, parts: Sequence[str] = ("optimizer", "params")) -> list[str]:
        """Every rank moves ``parts`` to host memory (colocated layout); the next call that computes
        brings them back. Returns what rank 0 moved (nothing on the CPU)."""
        return self.group.all(LearnerActor.offload, tuple(parts))[0]

    def info(self) -> list[dict[str, Any]]:
        return self.group.all(LearnerActor.info)

    def shutdown(self) -> None:
        """Leave the process group and kill the actors (idempotent)."""
        self.group.shutdown(LearnerActor.shutdown)
