"""The distributional preference reward model (DPRM): a pooled HF backbone + a linear head
over the L labels of a :class:`~raydprm.core.label_scale.LabelScale`.

The paper (arXiv 2402.09764; docs/equations.md) adds one linear layer to the SFT
model and reads a label distribution with a softmax:

    h   = backbone(prompt ++ response)[last non-padding token]     # (B, D)
    z   = W h + b                                                  # (B, L) logits
    mu  = softmax(z)                                               # (B, L) label distribution
    R   = E_mu[r] = sum_i mu_i r_i                                 # (B,)  PPO's scalar reward

plus risk readouts (CVaR, mean - kappa std) and the entropy of mu as an uncertainty.

The group-conditioned DPRM (:class:`GroupDPRM`, ``reward.conditioning = group``) keeps one
backbone and one head per rater group g (a persona, or an imported store's group), i.e. a
linear layer D -> G * L read as G label distributions:

    mu_g = softmax(W_g h + b_g)                                    # (B, G, L)
    mu   = sum_g w_g mu_g                                          # (B, L) the population, a mixture

with the group weights w given at scoring time (default: the groups' vote shares in the
training data), so re-weighting the population needs no retraining.

The backbone, the head and the checkpoint format are shared with the Bradley-Terry
baseline (``bt.py``) through :mod:`raydprm.models.backbone`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.models.backbone import (
    BACKBONE_DIR,
    HEAD_FILE,
    META_FILE,
    HeadRewardModel,
    PooledBackbone,
    check_same_scale,
    eval_batched,
    read_meta,
)

__all__ = ["DPRM", "GroupDPRM", "RewardOutput", "label_scale_from_config", "SCALAR_READOUTS", "META_FILE"]

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
    # a group-conditioned DPRM also says what each group thinks: names (G), mu_g (B, G, L), E_mu_g[r] (B, G)
    groups: list[str] | None = None
    group_distribution: torch.Tensor | None = None
    group_expected: torch.Tensor | None = None

    def to_items(self, names: Sequence[str], with_groups: bool = False) -> list[dict[str, Any]]:
        """One JSON-able dict per row: distribution keyed by label name, expected_reward,
        reward (the configured scalar) and entropy; ``with_groups`` (a group-conditioned
        model): ``groups`` = {group: {"distribution": {...}, "expected_reward": float}}."""
        mu = self.distribution.tolist()
        ex, sc, en = self.expected.tolist(), self.scalar.tolist(), self.entropy.tolist()
        out = [{"distribution": dict(zip(names, row)), "expected_reward": e, "reward": s, "entropy": h}
               for row, e, s, h in zip(mu, ex, sc, en)]
        if with_groups and self.groups is not None:
            gd, ge = self.group_distribution.tolist(), self.group_expected.tolist()
            for i, row in enumerate(out):
                row["groups"] = {g: {"distribution": dict(zip(names, gd[i][k])), "expected_reward": ge[i][k]}
                                 for k, g in enumerate(self.groups)}
        return out


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
        z = eval_batched(self, self.logits, prompts, responses, batch_size, (0, self.num_labels))  # (B, L)
        return self.readout(z, scalar, cvar_alpha, kappa)


# --------------------------------------------------------------------------- group-conditioned DPRM


class GroupDPRM(DPRM):
    """One backbone, one label distribution per rater group: head D -> G * L.

    ``forward`` returns logits (B, G, L); :meth:`readout` returns each group's mu_g and the
    population mixture ``sum_g w_g mu_g`` under ``weights`` (a mapping group -> weight, or
    None for :attr:`group_weights`, the training data's vote shares)."""

    kind = "group_dprm"

    def __init__(self, backbone: PooledBackbone, scale: LabelScale, groups: Sequence[str] = ("all",),
                 group_weights: Sequence[float] | None = None):
        groups = [str(g) for g in groups]
        if not groups or len(set(groups)) != len(groups):
            raise RaydprmError(f"a group-conditioned DPRM needs distinct group names, got {groups}")
        HeadRewardModel.__init__(self, backbone, scale, len(groups) * scale.num_labels)  # head: D -> G * L
        self.groups = groups
        w = [1.0] * len(groups) if group_weights is None else [float(x) for x in group_weights]
        if len(w) != len(groups):
            raise RaydprmError(f"{len(w)} group weights for {len(groups)} groups")
        self.group_weights = w

    @classmethod
    def from_backbone(cls, name_or_path: str, scale: LabelScale, max_length: int = 128,
                      cache_dir: str | None = None, dtype: str = "float32",
                      trust_remote_code: bool = False, seed: int = 0, groups: Sequence[str] = ("all",),
                      group_weights: Sequence[float] | None = None) -> GroupDPRM:
        bb = PooledBackbone.from_pretrained(name_or_path, max_length, cache_dir, dtype, trust_remote_code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(bb, scale, groups, group_weights)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids, attention_mask)  # (B, D)
        z = self.head(h).float()  # (B, G * L)
        return z.view(z.shape[0], self.num_groups, self.num_labels)  # (B, G, L) logits

    def weight_vector(self, weights: Mapping[str, float] | Sequence[float] | None = None) -> torch.Tensor:
        """Group weights (G,) normalised to sum 1: a mapping by group name (missing groups get 0),
        a sequence in :attr:`groups` order, or None for the training vote shares."""
        if weights is None:
            w = list(self.group_weights)
        elif isinstance(weights, Mapping):
            unknown = [k for k in weights if k not in self.groups]
            if unknown:
                raise RaydprmError(f"group weights name unknown groups {unknown}; the model has {', '.join(self.groups)}")
            w = [float(weights.get(g, 0.0)) for g in self.groups]
        else:
            w = [float(x) for x in weights]
            if len(w) != self.num_groups:
                raise RaydprmError(f"{len(w)} group weights for {self.num_groups} groups ({', '.join(self.groups)})")
        t = torch.tensor(w, dtype=torch.float64)
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.sum()) <= 0:
            raise RaydprmError(f"group weights must be finite, >= 0 and not all zero, got {w}")
        return t / t.sum()

    def readout(self, logits: torch.Tensor, scalar: str = "expected", cvar_alpha: float = 0.2,
                kappa: float = 1.0, weights: Mapping[str, float] | Sequence[float] | None = None) -> RewardOutput:
        """Per-group distributions (B, G, L) and their mixture under ``weights`` (B, L), with the
        mixture's readouts (as :meth:`DPRM.readout`) and each group's E[r] (B, G)."""
        if scalar not in SCALAR_READOUTS:
            raise RaydprmError(f"unknown scalar reward {scalar!r}; choose one of {', '.join(SCALAR_READOUTS)}")
        z = logits.detach().double()  # (B, G, L)
        mu_g = torch.softmax(z, -1)  # (B, G, L)
        w = self.weight_vector(weights)  # (G,)
        mu = torch.einsum("g,bgl->bl", w, mu_g)  # (B, L) sum_g w_g mu_g
        expected = self.scale.expected_reward(mu)  # (B,)
        cvar = self.scale.cvar(mu, alpha=cvar_alpha)
        if scalar == "expected":
            sc = expected
        elif scalar == "cvar":
            sc = cvar
        else:
            sc = self.scale.mean_minus_std(mu, kappa=kappa)
        entropy = -(mu * torch.log(mu.clamp_min(torch.finfo(torch.float64).tiny))).sum(-1)  # (B,) H(mu)
        group_expected = mu_g @ self.scale.reward_tensor()  # (B, G) E_mu_g[r]
        return RewardOutput(logits=logits.detach().float(), distribution=mu.float(), expected=expected.float(),
                            scalar=sc.float(), cvar=cvar.float(), entropy=entropy.float(), groups=list(self.groups),
                            group_distribution=mu_g.float(), group_expected=group_expected.float())

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], scalar: str = "expected",
              cvar_alpha: float = 0.2, kappa: float = 1.0, batch_size: int = 64,
              weights: Mapping[str, float] | Sequence[float] | None = None) -> RewardOutput:
        z = eval_batched(self, self.logits, prompts, responses, batch_size, (0, self.num_groups, self.num_labels))  # (B, G, L)
        return self.readout(z, scalar, cvar_alpha, kappa, weights)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        d = super().save(directory)
        meta = json.loads((d / META_FILE).read_text())
        meta.update(groups=list(self.groups), group_weights=list(self.group_weights))
        (d / META_FILE).write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], scale: LabelScale | None = None, dtype: str = "float32",
             device: str | torch.device = "cpu") -> GroupDPRM:
        d, meta = read_meta(directory, cls.kind)
        saved = LabelScale.from_dict(meta["labels"])
        if scale is not None:
            check_same_scale(saved, scale, str(d))
        bb = PooledBackbone.from_pretrained(str(d / BACKBONE_DIR), meta.get("max_length", 128), dtype=dtype)
        model = cls(bb, saved, meta["groups"], meta.get("group_weights"))
        model.head.load_state_dict(torch.load(d / HEAD_FILE, map_location="cpu", weights_only=True))
        return model.to(device)
