"""Personas: valid distributions, distinct tastes, exact population = empirical votes."""

import numpy as np
import pytest

from raydprm.config import CrowdConfig
from raydprm.sim import world
from raydprm.sim.personas import (
    DEFAULT_PERSONAS,
    Persona,
    PersonaError,
    Population,
    load_personas,
    simulated_items,
)

P = world.format_prompt("how do i bake bread ?")
GOOD = " bread needs flour and yeast . first get the oven , then add salt ."
HARMFUL = " bread needs flour . you could also steal it from the shop ."


def test_shipped_personas_load_and_judge_valid_distributions():
    ps = load_personas()
    assert set(DEFAULT_PERSONAS) <= set(ps)
    for ex in world.sft_corpus(100, seed=1):
        for p in ps.values():
            d = p.judge(ex["prompt"], ex["response"])
            assert d.shape == (6,) and np.all(d >= 0) and d.sum() == pytest.approx(1.0)


def test_tastes_show_in_judgements():
    ps = load_personas()
    for p in ps.values():
        good, harm = p.judge(P, GOOD), p.judge(P, HARMFUL)
        assert good[:3].sum() > 0.9  # nobody calls a clean answer harmful
        assert harm[3:].sum() > good[3:].sum()
    # tolerance of harm: the teenager minds the theft far less than the politician
    assert ps["teenager"].judge(P, HARMFUL)[3:].sum() < ps["politician"].judge(P, HARMFUL)[3:].sum() - 0.3
    # the scientist (detail, no filler) rates the detailed answer better than a filler one
    filler = " um stuff well , bread . whatever kinda ."
    sci = ps["scientist"]
    assert sci.judge(P, GOOD)[0] > sci.judge(P, filler)[0] + 0.3
    assert sci.judge(P, world.REFUSALS[0] and " i can not help with that .")[2] > 0.9


def test_population_true_distribution_is_the_mixture_by_hand():
    pop = Population(weights={"scientist": 3.0, "artist": 1.0})
    d_s = pop.personas["scientist"].judge(P, GOOD)
    d_a = pop.personas["artist"].judge(P, GOOD)
    np.testing.assert_allclose(pop.true_distribution(P, GOOD), 0.75 * d_s + 0.25 * d_a, atol=1e-12)
    assert pop.mixture()["teacher"] == 0.0


def test_empirical_vote_frequencies_match_the_exact_distribution():
    pop = Population()
    rng = np.random.default_rng(0)
    for prompt, response in simulated_items(4, seed=2):
        votes = pop.sample_votes(prompt, response, 20000, rng)
        freq = np.bincount([lab for _, lab in votes], minlength=6) / len(votes)
        assert np.abs(freq - pop.true_distribution(prompt, response)).max() < 0.015
        share = {n: sum(1 for p, _ in votes if p == n) / len(votes) for n in pop.names}
        assert max(abs(share[n] - 1 / 6) for n in pop.names) < 0.015


def test_crowd_items_use_the_broad_mix_and_the_crowd_rates_demonstrations_higher():
    items = simulated_items(50, seed=4)
    assert items == [(ex["prompt"], ex["response"])
                     for ex in world.sft_corpus(50, seed=10_004, qualities=world.QUALITIES)]
    pop = Population()

    def mean_reward(corpus):
        return float(np.mean([pop.expected_reward(ex["prompt"], ex["response"]) for ex in corpus]))

    # E[r] per quality is fixed by the world, so the mixes' E[r] differ by sum_q (w_sft - w_crowd) E[r | q] > 0
    demos = mean_reward(world.sft_corpus(1000, seed=0))
    crowd = mean_reward(world.sft_corpus(1000, seed=0, qualities=world.QUALITIES))
    assert demos > crowd + 0.3, (demos, crowd)


def test_simulate_votes_ids_are_deterministic():
    pop = Population()
    items = simulated_items(5)
    a, b = pop.simulate_votes(items, 3, seed=1), pop.simulate_votes(items, 3, seed=1)
    assert a == b and len(a) == 15 and len({v["vote_id"] for v in a}) == 15


def test_population_from_config_and_bad_mixtures():
    pop = Population.from_config(CrowdConfig(mixture={"ceo": 1.0}))
    assert pop.mixture()["ceo"] == 1.0
    with pytest.raises(PersonaError, match="unknown personas"):
        Population(weights={"pirate": 1.0})
    with pytest.raises(PersonaError, match="not all zero"):
        Population(weights={"ceo": 0.0})


def test_bad_persona_files_name_the_persona_and_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("personas:\n  critic:\n    description: x\n")
    with pytest.raises(PersonaError, match="persona 'critic': missing keys"):
        load_personas(f)
    base = load_personas()["ceo"]
    with pytest.raises(PersonaError, match="persona 'x': key 'noise'"):
        Persona(**{**base.__dict__, "name": "x", "noise": 0.0})
    with pytest.raises(PersonaError, match="expertise topic 'cars'"):
        Persona(**{**base.__dict__, "name": "x", "expertise": {"cars": 1.0}})
    with pytest.raises(PersonaError, match="does not exist"):
        load_personas(tmp_path / "missing.yaml")
