"""The distributional preference reward model (DPRM): an HF backbone + a linear head over
the L labels of a :class:`~raydprm.core.label_scale.LabelScale`.

The paper (arXiv 2402.09764, PAPERS.md section 1) adds one linear layer to the SFT
model and reads a label distribution with a softmax:

    h   = backbone(prompt ++ response)[last non-padding token]     # (B, D)
    z   = W h + b                                                  # (B, L) logits
    mu  = softmax(z)                                               # (B, L) label distribution
    R   = E_mu[r] = sum_i mu_i r_i                                 # (B,)  PPO's scalar reward

plus risk readouts (CVaR, mean - kappa std) and the entropy of mu as an uncertainty.

Any Hugging Face backbone works, causal LM or encoder, by kit name ("tiny-opt"), local
directory or hub name: it is loaded with ``AutoModel`` (the base model without its LM
head). Sequences are padded on the *right* so that absolute position embeddings see the
same positions whatever the batch (a left-padded causal LM would score the same text
differently in different batches); the pooled token is the last non-padding one.

A checkpoint is a directory::

    <dir>/backbone/        save_pretrained of the backbone and its tokenizer
    <dir>/head.pt          the linear head's state dict
    <dir>/reward_model.json kind ("dprm" | "bt"), label scale, max_length

:class:`PooledBackbone` is shared with the Bradley-Terry baseline (``bt.py``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError

__all__ = ["DPRM", "PooledBackbone", "RewardOutput", "label_scale_from_config", "load_reward_model",
           "SCALAR_READOUTS"]

META_FILE = "reward_model.json"
HEAD_FILE = "head.pt"
BACKBONE_DIR = "backbone"

# config name of a scalar readout (reward.scalar) -> LabelScale.scalarise name
SCALAR_READOUTS = {"expected": "expected", "cvar": "cvar", "mean_std": "mean_minus_std"}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def label_scale_from_config(labels_cfg) -> LabelScale:
    """The LabelScale of a ``LabelsConfig`` (names, rewards, grid)."""
    return LabelScale(names=tuple(labels_cfg.names), rewards=tuple(labels_cfg.rewards),
                      grid=labels_cfg.grid)


def _scale_to_json(scale: LabelScale) -> dict[str, Any]:
    return {"names": list(scale.names), "rewards": list(scale.rewards),
            "grid": [list(g) for g in scale.grid] if scale.grid is not None else None}


def _scale_from_json(d: dict[str, Any]) -> LabelScale:
    return LabelScale(names=tuple(d["names"]), rewards=tuple(d["rewards"]),
                      grid=tuple(tuple(g) for g in d["grid"]) if d.get("grid") is not None else None)


def check_same_scale(found: LabelScale, expected: LabelScale, where: str) -> None:
    """Raise RaydprmError if two label scales differ in names or rewards (grid is not compared)."""
    same = (tuple(found.names) == tuple(expected.names) and len(found.rewards) == len(expected.rewards)
            and all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(found.rewards, expected.rewards)))
    if not same:
        raise RaydprmError(
            f"label scale of the reward model in {where} differs from the configured one: "
            f"checkpoint has labels {list(found.names)} with rewards {list(found.rewards)}, "
            f"config has labels {list(expected.names)} with rewards {list(expected.rewards)} "
            "(retrain the model or set labels.names / labels.rewards to match)")


# --------------------------------------------------------------------------- backbone


class PooledBackbone(nn.Module):
    """An HF base model + its tokenizer; encodes (prompt, response) pairs and pools the
    hidden state of the last non-padding token. Output (B, D)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 128):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        if tokenizer.pad_token_id is None:  # e.g. GPT-2 hub tokenizers
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
        # Appended to every sequence so the pooled token is the same kind of token for all.
        self.end_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.hidden_size = self._infer_hidden_size()

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int = 128, cache_dir: str | None = None,
                        dtype: str = "float32", trust_remote_code: bool = False) -> PooledBackbone:
        """Load a backbone by kit name, directory or hub name (``AutoModel``: no LM head)."""
        from transformers import AutoModel, AutoTokenizer

        from raydprm.models.tiny import resolve_model

        if dtype not in _DTYPES:
            raise RaydprmError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
        path = resolve_model(name_or_path, cache_dir or None)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(path, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code)
        except OSError as e:
            raise RaydprmError(f"cannot load reward backbone '{name_or_path}': {e}") from None
        return cls(model, tok, max_length=max_length)

    def _infer_hidden_size(self) -> int:
        # The width of last_hidden_state is not always config.hidden_size (OPT projects
        # out to word_embed_proj_dim), so ask the model with one token.
        dev = next(self.model.parameters()).device
        ids = torch.tensor([[self.end_id if self.end_id is not None else 0]], device=dev)
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return int(out.last_hidden_state.shape[-1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded ids of ``prompt ++ response ++ <end>``, truncated on the left (the
        response, at the end, is what is judged). Returns input_ids, attention_mask (B, T)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        tok = self.tokenizer
        budget = self.max_length - (1 if self.end_id is not None else 0)
        rows = []
        for p, r in zip(prompts, responses):
            ids = tok(p, add_special_tokens=False)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"]
            ids = ids[-budget:] if budget > 0 else []
            if self.end_id is not None:
                ids = ids + [self.end_id]
            rows.append(ids or [tok.pad_token_id])
        T = max(len(x) for x in rows)
        input_ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state  # (B, T, D)
        T = attention_mask.shape[1]
        # index of the last non-padding token, whichever side the padding is on
        pos = torch.arange(T, device=attention_mask.device)
        last = (attention_mask.long() * (pos + 1)).argmax(-1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


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


class DPRM(nn.Module):
    """Backbone + linear head over the labels of ``scale``. ``forward`` returns logits (B, L)."""

    kind = "dprm"

    def __init__(self, backbone: PooledBackbone, scale: LabelScale):
        super().__init__()
        self.backbone = backbone
        self.scale = scale
        self.head = nn.Linear(backbone.hidden_size, scale.num_labels)  # D -> L
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.head.to(device=backbone.device, dtype=next(backbone.model.parameters()).dtype)

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_backbone(cls, name_or_path: str, scale: LabelScale, max_length: int = 128,
                      cache_dir: str | None = None, dtype: str = "float32",
                      trust_remote_code: bool = False, seed: int = 0) -> DPRM:
        """A fresh DPRM on a pretrained backbone; the head is initialised from ``seed``."""
        bb = PooledBackbone.from_pretrained(name_or_path, max_length, cache_dir, dtype, trust_remote_code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(bb, scale)

    @property
    def num_labels(self) -> int:
        return self.scale.num_labels

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # --- forward and readouts -----------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids, attention_mask)  # (B, D)
        return self.head(h).float()  # (B, L) logits

    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        enc = self.backbone.tokenize(prompts, responses)
        return self(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))  # (B, L)

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

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write backbone, head and label scale to ``directory`` (created; overwritten)."""
        return save_head_model(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], scale: LabelScale | None = None,
             dtype: str = "float32", device: str | torch.device = "cpu") -> DPRM:
        """Load a saved DPRM. If ``scale`` is given it must equal the saved one (else RaydprmError)."""
        d, meta = _read_meta(directory, cls.kind)
        saved = _scale_from_json(meta["labels"])
        if scale is not None:
            check_same_scale(saved, scale, str(d))
        bb = PooledBackbone.from_pretrained(str(d / BACKBONE_DIR), meta.get("max_length", 128), dtype=dtype)
        model = cls(bb, saved)
        model.head.load_state_dict(torch.load(d / HEAD_FILE, map_location="cpu", weights_only=True))
        return model.to(device)


def save_head_model(model, directory: str | os.PathLike[str]) -> Path:
    """Save a backbone + head reward model (DPRM or BT): backbone dir, head tensors, meta."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.backbone.save(d / BACKBONE_DIR)
    torch.save({k: v.detach().cpu() for k, v in model.head.state_dict().items()}, d / HEAD_FILE)
    meta = {"kind": model.kind, "labels": _scale_to_json(model.scale), "max_length": model.backbone.max_length,
            "hidden_size": model.backbone.hidden_size}
    (d / META_FILE).write_text(json.dumps(meta, indent=2))
    return d


def _read_meta(directory: str | os.PathLike[str], kind: str) -> tuple[Path, dict[str, Any]]:
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise RaydprmError(f"'{d}' is not a raydprm reward model directory (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != kind:
        raise RaydprmError(f"'{d}' holds a {meta.get('kind')!r} reward model, expected {kind!r}")
    return d, meta


def load_reward_model(directory: str | os.PathLike[str], scale: LabelScale | None = None,
                      dtype: str = "float32", device: str | torch.device = "cpu"):
    """Load whichever reward model (DPRM or Bradley-Terry) a checkpoint directory holds."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise RaydprmError(f"'{d}' is not a raydprm reward model directory (no {META_FILE})")
    kind = json.loads(meta_path.read_text()).get("kind")
    if kind == "bt":
        from raydprm.models.bt import BTRewardModel

        return BTRewardModel.load(d, dtype=dtype, device=device)
    return DPRM.load(d, scale=scale, dtype=dtype, device=device)
