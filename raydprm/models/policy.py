"""The PPO policy: a causal LM with a value function, and its frozen reference.

The value function is either a linear head on the policy's last hidden state
(``critic="value_head"``) or a separate backbone with its own head
(``critic="separate"``). Both live in one :class:`ActorCritic` module so that one
optimizer / one DeepSpeed engine trains them together.

Sequence layout used everywhere in the learner: ``input_ids = cat(prompt, response)``
with the prompt left-padded (width ``P``) and the response right-padded (width ``T``).
The logits and the value at position ``P - 1 + t`` belong to response token ``t``: they
are computed from the prompt and ``response[:t]`` (the state ``s_t``).

Dropout is always off (``train()`` keeps every submodule in eval mode): PPO's ratio must be
exactly 1 at the first step of an update, and the logprobs the learner computes must match
the rollout engine's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raydprm.errors import RaydprmError
from raydprm.models.tiny import resolve_model

__all__ = ["ActorCritic", "PolicyLoadError", "load_policy", "load_reference", "load_tokenizer", "sequence_inputs",
           "export_hf"]

class PolicyLoadError(RaydprmError, ValueError):
    """A policy / reference / critic name that cannot be a model."""


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sequence_inputs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                    response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each (B, P + T).

    Positions count real tokens only (as ``generate`` does with left padding), so the
    learner sees exactly the positions the sampler saw.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P + T)
    attn = torch.cat([prompt_mask, response_mask], dim=1).long()  # (B, P + T)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attn, pos


def _hidden_size(config) -> int:
    for k in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"cannot find the hidden size of model config {type(config).__name__}")


class ActorCritic(nn.Module):
    """Policy LM + value function. ``forward`` returns response logits and values."""

    def __init__(self, lm: nn.Module, critic_backbone: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.critic_backbone = critic_backbone  # None: the value head reads the policy's hidden state
        src = critic_backbone.config if critic_backbone is not None else lm.config
        # the last hidden state of OPT is projected to word_embed_proj_dim; GPT-2 has n_embd
        self.value_head = nn.Linear(_hidden_size(src), 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at start: no random value noise in the first GAE
        nn.init.zeros_(self.value_head.bias)
        self.train(False)

    def train(self, mode: bool = True) -> ActorCritic:
        """Always eval mode (dropout off); gradients still flow."""
        return super().train(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                response_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and values (B, T) of the last ``T = response_len`` tokens."""
        T = response_len
        want_h = self.critic_backbone is None
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=T + 1, output_hidden_states=want_h, use_cache=False)
        logits = out.logits[:, :-1]  # (B, T, V): positions P-1 .. P+T-2
        if want_h:
            h = out.hidden_states[-1]  # (B, P + T, D)
        else:
            h = self.critic_backbone(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids, use_cache=False).last_hidden_state
        h = h[:, -T - 1:-1]  # (B, T, D)
        values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)  # (B, T)
        return logits, values


def _no_dropout_config(path: str, trust_remote_code: bool):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for k, v in list(vars(cfg).items()):
        if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop")):
            setattr(cfg, k, 0.0)
    return cfg


def _load_lm(name: str, dtype: str, trust_remote_code: bool, base: bool = False) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; expected one of {', '.join(_DTYPES)}")
    path = resolve_model(name)
    local = Path(path).expanduser()
    if not local.exists() and (local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1):
        raise PolicyLoadError(f"model '{name}' is neither a tiny kit name, an existing directory nor an "
                              "org/name hub id")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per learner / actor
    cls = AutoModel if base else AutoModelForCausalLM
    return cls.from_pretrained(path, config=_no_dropout_config(path, trust_remote_code),
                               dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code)


def load_policy(name: str, critic: str = "value_head", critic_model: str = "", dtype: str = "float32",
                trust_remote_code: bool = False) -> ActorCritic:
    """The trainable policy + value function from a kit name, a directory or a hub name."""
    if critic not in ("value_head", "separate"):
        raise ValueError(f"unknown critic '{critic}'; expected 'value_head' or 'separate'")
    lm = _load_lm(name, dtype, trust_remote_code)
    backbone = None
    if critic == "separate":
        backbone = _load_lm(critic_model or name, dtype, trust_remote_code, base=True)
    return ActorCritic(lm, backbone)


def load_reference(name: str, dtype: str = "float32", trust_remote_code: bool = False) -> nn.Module:
    """The frozen reference LM: eval mode, no gradients."""
    lm = _load_lm(name, dtype, trust_remote_code)
    lm.requires_grad_(False)
    return lm.eval()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def export_hf(lm_state: dict[str, torch.Tensor], source: str, out_dir: str | Path, tokenizer=None,
              trust_remote_code: bool = False) -> Path:
    """Write an ordinary HF directory: the architecture of ``source`` with ``lm_state``
    (full, un-partitioned LM weights), the source's own config (dropout as shipped) and
    the tokenizer. ``from_pretrained(out_dir)`` loads it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = resolve_model(source)
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    model.load_state_dict(lm_state, assign=True, strict=False)
    missing = [k for k, p in model.state_dict().items() if p.is_meta]
    if missing:
        raise ValueError(f"exported state lacks {len(missing)} weights, e.g. {missing[:3]}")
    model.save_pretrained(out)
    (tokenizer or load_tokenizer(source, trust_remote_code)).save_pretrained(out)
    return out
