"""Helpers shared by the learner tests (imported by basename; tests/learner is on sys.path)."""

import torch

from raydprm.train.rollout_batch import RolloutBatch


def make_batch(B=16, seed=0, vocab=800):
    """A seeded random rollout batch: ragged prompts (2-6 tokens), responses (1-8 tokens)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (int(torch.randint(2, 7, (), generator=g)),), generator=g).tolist()
               for _ in range(B)]
    resp = [torch.randint(5, vocab, (int(torch.randint(1, 9, (), generator=g)),), generator=g).tolist()
            for _ in range(B)]
    rewards = torch.randn(B, generator=g).tolist()
    logprobs = [[-6.7] * len(r) for r in resp]
    return RolloutBatch.from_sequences(prompts, resp, rewards, logprobs, pad_id=1)
