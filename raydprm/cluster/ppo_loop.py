"""The PPO step over the role groups: generate -> score -> learn -> publish/sync, timed per phase.

    loop = PPOLoop(rollout, reward, learner, cfg.rollout, seed=cfg.run.seed, async_rollout=False)
    for step in range(steps):
        rec = loop.step(step, prompts_of(step))      # {"reward/mean", "ppo/...", "time/generate_s", ...}
    loop.finish()

Synchronous mode (the default): every step generates with the newest policy, scores, updates
the learner and syncs the new weights to the generators before the next step.

Asynchronous mode (``ppo.async_rollout``): the generators produce the rollouts of step t+1
while the learner trains on those of step t, so generation overlaps learning. The
rollouts of step t+1 then come from the policy *before* update t (one step off-policy); PPO's
importance ratio uses the behaviour policy's own token logprobs (what the generator
returned) as the old logprobs, and clipping bounds the step, which is the standard
treatment of one-step staleness. The sync of update t waits until generation of step t+1
has finished (a generator never loads weights in the middle of a batch).

Colocated mode (``pipeline.layout = colocate``: generator i and learner rank i share one
GPU) takes turns within the step, the way hybrid engines share a GPU::

    learner offloaded | generate | generators sleep (KV cache freed, weights to host) | score | learn (the learner
    brings its states back) | learner offloads its optimizer state | generators take their
    weights back and load the new ones | learner offloads its parameters

so the device holds at most max(generator, learner + activations, learner parameters +
generator weights) at a time. ``time/swap_s`` is the time spent in these calls (0 when
split). The order of computation is unchanged, so both layouts give the same numbers.

Each record carries the wall time of each phase (``time/generate_s``, ``time/score_s``,
``time/learn_s``, ``time/sync_s``) and of the whole step (``time/step_s``); in async mode
``time/generate_s`` is the time spent *waiting* for rollouts after learning, i.e. what the
overlap did not hide.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from raydprm.cluster.rollout_actor import RolloutGenerator, split_evenly
from raydprm.cluster.weight_sync import sync_policy
from raydprm.rollout.sampling import SamplingParams
from raydprm.train.rollout_batch import RolloutBatch

__all__ = ["PPOLoop"]


class PPOLoop:
    """Drives one PPO run over a RolloutPool, a RewardPool and a LearnerGroup."""

    def __init__(self, rollout: Any, reward: Any, learner: Any, rollout_cfg: Any, *, seed: int = 0,
                 async_rollout: bool = False, pad_id: int = 0, version: int = 0, colocate: bool = False) -> None:
        self.rollout, self.reward, self.learner = rollout, reward, learner
        self.rollout_cfg, self.seed, self.async_rollout, self.pad_id = rollout_cfg, seed, async_rollout, pad_id
        self.version = version  # the policy version the generators hold
        self.colocate = colocate
        self._inflight: tuple[int, list[str], list[Any]] | None = None  # (step, prompts, refs)
        self._ready: tuple[int, list[str], list[Any]] | None = None  # (step, prompts, responses)
        self.last_samples: tuple[list[str], list[str]] = ([], [])  # (prompt, response text) of the last step

    def _sampling(self, step: int) -> SamplingParams:
        return SamplingParams.from_config(self.rollout_cfg, seed=self.seed * 100_003 + step)

    def _submit(self, step: int, prompts: Sequence[str]) -> tuple[int, list[str], list[Any]]:
        prompts = list(prompts)
        sampling = self._sampling(step)
        slices = [s for s in split_evenly(len(prompts), self.rollout.num_replicas) if s[1] > s[0]]
        refs = self.rollout.group.submit(RolloutGenerator.generate,
                                         [((prompts[a:b], sampling, a), {}) for a, b in slices])
        return step, prompts, refs

    def _collect(self) -> None:
        """Wait for the rollouts in flight; keep them for their step."""
        if self._inflight is not None:
            step, prompts, refs = self._inflight
            self._inflight = None
            parts = self.rollout.group.wait(refs, "generate")
            self._ready = (step, prompts, [r for part in parts for r in part])

    def _responses(self, step: int, prompts: Sequence[str]) -> tuple[list[str], list[Any]]:
        if not self.async_rollout:
            return list(prompts), self.rollout.generate(list(prompts), self._sampling(step))
        if self._ready is None or self._ready[0] != step:
            if self._inflight is None or self._inflight[0] != step:  # the first step (or after a restart)
                self._inflight = self._submit(step, prompts)
            self._collect()
        _, prompts, resp = self._ready
        self._ready = None
        return prompts, resp

    def step(self, step: int, prompts: Sequence[str], next_prompts: Sequence[str] | None = None) -> dict[str, float]:
        """One PPO step on ``prompts``. In async mode pass ``next_prompts`` (those of step + 1)
        so their generation overlaps this step's update."""
        t0 = time.perf_counter()
        t_swap = 0.0
        if self.colocate:  # the generators' turn (a checkpoint save or load since the last step woke the learner)
            self.learner.offload()
            t_swap += time.perf_counter() - t0
        g0 = time.perf_counter()
        prompts, resp = self._responses(step, prompts)
        t_gen = time.perf_counter() - g0
        if self.colocate:
            c0 = time.perf_counter()
            self.rollout.sleep()  # the learner's turn on the shared GPUs
            t_swap += time.perf_counter() - c0
        s0 = time.perf_counter()
        scored = self.reward.score([prompts[r.prompt_index] for r in resp], [r.text for r in resp])
        t_score = time.perf_counter() - s0
        self.last_samples = ([prompts[r.prompt_index] for r in resp], [r.text for r in resp])
        batch = RolloutBatch.from_sequences([r.prompt_ids for r in resp], [r.token_ids for r in resp],
                                            scored["reward"].tolist(), [r.logprobs for r in resp], pad_id=self.pad_id)
        if self.async_rollout and next_prompts is not None:
            self._inflight = self._submit(step + 1, next_prompts)  # runs on the current weights while we learn
        l0 = time.perf_counter()
        metrics = self.learner.update(batch)
        t_learn = time.perf_counter() - l0
        w0 = time.perf_counter()
        self._collect()  # never load weights into a generator in the middle of a batch
        t_gen += time.perf_counter() - w0
        if self.colocate:
            c0 = time.perf_counter()
            self.learner.offload(("optimizer",))  # the parameters stay: the learner publishes them next
            t_swap += time.perf_counter() - c0
        y0 = time.perf_counter()
        behaviour = min(r.weight_version for r in resp)
        lag = self.version - behaviour
        self.version += 1
        sync_policy(self.learner, self.rollout, self.version)  # each generator wakes its weights to load
        t_sync = time.perf_counter() - y0
        if self.colocate:
            c0 = time.perf_counter()
            self.learner.offload(("params",))  # the generators' turn; their KV cache wakes at the next generate
            t_swap += time.perf_counter() - c0
        return {"step": step + 1, "reward/mean": float(scored["reward"].mean()),
                "reward/expected": float(scored["expected"].mean()), "rollout/policy_lag": float(lag),
                **{k: float(v) for k, v in metrics.items() if k.startswith("ppo/")},
                "time/generate_s": t_gen, "time/score_s": t_score, "time/learn_s": t_learn, "time/sync_s": t_sync,
                "time/swap_s": t_swap, "time/step_s": time.perf_counter() - t0}

    def finish(self) -> None:
        """Wait for and drop rollouts still in flight (async mode)."""
        self._collect()
        self._ready = None
