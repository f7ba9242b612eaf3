"""The DPRM as a Ray actor, and a pool of replicas.

:class:`RewardActor` is a thin shell over :class:`raydprm.models.dprm.DPRM`: it scores
batches of (prompt, response) into label distributions and the configured scalar reward
(``reward.scalar``: expected reward, CVaR or mean - kappa std) and loads new weights on
request (a checkpoint directory or a state dict). :class:`RewardPool` spreads a batch
over several replicas and concatenates their answers in order.

    pool = RewardPool.create(model_dir, scale, reward_cfg)        # reward.num_replicas actors
    out = pool.score(prompts, responses)     # {"distribution": (B, L), "reward": (B,), ...}
    pool.load_weights(new_dir)               # every replica, returns their versions
    pool.refresh(store_export, out_dir, reward_cfg, seed)   # fine-tune on replica 0, every replica loads it

A group-conditioned DPRM (``reward.conditioning = group``) also returns each group's expected
reward ``group_expected`` (B, G); with ``reward.objective`` other than ``population`` the scalar
``reward`` is that objective's per-sample policy-gradient reward (Eq. G1 of
:mod:`raydprm.core.group_objectives`), R(x) = sum_g df/dJ_g r_g(x) with J estimated on the
whole batch (the pool scalarises after joining its replicas' parts).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from raydprm.cluster.group import ActorGroup, Placement, peak_rss_mb
from raydprm.core.label_scale import LabelScale

__all__ = ["RewardActor", "RewardPool", "ScoreBatch", "objective_rewards"]

ScoreBatch = dict[str, Any]  # distribution (B, L), expected/reward/cvar/entropy (B,) float32 arrays, version
# (+ group_expected (B, G), group_weights (G,), groups, r_min from a group-conditioned DPRM)


def objective_rewards(group_expected: np.ndarray, group_weights: Sequence[float], reward_cfg,
                      r_min: float) -> np.ndarray:
    """Per-sample rewards (B,) of ``reward.objective`` from each group's E[r] (B, G) under the
    group weights (G,), J estimated on this batch (``raydprm.core.group_objectives.scalarise``)."""
    import torch

    from raydprm.core.group_objectives import scalarise

    params = {"worst_group": {"tau": reward_cfg.objective_tau}, "cvar_groups": {"alpha": reward_cfg.objective_alpha},
              "nash": {"r_min": r_min}, "mean_minus_std": {"kappa": reward_cfg.objective_kappa}
              }.get(reward_cfg.objective, {})
    # normalise: the coefficients sum to 1 (already so except for nash), so R stays in the label scale's units
    # and the KL trade-off (ppo.beta) means the same under every objective
    R, _ = scalarise(torch.as_tensor(np.asarray(group_expected, dtype=np.float64)),
                     torch.as_tensor(np.asarray(group_weights, dtype=np.float64)), reward_cfg.objective,
                     normalise=True, **params)
    return R.numpy().astype(np.float32)


class RewardActor:
    """One reward-model replica (a plain class; :class:`RewardPool` runs it as a Ray actor): a DPRM,
    or a Bradley-Terry model (the paper's BT-RM baseline), whichever kind ``model_dir`` holds. A BT
    model predicts no label distribution: its ``reward`` and ``expected`` are its scalar score,
    ``cvar`` the same, ``distribution`` and ``entropy`` NaN."""

    def __init__(self, model_dir: str, scale: LabelScale | None, reward_cfg, device: str = "cpu",
                 dtype: str = "float32", num_threads: int = 0):
        import torch

        from raydprm.models.reward_models import load_reward_model

        if num_threads:
            torch.set_num_threads(num_threads)
        self._cfg = reward_cfg
        self._device = device
        self._dtype = dtype
        self._scale = scale
        self._model = load_reward_model(model_dir, scale, dtype=dtype, device=device)
        self._model.eval()
        self._version = 0
        self._source = str(model_dir)
        self._busy_s = 0.0

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> ScoreBatch:
        """Distributions and scalar rewards of a batch (numpy arrays, row order kept)."""
        c = self._cfg
        t0 = time.perf_counter()
        if self._model.kind == "bt":  # one scalar per pair, no label distribution
            r = self._model.score(list(prompts), list(responses), batch_size=c.batch_size).numpy()
            self._busy_s += time.perf_counter() - t0
            nan = np.full((len(r), len(self._model.scale.names)), np.nan, dtype=np.float32)
            return {"distribution": nan, "expected": r, "reward": r, "cvar": r.copy(),
                    "entropy": np.full(len(r), np.nan, dtype=np.float32), "version": self._version}
        kw = {}
        if self._model.kind == "group_dprm":
            kw["weights"] = dict(getattr(c, "group_weights", {}) or {}) or None
        out = self._model.score(list(prompts), list(responses), scalar=c.scalar, cvar_alpha=c.cvar_alpha,
                                kappa=c.kappa, batch_size=c.batch_size, **kw)
        batch = {"distribution": out.distribution.numpy(), "expected": out.expected.numpy(),
                 "reward": out.scalar.numpy(), "cvar": out.cvar.numpy(), "entropy": out.entropy.numpy(),
                 "version": self._version}
        if out.groups is not None:
            batch.update(group_expected=out.group_expected.numpy(), groups=list(out.groups),
                         group_weights=self._model.weight_vector(kw["weights"]).tolist(),
                         r_min=float(min(self._model.scale.rewards)))
            if getattr(c, "objective", "population") != "population" and len(batch["reward"]):
                batch["reward"] = objective_rewards(batch["group_expected"], batch["group_weights"], c, batch["r_min"])
        elif getattr(c, "objective", "population") != "population":
            raise ValueError(f"reward.objective = {c.objective!r} needs a group-conditioned DPRM; "
                             f"'{self._source}' holds a '{self._model.kind}' model")
        self._busy_s += time.perf_counter() - t0
        return batch

    def load_weights(self, model_dir: str) -> int:
        """Replace the model by the checkpoint in ``model_dir`` (its label scale must match); new version."""
        from raydprm.models.reward_models import load_reward_model

        model = load_reward_model(model_dir, self._scale or self._model.scale, dtype=self._dtype, device=self._device)
        model.eval()
        self._model, self._source = model, str(model_dir)
        self._version += 1
        return self._version

    def reload(self, model_dir: str, scale: LabelScale | None, reward_cfg, device: str = "cpu",
               dtype: str = "float32", num_threads: int = 0) -> int:
        """Warm reuse (another arm of a comparison): become, in this process, the replica that
        ``__init__`` builds on these arguments: a reward model of any kind, another label scale and
        ``reward.*`` section, version 0. Returns this process's pid."""
        self.__init__(model_dir, scale, reward_cfg, device, dtype, num_threads)
        return os.getpid()

    def load_state_dict(self, state_dict: dict[str, Any]) -> int:
        """Load a full DPRM state dict (backbone + head) in place (strict); new version."""
        self._model.load_state_dict(state_dict, strict=True)
        self._model.eval()
        self._source = "state_dict"
        self._version += 1
        return self._version

    def fine_tune(self, data, out_dir: str, reward_cfg, seed: int) -> dict[str, Any]:
        """Train a copy of the served model on ``data`` (a store export) with ``reward_cfg`` and
        write it under ``out_dir`` (``best``: the copy that scored best on the held-out split);
        the served model is unchanged until :meth:`load_weights`. Runs on this actor's own
        CPUs, so a refresh needs no resources beyond the reward role's."""
        from raydprm.train.reward import train_reward

        res = train_reward(data, scale=self._model.scale, reward_cfg=reward_cfg, backbone="", out_dir=out_dir,
                           seed=seed, device=self._device, dtype=self._dtype, init=self._model, tb_dir=None,
                           progress=False)
        return {"best_dir": str(res.best_dir), "best_metrics": res.best_metrics, "steps": res.steps,
                "epochs": res.epochs, "items": len(data), "seconds": res.seconds}

    def info(self) -> dict[str, Any]:
        return {"version": self._version, "source": self._source, "pid": os.getpid(), "labels": list(self._model.scale.names),
                "scalar": self._cfg.scalar, "busy_s": self._busy_s, "peak_rss_mb": peak_rss_mb()}


class RewardPool:
    """``reward.num_replicas`` :class:`RewardActor` replicas: a batch split across them, answers in order.

    A replica that dies is restarted (``max_restarts``) on the checkpoint the pool last loaded."""

    def __init__(self, group: ActorGroup, reward_cfg=None) -> None:
        self.group = group
        self.reward_cfg = reward_cfg  # reward.objective is applied to a whole batch (score)
        self._source: tuple[str, Any] | None = None  # what the replicas were last told to load

    @classmethod
    def create(cls, model_dir: str, scale: LabelScale | None, reward_cfg, *, num_replicas: int | None = None,
               num_cpus: float | None = None, num_gpus: float = 0.0, device: str = "cpu", dtype: str = "float32",
               placement: Placement | None = None, max_restarts: int = 0,
               startup_timeout_s: float | None = 600.0) -> RewardPool:
        n = num_replicas or reward_cfg.num_replicas
        cpus = num_cpus if num_cpus is not None else reward_cfg.actor_num_cpus
        threads = max(1, int(cpus))
        group = ActorGroup(RewardActor, n, role="reward",
                           init=lambda rank: ((str(model_dir), scale, reward_cfg, device, dtype, threads), {}),
                           resources={"num_cpus": cpus, "num_gpus": num_gpus}, placement=placement,
                           max_restarts=max_restarts, restart="actor")
        group.start(startup_timeout_s)
        pool = cls(group, reward_cfg)
        group.on_restart = pool._catch_up
        return pool

    @property
    def restarts(self) -> int:
        return self.group.restarts

    def score(self, prompts: Sequence[str], responses: Sequence[str], timeout_s: float | None = None) -> ScoreBatch:
        """Distributions and rewards of every (prompt, response), split contiguously over replicas."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = len(prompts)
        k = min(self.group.num_actors, max(1, n))
        bounds = np.linspace(0, n, k + 1).astype(int)
        parts = self.group.each(RewardActor.score, [((list(prompts[s:e]), list(responses[s:e])), {})
                                                    for s, e in zip(bounds[:-1], bounds[1:])], timeout_s=timeout_s)
        out = {k: np.concatenate([p[k] for p in parts]) for k in ("distribution", "expected", "reward", "cvar",
                                                                   "entropy")}
        out["version"] = min(p["version"] for p in parts)
        if "group_expected" in parts[0]:
            out["group_expected"] = np.concatenate([p["group_expected"] for p in parts])
            out.update({k: parts[0][k] for k in ("groups", "group_weights", "r_min")})
            c = self.reward_cfg
            if len(parts) > 1 and c is not None and getattr(c, "objective", "population") != "population":
                out["reward"] = objective_rewards(out["group_expected"], out["group_weights"], c, out["r_min"])
        return out

    def load_weights(self, model_dir: str, timeout_s: float | None = None) -> list[int]:
        """Every replica loads the checkpoint in ``model_dir`` (a refresh of the DPRM)."""
        self._source = ("dir", str(model_dir))
        return self.group.all(RewardActor.load_weights, str(model_dir), timeout_s=timeout_s)

    def reload(self, model_dir: str, scale: LabelScale | None, reward_cfg, timeout_s: float | None = None) -> list[int]:
        """Warm reuse: every replica becomes, in its own process, the one :meth:`create` would start on
        ``model_dir`` (any kind of reward model), ``scale`` and ``reward_cfg`` (same replicas, CPUs,
        device and dtype); a replica restarted from now on starts on them too. Returns the pids."""
        (_, _, _, *rest), kw = self.group._init(0)  # device, dtype, threads: the pool's own
        args = (str(model_dir), scale, reward_cfg, *rest)
        self.group._init = lambda rank: (args, kw)
        self.reward_cfg, self._source = reward_cfg, None
        return self.group.all(RewardActor.reload, *args, timeout_s=timeout_s)

    def refresh(self, data, out_dir: str, reward_cfg, seed: int, timeout_s: float | None = None) -> dict[str, Any]:
        """Fine-tune the served model on ``data`` (replica 0 trains, see :meth:`RewardActor.fine_tune`),
        then every replica loads the result. Returns the training summary and ``versions`` (one
        per replica); a RuntimeError unless every replica now serves the new model at a newer version."""
        before = [i["version"] for i in self.info()]
        out = self.group.rank0(RewardActor.fine_tune, data, str(out_dir), reward_cfg, seed, timeout_s=timeout_s)
        self.load_weights(out["best_dir"], timeout_s=timeout_s)
        after = self.info()
        versions = [i["version"] for i in after]
        # a restarted replica counts its versions from 0 again: what must agree is the source
        if any(i["source"] != out["best_dir"] for i in after) or any(a <= b for a, b in zip(versions, before)):
            raise RuntimeError(f"reward refresh: replicas hold {[i['source'] for i in after]} at versions {versions} "
                               f"(before: {before}) after loading {out['best_dir']}")
        return {**out, "versions": versions}

    def load_state_dict(self, state_dict: dict[str, Any], timeout_s: float | None = None) -> list[int]:
        ref = ray.put(state_dict)  # one copy in the object store for every replica
        self._source = ("ref", ref)
        return self.group.all(RewardActor.load_state_dict, ref, timeout_s=timeout_s)

    def _catch_up(self, group: ActorGroup, ranks: list[int]) -> None:
        """A restarted replica loads what the others were last told to: a directory on disk, or the
        state dict :meth:`load_state_dict` put into the object store from the driver, whose
        objects live as long as the driver (unlike the learner's weight buckets, they cannot die
        with a worker node)."""
        if self._source is None:
            return
        kind, what = self._source
        method = RewardActor.load_weights if kind == "dir" else RewardActor.load_state_dict
        group.each(method, [((what,), {})] * len(ranks), ranks=ranks)

    def info(self) -> list[dict[str, Any]]:
        return self.group.all(RewardActor.info)

    def shutdown(self) -> None:
        self.group.shutdown()
