"""Sampling parameters shared by every rollout engine.

One frozen dataclass, validated on construction, so that a bad value fails before any
engine starts (and fails the same way for vLLM and transformers). Both engines read the
same fields and implement the same semantics:

- ``temperature == 0`` is greedy decoding (``top_p``/``top_k``/``seed`` are then ignored);
- ``top_k == 0`` and ``top_p == 1`` switch those filters off;
- ``n`` samples per prompt, each an independent sequence;
- ``seed`` makes sampling reproducible per request, independent of batching;
- generation of a sequence stops at the EOS token (unless ``ignore_eos``), at one of
  ``stop`` strings (the text is cut before the stop string), or after ``max_new_tokens``.

Logprobs reported by every engine are the *raw* model log-probabilities
``log_softmax(logits)`` of the sampled tokens, before temperature and top-k/top-p: the
quantity PPO needs (vLLM's ``logprobs_mode="raw_logprobs"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from raydprm.errors import RaydprmError


class SamplingError(RaydprmError, ValueError):
    """A sampling parameter has a value no engine can use."""


def _check_number(name: str, value: Any, *, lo: float | None = None, lo_open: bool = False,
                  hi: float | None = None, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamplingError(f"sampling.{name} = {value!r} must be {'an integer' if integer else 'a number'}")
    if integer and not isinstance(value, int):
        raise SamplingError(f"sampling.{name} = {value!r} must be an integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise SamplingError(f"sampling.{name} = {value!r} must be finite")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise SamplingError(f"sampling.{name} = {value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise SamplingError(f"sampling.{name} = {value!r} must be <= {hi}")


@dataclass(frozen=True)
class SamplingParams:
    """What to generate for each prompt (see the module docstring for the semantics)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _check_number("max_new_tokens", self.max_new_tokens, lo=1, integer=True)
        _check_number("temperature", self.temperature, lo=0)
        _check_number("top_p", self.top_p, lo=0, lo_open=True, hi=1)
        _check_number("top_k", self.top_k, lo=0, integer=True)
        _check_number("n", self.n, lo=1, integer=True)
        if self.seed is not None:
            _check_number("seed", self.seed, lo=0, integer=True)
        stop = self.stop
        if isinstance(stop, str):  # a lone string is one stop string, not its characters
            stop = (stop,)
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
            raise SamplingError(f"sampling.stop = {self.stop!r} must be a list of strings")
        if any(s == "" for s in stop):
            raise SamplingError("sampling.stop contains an empty string (it would stop at once)")
        object.__setattr__(self, "stop", tuple(stop))
        if not isinstance(self.ignore_eos, bool):
            raise SamplingError(f"sampling.ignore_eos = {self.ignore_eos!r} must be true or false")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes: Any) -> SamplingParams:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def from_config(cls, cfg: Any, **changes: Any) -> SamplingParams:
        """From a :class:`~raydprm.config.RolloutConfig` (plus overrides)."""
        base = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    top_k=cfg.top_k, n=cfg.n, seed=cfg.seed if cfg.seed >= 0 else None,
                    stop=tuple(cfg.stop))
        base.update(changes)
        return cls(**base)


def request_seed(seed: int | None, prompt_index: int, sample_index: int) -> int | None:
    """Seed of one (prompt, sample) sequence: the same for every engine and batch layout."""
    if seed is None:
        return None
    return (seed * 1_000_003 + prompt_index * 7919 + sample_index) % (2**31 - 1)
