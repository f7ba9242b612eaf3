"""The DPRM as a Ray actor, and a pool of replicas.

:class:`RewardActor` is a thin shell over :class:`raydprm.models.dprm.DPRM`: it scores
batches of (prompt, response) into label distributions and the configured scalar reward
(``reward.scalar``: expected reward, CVaR or mean - kappa std) and loads new weights on
request (a checkpoint directory or a state dict). :class:`RewardPool` spreads a batch
over several replicas and concatenates their answers in order.

    pool = RewardPool.create(model_dir, scale, reward_cfg)        # reward.num_replicas actors
    out = pool.score(prompts, responses)     # {"distribution": (B, L), "reward": (B,), ...}
    pool.load_weights(new_dir)               # every replica, returns their versions
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from raydprm.core.label_scale import LabelScale

__all__ = ["RewardActor", "RewardPool", "ScoreBatch"]

ScoreBatch = dict[str, Any]  # distribution (B, L), expected/reward/cvar/entropy (B,) float32 arrays, version


@ray.remote
class RewardActor:
    """One DPRM replica. Methods are called directly (``actor.score.remote(...)``)."""

    def __init__(self, model_dir: str, scale: LabelScale | None, reward_cfg, device: str = "cpu",
                 dtype: str = "float32", num_threads: int = 0):
        import torch

        from raydprm.models.dprm import DPRM

        if num_threads:
            torch.set_num_threads(num_threads)
        self._cfg = reward_cfg
        self._device = device
        self._dtype = dtype
        self._scale = scale
        self._model = DPRM.load(model_dir, scale, dtype=dtype, device=device)
        self._model.eval()
        self._version = 0
        self._source = str(model_dir)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> ScoreBatch:
        """Distributions and scalar rewards of a batch (numpy arrays, row order kept)."""
        c = self._cfg
        out = self._model.score(list(prompts), list(responses), scalar=c.scalar, cvar_alpha=c.cvar_alpha,
                                kappa=c.kappa, batch_size=c.batch_size)
        return {"distribution": out.distribution.numpy(), "expected": out.expected.numpy(),
                "reward": out.scalar.numpy(), "cvar": out.cvar.numpy(), "entropy": out.entropy.numpy(),
                "version": self._version}

    def load_weights(self, model_dir: str) -> int:
        """Replace the model by the checkpoint in ``model_dir`` (its label scale must match); new version."""
        from raydprm.models.dprm import DPRM

        model = DPRM.load(model_dir, self._scale or self._model.scale, dtype=self._dtype, device=self._device)
        model.eval()
        self._model, self._source = model, str(model_dir)
        self._version += 1
        return self._version

    def load_state_dict(self, state_dict: dict[str, Any]) -> int:
        """Load a full DPRM state dict (backbone + head) in place (strict); new version."""
        self._model.load_state_dict(state_dict, strict=True)
        self._model.eval()
        self._source = "state_dict"
        self._version += 1
        return self._version

    def info(self) -> dict[str, Any]:
        return {"version": self._version, "source": self._source, "labels": list(self._model.scale.names),
                "scalar": self._cfg.scalar}


class RewardPool:
    """A batch split across replicas, answers concatenated in order."""

    def __init__(self, actors: Sequence[Any]):
        if not actors:
            raise ValueError("RewardPool needs at least one RewardActor")
        self.actors = list(actors)

    @classmethod
    def create(cls, model_dir: str, scale: LabelScale | None, reward_cfg, num_replicas: int | None = None,
               num_cpus: float | None = None, num_gpus: float = 0.0, device: str = "cpu",
               dtype: str = "float32") -> RewardPool:
        n = num_replicas or reward_cfg.num_replicas
        cpus = num_cpus if num_cpus is not None else reward_cfg.actor_num_cpus
        threads = max(1, int(cpus))
        actors = [RewardActor.options(num_cpus=cpus, num_gpus=num_gpus).remote(
            str(model_dir), scale, reward_cfg, device, dtype, threads) for _ in range(n)]
        return cls(actors)

    def score_async(self, prompts: Sequence[str], responses: Sequence[str]) -> list[ray.ObjectRef]:
        """Object refs of the per-replica chunks (contiguous, in order)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = len(prompts)
        k = min(len(self.actors), max(1, n))
        bounds = np.linspace(0, n, k + 1).astype(int)
        return [a.score.remote(list(prompts[s:e]), list(responses[s:e]))
                for a, s, e in zip(self.actors, bounds[:-1], bounds[1:])]

    def score(self, prompts: Sequence[str], responses: Sequence[str], timeout_s: float | None = None) -> ScoreBatch:
        parts = ray.get(self.score_async(prompts, responses), timeout=timeout_s)
        out = {k: np.concatenate([p[k] for p in parts]) for k in ("distribution", "expected", "reward", "cvar",
                                                                   "entropy")}
        out["version"] = min(p["version"] for p in parts)
        return out

    def load_weights(self, model_dir: str, timeout_s: float | None = None) -> list[int]:
        return ray.get([a.load_weights.remote(str(model_dir)) for a in self.actors], timeout=timeout_s)

    def load_state_dict(self, state_dict: dict[str, Any], timeout_s: float | None = None) -> list[int]:
        ref = ray.put(state_dict)  # one copy in the object store for every replica
        return ray.get([a.load_state_dict.remote(ref) for a in self.actors], timeout=timeout_s)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
