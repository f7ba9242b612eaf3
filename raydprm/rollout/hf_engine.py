"""The transformers rollout engine: a KV-cached, batched decoding loop over any HF causal LM.

It runs wherever torch runs, and it is the reference the vLLM engine is checked against
(same greedy tokens, logprobs equal to a teacher-forced forward pass). The loop is
written out rather than delegated to ``model.generate`` so that the sampling semantics
(per-request seeds, raw logprobs, stop strings, finish reasons) are exactly the ones in
:mod:`raydprm.rollout.sampling`, independent of the transformers version.

Shapes: ``B`` sequences in a chunk (prompts x samples), ``S`` padded prompt length,
``V`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from raydprm.rollout.engine import Prompt, Response, RolloutEngine, RolloutError, encode_prompts, find_stop
from raydprm.rollout.sampling import SamplingParams, request_seed

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, both (B, S)."""
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), S), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, S - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[b, S - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each left-padded row."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def teacher_forced_logprobs(model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int = 0,
                            batch_size: int = 32) -> list[list[float]]:
    """Raw logprobs of each token given its prefix, from one forward pass per batch.

    Row ``i`` gets ``len(seq_i) - 1`` values: ``log_softmax(logits[t])[seq_i[t+1]]``.
    This is the learner-side twin of an engine's ``score`` and of the logprobs an engine
    reports for the tokens it sampled.
    """
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(sequences), batch_size):
        rows = sequences[start:start + batch_size]
        if any(len(r) < 2 for r in rows):
            raise RolloutError("every scored sequence needs at least 2 tokens")
        ids, mask = _left_pad(rows, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits  # (B, S, V)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, S-1, V)
        tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, S-1)
        for b, r in enumerate(rows):
            out.append(tok[b, ids.shape[1] - len(r):].tolist())
    return out


@torch.no_grad()
def teacher_forced_vocab_logprobs(model: torch.nn.Module, sequences: Sequence[Sequence[int]],
                                  starts: Sequence[int], pad_id: int = 0, batch_size: int = 32) -> list[Any]:
    """Full-vocabulary log-probabilities at the positions that predict ``seq_i[starts[i]:]``: one
    float32 array (len(seq_i) - starts[i], V) per sequence (row t: ``log_softmax(logits[starts[i] + t - 1])``).
    What an exact KL between two models needs (:func:`raydprm.core.kl.kl_from_logits`)."""
    device = next(model.parameters()).device
    out: list[Any] = []
    for start in range(0, len(sequences), batch_size):
        rows = [list(r) for r in sequences[start:start + batch_size]]
        ids, mask = _left_pad(rows, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits  # (B, S, V)
        for b, r in enumerate(rows):
            first = starts[start + b]
            if not 1 <= first <= len(r):
                raise RolloutError(f"response start {first} is outside a sequence of {len(r)} tokens")
            off = ids.shape[1] - len(r)  # left padding
            rows_bt = logits[b, off + first - 1: off + len(r) - 1].float()  # (T, V)
            out.append(torch.log_softmax(rows_bt, dim=-1).cpu().numpy())
    return out


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering; filtered entries -> -inf. (B, V)"""
    logits = logits / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class HFEngine(RolloutEngine):
    """Rollout engine on a transformers causal LM (CPU or one GPU)."""

    name = "transformers"

    def __init__(self, model: str | torch.nn.Module, *, tokenizer: Any = None, dtype: str = "float32",
                 device: str = "auto", max_prompt_tokens: int = 192, batch_size: int = 64,
                 **unused: Any) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from raydprm.models.tiny import resolve_model

        if dtype not in _DTYPES:
            raise RolloutError(f"unknown dtype '{dtype}'; expected one of {', '.join(_DTYPES)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise RolloutError("HFEngine on a model object needs its tokenizer")
            self.model = model
            self.model_name = type(model).__name__
        else:
            path = resolve_model(model)
            self.model_name = str(model)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype])
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        self.model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams, first_index: int = 0) -> list[Response]:
        encoded = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        rows = [(first_index + i, j, ids) for i, ids in enumerate(encoded) for j in range(sampling.n)]
        out: list[Response] = []
        for start in range(0, len(rows), self.batch_size):
            out.extend(self._generate_chunk(rows[start:start + self.batch_size], sampling))
        return out

    @torch.no_grad()
    def _generate_chunk(self, rows: list[tuple[int, int, list[int]]], sp: SamplingParams) -> list[Response]:
        B = len(rows)
        ids, mask = _left_pad([r[2] for r in rows], self.pad_id, self.device)  # (B, S)
        pos = _positions(mask)
        gens = None
        if not sp.greedy:
            gens = []
            for i, j, _ in rows:
                g = torch.Generator(device="cpu")
                seed = request_seed(sp.seed, i, j)
                g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item()))
                gens.append(g)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        reasons: list[str | None] = [None] * B
        stops: list[tuple[int, str] | None] = [None] * B

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()  # (B, V)
        for _ in range(sp.max_new_tokens):
            logp = torch.log_softmax(logits, dim=-1)  # (B, V) raw logprobs
            if sp.greedy:
                nxt = logits.argmax(-1)  # (B,)
            else:
                probs = torch.softmax(_filter_logits(logits, sp.temperature, sp.top_k, sp.top_p), dim=-1).cpu()
                # exponential race: argmax p_v / q_v with q ~ Exp(1) draws v with probability p_v,
                # and each row uses its own generator (reproducible whatever the batch)
                q = torch.stack([torch.empty(probs.shape[-1]).exponential_(generator=g) for g in gens])
                nxt = (probs / q).argmax(-1).to(self.device)
            nxt_lp = logp.gather(-1, nxt[:, None]).squeeze(-1).tolist()
            nxt_l = nxt.tolist()
            for b in range(B):
                if reasons[b] is not None:
                    continue
                tokens[b].append(nxt_l[b])
                logprobs[b].append(nxt_lp[b])
                if nxt_l[b] == self.eos_id and not sp.ignore_eos:
                    reasons[b] = "stop"
                elif sp.stop and (hit := find_stop(self._decode(tokens[b]), sp.stop)) is not None:
                    reasons[b], stops[b] = "stop", hit
                elif len(tokens[b]) >= sp.max_new_tokens:
                    reasons[b] = "length"
            if all(r is not None for r in reasons):
                break
            nxt = torch.tensor([tk[-1] if reasons[b] is None else self.pad_id for b, tk in enumerate(tokens)],
                               device=self.device)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=self.device)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                             past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()

        responses = []
        for b, (i, j, prompt_ids) in enumerate(rows):
            text = self._decode(tokens[b])
            if stops[b] is not None:
                text = text[:stops[b][0]]
            responses.append(Response(prompt_index=i, sample_index=j, prompt_ids=list(prompt_ids),
                                      token_ids=tokens[b], text=text, logprobs=logprobs[b],
                                      finish_reason=reasons[b] or "length",
                                      stop_string=stops[b][1] if stops[b] else None,
                                      weight_version=self.weight_version))
        return responses

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ scoring and weights

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        return teacher_forced_logprobs(self.model, [list(s) for s in sequences], self.pad_id, self.batch_size)

    def sleep(self) -> None:
        """On a GPU: weights to host memory and the allocator's cache back to the driver (this
        engine keeps no KV cache between calls). On the CPU there is nothing to give back."""
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        if self.device.type == "cuda" and "weights" in tags:
            self.model.to(self.device)

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> int:
        own = self.model.state_dict()
        items = list(named_tensors)
        # check everything before copying anything: a refused load leaves the old weights intact
        unknown = [name for name, _ in items if name not in own]
        if unknown:
            raise RolloutError(f"{len(unknown)} weights are not in the model: {unknown[:5]}")
        for name, t in items:
            if tuple(own[name].shape) != tuple(t.shape):
                raise RolloutError(f"weight '{name}' has shape {tuple(t.shape)}; the model expects {tuple(own[name].shape)}")
        for name, t in items:
            own[name].copy_(t)
        return len(items)
