"""The Ray tasks of the pipeline's single-process stages: SFT of the policy on the simulated world, and
reward-model training (the run's reward models and a store crowd's gold judge). Each runs one function of
:mod:`raydprm.train` in a worker of its own; the driver (:mod:`raydprm.cluster.pipeline`) places it."""

from __future__ import annotations

from typing import Any

import ray

from raydprm.config import Config

__all__ = ["sft_task", "reward_task"]


@ray.remote(num_cpus=1)
def sft_task(cfg: Config, out_dir: str) -> dict[str, Any]:
    from raydprm.models.tiny import resolve_model
    from raydprm.sim.world import sft_corpus
    from raydprm.train.sft import sft

    res = sft(resolve_model(cfg.models.policy, cfg.models.cache_dir or None),
              sft_corpus(cfg.sft.n_examples, seed=cfg.run.seed), out_dir, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
              batch_size=cfg.sft.batch_size, max_length=cfg.sft.max_length, seed=cfg.run.seed, progress=False)
    return {"path": str(res.path), "first_loss": res.first_loss, "final_loss": res.final_loss, "steps": res.steps}


@ray.remote(num_cpus=1)
def reward_task(cfg: Config, data_dir: str, out_dir: str) -> dict[str, Any]:
    import datasets

    from raydprm.cluster.reward_train import train_reward_auto
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.models.tiny import resolve_model

    res = train_reward_auto(datasets.load_from_disk(data_dir), scale=label_scale_from_config(cfg.labels),
                            reward_cfg=cfg.reward, out_dir=out_dir, seed=cfg.run.seed, device="cpu", progress=False,
                            backbone=resolve_model(cfg.models.reward_backbone, cfg.models.cache_dir or None),
                            cpus_per_worker=cfg.reward.actor_num_cpus)
    return {k: v for k, v in res.to_dict().items() if k in ("best_dir", "best_metrics", "epochs", "seconds")}
