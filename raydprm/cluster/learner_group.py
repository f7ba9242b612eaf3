"""The PPO learner as a group of Ray actors forming one torch.distributed process group.

:class:`LearnerActor` is a thin typed shell over :class:`raydprm.train.learner.PPOLearner`
(one rank each; gloo on CPU, NCCL when the actor has a GPU); :class:`LearnerGroup` is the
driver-side handle that calls every rank's method directly and returns rank 0's answer::

    group = LearnerGroup.create(cfg.ppo, cfg.models.policy, seed=cfg.run.seed)
    metrics = group.update(batch)            # RolloutBatch -> {"ppo/policy_loss": ..., ...}
    weights = group.state_dict()             # policy LM weights (HF names) for weight sync
    group.save(ckpt_dir); group.load(ckpt_dir); group.export_hf(out_dir)
    group.shutdown()

Rendezvous: rank 0 picks its node IP and a free port; every rank then joins
``tcp://ip:port`` concurrently (``setup``), so no port is hard-coded and several groups can
share a node. Each actor reserves ``ppo.num_cpus_per_worker`` CPUs and
``ppo.num_gpus_per_worker`` GPUs, optionally inside a placement group bundle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from raydprm.config import PPOConfig
from raydprm.train.rollout_batch import RolloutBatch

__all__ = ["LearnerActor", "LearnerGroup"]


@ray.remote
class LearnerActor:
    """One learner rank. Construct, then ``setup(master_addr, master_port)`` on every rank at once."""

    def __init__(self, ppo: PPOConfig, policy: str, rank: int, seed: int = 0, device: str = "cpu",
                 dtype: str = "float32", trust_remote_code: bool = False, num_threads: int = 0):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self._args = dict(ppo=ppo, policy=policy, rank=rank, seed=seed, device=device, dtype=dtype,
                          trust_remote_code=trust_remote_code)
        self._learner = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port on it (asked of rank 0 for the rendezvous)."""
        from raydprm.train.ds_engine import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the learner (blocks until every rank joined)."""
        from raydprm.train.learner import PPOLearner

        self._learner = PPOLearner(master_addr=master_addr, master_port=master_port, **self._args)
        return os.getpid()

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        return self._learner.update(batch)

    def state_dict(self) -> dict[str, Any]:
        return self._learner.policy_state_dict()

    def full_state_dict(self) -> dict[str, Any]:
        return self._learner.full_state_dict()

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        return self._learner.score(sequences)

    def save(self, ckpt_dir: str) -> str:
        return str(self._learner.save(ckpt_dir))

    def load(self, ckpt_dir: str) -> None:
        self._learner.load(ckpt_dir)

    def export_hf(self, out_dir: str) -> str | None:
        out = self._learner.export_hf(out_dir)
        return None if out is None else str(out)

    def info(self) -> dict[str, Any]:
        """Rank, engine, step, beta, device, pid and this process's peak RSS (MiB)."""
        import resource

        lr = self._learner
        return {"rank": lr.rank, "world_size": lr.world_size, "engine": lr.engine.name, "step": lr.step,
                "kl_coef": lr.kl_coef, "device": str(lr.device), "pid": os.getpid(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def shutdown(self) -> None:
        from raydprm.train.ds_engine import destroy_process_group

        destroy_process_group()


def _get_all(refs: list[Any], timeout_s: float | None) -> list[Any]:
    """``ray.get`` of every ref in order, raising the first error as soon as it arrives."""
    pending = list(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            raise TimeoutError(f"{len(pending)} learner rank(s) did not answer within {timeout_s} s")
        ray.get(ready[0])  # raises the rank's exception now
    return ray.get(refs)


class LearnerGroup:
    """Driver-side handle of ``ppo.num_workers`` :class:`LearnerActor` ranks."""

    def __init__(self, actors: Sequence[Any], timeout_s: float | None = None):
        self.actors = list(actors)
        self.timeout_s = timeout_s

    @classmethod
    def create(cls, ppo: PPOConfig, policy: str, *, seed: int = 0, dtype: str = "float32",
               trust_remote_code: bool = False, placement_group: Any = None, bundle_offset: int = 0,
               timeout_s: float | None = None) -> LearnerGroup:
        """Start the actors (one per ``ppo.num_workers``) and wait until all joined the group.

        With ``placement_group``, rank ``i`` goes to bundle ``bundle_offset + i``.
        """
        gpu = ppo.num_gpus_per_worker > 0
        actors = []
        for rank in range(ppo.num_workers):
            opts: dict[str, Any] = {"num_cpus": ppo.num_cpus_per_worker, "num_gpus": ppo.num_gpus_per_worker}
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=bundle_offset + rank)
            actors.append(LearnerActor.options(**opts).remote(
                ppo, policy, rank, seed=seed, device="cuda" if gpu else "cpu", dtype=dtype,
                trust_remote_code=trust_remote_code, num_threads=max(1, int(ppo.num_cpus_per_worker))))
        group = cls(actors, timeout_s)
        try:
            addr, port = ray.get(actors[0].address.remote(), timeout=timeout_s or ppo.dist_timeout_s)
            group._all(lambda a: a.setup.remote(addr, port), timeout_s or ppo.dist_timeout_s)
        except BaseException:
            group.shutdown()
            raise
        return group

    def _all(self, call, timeout_s: float | None = None) -> list[Any]:
        """Call every rank; fail fast when one rank raises (its peers would otherwise sit
        in a collective until the process-group timeout)."""
        return _get_all([call(a) for a in self.actors], timeout_s or self.timeout_s)

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One PPO update on every rank (the batch is put in the object store once)."""
        ref = ray.put(batch)
        return self._all(lambda a: a.update.remote(ref))[0]

    def state_dict(self) -> dict[str, Any]:
        """The policy LM's full weights (HF names), as rank 0 has them after gathering."""
        return self._all(lambda a: a.state_dict.remote())[0]

    def full_state_dict(self) -> dict[str, Any]:
        """Actor-critic weights (policy, value head, critic)."""
        return self._all(lambda a: a.full_state_dict.remote())[0]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of ``sequences`` under the current policy (every rank
        computes: under ZeRO-3 the forward is collective; rank 0 answers)."""
        return self._all(lambda a: a.score.remote(sequences))[0]

    def save(self, ckpt_dir: str | os.PathLike[str]) -> str:
        d = str(Path(ckpt_dir).resolve())
        return self._all(lambda a: a.save.remote(d))[0]

    def load(self, ckpt_dir: str | os.PathLike[str]) -> None:
        d = str(Path(ckpt_dir).resolve())
        self._all(lambda a: a.load.remote(d))

    def export_hf(self, out_dir: str | os.PathLike[str]) -> str:
        d = str(Path(out_dir).resolve())
        return self._all(lambda a: a.export_hf.remote(d))[0]

    def info(self) -> list[dict[str, Any]]:
        return self._all(lambda a: a.info.remote())

    def shutdown(self) -> None:
        """Leave the process group and kill the actors (idempotent)."""
        if not self.actors:
            return
        try:
            ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
        except Exception:  # a dead or hung rank: kill regardless
            pass
        for a in self.actors:
            ray.kill(a)
        self.actors = []
