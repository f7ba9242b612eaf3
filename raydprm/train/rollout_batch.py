"""The learner's input: a batch of rollouts as padded tensors (no ray, no deepspeed).

Shapes: ``B`` rollouts, ``P`` prompt tokens (left-padded), ``T`` response tokens
(right-padded)::

    prompt_ids     (B, P) long    prompt_mask   (B, P)  1 = real token
    response_ids   (B, T) long    response_mask (B, T)  1 = sampled token (incl. a final EOS)
    logprobs       (B, T) float   log pi_sample(token) from the rollout engine (0 at padding)
    rewards        (B,)   float   scalar sequence reward (e.g. E_mu[r] of the DPRM)
    group          (B,)   long    the prompt each rollout answers (rollout.n_per_prompt rollouts share
                                  one; the critic-free baselines are over a group); default: its row

Build one from ragged lists with :meth:`RolloutBatch.from_sequences`, e.g. from the
rollout engine's ``Response`` records (``prompt_ids``, ``token_ids``, ``logprobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from raydprm.errors import RaydprmError

__all__ = ["RolloutBatch", "RolloutBatchError"]


class RolloutBatchError(RaydprmError, ValueError):
    """A rollout batch is malformed (shapes, empty responses, non-finite rewards)."""


@dataclass(frozen=True)
class RolloutBatch:
    """Padded rollouts; validated on construction. Tensors live on CPU."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    group: torch.Tensor | None = None

    def __post_init__(self) -> None:
        B = self.rewards.shape[0] if self.rewards.dim() == 1 else -1
        if B < 1:
            raise RolloutBatchError(f"rewards must be a non-empty (B,) tensor, got shape {tuple(self.rewards.shape)}")
        if self.group is None:
            object.__setattr__(self, "group", torch.arange(B))
        if self.group.shape != (B,) or self.group.dtype != torch.long:
            raise RolloutBatchError(f"group must be a ({B},) int64 tensor, got {tuple(self.group.shape)} {self.group.dtype}")
        for f, want in (("prompt_ids", 2), ("prompt_mask", 2), ("response_ids", 2), ("response_mask", 2),
                        ("logprobs", 2)):
            t = getattr(self, f)
            if not isinstance(t, torch.Tensor) or t.dim() != want or t.shape[0] != B:
                raise RolloutBatchError(f"{f} must be a ({B}, ...) 2-D tensor, got "
                                        f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if self.prompt_mask.shape != self.prompt_ids.shape:
            raise RolloutBatchError("prompt_mask and prompt_ids differ in shape")
        if self.response_mask.shape != self.response_ids.shape or self.logprobs.shape != self.response_ids.shape:
            raise RolloutBatchError("response_mask, logprobs and response_ids must all be (B, T)")
        if self.prompt_ids.dtype != torch.long or self.response_ids.dtype != torch.long:
            raise RolloutBatchError("prompt_ids and response_ids must be int64 token ids")
        if bool((self.response_mask.sum(1) == 0).any()):
            raise RolloutBatchError("every rollout needs at least one response token")
        if bool((self.prompt_mask.sum(1) == 0).any()):
            raise RolloutBatchError("every rollout needs at least one prompt token")
        rm = self.response_mask.bool()
        if rm.shape[1] > 1 and bool((rm[:, 1:] & ~rm[:, :-1]).any()):
            raise RolloutBatchError("response_mask must be right-padded (responses start at column 0)")
        pm = self.prompt_mask.bool()
        if pm.shape[1] > 1 and bool((pm[:, :-1] & ~pm[:, 1:]).any()):
            raise RolloutBatchError("prompt_mask must be left-padded (prompts end at the last column)")
        if not bool(torch.isfinite(self.rewards).all()):
            raise RolloutBatchError("rewards must be finite")

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum())

    @property
    def num_tokens(self) -> int:
        """Prompt + response tokens (what the learner's forward passes read)."""
        return int(self.prompt_mask.sum() + self.response_mask.sum())

    def select(self, idx: torch.Tensor | slice) -> RolloutBatch:
        """The rows ``idx`` (same padding widths)."""
        return RolloutBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def shard(self, rank: int, world_size: int) -> RolloutBatch:
        """Contiguous block ``rank`` of ``world_size`` equal blocks (B must divide evenly)."""
        B = len(self)
        if B % world_size:
            raise RolloutBatchError(f"a batch of {B} rollouts cannot be split evenly over {world_size} learner workers")
        n = B // world_size
        return self.select(slice(rank * n, (rank + 1) * n))

    @classmethod
    def from_sequences(cls, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                       rewards: Sequence[float], logprobs: Sequence[Sequence[float]] | None = None,
                       pad_id: int = 0, group: Sequence[int] | None = None) -> RolloutBatch:
        """Pad ragged token lists: prompts on the left, responses (and logprobs) on the right."""
        B = len(prompt_ids)
        if not (len(response_ids) == len(rewards) == B) or (logprobs is not None and len(logprobs) != B):
            raise RolloutBatchError(f"prompt_ids ({B}), response_ids ({len(response_ids)}), rewards ({len(rewards)})"
                                    + ("" if logprobs is None else f" and logprobs ({len(logprobs)})")
                                    + " must have the same length")
        if B == 0:
            raise RolloutBatchError("empty rollout batch")
        P = max(len(p) for p in prompt_ids)
        T = max(len(r) for r in response_ids)
        if P == 0 or T == 0:
            raise RolloutBatchError("every rollout needs at least one prompt token and one response token")
        pid = torch.full((B, P), pad_id, dtype=torch.long)
        pm = torch.zeros(B, P, dtype=torch.long)
        rid = torch.full((B, T), pad_id, dtype=torch.long)
        rm = torch.zeros(B, T, dtype=torch.long)
        lp = torch.zeros(B, T, dtype=torch.float32)
        for b in range(B):
            p, r = list(prompt_ids[b]), list(response_ids[b])
            if p:
                pid[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
                pm[b, P - len(p):] = 1
            if r:
                rid[b, :len(r)] = torch.tensor(r, dtype=torch.long)
                rm[b, :len(r)] = 1
            if logprobs is not None:
                if len(logprobs[b]) != len(r):
                    raise RolloutBatchError(f"rollout {b}: {len(logprobs[b])} logprobs for {len(r)} response tokens")
                if r:
                    lp[b, :len(r)] = torch.tensor(list(logprobs[b]), dtype=torch.float32)
        return cls(pid, pm, rid, rm, lp, torch.as_tensor(list(rewards), dtype=torch.float32),
                   None if group is None else torch.as_tensor(list(group), dtype=torch.long))

    @classmethod
    def from_responses(cls, responses: Sequence, rewards: Sequence[float], pad_id: int = 0,
                       group: Sequence[int] | None = None) -> RolloutBatch:
        """From rollout-engine records with ``prompt_ids``, ``token_ids`` and ``logprobs``
        (e.g. :class:`raydprm.rollout.engine.Response`), one reward each."""
        return cls.from_sequences([r.prompt_ids for r in responses], [r.token_ids for r in responses], rewards,
                                  [r.logprobs for r in responses], pad_id=pad_id, group=group)
