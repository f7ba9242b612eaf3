"""One RL step over the role groups, top to bottom: generate -> score -> advantages + update -> publish.

    loop = PPOLoop(rollout, reward, learner, cfg.rollout, seed=cfg.run.seed)
    rec = loop.step(step, prompts)      # {"reward/mean", "ppo/...", "time/generate_s", ...}; loop.finish() at the end

The learner computes the advantages (``ppo.advantage``: GAE with the critic, or a critic-free
estimator over each prompt's ``rollout.n_per_prompt`` responses, :mod:`raydprm.core.advantages`)
and the policy loss (``ppo.policy_loss``) from the batch; the driver only moves handles and data.

Synchronous (default): every step generates with the newest policy. Asynchronous (``ppo.async_rollout``):
step t+1's rollouts are submitted before the learner trains on step t (one step off-policy, bounded by the
importance ratio and clipping) and collected before update t is published (never a weight load mid-batch);
a generator that died meanwhile is restarted by :meth:`RolloutPool.collect` and redoes its slice.

Colocated (``pipeline.layout = colocate``: generator i and learner rank i share one GPU), the
roles take turns: learner offloaded | generate | generators sleep | score | learn | learner
offloads its optimizer state | publish | learner offloads its parameters. Same numbers as split.

One :class:`PhaseTimer` times every phase: ``time/generate_s`` (async: the wait the overlap did not hide),
``time/score_s``, ``time/learn_s``, ``time/sync_s``, ``time/swap_s`` (colocated offloads) and ``time/step_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from raydprm.cluster.learner_group import LearnerGroup
from raydprm.cluster.reward_actor import RewardPool
from raydprm.cluster.rollout_actor import PendingRollout, RolloutPool
from raydprm.cluster.weight_sync import sync_policy
from raydprm.config import RolloutConfig
from raydprm.rollout.engine import Response
from raydprm.rollout.sampling import SamplingParams
from raydprm.train.rollout_batch import RolloutBatch

__all__ = ["PPOLoop", "PhaseTimer"]


class PhaseTimer:
    """Wall time per phase: ``with timer("score"): ...`` adds to ``time/score_s``; a phase entered
    twice (async generate: submit, then the wait after learning) sums."""

    PHASES = ("generate", "score", "learn", "sync", "swap")

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def record(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.seconds.items()} | {"time/step_s": time.perf_counter() - self.t0}


class PPOLoop:
    """Drives one RL run over a RolloutPool, a RewardPool and a LearnerGroup."""

    def __init__(self, rollout: RolloutPool, reward: RewardPool, learner: LearnerGroup, rollout_cfg: RolloutConfig,
                 *, seed: int = 0, async_rollout: bool = False, pad_id: int = 0, version: int = 0,
                 colocate: bool = False) -> None:
        self.rollout, self.reward, self.learner = rollout, reward, learner
        self.rollout_cfg, self.seed, self.async_rollout, self.pad_id = rollout_cfg, seed, async_rollout, pad_id
        self.version = version  # the policy version the generators hold
        self.colocate = colocate
        self._ahead: tuple[int, PendingRollout | list[Response]] | None = None  # async: (step, its rollouts)
        self.last_samples: tuple[list[str], list[str]] = ([], [])  # (prompt, response text) of the last step

    def sampling(self, step: int) -> SamplingParams:
        """Step ``step``'s sampling: ``rollout.n_per_prompt`` responses per prompt, seeded by (seed, step)."""
        return SamplingParams.from_config(self.rollout_cfg, n=self.rollout_cfg.n_per_prompt,
                                          seed=self.seed * 100_003 + step)

    def step(self, step: int, prompts: Sequence[str], next_prompts: Sequence[str] | None = None) -> dict[str, float]:
        """One step on ``prompts`` (async mode: ``next_prompts``, those of step + 1, generate meanwhile)."""
        timer, prompts = PhaseTimer(), list(prompts)
        if self.colocate:  # the generators' turn (a checkpoint save or load since the last step woke the learner)
            with timer("swap"):
                self.learner.offload()
        # 1. generate: rollout.n_per_prompt responses per prompt, kept in prompt order (groups stay together)
        with timer("generate"):
            resp = self._generate(step, prompts)
        if self.colocate:
            with timer("swap"):
                self.rollout.sleep()  # the learner's turn on the shared GPUs
        # 2. score: the reward model's scalar readout (reward.scalar) of every response
        asked, texts = [prompts[r.prompt_index] for r in resp], [r.text for r in resp]
        with timer("score"):
            scored = self.reward.score(asked, texts)
        self.last_samples = (asked, texts)
        batch = RolloutBatch.from_responses(resp, scored["reward"].tolist(), pad_id=self.pad_id,
                                            group=[r.prompt_index for r in resp])
        if self.async_rollout and next_prompts is not None:  # runs on the current weights while we learn
            self._ahead = (step + 1, self.rollout.submit(list(next_prompts), self.sampling(step + 1)))
        # 3. advantages and 4. update, in the learner (ppo.advantage, ppo.policy_loss)
        with timer("learn"):
            metrics = self.learner.update(batch)
        with timer("generate"):
            self._settle()  # never load weights into a generator in the middle of a batch
        if self.colocate:
            with timer("swap"):
                self.learner.offload(("optimizer",))  # the parameters stay: the learner publishes them next
        # 5. publish: the learner's weights become the generators' next version
        lag = self.version - min(r.weight_version for r in resp)
        with timer("sync"):
            self.publish()
        if self.colocate:
            with timer("swap"):
                self.learner.offload(("params",))  # the generators' turn; their KV cache wakes at the next generate
        return {"step": step + 1, "reward/mean": float(scored["reward"].mean()),
                "reward/expected": float(scored["expected"].mean()), "rollout/policy_lag": float(lag),
                **{k: float(v) for k, v in metrics.items() if k.startswith("ppo/")}, **timer.record()}

    def publish(self) -> None:
        """The learner publishes its policy as the next version; every generator loads and verifies it
        (each sync must be newer than the last)."""
        self.version += 1
        sync_policy(self.learner, self.rollout, self.version)

    def _generate(self, step: int, prompts: list[str]) -> list[Response]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == step:  # async: submitted during the step before
            return ahead[1] if isinstance(ahead[1], list) else self.rollout.collect(ahead[1])
        return self.rollout.generate(prompts, self.sampling(step))  # sync, the first step, or after a restart

    def _settle(self) -> None:
        """Wait for the rollouts in flight (async); keep them for their step."""
        if self._ahead is not None and isinstance(self._ahead[1], PendingRollout):
            self._ahead = (self._ahead[0], self.rollout.collect(self._ahead[1]))

    def finish(self, collect: bool = True) -> None:
        """Drop rollouts in flight (async), waited for when ``collect``; a restart handler does not wait
        (the step is redone; a generator lost with the learner could not get the lost weights back)."""
        if collect:
            self._settle()
        self._ahead = None
