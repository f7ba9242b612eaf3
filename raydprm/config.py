"""Typed, frozen configuration for every raydprm component.

One small dataclass per component under one root :class:`Config`. Every field carries
its documentation and its allowed values (``choices`` or a numeric range) in the
field metadata, so that validation, error messages and ``raydprm config --help``-style
listings all read from one place.

Loading::

    cfg = load_config("my.yaml", ["ppo.beta=0.1", "rollout.engine=vllm"])
    save_config(cfg, run_dir)          # writes run_dir/config.yaml

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
full dotted key and what is allowed. Defaults run on a laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

# the label defaults (plain Python; importing it loads no torch)
from raydprm.core.hh_labels import HH_GRID, HH_LABELS, HH_REWARDS
from raydprm.errors import ConfigError

_MISSING = dataclasses.MISSING
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def opt(default: Any = _MISSING, *, doc: str, choices: Sequence[Any] | None = None,
        ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, factory: Any = _MISSING) -> Any:
    """A config field: default, one line of documentation, and its allowed values."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not _MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _allowed(meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    parts = []
    for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(k) is not None:
            parts.append(f"{sym} {meta[k]}")
    return " and ".join(parts) if parts else "any value"


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Range/choice checks for one (already type-correct) value."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed; expected {_allowed(meta)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN
            raise ConfigError(f"config key '{key}' is NaN; expected {_allowed(meta)}")
        for k, ok in (("ge", lambda v, b: v >= b), ("gt", lambda v, b: v > b),
                      ("le", lambda v, b: v <= b), ("lt", lambda v, b: v < b)):
            bound = meta.get(k)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"config key '{key}' = {value!r} is out of range; expected {_allowed(meta)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config key '{key}' = {value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "3e-3" (no dot) as a string
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{key}' must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' = {value!r} has the wrong type; expected a mapping")
        kt, vt = args if args else (Any, Any)
        return {_coerce(f"{key}", k, kt): _coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug, not user error


@dataclass(frozen=True)
class Section:
    """Base of every config section: validates its fields' metadata on construction."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self.section}.{f.name}" if self.section else f.name
            value = _coerce(key, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            _check_value(key, value, f.metadata)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override in a section. Raise ConfigError naming the key."""


# --------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class RunConfig(Section):
    section: ClassVar[str] = "run"
    name: str = opt("demo", doc="Run name; outputs go to <output_dir>/<name>.")
    output_dir: str = opt("runs", doc="Directory under which every run writes its outputs.")
    seed: int = opt(0, doc="Global random seed (torch, numpy, python, samplers).", ge=0)
    device: str = opt("auto", doc="Device for single-process work.", choices=("auto", "cpu", "cuda"))
    log_level: str = opt("INFO", doc="Python logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class ModelsConfig(Section):
    section: ClassVar[str] = "models"
    policy: str = opt("tiny-gpt2", doc="Policy model: 'tiny-gpt2'/'tiny-opt' (built offline), a local HF directory or a hub name.")
    reward_backbone: str = opt("tiny-opt", doc="Reward-model backbone: a tiny kit name, a directory or a hub name.")
    tokenizer: str = opt("", doc="Tokenizer directory or hub name; empty = the policy's own.")
    cache_dir: str = opt("", doc="Where tiny offline models are built; empty = $RAYDPRM_CACHE or ~/.cache/raydprm.")
    dtype: str = opt("float32", doc="Parameter dtype for loaded models.", choices=("float32", "bfloat16", "float16"))
    trust_remote_code: bool = opt(False, doc="Passed to from_pretrained for hub models with custom code.")


@dataclass(frozen=True)
class LabelsConfig(Section):
    section: ClassVar[str] = "labels"
    names: tuple[str, ...] = opt(HH_LABELS, doc="Label names, best first by convention (default: the paper's 6 HH labels).")
    rewards: tuple[float, ...] = opt(HH_REWARDS, doc="Scalar reward of each label (paper, Table 1).")
    grid: tuple[tuple[float, float], ...] | None = opt(
        tuple((float(h), float(d)) for h, d in HH_GRID),
        doc="Optional (helpfulness level, harm level) coordinates of each label, used by the grid_l1 cost.")

    def validate(self) -> None:
        if len(self.names) < 2:
            raise ConfigError(f"config key 'labels.names' needs at least 2 labels, got {len(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ConfigError("config key 'labels.names' has duplicate names")
        if len(self.rewards) != len(self.names):
            raise ConfigError(f"config key 'labels.rewards' has {len(self.rewards)} entries but labels.names has {len(self.names)}")
        if any(r != r or r in (float("inf"), float("-inf")) for r in self.rewards):
            raise ConfigError("config key 'labels.rewards' must be finite numbers")
        if self.grid is not None and len(self.grid) != len(self.names):
            raise ConfigError(f"config key 'labels.grid' has {len(self.grid)} entries but labels.names has {len(self.names)}")


@dataclass(frozen=True)
class CrowdConfig(Section):
    section: ClassVar[str] = "crowd"
    personas_file: str = opt("", doc="YAML file of personas; empty = the shipped raydprm/sim/personas.yaml.")
    mixture: dict[str, float] = opt(factory=dict, doc="Persona weights of the population; empty = uniform over all personas.")
    n_items: int = opt(384, doc="Number of generated (prompt, response) items the crowd votes on.", ge=1)
    votes_per_item: int = opt(12, doc="Votes cast on each item (spread over personas by the mixture).", ge=1)

    def validate(self) -> None:
        for k, w in self.mixture.items():
            if not (w >= 0):
                raise ConfigError(f"config key 'crowd.mixture.{k}' = {w!r} must be >= 0")
        if self.mixture and sum(self.mixture.values()) <= 0:
            raise ConfigError("config key 'crowd.mixture' must have a positive total weight")


@dataclass(frozen=True)
class SFTConfig(Section):
    section: ClassVar[str] = "sft"
    n_examples: int = opt(4000, doc="SFT examples drawn from the simulated world (mostly decent, every quality present: world.SFT_QUALITIES).", ge=1)
    epochs: int = opt(5, doc="SFT epochs (5 x 4000 examples: the tiny policy learns which topic answers a question on every seed tried; 3 did on one of two, docs/world.md).", ge=1)
    lr: float = opt(1e-2, doc="SFT learning rate (AdamW, warm-up then linear decay; sized for the tiny default policy, docs/world.md).", gt=0)
    batch_size: int = opt(32, doc="SFT batch size.", ge=1)
    max_length: int = opt(96, doc="Max tokens of prompt + response + eos.", ge=8)


@dataclass(frozen=True)
class StoreConfig(Section):
    section: ClassVar[str] = "store"
    path: str = opt("", doc="SQLite file of the preference store; empty = <run_dir>/store.db.")
    prior: float = opt(1.0, doc="Dirichlet prior concentration per label.", gt=0)
    half_life_s: float = opt(0.0, doc="Exponential forgetting half-life of votes in seconds; 0 = no forgetting.", ge=0)
    synchronous: str = opt("FULL", doc="SQLite synchronous mode under WAL.", choices=("NORMAL", "FULL"))
    smoothing: float = opt(0.0, doc="Targeted label smoothing mass applied to exported targets.", ge=0, lt=1)
    max_text_chars: int = opt(16384, doc="Longest prompt or response accepted.", ge=1)


@dataclass(frozen=True)
class RewardConfig(Section):
    section: ClassVar[str] = "reward"
    loss: str = opt("ot", doc="Training loss of the reward model.", choices=("ot", "wasserstein", "ce", "bt"))
    cost: str = opt("reward_gap", doc="OT cost matrix by name, or a path to a .npy/.yaml L x L matrix.")
    ot_method: str = opt("exact", doc="OT solver.", choices=("exact", "sinkhorn"))
    sinkhorn_eps: float = opt(0.05, doc="Entropic regularisation of the Sinkhorn solver.", gt=0)
    sinkhorn_iters: int = opt(200, doc="Iteration cap of the Sinkhorn solver.", ge=1)
    sinkhorn_tol: float = opt(1e-6, doc="Convergence tolerance (marginal L1 error) of the Sinkhorn solver.", gt=0)
    lr: float = opt(2e-3, doc="Learning rate (AdamW; sized for the tiny default backbone, docs/world.md).", gt=0)
    weight_decay: float = opt(0.0, doc="AdamW weight decay.", ge=0)
    epochs: int = opt(20, doc="Training epochs (at most; early stopping by reward.patience).", ge=1)
    batch_size: int = opt(32, doc="Training batch size (global).", ge=1)
    max_length: int = opt(128, doc="Max tokens of prompt + response.", ge=8)
    eval_fraction: float = opt(0.2, doc="Held-out fraction of items.", gt=0, lt=1)
    patience: int = opt(4, doc="Early stopping: evaluations without improvement before stopping; 0 = off.", ge=0)
    num_workers: int = opt(1, doc="Ray Train workers (TorchTrainer, gloo on CPU) when > 1.", ge=1)
    scalar: str = opt("expected", doc="Scalar reward read from the predicted distribution.", choices=("expected", "cvar", "mean_std"))
    cvar_alpha: float = opt(0.2, doc="Level of the CVaR readout.", gt=0, le=1)
    kappa: float = opt(1.0, doc="Risk aversion of the mean - kappa * std readout.", ge=0)
    num_replicas: int = opt(1, doc="RewardActor replicas in the pool.", ge=1)
    grad_clip: float = opt(1.0, doc="Gradient clipping norm; 0 = off.", ge=0)
    eval_every: int = opt(0, doc="Optimizer steps between held-out evaluations; 0 = once per epoch.", ge=0)
    bt_pairs_per_item: int = opt(4, doc="Bradley-Terry pairs drawn per item from the crowd's label distributions.", ge=1)
    model_dir: str = opt("", doc="Trained reward model directory (read by eval, the reward actor and serve); empty = <run_dir>/reward/best.")
    actor_num_cpus: float = opt(1.0, doc="CPUs reserved per RewardActor replica.", gt=0)


@dataclass(frozen=True)
class RolloutConfig(Section):
    section: ClassVar[str] = "rollout"
    engine: str = opt("transformers", doc="Generation engine.", choices=("transformers", "vllm"))
    num_replicas: int = opt(1, doc="Generator actors.", ge=1)
    num_cpus: float = opt(1.0, doc="CPUs reserved per generator actor.", gt=0)
    num_gpus: float = opt(0.0, doc="GPUs reserved per generator actor.", ge=0)
    max_new_tokens: int = opt(32, doc="Tokens generated per response.", ge=1)
    temperature: float = opt(1.0, doc="Sampling temperature; 0 = greedy.", ge=0)
    top_p: float = opt(1.0, doc="Nucleus sampling mass.", gt=0, le=1)
    top_k: int = opt(0, doc="Top-k sampling; 0 = off.", ge=0)
    n: int = opt(1, doc="Samples per prompt.", ge=1)
    seed: int = opt(-1, doc="Sampling seed (per request, reproducible across batch layouts); -1 = unseeded.", ge=-1)
    stop: tuple[str, ...] = opt((), doc="Stop strings: a response ends before the first one it produces.")
    max_prompt_tokens: int = opt(192, doc="Longest prompt accepted (tokens); longer prompts are refused.", ge=1)
    batch_size: int = opt(64, doc="Prompts per generate call of one engine (the pool splits bigger batches).", ge=1)
    vllm_multiprocessing: bool = opt(False, doc="vLLM: run the engine core in its own process (start-up ~12 s on CPU vs ~2 s in-process).")
    tensor_parallel_size: int = opt(1, doc="vLLM tensor parallel size (GPU).", ge=1)
    gpu_memory_utilization: float = opt(0.5, doc="vLLM GPU memory fraction.", gt=0, le=1)
    kv_cache_memory_mb: int = opt(64, doc="vLLM KV-cache size on CPU in MiB.", ge=1)
    weight_sync: str = opt("object_store", doc="Learner -> generator weight transport.", choices=("object_store", "vllm_rpc", "nccl"))
    sync_timeout_s: float = opt(120.0, doc="A weight sync that takes longer fails with an error.", gt=0)
    bucket_mb: int = opt(64, doc="Bucket size for object-store weight sync.", ge=1)
    probe_tolerance: float = opt(1e-3, doc="Max |logprob difference| of the post-sync probe.", gt=0)
    probe_length: int = opt(32, doc="Tokens of the fixed probe sequence scored after every weight sync.", ge=2)


@dataclass(frozen=True)
class PPOConfig(Section):
    section: ClassVar[str] = "ppo"
    beta: float = opt(0.05, doc="KL penalty coefficient (initial value for the adaptive controller).", ge=0)
    kl_controller: str = opt("fixed", doc="KL coefficient control.", choices=("fixed", "adaptive"))
    target_kl: float = opt(6.0, doc="Target KL of the adaptive controller.", gt=0)
    kl_horizon: int = opt(10000, doc="Horizon of the adaptive controller.", ge=1)
    kl_estimator: str = opt("k1", doc="Per-token KL estimator.", choices=("k1", "k2", "k3"))
    gamma: float = opt(1.0, doc="Discount.", ge=0, le=1)
    lam: float = opt(0.95, doc="GAE lambda.", ge=0, le=1)
    clip_ratio: float = opt(0.2, doc="PPO ratio clip.", gt=0)
    value_clip: float = opt(0.2, doc="Value clip.", gt=0)
    vf_coef: float = opt(0.1, doc="Value loss coefficient.", ge=0)
    entropy_coef: float = opt(0.0, doc="Entropy bonus coefficient.", ge=0)
    epochs: int = opt(2, doc="PPO epochs per batch of rollouts.", ge=1)
    rollout_batch: int = opt(32, doc="Rollouts per PPO update (global).", ge=1)
    minibatch: int = opt(16, doc="Minibatch size (global) per optimizer step.", ge=1)
    micro_batch: int = opt(8, doc="Per-worker micro-batch; accumulation is derived.", ge=1)
    lr: float = opt(5e-4, doc="Learning rate (sized for the tiny default policy; use ~1e-6..1e-5 for billion-parameter models).", gt=0)
    grad_clip: float = opt(1.0, doc="Gradient clipping norm; 0 = off.", ge=0)
    whiten_advantages: bool = opt(True, doc="Whiten advantages per batch.")
    loss_agg: str = opt("token_mean", doc="Loss aggregation.", choices=("token_mean", "seq_mean"))
    critic: str = opt("value_head", doc="Value function: a head on the policy or a separate critic model.", choices=("value_head", "separate"))
    num_workers: int = opt(1, doc="Learner actors in the torch.distributed group.", ge=1)
    engine: str = opt("deepspeed", doc="Training engine.", choices=("deepspeed", "torch"))
    zero_stage: int = opt(0, doc="DeepSpeed ZeRO stage.", ge=0, le=3)
    offload_optimizer: bool = opt(False, doc="ZeRO optimizer offload to CPU.")
    offload_params: bool = opt(False, doc="ZeRO-3 parameter offload to CPU.")
    precision: str = opt("fp32", doc="Training precision.", choices=("fp32", "bf16"))
    steps: int = opt(40, doc="PPO iterations of the pipeline.", ge=1)
    reference: str = opt("", doc="Frozen reference model (dir or hub name); empty = the initial policy.")
    critic_model: str = opt("", doc="Backbone of the separate critic (critic=separate); empty = the policy's.")
    optimizer: str = opt("adamw", doc="adamw: torch AdamW as DeepSpeed's client optimizer (no JIT build); ds_adam: DeepSpeed's own Adam (CPUAdam/FusedAdam, JIT-built once).", choices=("adamw", "ds_adam"))
    weight_decay: float = opt(0.0, doc="AdamW weight decay.", ge=0)
    ds_jit_ops: bool = opt(False, doc="Let DeepSpeed JIT-build its optional CPU comm op (~2-3 min the first time); off = plain torch.distributed collectives.")
    num_cpus_per_worker: float = opt(1.0, doc="CPUs reserved per learner actor.", gt=0)
    num_gpus_per_worker: float = opt(0.0, doc="GPUs reserved per learner actor (NCCL when > 0).", ge=0)
    dist_timeout_s: float = opt(600.0, doc="torch.distributed collective timeout of the learner group.", gt=0)
    async_rollout: bool = opt(False, doc="Generate the rollouts of step t+1 while the learner trains on step t (one step off-policy; the behaviour policy's logprobs are PPO's old logprobs). Off = every step generates with the newest policy.")
    use_rollout_logprobs: bool = opt(False, doc="PPO's old logprobs = the rollout engine's sampled ones (right for stale rollouts); off = recomputed by the learner (immune to engine mismatch).")

    @property
    def worker_minibatch(self) -> int:
        """Rows of one minibatch that each learner worker processes."""
        return self.minibatch // self.num_workers

    @property
    def worker_micro_batch(self) -> int:
        """Rows per forward/backward on one worker (micro_batch, capped by the worker's share)."""
        return min(self.micro_batch, self.worker_minibatch)

    @property
    def grad_accum(self) -> int:
        """Micro-batches accumulated per optimizer step on each worker."""
        return self.worker_minibatch // self.worker_micro_batch

    def validate(self) -> None:
        if self.rollout_batch % self.minibatch:
            raise ConfigError(f"config key 'ppo.minibatch' = {self.minibatch} must divide ppo.rollout_batch = {self.rollout_batch}")
        if self.minibatch % self.num_workers:
            raise ConfigError(f"config key 'ppo.minibatch' = {self.minibatch} must be a multiple of ppo.num_workers = {self.num_workers}")
        if self.worker_minibatch % self.worker_micro_batch:
            raise ConfigError(f"config key 'ppo.micro_batch' = {self.micro_batch} must divide the per-worker minibatch "
                              f"ppo.minibatch / ppo.num_workers = {self.worker_minibatch}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("config key 'ppo.offload_params' needs ppo.zero_stage = 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("config key 'ppo.offload_optimizer' needs ppo.zero_stage >= 1")


@dataclass(frozen=True)
class ServeConfig(Section):
    section: ClassVar[str] = "serve"
    host: str = opt("127.0.0.1", doc="HTTP host.")
    port: int = opt(8000, doc="HTTP port.", ge=1, le=65535)
    auth_token: str = opt("", doc="Bearer token for POST /votes; empty = $RAYDPRM_SERVE_TOKEN.")
    num_cpus: float = opt(0.5, doc="CPUs per replica (fractional allowed).", gt=0)
    min_replicas: int = opt(1, doc="Autoscaling minimum replicas.", ge=0)
    max_replicas: int = opt(2, doc="Autoscaling maximum replicas.", ge=1)
    target_ongoing_requests: float = opt(8.0, doc="Autoscaling target of ongoing requests per replica.", gt=0)
    max_batch_size: int = opt(32, doc="serve.batch maximum batch size.", ge=1)
    batch_wait_timeout_s: float = opt(0.005, doc="serve.batch wait timeout.", ge=0)
    max_items: int = opt(256, doc="Most items in one request.", ge=1)
    max_text_chars: int = opt(8192, doc="Longest prompt or response accepted.", ge=1)


@dataclass(frozen=True)
class RayConfig(Section):
    section: ClassVar[str] = "ray"
    address: str = opt("", doc="Ray address; empty = $RAY_ADDRESS or start a local instance.")
    num_cpus: int = opt(0, doc="CPUs of a local Ray instance; 0 = all.", ge=0)
    namespace: str = opt("raydprm", doc="Ray namespace for named actors.")
    preflight_timeout_s: float = opt(300.0, doc="How long a run waits for the cluster (and its autoscaler) to offer the CPUs/GPUs/memory it reserves before failing with the missing resources named.", ge=0)
    max_restarts: int = opt(2, doc="Restarts each role's actor group may do in one run (a dead generator or reward replica is replaced; a dead learner rank restarts the learner group from its last checkpoint).", ge=0)


@dataclass(frozen=True)
class PipelineConfig(Section):
    section: ClassVar[str] = "pipeline"
    checkpoint_every: int = opt(5, doc="PPO steps between learner checkpoints (policy, critic, optimizer, KL controller, RNG) that `raydprm run --resume` continues from.", ge=1)
    keep_checkpoints: int = opt(2, doc="Newest PPO checkpoints kept in <run_dir>/ppo/ckpt (older ones are deleted).", ge=1)
    eval_prompts: int = opt(64, doc="Held-out prompts the population judges each policy on.", ge=2)
    eval_seeds: int = opt(2, doc="Sampling seeds per held-out prompt (the bootstrap resamples prompts and seeds).", ge=1)
    bootstrap: int = opt(1000, doc="Bootstrap resamples of the 95% intervals.", ge=100)
    tie_margin: float = opt(0.05, doc="Head to head: a difference of expected reward within this margin is a tie.", ge=0)


@dataclass(frozen=True)
class Config:
    """The root config: one section per component."""

    run: RunConfig = field(default_factory=RunConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    crowd: CrowdConfig = field(default_factory=CrowdConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def override(self, overrides: Sequence[str]) -> Config:
        """A copy with ``key.sub=value`` overrides applied (values parsed as YAML)."""
        data = self.to_dict()
        apply_overrides(data, overrides)
        return from_dict(data)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# --------------------------------------------------------------------------- loading


def _unknown(key: str, allowed: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f"; did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint} (keys of {where}: {', '.join(allowed)})")


def from_dict(data: Mapping[str, Any] | None) -> Config:
    """Build a validated :class:`Config` from a nested mapping (missing keys take defaults)."""
    data = dict(data or {})
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for name, value in data.items():
        if name not in sections:
            raise _unknown(name, list(sections), "the root config")
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{name}' must be a mapping of its keys, got {value!r}")
        cls = typing.get_type_hints(Config)[name]
        fields = {f.name for f in dataclasses.fields(cls)}
        for k in value:
            if k not in fields:
                raise _unknown(f"{name}.{k}", sorted(fields), name)
        kwargs[name] = cls(**value)
    return Config(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings in place to a nested dict; returns it."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load YAML (optional) + overrides into a validated :class:`Config`."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    apply_overrides(data, overrides)
    return from_dict(data)


def save_config(cfg: Config, run_dir: str | os.PathLike[str], name: str = "config.yaml") -> Path:
    """Write the full resolved config next to a run's outputs (atomically)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = d / name
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, out)
    return out


def describe(cfg_cls: type = Config) -> list[tuple[str, Any, str, str]]:
    """(key, default, allowed, doc) for every field: the source of `raydprm config show --doc`."""
    rows = []
    for sec in dataclasses.fields(cfg_cls):
        cls = typing.get_type_hints(cfg_cls)[sec.name]
        inst = cls()
        for f in dataclasses.fields(cls):
            rows.append((f"{sec.name}.{f.name}", _plain(getattr(inst, f.name)), _allowed(f.metadata), f.metadata["doc"]))
    return rows
