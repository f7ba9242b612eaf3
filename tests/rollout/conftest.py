"""Fixtures of the rollout tests: a vLLM-compatible tiny policy and shared engines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# vLLM reads this when an engine is built: in-process engine core (~2 s start on CPU).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _head_size(path: Path) -> int:
    cfg = json.loads((path / "config.json").read_text())
    return cfg["n_embd"] // cfg["n_head"]


@pytest.fixture(scope="session")
def tiny_policy(tiny_kit) -> str:
    """The kit's tiny GPT-2 (its 32-wide heads are a size vLLM's CPU attention supports)."""
    path = Path(tiny_kit["tiny-gpt2"])
    assert _head_size(path) in VLLM_CPU_HEAD_SIZES, "the kit's policy must run on vLLM's CPU attention"
    return str(path)


@pytest.fixture(scope="module")
def hf_engine(tiny_policy):
    from raydprm.rollout.hf_engine import HFEngine

    return HFEngine(tiny_policy)
