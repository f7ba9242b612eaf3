"""Rollout generation: one engine interface (vLLM, transformers) and the pure half of weight sync."""

from raydprm.rollout.engine import ENGINES, Response, RolloutEngine, RolloutError, make_engine  # noqa: F401
from raydprm.rollout.sampling import SamplingError, SamplingParams  # noqa: F401
