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
def tiny_policy(tiny_kit, tmp_path_factory) -> str:
    """The kit's tiny GPT-2 if vLLM's CPU attention supports its head size, else the same
    architecture with 2 heads of 32 (same tokenizer, seeded random init)."""
    path = Path(tiny_kit["tiny-gpt2"])
    if _head_size(path) in VLLM_CPU_HEAD_SIZES:
        return str(path)
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_embd"] // 32,
                                       n_positions=cfg["n_positions"], vocab_size=cfg["vocab_size"],
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("tiny-gpt2-h32")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def hf_engine(tiny_policy):
    from raydprm.rollout.hf_engine import HFEngine

    return HFEngine(tiny_policy)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models decode faster on one thread, and on a loaded 2-core machine two OpenMP
    threads can be 10-40x slower than one (spin-waiting); restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
