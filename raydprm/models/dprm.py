"""The distributional preference reward model (DPRM): a pooled HF backbone + a linear head
over the L labels of a :class:`~raydprm.core.label_scale.LabelScale`.

The paper (arXiv 2402.09764; docs/equations.md) adds one linear layer to the SFT
model and reads a label distribution with a softmax:

    h   = backbone(prompt ++ response)[last non-padding token]     # (B, D)
    z   = W h + b                                                  # (B, L) logits
    mu  = softmax(z)                                               # (B, L) label distribution
    R   = E_mu[r] = sum_i mu_i r_i                                 # (B,)  PPO's scalar reward

plus risk readouts (CVaR, mean - kappa std) and the entropy of mu as an uncertainty.

The backbone, the head and the checkpoint format are shared with the Bradley-Terry
baseline (``bt.py``) through :mod:`raydprm.models.backbone`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.models.backbone import META_FILE, HeadRewardModel, PooledBackbone

__all__ = ["DPRM", "RewardOutput", "label_scale_from_config", "SCALAR_READOUTS", "META_FILE"]

# config name of a scalar readout (reward.scalar) -> LabelScale.scalarise name
SCALAR_READOUTS = {"expected": "expected", "cvar": "cvar", "mean_std": "mean_minus_std"}

# The one conversion is LabelScale.from_config; this name stays for the Ray layer and the
# CLI, which import it from here.
label_scale_from_config = LabelScale.from_config


# --------------------------------------------------------------------------- DPRM


@dataclass
class RewardOutput:
    """What the DPRM says about a batch: logits and mu (B, L); expected reward, the
    configured scalar reward, CVaR and entropy (B,)."""

    logits: torch.Tensor
    distribution: torch.Tensor
    expected: torch.Tensor
    scalar: torch.Tensor
    cvar: torch.Tensor
    entropy: torch.Tensor

    def to_items(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """One JSON-able dict per row: distribution keyed by label name, expected_reward,
        reward (the configured scalar) and entropy."""
        mu = self.distribution.tolist()
        ex, sc, en = self.expected.tolist(), self.scalar.tolist(), self.entropy.tolist()
        return [{"distribution": dict(zip(names, row)), "expected_reward": e, "reward": s, "entropy": h}
                for row, e, s, h in zip(mu, ex, sc, en)]


class DPRM(HeadRewardModel):
    """Backbone + linear head over the labels of ``scale``. ``forward`` returns logits (B, L)."""

    kind = "dprm"

    def __init__(self, backbone: PooledBackbone, scale: LabelScale):
        super().__init__(backbone, scale, scale.num_labels)  # head: D -> L

    @classmethod
    def from_backbone(cls, name_or_path: str, scale: LabelScale, max_length: int = 128,
                      cache_dir: str | None = None, dtype: str = "float32",
                      trust_remote_code: bool = False, seed: int = 0) -> DPRM:
        """A fresh DPRM on a pretrained backbone; the head is initialised from ``seed``."""
        return super().from_backbone(name_or_path, scale, max_length, cache_dir, dtype, trust_remote_code, seed)

    @property
    def num_labels(self) -> int:
        return self.scale.num_labels

    # --- forward and readouts -----------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids, attention_mask)  # (B, D)
        return self.head(h).float()  # (B, L) logits

    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.encode(prompts, responses)  # (B, L)

    def readout(self, logits: torch.Tensor, scalar: str = "expected", cvar_alpha: float = 0.2,
                kappa: float = 1.0) -> RewardOutput:
        """Distribution and scalar readouts of logits (B, L), computed in float64."""
        if scalar not in SCALAR_READOUTS:
            raise RaydprmError(f"unknown scalar reward {scalar!r}; choose one of {', '.join(SCALAR_READOUTS)}")
        z = logits.detach().double()
        mu = torch.softmax(z, -1)  # (B, L)
        logmu = torch.log_softmax(z, -1)
        expected = self.scale.expected_reward(mu)  # (B,) E_mu[r]
        cvar = self.scale.cvar(mu, alpha=cvar_alpha)  # (B,)
        if scalar == "expected":
            sc = expected
        elif scalar == "cvar":
            sc = cvar
        else:
            sc = self.scale.mean_minus_std(mu, kappa=kappa)  # E[r] - kappa Std[r]
        entropy = -(mu * logmu).sum(-1)  # (B,) H(mu) in nats
        return RewardOutput(logits=logits.detach().float(), distribution=mu.float(), expected=expected.float(),
                            scalar=sc.float(), cvar=cvar.float(), entropy=entropy.float())

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], scalar: str = "expected",
              cvar_alpha: float = 0.2, kappa: float = 1.0, batch_size: int = 64) -> RewardOutput:
        """Score (prompt, response) pairs in eval mode, ``batch_size`` at a time."""
        was_training = self.training
        self.eval()
        try:
            chunks = [self.logits(prompts[i:i + batch_size], responses[i:i + batch_size])
                      for i in range(0, len(prompts), batch_size)]
        finally:
            self.train(was_training)
        z = torch.cat(chunks) if chunks else torch.zeros(0, self.num_labels)
        return self.readout(z, scalar, cvar_alpha, kappa)
