"""ppo/kl_exact (issue 25, part 5): the learner logs the exact vocabulary KL to its reference next to the
penalty's estimate (ppo/kl, ppo.kl_estimator), and reports plot the exact one."""

import pytest
import torch
from helpers import make_batch

from raydprm.config import EngineSection, PPOConfig
from raydprm.core.kl import kl_from_logits
from raydprm.models.policy import sequence_inputs
from raydprm.train.learner import PPOLearner


def test_exact_kl_is_zero_at_the_start_then_positive_and_exact(tiny_kit):
    cfg = PPOConfig(rollout_batch=16, minibatch=8, epochs=2, lr=1e-2)
    lr = PPOLearner(cfg, "tiny-gpt2", engine=EngineSection(micro_batch=4, engine="torch"), seed=0)
    batch = make_batch(seed=1)
    m1 = lr.update(batch)
    assert m1["ppo/kl_exact"] == pytest.approx(0.0, abs=1e-9)  # policy == reference before the first step
    # the twin, before update 2 sees the moved policy: the whole batch at once, one response at a time
    with torch.no_grad():
        logits, _ = lr._forward(batch, grad=False)  # (B, T, V)
        ids, attn, pos = sequence_inputs(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
        ref = lr._ref_logits(ids, attn, pos, batch.response_ids.shape[1])  # (B, T, V)
    per = [float(kl_from_logits(logits[b], ref[b])[batch.response_mask[b].bool()].sum()) for b in range(len(batch))]
    m2 = lr.update(batch)
    assert m2["ppo/kl_exact"] > 0 and all(k >= 0 for k in per)
    assert m2["ppo/kl_exact"] == pytest.approx(sum(per) / len(per), rel=1e-4)
