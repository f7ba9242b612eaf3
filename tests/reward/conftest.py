"""Tiny models gain nothing from intra-op threads, and on a shared 2-core runner they lose
a lot (oversubscription); the Ray actors run one thread too."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
