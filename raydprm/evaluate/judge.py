"""The simulated population judges a policy's samples (seeds x prompts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Judged", "judge_samples"]


@dataclass
class Judged:
    """What the population thinks of one policy's samples.

    ``dist``: (S, N, L) the population's label distribution of each sample (seed s, prompt n);
    ``persona_reward``: {persona: (S, N)} each persona's expected reward E_p[r];
    ``reward``: (S, N) the population's expected reward, ``dist @ rewards``;
    ``kl``: (S, N) sequence KL estimate to the reference (sum over tokens of log pi - log pi_ref)."""

    dist: np.ndarray
    persona_reward: dict[str, np.ndarray]
    reward: np.ndarray
    kl: np.ndarray

    @property
    def label_pct(self) -> np.ndarray:
        return 100.0 * self.dist.reshape(-1, self.dist.shape[-1]).mean(0)


def judge_samples(population, rewards: Sequence[float], prompts: Sequence[str],
                  responses: Sequence[Sequence[str]], kl: np.ndarray | None = None) -> Judged:
    """``responses[s][n]`` answers ``prompts[n]`` under sampling seed ``s``."""
    r = np.asarray(rewards, dtype=np.float64)
    S, N = len(responses), len(prompts)
    dist = np.stack([population.true_distributions(prompts, list(resp)) for resp in responses])  # (S, N, L)
    persona = {}
    for name in population.names:
        p = population.personas[name]
        # E_p[r] = sum_l p(l | x, y) r_l for each persona p
        persona[name] = np.stack([p.judge_batch(prompts, list(resp)) @ r for resp in responses])
    kl = np.zeros((S, N)) if kl is None else np.asarray(kl, dtype=np.float64).reshape(S, N)
    return Judged(dist=dist, persona_reward=persona, reward=dist @ r, kl=kl)
