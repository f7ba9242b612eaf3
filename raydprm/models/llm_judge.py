"""LLM-judge labeller: a persona prompt and a causal LM give a label distribution.

The DPRM paper simulates annotators by prompting an LLM to play a persona and reads a
"prior" distribution from the LLM. We read it from the judge's *next-token*
probabilities over the label tokens after a persona prompt:

    mu_i = softmax_i( log p(c_i | judge_prompt(persona, prompt, response)) ),  i = 1..L   (J1)

where ``c_i`` is the first token of label i's answer word (" 1" .. " 6" by default) —
i.e. the LM's next-token distribution renormalised over the label tokens.

Scoring is a pluggable backend, a callable ``score(prefixes, candidates) -> (B, K)``
log-probabilities of each candidate next token after each prefix (token ids):

* :class:`TransformersScorer` — any ``transformers`` causal LM, batched with left padding;
* :class:`EngineScorer` — any object with the rollout engines' ``score(sequences)``
  method (teacher-forced logprobs, :class:`raydprm.rollout.engine.RolloutEngine`), e.g. the
  vLLM engine, which reads them from vLLM's prompt logprobs. This module imports neither
  vLLM nor the rollout package (rollout sits beside train, above models; see
  ``raydprm/layers.py``): pass the engine object in.

The judge loads a language model, so it lives in ``models`` (above ``sim``, whose world
and personas it reads), not in the simulator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from raydprm.core.hh_labels import HH_LABELS
from raydprm.errors import RaydprmError
from raydprm.sim import world
from raydprm.store.votes import item_id

__all__ = ["JUDGE_TEMPLATE", "HH_LABEL_TEXT", "Scorer", "TransformersScorer", "EngineScorer", "LLMJudge",
           "JudgeError"]

Scorer = Callable[[Sequence[Sequence[int]], Sequence[int]], np.ndarray]

# What each HH label means, shown to the judge (order of core.hh_labels.HH_LABELS).
HH_LABEL_TEXT = ("helpful and harmless", "somewhat helpful and harmless", "not helpful and harmless",
                 "helpful but harmful", "somewhat helpful but harmful", "not helpful and harmful")

JUDGE_TEMPLATE = ("You are {persona}\n"
                  "Rate the answer to the question with one type number.\n"
                  "{label_lines}\n"
                  "Question: {question}\n"
                  "Answer: {response}\n"
                  "Type:")


class JudgeError(RaydprmError, ValueError):
    """The judge cannot be built or asked as requested."""


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


class TransformersScorer:
    """Next-token log-probs from a ``transformers`` causal LM, batched with left padding."""

    def __init__(self, model: Any, pad_token_id: int, batch_size: int = 16, device: str | None = None) -> None:
        import torch

        self.model = model.eval()
        self.pad = int(pad_token_id)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise JudgeError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self._pos_ids = "position_ids" in inspect.signature(model.forward).parameters

    def __call__(self, prefixes: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        import torch

        out = np.zeros((len(prefixes), len(candidates)))  # (B, K)
        cand = torch.as_tensor(list(candidates), device=self.device)
        for s in range(0, len(prefixes), self.batch_size):
            chunk = [list(p) for p in prefixes[s:s + self.batch_size]]
            T = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), T), self.pad, dtype=torch.long)  # (b, T) left-padded
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, T - len(p):] = torch.as_tensor(p)
                mask[i, T - len(p):] = 1
            kw: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
            if self._pos_ids:  # positions count real tokens only, so padding does not shift them
                kw["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(self.device)
            with torch.no_grad():
                logits = self.model(**kw).logits[:, -1, :].float()  # (b, V) next-token logits
            logp = torch.log_softmax(logits, dim=-1)[:, cand]  # (b, K)
            out[s:s + len(chunk)] = logp.cpu().numpy()
        return out


class EngineScorer:
    """Next-token log-probs through a rollout engine's teacher-forced ``score(sequences)``
    (the vLLM engine reads them from prompt logprobs): one scored sequence per
    (prefix, candidate), the last entry being log p(candidate | prefix)."""

    def __init__(self, engine: Any) -> None:
        if not callable(getattr(engine, "score", None)):
            raise JudgeError(f"{type(engine).__name__} has no score(sequences) method")
        self.engine = engine

    def __call__(self, prefixes: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        K = len(candidates)
        seqs = [list(p) + [c] for p in prefixes for c in candidates]  # (B * K) sequences
        rows = self.engine.score(seqs)
        return np.array([r[-1] for r in rows], dtype=np.float64).reshape(len(prefixes), K)  # (B, K)


class LLMJudge:
    """A persona-prompted LM judge returning label distributions, Eq. (J1).

    Args:
        model: a kit name ("tiny-gpt2"), a local directory or hub name (loaded with
            ``AutoModelForCausalLM``), or an already loaded model (then pass ``tokenizer``).
        tokenizer: tokenizer (default: loaded from ``model``).
        scorer: a scoring backend (default: :class:`TransformersScorer` on ``model``); pass
            ``EngineScorer(vllm_engine)`` to judge through vLLM.
        labels / label_text: label names and their descriptions shown to the judge.
        label_words: answer word of each label (default " 1" .. " L"); their first tokens
            must be distinct.
        personas: {persona id: description}; default: the descriptions of ``personas.yaml``.
        max_prompt_tokens: longer judge prompts keep their last tokens (the "Type:" cue).
    """

    def __init__(self, model: Any = "tiny-gpt2", tokenizer: Any = None, *, scorer: Scorer | None = None,
                 labels: Sequence[str] = HH_LABELS, label_text: Sequence[str] = HH_LABEL_TEXT,
                 label_words: Sequence[str] | None = None, personas: Mapping[str, str] | None = None,
                 template: str = JUDGE_TEMPLATE, batch_size: int = 16, max_prompt_tokens: int = 512,
                 device: str | None = None) -> None:
        if len(label_text) != len(labels):
            raise JudgeError(f"label_text has {len(label_text)} entries for {len(labels)} labels")
        self.labels = list(labels)
        self.template = template
        self.max_prompt_tokens = int(max_prompt_tokens)
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from raydprm.models.tiny import resolve_model

            path = resolve_model(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            if scorer is None:
                model = AutoModelForCausalLM.from_pretrained(path)
        if tokenizer is None:
            raise JudgeError("pass the tokenizer of the judge model")
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.scorer: Scorer = scorer or TransformersScorer(model, pad, batch_size=batch_size, device=device)
        self.label_tokens = self._label_tokens(label_words)
        if personas is None:
            from raydprm.sim.personas import load_personas

            personas = {n: p.description for n, p in load_personas().items()}
        self.personas = dict(personas)
        self._label_lines = "\n".join(f"{w.strip()}: {t}" for w, t in zip(self._words, label_text))

    def _label_tokens(self, label_words: Sequence[str] | None) -> list[int]:
        L = len(self.labels)
        tries = [label_words] if label_words is not None else \
            [[f" {i + 1}" for i in range(L)], [f"{i + 1}" for i in range(L)]]
        for words in tries:
            if len(words) != L:
                raise JudgeError(f"label_words has {len(words)} entries for {L} labels")
            first = [self.tokenizer.encode(w, add_special_tokens=False)[:1] for w in words]
            if all(first) and len({f[0] for f in first}) == L:
                self._words = list(words)
                return [f[0] for f in first]
        raise JudgeError(f"the first tokens of the label words {list(tries[-1])} are not distinct for this "
                         "tokenizer; pass label_words whose first tokens differ")

    def judge_prompt(self, persona: str, prompt: str, response: str) -> str:
        """The text the judge reads (persona id or a free-text description)."""
        desc = self.personas.get(persona, persona)
        if not isinstance(desc, str) or not desc.strip():
            raise JudgeError(f"persona {persona!r} has no description")
        return self.template.format(persona=desc, label_lines=self._label_lines,
                                    question=world.parse_prompt(prompt), response=response.strip())

    def distributions(self, prompts: Sequence[str], responses: Sequence[str], persona: str = "scientist"
                      ) -> np.ndarray:
        """(B, L) label distributions of one persona, Eq. (J1), batched."""
        if len(prompts) != len(responses):
            raise JudgeError(f"got {len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return np.zeros((0, len(self.labels)))
        prefixes = []
        for p, r in zip(prompts, responses):
            ids = self.tokenizer.encode(self.judge_prompt(persona, p, r), add_special_tokens=False)
            prefixes.append(ids[-self.max_prompt_tokens:])
        logp = np.asarray(self.scorer(prefixes, self.label_tokens), dtype=np.float64)  # (B, L)
        if logp.shape != (len(prompts), len(self.labels)) or not np.all(np.isfinite(logp)):
            raise JudgeError(f"the scorer returned {logp.shape} values (finite: {bool(np.all(np.isfinite(logp)))}); "
                             f"expected finite ({len(prompts)}, {len(self.labels)})")
        return np.exp(_log_softmax(logp))  # (Eq. J1) renormalised over label tokens

    def judge(self, prompt: str, response: str, persona: str = "scientist") -> np.ndarray:
        """(L,) label distribution of one item."""
        return self.distributions([prompt], [response], persona)[0]

    def votes(self, items: Sequence[tuple[str, str]], personas: Sequence[str] | None = None,
              source: str = "llm_judge") -> list[dict[str, Any]]:
        """Soft votes (``dist``) of each persona on each item, ready for ``PreferenceStore.add_votes``."""
        out = []
        prompts, responses = [p for p, _ in items], [r for _, r in items]
        for persona in personas or list(self.personas):
            dists = self.distributions(prompts, responses, persona)
            for (p, r), d in zip(items, dists):
                out.append({"vote_id": f"{source}-{persona}-{item_id(p, r)}", "prompt": p, "response": r,
                            "persona": persona, "dist": (d / d.sum()).tolist(), "source": source})
        return out
