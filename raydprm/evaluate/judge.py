"""A judge's verdict on a policy's samples (seeds x prompts): the simulated population
(:func:`judge_samples`), or a learned gold reward model with per-group outputs
(:func:`judge_with_model`, the real-crowd runs: a model, not people)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Judged", "judge_samples", "judge_with_model"]


@dataclass
class Judged:
    """What the population thinks of one policy's samples.

    ``dist``: (S, N, L) the population's label distribution of each sample (seed s, prompt n);
    ``persona_reward``: {persona: (S, N)} each persona's expected reward E_p[r];
    ``reward``: (S, N) the population's expected reward, ``dist @ rewards``;
    ``kl``: (S, N) sequence KL estimate to the reference (sum over tokens of log pi - log pi_ref);
    ``group_dist``: {group: (S, N, L)} each rater group's (persona's) label distribution."""

    dist: np.ndarray
    persona_reward: dict[str, np.ndarray]
    reward: np.ndarray
    kl: np.ndarray
    group_dist: dict[str, np.ndarray] | None = None

    @property
    def label_pct(self) -> np.ndarray:
        return 100.0 * self.dist.reshape(-1, self.dist.shape[-1]).mean(0)


def judge_samples(population, rewards: Sequence[float], prompts: Sequence[str],
                  responses: Sequence[Sequence[str]], kl: np.ndarray | None = None) -> Judged:
    """``responses[s][n]`` answers ``prompts[n]`` under sampling seed ``s``."""
    r = np.asarray(rewards, dtype=np.float64)
    S, N = len(responses), len(prompts)
    dist = np.stack([population.true_distributions(prompts, list(resp)) for resp in responses])  # (S, N, L)
    persona, group_dist = {}, {}
    for name in population.names:
        p = population.personas[name]
        group_dist[name] = np.stack([p.judge_batch(prompts, list(resp)) for resp in responses])  # (S, N, L)
        persona[name] = group_dist[name] @ r  # E_p[r] = sum_l p(l | x, y) r_l for each persona p
    kl = np.zeros((S, N)) if kl is None else np.asarray(kl, dtype=np.float64).reshape(S, N)
    return Judged(dist=dist, persona_reward=persona, reward=dist @ r, kl=kl, group_dist=group_dist)


def judge_with_model(model, prompts: Sequence[str], responses: Sequence[Sequence[str]], kl: np.ndarray | None = None,
                     weights=None, batch_size: int = 64) -> Judged:
    """A learned judge (a DPRM or group-conditioned DPRM, e.g. the gold model of a real-crowd run)
    scores ``responses[s][n]``: the population's distribution is the model's (for a group model
    the mixture under ``weights``, default its training vote shares) and each group's comes from
    its own head."""
    S, N = len(responses), len(prompts)
    r = model.scale.reward_tensor().numpy()
    flat = [x for resp in responses for x in resp]
    kw = {"weights": weights} if getattr(model, "groups", None) is not None else {}
    out = model.score(list(prompts) * S, flat, batch_size=batch_size, **kw)
    L = out.distribution.shape[-1]
    dist = out.distribution.double().numpy().reshape(S, N, L)
    group_dist = {}
    if out.groups is not None:
        gd = out.group_distribution.double().numpy().reshape(S, N, len(out.groups), L)
        group_dist = {g: gd[:, :, k] for k, g in enumerate(out.groups)}
    kl = np.zeros((S, N)) if kl is None else np.asarray(kl, dtype=np.float64).reshape(S, N)
    return Judged(dist=dist, persona_reward={g: d @ r for g, d in group_dist.items()}, reward=dist @ r, kl=kl,
                  group_dist=group_dist)
