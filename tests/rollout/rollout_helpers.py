"""Helpers shared by the rollout tests (imported by basename; tests/rollout is on sys.path)."""

import torch
from transformers import AutoModelForCausalLM


def perturbed(path, seed, scale=0.2):
    """The model at ``path`` with seeded Gaussian noise on every parameter: a "learner" whose
    weights differ from the generator's."""
    m = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m.eval()
