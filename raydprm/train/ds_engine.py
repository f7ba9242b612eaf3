"""Training engines for every learner group (PPO, direct alignment); the ONLY module of raydprm that imports deepspeed.

:func:`build_engine` turns a model and an :class:`~raydprm.config.EngineConfig` into an
:class:`Engine` with one small interface, whatever runs underneath:

- ``DeepSpeedEngine`` (``engine.engine="deepspeed"``, the default, also on CPU): ZeRO stage
  0-3, optimizer / parameter offload, bf16 or fp32, gradient clipping, micro-batch and
  gradient accumulation derived from the global minibatch (``<section>.minibatch ==
  worker_micro_batch * grad_accum * num_workers``). The optimizer is torch's AdamW handed
  to DeepSpeed as a *client optimizer* (``engine.optimizer="adamw"``, no JIT build), or
  DeepSpeed's own Adam (``"ds_adam"``: DeepSpeedCPUAdam on CPU / FusedAdam on GPU, which
  DeepSpeed JIT-compiles the first time, minutes on 2 cores).
- ``TorchEngine``: a plain torch data-parallel engine (AdamW, gradient all-reduce over
  the process group, clipping, bf16 autocast) with the same semantics. Used when
  ``engine.engine="torch"`` or, with a logged warning, when deepspeed cannot be imported.

Semantics shared by both (the learner relies on them): :meth:`Engine.backward` is called
once per micro-batch; the gradient applied at an optimizer step is the *mean* over ranks
and accumulated micro-batches of the micro-batch losses' gradients.

Offload between updates (``pipeline.layout = colocate``: a rollout engine uses the GPU while
the learner waits): :meth:`Engine.offload` moves ``"optimizer"`` (Adam moments, fp32
master weights, gradient buffers) and/or ``"params"`` to host memory, :meth:`Engine.reload`
brings everything back. The torch engine and DeepSpeed ZeRO-0 with torch's AdamW in fp32
move the module and the optimizer's state tensors; ZeRO-1/2/3 use DeepSpeed's own
``offload_states`` / ``reload_states``. Not offloaded (documented, a no-op): ZeRO-0 with
bf16 or DeepSpeed's Adam (DeepSpeed offers no call for it), ``engine.offload_params`` (the
parameters and optimizer already live on the CPU), and anything on the CPU.

DeepSpeed on CPU: its CPU accelerator uses gloo when oneCCL is absent. Its optional
shared-memory all-reduce op is JIT-compiled on first use (~2.5 min on 2 cores); it only
serves inference all-reduce, so it is disabled unless ``engine.ds_jit_ops`` is set.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raydprm.config import EngineConfig

log = logging.getLogger(__name__)

__all__ = ["Engine", "TorchEngine", "DeepSpeedEngine", "build_engine", "deepspeed_config", "deepspeed_available",
           "init_process_group", "free_port", "destroy_process_group"]


def deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                       master_port: int | None = None, backend: str | None = None,
                       timeout_s: float = 600.0) -> str:
    """Join (or create) the default torch.distributed group; gloo on CPU, NCCL on GPU.

    Sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, which DeepSpeed reads too. A
    process already in a group of the same size keeps it. Returns the backend.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"this process is already rank {dist.get_rank()} of {dist.get_world_size()}, "
                               f"not rank {rank} of {world_size}")
        return dist.get_backend()
    port = master_port or free_port()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
                      MASTER_ADDR=master_addr, MASTER_PORT=str(port))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(world_size))
    dist.init_process_group(backend=backend, init_method=f"tcp://{master_addr}:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    _forget_deepspeed_groups()
    return backend


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches subgroups of the default group (a clone of the world group, data
    parallel groups) in module globals; after the default group is destroyed and created
    again in the same process those point at a dead group ("Group ... is not registered")."""
    try:
        from deepspeed.utils import groups
    except ImportError:
        return
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        if isinstance(getattr(groups, name, None), dict):
            getattr(groups, name).clear()


OFFLOAD_PARTS = ("optimizer", "params")


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device | str) -> None:
    # AdamW's "step" counters stay where torch keeps them (on the CPU unless capturable)
    for state in optimizer.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)


class Engine(ABC):
    """Common interface of the training engines (see the module docstring for semantics)."""

    name = "base"
    module: nn.Module
    home: torch.device = torch.device("cpu")  # where the engine's states live when not offloaded
    offloaded: frozenset[str] = frozenset()

    def offload(self, parts: tuple[str, ...] = OFFLOAD_PARTS) -> list[str]:
        """Move ``parts`` (``optimizer``, ``params``) to host memory; returns what moved.
        On the CPU nothing moves (there is no device memory to give back)."""
        todo = [p for p in parts if p not in self.offloaded]
        if self.home.type != "cuda" or not todo:
            return []
        done = self._offload(todo)
        self.offloaded = self.offloaded | set(done)
        torch.cuda.empty_cache()
        return done

    def reload(self) -> None:
        """Bring back everything :meth:`offload` moved (before the next forward or step)."""
        if self.offloaded:
            self._reload()
            self.offloaded = frozenset()

    def _offload(self, parts: list[str]) -> list[str]:
        return []

    def _reload(self) -> None:  # noqa: B027 - engines whose _offload moves nothing have nothing to bring back
        """Undo :meth:`_offload`."""

    def _offload_torch(self, optimizer: torch.optim.Optimizer, parts: list[str]) -> list[str]:
        """A plain module + torch optimizer: parameters (with their grads) and optimizer state to host."""
        if "optimizer" in parts:
            _move_optimizer_state(optimizer, "cpu")
        if "params" in parts:
            self.module.to("cpu")  # in place: the optimizer keeps the same Parameter objects
        return list(parts)

    def _reload_torch(self, optimizer: torch.optim.Optimizer) -> None:
        self.module.to(self.home)
        _move_optimizer_state(optimizer, self.home)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's forward."""
        return self.module(*args, **kwargs)

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> bool:
        """Backward of one micro-batch loss; steps the optimizer at the accumulation
        boundary. Returns True when an optimizer step happened."""

    @property
    @abstractmethod
    def last_grad_norm(self) -> float | None:
        """Global gradient norm (before clipping) of the last optimizer step."""

    @abstractmethod
    def save(self, ckpt_dir: Path) -> None:
        """Write model + optimizer state (collective: every rank calls it)."""

    @abstractmethod
    def load(self, ckpt_dir: Path) -> None:
        """Read what :meth:`save` wrote (collective)."""

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Complete (un-partitioned) module weights on CPU, on every rank (collective)."""

    def autocast(self):
        """Context for forward passes (bf16 autocast for the torch engine)."""
        import contextlib

        return contextlib.nullcontext()


class TorchEngine(Engine):
    """Plain torch data parallel: AdamW, all-reduce mean of gradients, clipping."""

    name = "torch"

    def __init__(self, model: nn.Module, ecfg: EngineConfig):
        self.module = model
        self.ecfg = ecfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=ecfg.lr, weight_decay=ecfg.weight_decay)
        self.grad_accum = ecfg.grad_accum
        self.micro_steps = 0
        self._grad_norm: float | None = None
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.home = next(model.parameters()).device

    def _offload(self, parts: list[str]) -> list[str]:
        return self._offload_torch(self.optimizer, parts)

    def _reload(self) -> None:
        self._reload_torch(self.optimizer)

    def autocast(self):
        if self.ecfg.precision == "bf16":
            dev = next(self.module.parameters()).device.type
            return torch.autocast(dev, dtype=torch.bfloat16)
        return super().autocast()

    def backward(self, loss: torch.Tensor) -> bool:
        (loss / self.grad_accum).backward()  # mean over accumulated micro-batches
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return False
        if self.world > 1:
            for p in self.params:  # mean over ranks
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)
        max_norm = self.ecfg.grad_clip if self.ecfg.grad_clip > 0 else float("inf")
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    @property
    def last_grad_norm(self) -> float | None:
        return self._grad_norm

    def save(self, ckpt_dir: Path) -> None:
        if not dist.is_initialized() or dist.get_rank() == 0:
            Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
            state = {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "micro_steps": self.micro_steps}
            torch.save(state, Path(ckpt_dir) / "torch_engine.pt")
        if dist.is_initialized():
            dist.barrier()

    def load(self, ckpt_dir: Path) -> None:
        state = torch.load(Path(ckpt_dir) / "torch_engine.pt", map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.micro_steps = state["micro_steps"]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def deepspeed_config(ecfg: EngineConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for ``ecfg`` (batch sizes derived from the global minibatch)."""
    zero: dict[str, Any] = {"stage": ecfg.zero_stage}
    if ecfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ecfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ecfg.zero_stage == 3:
        # gather small models whole: the tiny and 124M policies fit, and it avoids many tiny collectives
        zero["stage3_param_persistence_threshold"] = 0
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": ecfg.worker_micro_batch,
        "gradient_accumulation_steps": ecfg.grad_accum,
        "train_batch_size": ecfg.worker_micro_batch * ecfg.grad_accum * ecfg.num_workers,  # == ppo.minibatch or align.minibatch
        "gradient_clipping": ecfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ecfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # a client torch optimizer (AdamW) is fine with every ZeRO stage; with offload
        # DeepSpeed would otherwise insist on its JIT-built CPU Adam
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    if ecfg.optimizer == "ds_adam":
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": ecfg.lr, "weight_decay": ecfg.weight_decay}}
    return cfg


class DeepSpeedEngine(Engine):
    """A ``deepspeed.initialize`` engine behind the :class:`Engine` interface."""

    name = "deepspeed"

    def __init__(self, model: nn.Module, ecfg: EngineConfig):
        import deepspeed

        if not ecfg.ds_jit_ops:
            import deepspeed.ops

            # skip the JIT-built shared-memory comm op (inference all-reduce only); gloo does the work
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if not dist.is_initialized():
            init_process_group(0, 1)
        if dist.get_world_size() != ecfg.num_workers:
            raise RuntimeError(f"engine.num_workers = {ecfg.num_workers} but the process group has "
                               f"{dist.get_world_size()} ranks")
        self.ecfg = ecfg
        cfg = deepspeed_config(ecfg)
        optimizer = None
        params = [p for p in model.parameters() if p.requires_grad]
        if ecfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=ecfg.lr, weight_decay=ecfg.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, model_parameters=params if optimizer is None else None, config=cfg)
        self.module = self.engine.module
        self._deepspeed = deepspeed
        self._grad_norm: float | None = None
        self.home = next(model.parameters()).device

    def _plain_optimizer(self) -> torch.optim.Optimizer | None:
        """ZeRO-0 in fp32 steps the client torch optimizer itself; other ZeRO-0 set-ups wrap it."""
        opt = self.engine.optimizer
        return opt if self.ecfg.zero_stage == 0 and isinstance(opt, torch.optim.Optimizer) else None

    def _offload(self, parts: list[str]) -> list[str]:
        if self.ecfg.offload_params:
            return []  # parameters and optimizer already live on the CPU
        if self.ecfg.zero_stage == 0:
            opt = self._plain_optimizer()
            if opt is None:
                log.info("DeepSpeed ZeRO-0 with %s keeps its states on the GPU (no offload call for it)",
                         type(self.engine.optimizer).__name__)
                return []
            return self._offload_torch(opt, parts)
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as S

        include = []
        if "optimizer" in parts:
            include += [S.optim_states, S.hp_params, S.lp_grads, S.contiguous_grad_buffer]
        if "params" in parts:
            include.append(S.lp_params)
        self.engine.offload_states(include=include)
        return list(parts)

    def _reload(self) -> None:
        if self.ecfg.zero_stage == 0:
            self._reload_torch(self._plain_optimizer())
        else:
            self.engine.reload_states()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)  # DeepSpeed's forward (ZeRO-3 fetches partitions)

    def backward(self, loss: torch.Tensor) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)  # scales by 1 / gradient_accumulation_steps; all-reduces at the boundary
        own = None
        if boundary and self.ecfg.zero_stage == 0 and not hasattr(self.engine.optimizer, "_global_grad_norm"):
            # stage 0 with a client torch optimizer clips without reporting the norm: measure it here
            grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
            own = float(torch.stack(grads).norm()) if grads else 0.0
        self.engine.step()  # optimizer step only at the boundary
        if boundary:
            gn = self.engine.get_global_grad_norm()
            self._grad_norm = own if gn is None else float(gn)
        return boundary

    @property
    def last_grad_norm(self) -> float | None:
        return self._grad_norm

    def save(self, ckpt_dir: Path) -> None:
        self.engine.save_checkpoint(str(ckpt_dir), tag="engine")

    def load(self, ckpt_dir: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag="engine", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {ckpt_dir}")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        params = list(self.module.parameters())
        if self.ecfg.zero_stage == 3:
            # ZeRO-3 keeps 1/world of each parameter per rank: gather them (collective)
            with self._deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def build_engine(model: nn.Module, ecfg: EngineConfig) -> Engine:
    """The engine ``ecfg.engine`` asks for; torch with a warning if deepspeed is missing."""
    if ecfg.engine == "deepspeed":
        if deepspeed_available():
            return DeepSpeedEngine(model, ecfg)
        log.warning("deepspeed cannot be imported here; falling back to the plain torch engine "
                    "(ZeRO, offload and DeepSpeed checkpoints are unavailable)")
    return TorchEngine(model, ecfg)
