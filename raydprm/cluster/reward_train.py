"""Multi-worker reward-model training through Ray Train (``TorchTrainer``; gloo on CPU,
NCCL on GPU).

Each worker runs :func:`raydprm.train.reward.train_reward` unchanged: Ray Train sets up
the ``torch.distributed`` process group, the trainer wraps the model in DDP and takes its
slice of every global batch. Every worker reports each evaluation (``ray.train.report``
is a barrier, so all ranks call it the same number of times); rank 0 attaches the best
checkpoint. Rank 0 also writes ``<out_dir>/{best,last,result.json}`` like a single-process
run: on a multi-node cluster ``out_dir`` must be on shared storage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.train.reward import RewardTrainResult, train_reward
from raydprm.train.reward_data import RewardExamples

__all__ = ["train_reward_distributed", "train_reward_auto"]


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import torch

    if config.get("num_threads"):
        torch.set_num_threads(config["num_threads"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()

    def report(record: dict[str, Any]) -> None:
        metrics = {"step": record["step"], "epoch": record["epoch"], "train_loss": record["train_loss"],
                   **{k: v for k, v in record["eval"].items() if isinstance(v, (int, float))}}
        ckpt = None
        if rank == 0 and record["improved"] and config["out_dir"] is not None:
            ckpt = ray.train.Checkpoint.from_directory(str(Path(config["out_dir"]) / "best"))
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step-{record['step']:06d}" if ckpt else None)

    train_reward(config["data"], scale=config["scale"], reward_cfg=config["reward_cfg"], backbone=config["backbone"],
                 out_dir=config["out_dir"], seed=config["seed"], device=config["device"],
                 cache_dir=config["cache_dir"], dtype=config["dtype"],
                 trust_remote_code=config["trust_remote_code"], eval_data=config["eval_data"],
                 pairs=config["pairs"], on_eval=report, progress=config["progress"] and rank == 0)


def train_reward_distributed(data, *, scale: LabelScale, reward_cfg, backbone: str,
                             out_dir: str | os.PathLike[str], seed: int = 0, use_gpu: bool = False,
                             cache_dir: str | None = None, dtype: str = "float32", trust_remote_code: bool = False,
                             eval_data: RewardExamples | None = None, pairs=None, progress: bool = True,
                             cpus_per_worker: float = 1.0, run_name: str = "reward") -> RewardTrainResult:
    """Train with ``reward_cfg.num_workers`` Ray Train workers; Ray must be initialised.

    ``data`` is a store export or :class:`RewardExamples` (it travels to every worker in
    the train-loop config). Returns the :class:`RewardTrainResult` rank 0 wrote.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        raise RaydprmError("Ray is not initialised: call ray.init() (or use the CLI) before distributed training")
    if not isinstance(data, RewardExamples):
        from raydprm.train.reward_data import examples_from_dataset

        data = examples_from_dataset(data, scale.num_labels)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = {"data": data, "scale": scale, "reward_cfg": reward_cfg, "backbone": backbone, "out_dir": str(out),
              "seed": seed, "device": "cuda" if use_gpu else "cpu", "cache_dir": cache_dir, "dtype": dtype,
              "trust_remote_code": trust_remote_code, "eval_data": eval_data, "pairs": pairs,
              "progress": progress, "num_threads": max(1, int(cpus_per_worker))}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=reward_cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=str(out / "ray_train")))
    try:
        trainer.fit()
    except Exception as e:  # surface the worker's own error message
        cause = e
        while getattr(cause, "__cause__", None) is not None:
            cause = cause.__cause__
        if isinstance(cause, RaydprmError):
            raise RaydprmError(str(cause)) from None
        raise
    res = json.loads((out / "result.json").read_text())
    return RewardTrainResult(best_dir=Path(res["best_dir"]) if res["best_dir"] else None,
                             last_dir=Path(res["last_dir"]) if res["last_dir"] else None,
                             best_metrics=res["best_metrics"], history=res["history"], steps=res["steps"],
                             epochs=res["epochs"], stopped_early=res["stopped_early"], seconds=res["seconds"])


def train_reward_auto(data, *, scale: LabelScale, reward_cfg, backbone: str, out_dir, **kw) -> RewardTrainResult:
    """One process when ``reward.num_workers == 1``, else Ray Train."""
    if reward_cfg.num_workers > 1:
        device = kw.pop("device", None)  # the single-process keyword; Ray Train workers take use_gpu
        if device is not None:
            kw.setdefault("use_gpu", str(device).startswith("cuda"))
        return train_reward_distributed(data, scale=scale, reward_cfg=reward_cfg, backbone=backbone,
                                        out_dir=out_dir, **kw)
    kw.pop("use_gpu", None)
    kw.pop("cpus_per_worker", None)
    kw.pop("run_name", None)
    return train_reward(data, scale=scale, reward_cfg=reward_cfg, backbone=backbone, out_dir=out_dir, **kw)
