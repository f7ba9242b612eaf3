"""Pairwise preference labels from the simulated crowd, through PBDE choice rules.

Bradley-Terry reward models and direct-alignment losses (DPO, IPO, ...) need pairs
(prompt, chosen, rejected). We draw them from the *same* population that gives the
distributional labels, so baselines and DPRM learn from one crowd.

Each persona p has a log-density over responses (our choice; the world has no
"true" density):

    log p*_p(x) = E_{mu_p(x)}[r] / temperature - word_cost * |x|                (S1)

(E_mu[r]: expected reward of the persona's label distribution, Table 1 rewards; |x|:
words). A persona prefers a over b by a PBDE rule of :mod:`raydprm.core.pbde` ("luce",
"length_normalised_luce" with Omega = log p* / |x|, or "dpo" with a reference
log-probability), and the pooled crowd by the mixture of its personas (Eq. 25).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raydprm.core import pbde
from raydprm.core.hh_labels import HH_REWARDS
from raydprm.sim import world
from raydprm.sim.personas import PersonaError, Population

__all__ = ["RULES", "persona_logp", "persona_omega", "preference_probability", "sample_pairs", "to_hh_record"]

RULES = tuple(pbde.PBDE_RULES)


def persona_logp(population: Population, prompt: str, responses: Sequence[str], temperature: float = 1.0,
                 word_cost: float = 0.0) -> np.ndarray:
    """(P, N) log p*_p(x) of Eq. (S1) for each persona p and response x."""
    if not temperature > 0:
        raise PersonaError(f"temperature must be > 0, got {temperature}")
    r = np.asarray(HH_REWARDS)
    cols = []
    for x in responses:
        er = population.persona_distributions(prompt, x) @ r  # (P,)
        n = max(world.features(prompt, x).n_words, 1)
        cols.append(er / temperature - word_cost * n)  # (Eq. S1)
    return np.stack(cols, axis=1) if cols else np.zeros((len(population.names), 0))


def persona_omega(population: Population, prompt: str, responses: Sequence[str], rule: str = "luce", *,
                  temperature: float = 1.0, word_cost: float = 0.0, beta: float = 1.0,
                  ref_logp: Callable[[str, str], float] | None = None) -> np.ndarray:
    """(P, N) Omega_p(x) of the PBDE ``rule`` (so that P(a > b) = sigmoid(Omega(a) - Omega(b)))."""
    lp = persona_logp(population, prompt, responses, temperature, word_cost)
    if rule == "luce":
        return pbde.omega(lp)  # f = 1, g = 0
    if rule == "length_normalised_luce":
        n = np.array([max(world.features(prompt, x).n_words, 1) for x in responses], dtype=float)
        return pbde.omega(lp, f=1.0 / n[None, :])  # f = 1/|x|
    if rule == "dpo":
        if not beta > 0:
            raise PersonaError(f"beta must be > 0, got {beta}")
        ref = np.array([ref_logp(prompt, x) if ref_logp else 0.0 for x in responses], dtype=float)
        return pbde.omega(lp, f=beta, g=-beta * ref[None, :])  # f = beta, g = -beta log pi_pre
    raise PersonaError(f"unknown PBDE rule {rule!r}; known: {', '.join(RULES)}")


def preference_probability(population: Population, prompt: str, a: str, b: str, rule: str = "luce",
                           **kw: Any) -> float:
    """P(a > b) for the population: sum_p w_p sigmoid(Omega_p(a) - Omega_p(b)) (Eq. 25)."""
    om = persona_omega(population, prompt, [a, b], rule, **kw)  # (P, 2)
    return float(pbde.mixture_preference(om[:, 0], om[:, 1], population.weights))


def sample_pairs(population: Population, n: int, seed: int = 0, rule: str = "luce",
                 **kw: Any) -> list[dict[str, Any]]:
    """``n`` labelled pairs over world prompts: two responses of random quality, an
    annotator drawn from the mixture, the choice drawn from its PBDE rule.

    Returns dicts ``{pair_id, prompt, chosen, rejected, persona, annotator, p_chosen, source}``
    where ``p_chosen`` is that persona's probability of the choice it made; they can go
    straight into :meth:`raydprm.store.PreferenceStore.add_pairs`.
    """
    if n < 0:
        raise PersonaError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    corpus = world.sft_corpus(2 * n, seed=20_000 + seed, qualities=world.QUALITIES)
    out = []
    for i in range(n):
        prompt, a = corpus[2 * i]["prompt"], corpus[2 * i]["response"]
        topic = world.topic_of(prompt)
        b = world.make_response(random.Random(f"pair-{seed}-{i}"), topic or "cooking", corpus[2 * i + 1]["quality"])
        om = persona_omega(population, prompt, [a, b], rule, **kw)  # (P, 2)
        k = int(rng.choice(len(population.names), p=population.weights))
        p_a = float(pbde.pbde_preference(om[k, 0], om[k, 1]))
        a_wins = rng.random() < p_a
        out.append({"pair_id": f"pbde-{rule}-{seed}-{i}", "prompt": prompt, "chosen": a if a_wins else b,
                    "rejected": b if a_wins else a, "persona": population.names[k],
                    "annotator": population.names[k], "p_chosen": p_a if a_wins else 1 - p_a, "source": "pbde"})
    return out


def to_hh_record(pair: dict[str, Any]) -> dict[str, str]:
    """A pair in the Anthropic HH format (``chosen``/``rejected`` full transcripts)."""
    q = world.parse_prompt(pair["prompt"])
    head = f"\n\nHuman: {q}\n\nAssistant:"
    return {"chosen": head + pair["chosen"], "rejected": head + pair["rejected"]}
