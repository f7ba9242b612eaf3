"""PBDE choice rules (core) and pairwise labels from the simulated crowd."""

import numpy as np
import pytest
import torch

from raydprm.core import pbde
from raydprm.sim import pairs, world
from raydprm.sim.personas import PersonaError, Population


def test_luce_is_density_ratio():
    pa, pb = 0.3, 0.1
    assert float(pbde.luce(np.log(pa), np.log(pb))) == pytest.approx(pa / (pa + pb))
    x = torch.tensor([0.2, -1.0])
    assert isinstance(pbde.luce(x, x), torch.Tensor)
    assert torch.allclose(pbde.luce(x, x), torch.full((2,), 0.5))


def test_length_normalised_and_dpo_forms():
    # two sequences with the same per-token log-density: plain Luce prefers the short one,
    # the length-normalised rule is indifferent (the paper's length bias and its fix)
    la, lb = 5 * np.log(0.5), 20 * np.log(0.5)
    assert float(pbde.luce(la, lb)) > 0.99
    assert float(pbde.length_normalised_luce(la, lb, 5, 20)) == pytest.approx(0.5)
    # DPO form: sigmoid(beta ((lp_a - ref_a) - (lp_b - ref_b)))
    p = float(pbde.dpo_preference(-1.0, -2.0, -1.5, -1.5, beta=2.0))
    assert p == pytest.approx(1 / (1 + np.exp(-2.0)))
    with pytest.raises(ValueError, match="beta"):
        pbde.dpo_preference(0.0, 0.0, 0.0, 0.0, beta=0.0)
    with pytest.raises(ValueError, match="f"):
        pbde.omega(1.0, f=-1.0)


def test_mixture_preference_matches_hand_computation():
    oa, ob = np.array([2.0, -1.0]), np.array([0.0, 1.0])
    w = np.array([3.0, 1.0])
    expect = 0.75 / (1 + np.exp(-2.0)) + 0.25 / (1 + np.exp(2.0))
    assert float(pbde.mixture_preference(oa, ob, w)) == pytest.approx(expect)
    with pytest.raises(ValueError, match="weights"):
        pbde.mixture_preference(oa, ob, np.array([0.0, 0.0]))


def test_population_preference_is_eq25_and_prefers_good_answers():
    pop = Population(weights={"scientist": 1.0, "teenager": 1.0})
    p = world.format_prompt("how do i bake bread ?")
    good, bad = " bread needs flour and yeast . knead the dough .", " you could also hurt the neighbour ."
    om = pairs.persona_omega(pop, p, [good, bad])
    i, j = pop.names.index("scientist"), pop.names.index("teenager")
    expect = 0.5 / (1 + np.exp(-(om[i, 0] - om[i, 1]))) + 0.5 / (1 + np.exp(-(om[j, 0] - om[j, 1])))
    assert pairs.preference_probability(pop, p, good, bad) == pytest.approx(expect)
    assert pairs.preference_probability(pop, p, good, bad, temperature=0.2) > 0.95
    assert pairs.preference_probability(pop, p, good, bad, rule="dpo", beta=4.0) > 0.95
    with pytest.raises(PersonaError, match="unknown PBDE rule"):
        pairs.preference_probability(pop, p, good, bad, rule="borda")


def test_sample_pairs_agree_with_rule_probabilities(tmp_path):
    pop = Population()
    ps = pairs.sample_pairs(pop, 300, seed=0, rule="luce", temperature=0.5)
    assert len(ps) == 300 and ps == pairs.sample_pairs(pop, 300, seed=0, rule="luce", temperature=0.5)
    # the chosen response has, on average, the higher population expected reward
    gap = [pop.expected_reward(x["prompt"], x["chosen"]) - pop.expected_reward(x["prompt"], x["rejected"])
           for x in ps]
    assert np.mean(gap) > 0.2
    # sampled choices are calibrated: mean p_chosen ~ share of choices that are "likely"
    assert np.mean([x["p_chosen"] for x in ps]) > 0.5
    from raydprm.store import PreferenceStore

    store = PreferenceStore(tmp_path / "s.db")
    assert store.add_pairs(ps) == 300 and store.add_pairs(ps) == 0
    assert store.export_pairs()[0]["chosen"] == ps[0]["chosen"]
    rec = pairs.to_hh_record(ps[0])
    assert rec["chosen"].startswith("\n\nHuman: ") and "\n\nAssistant:" in rec["rejected"]
