"""Test-wide settings: offline, seeded, a project-local cache for the tiny model kit."""

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
