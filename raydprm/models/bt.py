"""The Bradley-Terry scalar reward model: the paper's BT-RM baseline.

Same backbone and pooling as the DPRM (:class:`~raydprm.models.dprm.PooledBackbone`),
a linear head to one scalar s(x, y), trained on pairs from the same crowd with

    P(a > b) = sigmoid(s(a) - s(b)),      loss = -log sigmoid(s(chosen) - s(rejected)).

Under the Luce choice rule the optimum is s = log p*(x) + C (PBDE, Theorem 1). The
model knows the label scale it was trained next to (saved with it) but predicts no
distribution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from raydprm.core.label_scale import LabelScale
from raydprm.models.dprm import (
    BACKBONE_DIR,
    HEAD_FILE,
    PooledBackbone,
    _read_meta,
    _scale_from_json,
    save_head_model,
)

__all__ = ["BTRewardModel", "bt_loss"]


def bt_loss(s_chosen: torch.Tensor, s_rejected: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log sigmoid(s_chosen - s_rejected) over the batch (B,) -> scalar."""
    nll = -nn.functional.logsigmoid(s_chosen - s_rejected)  # (B,)
    if weight is not None:
        return (nll * weight).sum() / weight.sum().clamp_min(1e-12)
    return nll.mean()


class BTRewardModel(nn.Module):
    """Backbone + linear head to one scalar reward. ``forward`` returns (B,)."""

    kind = "bt"

    def __init__(self, backbone: PooledBackbone, scale: LabelScale | None = None):
        super().__init__()
        self.backbone = backbone
        self.scale = scale or LabelScale.hh()
        self.head = nn.Linear(backbone.hidden_size, 1)  # D -> 1
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.head.to(device=backbone.device, dtype=next(backbone.model.parameters()).dtype)

    @classmethod
    def from_backbone(cls, name_or_path: str, scale: LabelScale | None = None, max_length: int = 128,
                      cache_dir: str | None = None, dtype: str = "float32",
                      trust_remote_code: bool = False, seed: int = 0) -> BTRewardModel:
        bb = PooledBackbone.from_pretrained(name_or_path, max_length, cache_dir, dtype, trust_remote_code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(bb, scale)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask)).squeeze(-1).float()  # (B,)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        enc = self.backbone.tokenize(prompts, responses)
        return self(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))  # (B,)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Scalar rewards (B,) in eval mode."""
        was_training = self.training
        self.eval()
        try:
            out = [self.rewards(prompts[i:i + batch_size], responses[i:i + batch_size])
                   for i in range(0, len(prompts), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write backbone, head and label scale to ``directory`` (created; overwritten)."""
        return save_head_model(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], dtype: str = "float32",
             device: str | torch.device = "cpu") -> BTRewardModel:
        d, meta = _read_meta(directory, cls.kind)
        bb = PooledBackbone.from_pretrained(str(d / BACKBONE_DIR), meta.get("max_length", 128), dtype=dtype)
        model = cls(bb, _scale_from_json(meta["labels"]))
        model.head.load_state_dict(torch.load(d / HEAD_FILE, map_location="cpu", weights_only=True))
        return model.to(device)
