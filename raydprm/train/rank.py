"""One rank of a learner group, as every learner has it: the device, the torch.distributed
process group, the seeds, the frozen reference, the training engine
(:class:`~raydprm.config.EngineConfig`) and the checkpoint protocol. The PPO learner
(:mod:`raydprm.train.learner`) and the direct-alignment learner
(:mod:`raydprm.train.direct_alignment`) are :class:`LearnerRank` s with their own update.

Checkpoint protocol (collective): every rank saves its engine shard and RNG states, then rank 0
writes ``learner_state.json`` (the learner's meta: step, seed, world size, engine, ...) and the
``COMPLETE`` marker; a load refuses a checkpoint without the marker or written by another
world size or engine.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raydprm.config import EngineConfig
from raydprm.core.ppo_loss import token_logprobs
from raydprm.errors import RaydprmError
from raydprm.models.policy import export_hf, load_reference, load_tokenizer
from raydprm.train.ds_engine import build_engine, init_process_group

__all__ = ["LearnerRank", "read_checkpoint_meta", "restore_engine_and_rng", "rng_state", "select_device", "set_seed",
           "set_rng_state", "write_checkpoint"]

_COMPLETE = "COMPLETE"


def select_device(device: str = "auto", key: str = "device") -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; ``cuda``: this process's GPU (``LOCAL_RANK``).
    Every trainer chooses its device here (the learners, the reward trainer); ``key``: the setting
    named when CUDA was asked for and there is none."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RaydprmError(f"{key} = 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG this process uses (python, numpy, torch CPU and CUDA)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def write_checkpoint(d: Path, engine: Any, rank: int, world_size: int, meta: dict[str, Any]) -> Path:
    """Every rank saves its engine shard and RNG states, then rank 0 writes ``learner_state.json``
    (``meta``) and the ``COMPLETE`` marker (collective)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / _COMPLETE).unlink(missing_ok=True)
    engine.save(d / "engine")
    torch.save(rng_state(), d / f"rng_rank{rank}.pt")
    if world_size > 1:
        dist.barrier()
    if rank == 0:
        (d / "learner_state.json").write_text(json.dumps(meta, indent=1))
        (d / _COMPLETE).write_text("ok\n")
    if world_size > 1:
        dist.barrier()
    return d


def read_checkpoint_meta(d: Path, engine: Any, world_size: int) -> dict[str, Any]:
    """``learner_state.json`` of a complete checkpoint written by the same world size and engine."""
    if not (d / _COMPLETE).is_file():
        raise RaydprmError(f"'{d}' is not a complete learner checkpoint (no {_COMPLETE} marker)")
    meta = json.loads((d / "learner_state.json").read_text())
    if meta["world_size"] != world_size or meta["engine"] != engine.name:
        raise RaydprmError(f"checkpoint '{d}' was written by {meta['world_size']} {meta['engine']} worker(s); "
                           f"this learner has {world_size} {engine.name} worker(s)")
    return meta


def restore_engine_and_rng(d: Path, engine: Any, rank: int) -> None:
    engine.load(d / "engine")
    set_rng_state(torch.load(d / f"rng_rank{rank}.pt", weights_only=False))


class LearnerRank:
    """Rank ``rank`` of ``ecfg.num_workers``: joins the process group at ``master_addr:master_port``
    (with more than one worker or the DeepSpeed engine), seeds every RNG; a subclass builds its
    trainable model and calls :meth:`_build` (the reference, then the engine)."""

    def __init__(self, ecfg: EngineConfig, policy: str, *, seed: int, rank: int, master_addr: str,
                 master_port: int | None, device: str, dtype: str, trust_remote_code: bool) -> None:
        self.ecfg, self.policy_name, self.seed, self.rank = ecfg, policy, seed, rank
        self.world_size, self.dtype, self.trust_remote_code = ecfg.num_workers, dtype, trust_remote_code
        if self.world_size > 1 and master_port is None:
            raise ValueError("a learner group of more than one worker needs an explicit master_port")
        self.device = select_device(device)
        if self.world_size > 1 or ecfg.engine == "deepspeed":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            init_process_group(rank, self.world_size, master_addr, master_port, backend, ecfg.dist_timeout_s)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        set_seed(seed)
        self.step = 0

    def _build(self, model: torch.nn.Module) -> None:
        """The frozen reference (``reference``, else the initial policy) and the engine over ``model``."""
        model = model.to(self.device)
        self.ref = load_reference(self.ecfg.reference or self.policy_name, self.dtype,
                                  self.trust_remote_code).to(self.device)
        self.engine = build_engine(model, self.ecfg)

    @torch.no_grad()
    def _ref_logits(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, T: int) -> torch.Tensor:
        """pi_ref's logits at the T response positions (B, T, V), from the full sequences (ids, attn, pos)."""
        with self.engine.autocast():
            out = self.ref(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
        return out.logits[:, :-1]  # (B, T, V)

    def _ref_token_logprobs(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
                            response_ids: torch.Tensor) -> torch.Tensor:
        """log pi_ref of each response token (B, T), from the full sequences (ids, attn, pos)."""
        return token_logprobs(self._ref_logits(ids, attn, pos, response_ids.shape[1]), response_ids)  # (B, T)

    def _sum_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    # ------------------------------------------------------------------ weights

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable weight (ZeRO-3 partitions gathered); collective."""
        return self.engine.full_state_dict()

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy LM's weights under their HF names (what a rollout engine loads); collective."""
        return {k[len("lm."):]: v for k, v in self.full_state_dict().items() if k.startswith("lm.")}

    def export_hf(self, out_dir: str | os.PathLike[str]) -> Path | None:
        """Write the policy as an ordinary HF directory (rank 0 writes; collective)."""
        state = self.policy_state_dict()
        out = None
        if self.rank == 0:
            tok = load_tokenizer(self.policy_name, self.trust_remote_code)
            out = export_hf(state, self.policy_name, out_dir, tok, self.trust_remote_code)
        if self.world_size > 1:
            dist.barrier()
        return out

    # ------------------------------------------------------------------ state

    def _meta(self) -> dict[str, Any]:
        """What :meth:`save` writes besides the engine and RNG (a subclass adds its own)."""
        return {"step": self.step, "seed": self.seed, "world_size": self.world_size, "engine": self.engine.name,
                "zero_stage": self.ecfg.zero_stage, "policy": self.policy_name}

    def _restore(self, meta: dict[str, Any], d: Path) -> None:
        """Take back :meth:`_meta` (a subclass checks and restores its own keys first)."""
        self.step = int(meta["step"])
        self.seed = int(meta["seed"])

    def save(self, ckpt_dir: str | os.PathLike[str]) -> Path:
        """Engine (model + optimizer), the learner's meta and every rank's RNG states; collective.
        A checkpoint is complete once ``COMPLETE`` exists."""
        return write_checkpoint(Path(ckpt_dir), self.engine, self.rank, self.world_size, self._meta())

    def load(self, ckpt_dir: str | os.PathLike[str]) -> None:
        """Resume from :meth:`save` (same world size and engine); collective."""
        d = Path(ckpt_dir)
        meta = read_checkpoint_meta(d, self.engine, self.world_size)
        self._restore(meta, d)
        restore_engine_and_rng(d, self.engine, self.rank)
