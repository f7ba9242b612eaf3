"""The direct-alignment learner (DPO, IPO, SLiC, RSO-SLiC, RRHF, crowd DPO): one process
(one rank of a data-parallel group) holding the policy LM, the frozen reference and the
PPO learner's training engine (:func:`raydprm.train.ds_engine.build_engine`).

Data: pairs of responses to the same prompt, built from a preference-store export
(:func:`pairs_from_export`): each item carries the crowd's label distribution mu, and a
pair (a, b) gets the crowd's preference probability

    p = P(a > b) = P(r_a > r_b) + 0.5 P(r_a = r_b)      (raydprm.core.pbde.crowd_preference)

oriented so that ``chosen`` is the side the crowd prefers (p >= 0.5). ``crowd_dpo`` trains
on p as a soft label; the other algorithms on the hard label "chosen wins".

One :meth:`DirectAlignmentLearner.update` on a :class:`PairBatch` of ``B`` pairs runs
``align.epochs`` passes over it in shuffled minibatches of ``align.minibatch`` pairs (the
shuffle depends only on (seed, step, epoch): identical on every rank and world size).
Each rank takes its ``minibatch / W`` pairs of a minibatch in ``grad_accum`` micro-batches;
a micro-batch's loss is its per-pair losses summed and divided by ``minibatch / (W G)``,
so the applied gradient is exactly that of the minibatch's mean loss, whatever W and G.

Sequence log-probabilities: ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over the
response tokens (an EOS is appended to each response), chosen and rejected in one forward.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raydprm.config import AlignConfig, EngineConfig, EngineSection
from raydprm.core.pairwise_loss import pairwise_loss
from raydprm.core.pbde import crowd_preference
from raydprm.core.ppo_loss import token_logprobs
from raydprm.errors import RaydprmError
from raydprm.models.policy import load_policy, sequence_inputs
from raydprm.train.rank import LearnerRank

__all__ = ["DirectAlignmentLearner", "PairBatch", "PairBatchError", "PolicyLM", "pairs_from_export",
           "pair_batches"]



class PairBatchError(RaydprmError, ValueError):
    """A pair batch or the pairs it is built from are malformed."""


# ----------------------------------------------------------------------------- data


def pairs_from_export(export, rewards: Sequence[float], *, pairs_per_prompt: int = 6, ties: str = "half",
                      min_margin: float = 0.0, hard: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs of responses to the same prompt from a store export (a ``datasets.Dataset`` or
    rows with ``prompt``, ``response`` and ``target``: the crowd's label distribution).

    For each prompt with >= 2 responses: up to ``pairs_per_prompt`` distinct pairs (all of
    them when there are fewer; a seeded choice otherwise), each
    ``{"prompt", "chosen", "rejected", "target"}`` with ``target = P(chosen > rejected)``
    >= 0.5. With ``hard=True`` pairs with ``|P - 0.5| <= min_margin`` are dropped (exact ties
    carry no hard label)."""
    rows = export.to_list() if hasattr(export, "to_list") else list(export)
    r = np.asarray(rewards, dtype=np.float64)
    by_prompt: dict[str, list[tuple[str, np.ndarray]]] = {}
    for i, row in enumerate(rows):
        for col in ("prompt", "response", "target"):
            if col not in row:
                raise PairBatchError(f"export row {i} has no '{col}' column")
        mu = np.asarray(row["target"], dtype=np.float64)
        if mu.shape != r.shape or not np.all(np.isfinite(mu)) or np.any(mu < 0) or mu.sum() <= 0:
            raise PairBatchError(f"export row {i}: 'target' must be {len(r)} finite non-negative numbers, not all 0")
        by_prompt.setdefault(str(row["prompt"]), []).append((str(row["response"]), mu / mu.sum()))
    rng = np.random.default_rng(seed)
    out = []
    for prompt in sorted(by_prompt):
        items = by_prompt[prompt]
        cand = [(i, j) for i in range(len(items)) for j in range(i + 1, len(items)) if items[i][0] != items[j][0]]
        if len(cand) > pairs_per_prompt:
            cand = [cand[k] for k in sorted(rng.choice(len(cand), pairs_per_prompt, replace=False))]
        for i, j in cand:
            p = float(crowd_preference(items[i][1], items[j][1], r, ties=ties))
            if hard and abs(p - 0.5) <= min_margin:
                continue
            (c, rj), pc = ((i, j), p) if p >= 0.5 else ((j, i), 1.0 - p)
            out.append({"prompt": prompt, "chosen": items[c][0], "rejected": items[rj][0], "target": pc})
    if not out:
        raise PairBatchError("the export gives no pairs: it needs prompts with at least two rated responses "
                             "whose crowd preference is not a tie")
    return out


@dataclass(frozen=True)
class PairBatch:
    """Tokenised pairs. Shapes: ``B`` pairs, ``P`` prompt tokens (left-padded), ``T``
    response tokens (right-padded, the same width for chosen and rejected)::

        prompt_ids (B, P)   prompt_mask (B, P)
        chosen_ids (B, T)   chosen_mask (B, T)   rejected_ids (B, T)   rejected_mask (B, T)
        target (B,)         the crowd's P(chosen > rejected)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    chosen_ids: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_ids: torch.Tensor
    rejected_mask: torch.Tensor
    target: torch.Tensor

    def __post_init__(self) -> None:
        B = self.target.shape[0] if self.target.dim() == 1 else -1
        if B < 1:
            raise PairBatchError(f"target must be a non-empty (B,) tensor, got shape {tuple(self.target.shape)}")
        for name in ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"):
            t = getattr(self, name)
            if t.dim() != 2 or t.shape[0] != B:
                raise PairBatchError(f"{name} must be ({B}, ...), got {tuple(t.shape)}")
        if self.chosen_ids.shape != self.rejected_ids.shape or self.chosen_mask.shape != self.chosen_ids.shape \
                or self.rejected_mask.shape != self.rejected_ids.shape or self.prompt_mask.shape != self.prompt_ids.shape:
            raise PairBatchError("chosen / rejected ids and masks must all be (B, T); prompt ids and mask (B, P)")
        if bool((self.chosen_mask.sum(1) == 0).any() or (self.rejected_mask.sum(1) == 0).any()):
            raise PairBatchError("every response needs at least one token")
        if not bool(torch.all((self.target >= 0) & (self.target <= 1))):
            raise PairBatchError("target must be probabilities in [0, 1]")

    def __len__(self) -> int:
        return self.target.shape[0]

    def select(self, idx) -> PairBatch:
        return PairBatch(*(getattr(self, f)[idx] for f in _FIELDS))

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(*(getattr(self, f).to(device) for f in _FIELDS))

    @classmethod
    def from_pairs(cls, pairs: Sequence[Mapping[str, Any]], tokenizer, max_prompt_tokens: int = 64,
                   max_response_tokens: int = 48) -> PairBatch:
        """Tokenise ``{"prompt", "chosen", "rejected", "target"}`` rows (e.g. from
        :func:`pairs_from_export`). Prompts keep their last ``max_prompt_tokens`` tokens,
        responses their first ``max_response_tokens - 1`` plus EOS."""
        if not pairs:
            raise PairBatchError("no pairs")
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        P_ids = [ids(p["prompt"])[-max_prompt_tokens:] or [eos] for p in pairs]
        C_ids = [ids(p["chosen"])[:max_response_tokens - 1] + [eos] for p in pairs]
        R_ids = [ids(p["rejected"])[:max_response_tokens - 1] + [eos] for p in pairs]
        B, P = len(pairs), max(len(x) for x in P_ids)
        T = max(len(x) for x in C_ids + R_ids)
        prompt_ids = torch.full((B, P), pad, dtype=torch.long)
        prompt_mask = torch.zeros(B, P, dtype=torch.long)
        out = {k: torch.full((B, T), pad, dtype=torch.long) for k in ("c", "r")}
        masks = {k: torch.zeros(B, T, dtype=torch.long) for k in ("c", "r")}
        for i in range(B):
            prompt_ids[i, P - len(P_ids[i]):] = torch.tensor(P_ids[i])
            prompt_mask[i, P - len(P_ids[i]):] = 1
            for k, seqs in (("c", C_ids), ("r", R_ids)):
                out[k][i, :len(seqs[i])] = torch.tensor(seqs[i])
                masks[k][i, :len(seqs[i])] = 1
        target = torch.tensor([float(p.get("target", 1.0)) for p in pairs], dtype=torch.float32)
        return cls(prompt_ids, prompt_mask, out["c"], masks["c"], out["r"], masks["r"], target)


_FIELDS = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask", "target")


def pair_batches(pairs: Sequence[Mapping[str, Any]], batch: int, seed: int = 0):
    """Endless seeded stream of ``batch``-sized lists of pairs: a fresh permutation per pass."""
    if len(pairs) < batch:
        raise PairBatchError(f"{len(pairs)} pairs cannot fill a batch of align.batch = {batch}")
    epoch = 0
    while True:
        perm = np.random.default_rng((seed, epoch)).permutation(len(pairs))
        for s in range(0, len(perm) - batch + 1, batch):
            yield [pairs[i] for i in perm[s:s + batch]]
        epoch += 1


# ----------------------------------------------------------------------------- model


class PolicyLM(nn.Module):
    """The policy LM (``self.lm``, so weights are named like the PPO learner's ``lm.*``);
    ``forward`` returns the response logits (B, T, V). Always eval mode (dropout off)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.train(False)

    def train(self, mode: bool = True) -> PolicyLM:
        return super().train(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                response_len: int) -> torch.Tensor:
        T = response_len
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=T + 1, use_cache=False)
        return out.logits[:, :-1]  # (B, T, V): the logits that predict response tokens 0..T-1


# ----------------------------------------------------------------------------- learner


class DirectAlignmentLearner(LearnerRank):
    """One rank of the direct-alignment learner (``world_size = engine.num_workers``); the
    same rank base (:class:`~raydprm.train.rank.LearnerRank`: device, process group, seeds,
    reference, engine, checkpoints) and constructor arguments as
    :class:`~raydprm.train.learner.PPOLearner`."""

    def __init__(self, align: AlignConfig, policy: str, *, engine: EngineSection | None = None, seed: int = 0,
                 rank: int = 0, master_addr: str = "127.0.0.1", master_port: int | None = None, device: str = "auto",
                 dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__(EngineConfig.of(engine or EngineSection(), align), policy, seed=seed, rank=rank, master_addr=master_addr,
                         master_port=master_port, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        self.align = align
        self._build(PolicyLM(load_policy(policy, dtype=dtype, trust_remote_code=trust_remote_code).lm))
        self.loss_fn = pairwise_loss(align.algo)

    # ------------------------------------------------------------------ helpers

    def _loss_kwargs(self) -> dict[str, float]:
        a = self.align
        return {"dpo": {"beta": a.beta}, "crowd_dpo": {"beta": a.beta}, "ipo": {"tau": a.tau},
                "slic": {"delta": a.delta, "sft_weight": a.sft_weight}, "slic_rso": {"delta": a.delta},
                "rrhf": {"sft_weight": a.sft_weight}}[a.algo]

    def _inputs(self, b: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attn, pos) of the 2B sequences [prompt + chosen; prompt + rejected], and the
        response ids / mask (2B, T)."""
        resp = torch.cat([b.chosen_ids, b.rejected_ids])  # (2B, T)
        rmask = torch.cat([b.chosen_mask, b.rejected_mask])
        ids, attn, pos = sequence_inputs(b.prompt_ids.repeat(2, 1), b.prompt_mask.repeat(2, 1), resp, rmask)
        return ids, attn, pos, resp, rmask

    def _seq_logprobs(self, b: PairBatch, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy sequence log-probs (2B,) [chosen; rejected] and response lengths (2B,)."""
        ids, attn, pos, resp, rmask = self._inputs(b)
        with torch.set_grad_enabled(grad), self.engine.autocast():
            logits = self.engine.forward(ids, attn, pos, resp.shape[1])  # (2B, T, V)
            lp = (token_logprobs(logits, resp) * rmask).sum(1)  # (2B,)
        return lp, rmask.sum(1).to(lp.dtype)

    def _ref_logprobs(self, b: PairBatch) -> torch.Tensor:
        ids, attn, pos, resp, rmask = self._inputs(b)
        return (self._ref_token_logprobs(ids, attn, pos, resp) * rmask).sum(1)  # (2B,)

    # ------------------------------------------------------------------ update

    def update(self, batch: PairBatch) -> dict[str, float]:
        """One update. Metrics (floats, identical on every rank), means over the pairs of
        all minibatches and epochs: ``align/loss``, ``align/margin`` (the loss's margin,
        e.g. the log-ratio margin h for DPO), ``align/accuracy`` (margin > 0),
        ``align/chosen_logratio`` and ``align/rejected_logratio`` (log pi - log pi_ref),
        ``align/target`` (mean crowd P(chosen > rejected)); ``align/grad_norm`` (mean over
        optimizer steps, before clipping), ``align/pairs_per_s``, ``align/update_time_s``,
        ``align/optimizer_steps``, ``align/step``."""
        if not isinstance(batch, PairBatch):
            raise PairBatchError(f"update() takes a PairBatch, got {type(batch).__name__}")
        e = self.ecfg  # the engine's batch shape (align.minibatch, engine.micro_batch, engine.num_workers)
        B, M, W, r = len(batch), self.align.minibatch, self.world_size, self.rank
        if B % M:
            raise PairBatchError(f"a batch of {B} pairs does not split into minibatches of align.minibatch = {M}")
        Mw, mu, G = e.worker_minibatch, e.worker_micro_batch, e.grad_accum
        t0 = time.perf_counter()
        full = batch if self.device.type == "cpu" else batch.to(self.device)
        kw = self._loss_kwargs()
        soft = self.align.algo == "crowd_dpo"
        acc = torch.zeros(7, dtype=torch.float64)  # loss, margin, accuracy, chosen lr, rejected lr, target, pairs
        grad_norms, n_opt = [], 0
        denom = M / (W * G)  # engines average over W ranks x G micro-batches
        for epoch in range(self.align.epochs):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 1_009 + epoch)
            perm = torch.randperm(B, generator=g)  # same on every rank and every world size
            for start in range(0, B, M):
                mine = perm[start:start + M][r * Mw:(r + 1) * Mw]
                for i in range(0, Mw, mu):
                    idx = mine[i:i + mu]
                    mb = full.select(idx.to(self.device) if self.device.type != "cpu" else idx)
                    n = len(mb)
                    ref = self._ref_logprobs(mb).float()
                    lp, lens = self._seq_logprobs(mb, grad=True)
                    per_pair, st = self.loss_fn(lp[:n], lp[n:], mb.target if soft else None, ref_chosen=ref[:n],
                                                ref_rejected=ref[n:], **kw,
                                                **({"len_chosen": lens[:n], "len_rejected": lens[n:]}
                                                   if self.align.algo == "rrhf" else {}))
                    loss = per_pair.sum() / denom
                    if self.engine.backward(loss):
                        n_opt += 1
                        if self.engine.last_grad_norm is not None:
                            grad_norms.append(self.engine.last_grad_norm)
                    with torch.no_grad():
                        d = (lp.detach() - ref)
                        acc += torch.stack([per_pair.detach().sum(), st["margin"] * n, st["accuracy"] * n,
                                            d[:n].sum(), d[n:].sum(), mb.target.sum(),
                                            torch.tensor(float(n))]).double().cpu()
        acc = self._sum_ranks(acc.to(self.device) if self.device.type == "cuda" else acc).cpu()
        self.step += 1
        elapsed = time.perf_counter() - t0
        n = float(acc[6])
        return {"align/loss": float(acc[0]) / n, "align/margin": float(acc[1]) / n, "align/accuracy": float(acc[2]) / n,
                "align/chosen_logratio": float(acc[3]) / n, "align/rejected_logratio": float(acc[4]) / n,
                "align/target": float(acc[5]) / n,
                "align/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                "align/pairs_per_s": B * self.align.epochs / elapsed, "align/update_time_s": elapsed,
                "align/optimizer_steps": float(n_opt), "align/step": float(self.step)}

    @torch.no_grad()
    def evaluate(self, batch: PairBatch) -> dict[str, float]:
        """The loss and accuracy on ``batch`` without training (this rank's whole batch)."""
        b = batch if self.device.type == "cpu" else batch.to(self.device)
        n = len(b)
        ref = self._ref_logprobs(b).float()
        lp, lens = self._seq_logprobs(b, grad=False)
        per_pair, st = self.loss_fn(lp[:n], lp[n:], b.target if self.align.algo == "crowd_dpo" else None,
                                    ref_chosen=ref[:n], ref_rejected=ref[n:], **self._loss_kwargs(),
                                    **({"len_chosen": lens[:n], "len_rejected": lens[n:]}
                                       if self.align.algo == "rrhf" else {}))
        return {"align/eval_loss": float(per_pair.mean()), "align/eval_accuracy": float(st["accuracy"])}

    # ------------------------------------------------------------------ state

    def _meta(self) -> dict[str, Any]:
        return super()._meta() | {"algo": self.align.algo}

    def _restore(self, meta: dict[str, Any], d: Path) -> None:
        """Same world size, engine and algorithm."""
        if meta.get("algo", self.align.algo) != self.align.algo:
            raise RaydprmError(f"checkpoint '{d}' was trained with align.algo = {meta['algo']}, "
                               f"not {self.align.algo}")
        super()._restore(meta, d)
