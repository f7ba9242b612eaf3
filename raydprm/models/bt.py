"""The Bradley-Terry scalar reward model: the paper's BT-RM baseline.

Same backbone and pooling as the DPRM (:mod:`raydprm.models.backbone`), a linear head to
one scalar s(x, y), trained on pairs from the same crowd with the Bradley-Terry loss of
the pairwise-loss registry (``raydprm.core.pairwise_loss``, ``"bt"``):

    P(a > b) = sigmoid(s(a) - s(b)),      loss = -log sigmoid(s(chosen) - s(rejected)).

Under the Luce choice rule the optimum is s = log p*(x) + C (PBDE, Theorem 1;
docs/equations.md). The model knows the label scale it was trained next to (saved with
it) but predicts no distribution, so loading it does not check the configured scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raydprm.core.label_scale import LabelScale
from raydprm.models.backbone import HeadRewardModel, PooledBackbone, eval_batched

__all__ = ["BTRewardModel"]


class BTRewardModel(HeadRewardModel):
    """Backbone + linear head to one scalar reward. ``forward`` returns (B,)."""

    kind = "bt"
    scale_must_match = False

    def __init__(self, backbone: PooledBackbone, scale: LabelScale | None = None):
        super().__init__(backbone, scale or LabelScale.hh(), 1)  # head: D -> 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask)).squeeze(-1).float()  # (B,)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.encode(prompts, responses)  # (B,)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Scalar rewards (B,) in eval mode."""
        return eval_batched(self, self.rewards, prompts, responses, batch_size, (0,))
