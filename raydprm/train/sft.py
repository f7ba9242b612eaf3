"""Supervised fine-tuning of a causal LM on (prompt, response) pairs.

The loss is the mean next-token cross-entropy over *response* tokens only (prompt tokens
are context), with the EOS token appended so the policy learns to stop:

    L = - 1/|R| sum_{t in R} log pi(y_t | y_<t)

Dropout is off while fine-tuning (``dropout=0.0``; ``None`` keeps the model's own): the
tiny kit's 0.2M-parameter policy underfits rather than overfits, and with dropout 0.1 it
did not learn in the default budget which topic's words answer a question (docs/world.md).
PPO trains without dropout too (raydprm.models.policy). The saved config keeps the
model's own dropout settings.

Single process, CPU or one GPU; the pipeline runs it inside one Ray task. Saves an
ordinary Hugging Face directory (model + tokenizer) that every engine loads.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTResult:
    path: Path
    first_loss: float
    final_loss: float
    steps: int


def encode_pairs(tokenizer, examples: Sequence[dict], max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of ``prompt + response + eos`` and the index where the response starts."""
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or "prompt" not in ex or "response" not in ex:
            raise ValueError(f"SFT example {i} must be a dict with 'prompt' and 'response'")
        p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        r = tokenizer(ex["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + r)[:max_length]
        if len(p) >= len(ids):
            continue  # no response token survives truncation: nothing to learn from
        out.append((ids, len(p)))
    if not out:
        raise ValueError(f"no SFT example fits max_length={max_length}")
    return out


def _is_dropout_key(key: str, value) -> bool:
    """A dropout probability of an HF config (``resid_pdrop``, ``attention_dropout``, ...)."""
    return isinstance(value, float) and ("dropout" in key or key.endswith("pdrop"))


def _collate(batch: list[tuple[list[int], int]], pad_id: int):
    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T), right padded
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (ids, start) in enumerate(batch):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attn[b, : len(ids)] = 1
        labels[b, start : len(ids)] = torch.tensor(ids[start:])
    return input_ids, attn, labels


def sft(model: str | os.PathLike[str], examples: Sequence[dict], out_dir: str | os.PathLike[str], *,
        epochs: int = 2, lr: float = 3e-3, batch_size: int = 32, max_length: int = 96, seed: int = 0,
        dropout: float | None = 0.0, progress: bool = True) -> SFTResult:
    """Fine-tune ``model`` (a directory or hub name) on ``examples`` and save to ``out_dir``.

    ``dropout``: probability every dropout of the model uses while training; ``None`` = as shipped.
    """
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model)
    config = AutoConfig.from_pretrained(model)
    shipped = {k: v for k, v in vars(config).items() if _is_dropout_key(k, v)}
    if dropout is not None:
        for k in shipped:
            setattr(config, k, dropout)
    net = AutoModelForCausalLM.from_pretrained(model, config=config)
    data = encode_pairs(tok, examples, max_length)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / total))
    g = torch.Generator().manual_seed(seed)
    net.train()
    first = final = float("nan")
    bar = tqdm(total=total, desc="sft", disable=not progress, leave=False)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g).tolist()
        for i in range(0, len(order), batch_size):
            ids, attn, labels = _collate([data[j] for j in order[i : i + batch_size]], tok.pad_token_id)
            loss = net(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            final = loss.item()
            if step == 1:
                first = final
            bar.set_postfix(loss=f"{final:.3f}")
            bar.update()
    bar.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k, v in shipped.items():  # the saved model keeps its own dropout settings
        setattr(net.config, k, v)
    net.save_pretrained(out)
    tok.save_pretrained(out)
    log.info("sft: %d steps, loss %.3f -> %.3f, saved to %s", step, first, final, out)
    return SFTResult(out, first, final, step)
