"""Test-wide settings: offline, seeded, a project-local cache for the tiny model kit."""

import json
import os
import pathlib
import random

# Set before anything imports transformers/datasets/ray: tests never touch the network,
# and Ray workers started by a test inherit this environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM reads this when an engine is built: in-process engine core (~2 s start on CPU).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAYDPRM_CACHE", str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "test-kit"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass
    yield


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core runner two
    OpenMP threads were 5-40x slower than one (oversubscription); Ray actors run one too."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_kit():
    """Paths of the tiny offline models (built once per cache)."""
    from raydprm.models import ensure_tiny_models

    return ensure_tiny_models()


VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _head_size(path: pathlib.Path) -> int:
    cfg = json.loads((path / "config.json").read_text())
    return cfg["n_embd"] // cfg["n_head"]


@pytest.fixture(scope="session")
def tiny_policy(tiny_kit) -> str:
    """The kit's tiny GPT-2 (its 32-wide heads are a size vLLM's CPU attention supports)."""
    path = pathlib.Path(tiny_kit["tiny-gpt2"])
    assert _head_size(path) in VLLM_CPU_HEAD_SIZES, "the kit's policy must run on vLLM's CPU attention"
    return str(path)


@pytest.fixture(scope="module")
def hf_engine(tiny_policy):
    from raydprm.rollout.hf_engine import HFEngine

    return HFEngine(tiny_policy)
