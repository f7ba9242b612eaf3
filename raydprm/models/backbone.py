"""What the DPRM and the Bradley-Terry reward model share: the pooled backbone, a linear
head on it, and the checkpoint format.

Any Hugging Face backbone works, causal LM or encoder, by kit name ("tiny-opt"), local
directory or hub name: it is loaded with ``AutoModel`` (the base model without its LM
head). Sequences are padded on the *right* so that absolute position embeddings see the
same positions whatever the batch (a left-padded causal LM would score the same text
differently in different batches); the pooled token is the last non-padding one:

    h = backbone(prompt ++ response ++ <end>)[last non-padding token]     # (B, D)

A reward model is ``head(h)``: L logits for the DPRM (``dprm.py``), one scalar for
Bradley-Terry (``bt.py``). A checkpoint is a directory::

    <dir>/backbone/          save_pretrained of the backbone and its tokenizer
    <dir>/head.pt            the linear head's state dict
    <dir>/reward_model.json  kind ("dprm" | "bt"), label scale, max_length, hidden_size

``raydprm.models.reward_models.load_reward_model`` opens whichever kind a directory holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError

__all__ = ["PooledBackbone", "HeadRewardModel", "check_same_scale", "read_meta", "META_FILE", "HEAD_FILE",
           "BACKBONE_DIR", "DTYPES"]

META_FILE = "reward_model.json"
HEAD_FILE = "head.pt"
BACKBONE_DIR = "backbone"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_same_scale(found: LabelScale, expected: LabelScale, where: str) -> None:
    """Raise RaydprmError if two label scales differ in names or rewards (grid is not compared)."""
    if not found.same_labels(expected):
        raise RaydprmError(
            f"label scale of the reward model in {where} differs from the configured one: "
            f"checkpoint has labels {list(found.names)} with rewards {list(found.rewards)}, "
            f"config has labels {list(expected.names)} with rewards {list(expected.rewards)} "
            "(retrain the model or set labels.names / labels.rewards to match)")


def read_meta(directory: str | os.PathLike[str], kind: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory and its ``reward_model.json``; RaydprmError if it is not one
    (or, with ``kind``, holds another kind of reward model)."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise RaydprmError(f"'{d}' is not a raydprm reward model directory (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if kind is not None and meta.get("kind") != kind:
        raise RaydprmError(f"'{d}' holds a {meta.get('kind')!r} reward model, expected {kind!r}")
    return d, meta


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

        if dtype not in DTYPES:
            raise RaydprmError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        path = resolve_model(name_or_path, cache_dir or None)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
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


class HeadRewardModel(nn.Module):
    """A :class:`PooledBackbone` with a linear head of ``out_features`` outputs, the label
    scale it is trained next to, and save / load in the checkpoint format above.

    Subclasses set ``kind`` (written to the checkpoint) and implement ``__init__(backbone,
    scale)`` calling ``super().__init__(backbone, scale, out_features)``.
    """

    kind: ClassVar[str] = ""
    # load(dir, scale) refuses a checkpoint whose label scale differs from ``scale``
    scale_must_match: ClassVar[bool] = True

    def __init__(self, backbone: PooledBackbone, scale: LabelScale, out_features: int):
        super().__init__()
        self.backbone = backbone
        self.scale = scale
        self.head = nn.Linear(backbone.hidden_size, out_features)  # D -> out_features
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.head.to(device=backbone.device, dtype=next(backbone.model.parameters()).dtype)

    @classmethod
    def from_backbone(cls, name_or_path: str, scale: LabelScale | None = None, max_length: int = 128,
                      cache_dir: str | None = None, dtype: str = "float32", trust_remote_code: bool = False,
                      seed: int = 0):
        """A fresh model on a pretrained backbone; the head is initialised from ``seed``."""
        bb = PooledBackbone.from_pretrained(name_or_path, max_length, cache_dir, dtype, trust_remote_code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(bb, scale)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """``forward`` on tokenized (prompt, response) pairs: (B, out_features) or (B,)."""
        enc = self.backbone.tokenize(prompts, responses)
        return self(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write backbone, head and label scale to ``directory`` (created; overwritten)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backbone.save(d / BACKBONE_DIR)
        torch.save({k: v.detach().cpu() for k, v in self.head.state_dict().items()}, d / HEAD_FILE)
        meta = {"kind": self.kind, "labels": self.scale.to_dict(), "max_length": self.backbone.max_length,
                "hidden_size": self.backbone.hidden_size}
        (d / META_FILE).write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], scale: LabelScale | None = None, dtype: str = "float32",
             device: str | torch.device = "cpu"):
        """Load a saved model of this kind. With ``scale`` (and ``scale_must_match``), the
        saved label scale must equal it (else RaydprmError)."""
        d, meta = read_meta(directory, cls.kind)
        saved = LabelScale.from_dict(meta["labels"])
        if scale is not None and cls.scale_must_match:
            check_same_scale(saved, scale, str(d))
        bb = PooledBackbone.from_pretrained(str(d / BACKBONE_DIR), meta.get("max_length", 128), dtype=dtype)
        model = cls(bb, saved)
        model.head.load_state_dict(torch.load(d / HEAD_FILE, map_location="cpu", weights_only=True))
        return model.to(device)


@torch.no_grad()
def eval_batched(model: torch.nn.Module, fn: Callable[[Sequence[str], Sequence[str]], torch.Tensor],
                 prompts: Sequence[str], responses: Sequence[str], batch_size: int,
                 empty: tuple[int, ...]) -> torch.Tensor:
    """``fn`` (a method of ``model``: its logits or rewards) of (prompt, response) pairs in eval mode,
    ``batch_size`` at a time (the model's training mode restored); a zero tensor of shape ``empty``
    for no pairs."""
    was_training = model.training
    model.eval()
    try:
        chunks = [fn(prompts[i:i + batch_size], responses[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(*empty)
