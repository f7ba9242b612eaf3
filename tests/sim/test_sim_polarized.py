"""The polarized crowd (crowd.preset=polarized): it loads, its groups disagree in direction as
its design says (docs/pluralism.md), and it disagrees much more than the default crowd by the
figures of raydprm.core.disagreement."""

import numpy as np
import pytest

from raydprm.config import CrowdConfig, load_config
from raydprm.core.disagreement import group_disagreement
from raydprm.core.hh_labels import HH_REWARDS
from raydprm.sim import world
from raydprm.sim.personas import (
    PRESET_FILES,
    Population,
    load_personas,
    preset_personas_path,
    simulated_items,
)

MONEY = world.format_prompt("how do i pay off debt ?")
MONEY_ANSWER = " make a budget and pay the loan with interest from your savings ."
GARDEN = world.format_prompt("how do i grow tomatoes ?")
LONG = (" tomatoes needs soil and water . first get the seeds , then add compost . keep the pots near the sunlight"
        " . check the roots and the weeds .")
SHORT = " compost ."
CHATTY = " um well , tomatoes needs soil and water . honestly kinda like stuff ."
FORMAL = " tomatoes needs soil and water . check the roots and the weeds ."


def _r(d: np.ndarray) -> float:
    return float(d @ np.asarray(HH_REWARDS))


def test_preset_selects_the_file_and_personas_file_overrides_it(tmp_path):
    assert set(PRESET_FILES) == set(CrowdConfig.__dataclass_fields__["preset"].metadata["choices"])
    assert CrowdConfig().personas_source == ""  # default: the shipped personas.yaml
    pol = CrowdConfig(preset="polarized")
    assert pol.personas_source == str(preset_personas_path("polarized"))
    assert list(Population.from_config(pol).names) == ["scholar", "practitioner", "chatty", "terse", "abstainer"]
    own = tmp_path / "mine.yaml"
    own.write_text(preset_personas_path("default").read_text())
    assert CrowdConfig(preset="polarized", personas_file=str(own)).personas_source == str(own)
    assert "scientist" in Population.from_config(CrowdConfig(preset="polarized", personas_file=str(own))).names


def test_unknown_preset_is_one_clear_line():
    with pytest.raises(Exception, match="crowd.preset") as e:
        load_config(overrides=["crowd.preset=angry"])
    assert "\n" not in str(e.value) and "polarized" in str(e.value)


def test_groups_disagree_in_direction_as_designed():
    ps = load_personas(preset_personas_path("polarized"))
    # length: the majority mildly prefers the long answer, the terse minority strongly prefers the short one
    for n in ("scholar", "practitioner", "chatty"):
        assert _r(ps[n].judge(GARDEN, LONG)) > _r(ps[n].judge(GARDEN, SHORT)), n
    assert _r(ps["terse"].judge(GARDEN, SHORT)) > _r(ps["terse"].judge(GARDEN, LONG)) + 1.0
    # tone: the chatty group prefers the chatty answer, the formal groups the plain one
    assert _r(ps["chatty"].judge(GARDEN, CHATTY)) > _r(ps["chatty"].judge(GARDEN, FORMAL))
    assert _r(ps["scholar"].judge(GARDEN, FORMAL)) > _r(ps["scholar"].judge(GARDEN, CHATTY)) + 0.5
    assert _r(ps["terse"].judge(GARDEN, FORMAL)) > _r(ps["terse"].judge(GARDEN, CHATTY))  # both too long for it
    # a topic: loan / interest advice is helpful and harmless to the majority, offensive to the abstainer
    for n in ("scholar", "practitioner", "chatty"):
        assert ps[n].judge(MONEY, MONEY_ANSWER)[3:].sum() < 0.1, n
    assert ps["abstainer"].judge(MONEY, MONEY_ANSWER)[3:].sum() > 0.9
    # ... which is the taboo words alone: the same persona without them is not offended
    assert ps["abstainer"].judge(MONEY, " make a budget and keep your savings in the bank .")[3:].sum() < 0.1


def test_default_crowd_judgements_are_unchanged_by_the_new_keys():
    """taboo defaults to nothing and a Features without words judges as before."""
    for p in load_personas().values():
        assert p.taboo == {}
        f = world.features(GARDEN, LONG)
        bare = world.Features(**{**f.__dict__, "words": frozenset()})
        np.testing.assert_array_equal(p.judge_features(f), p.judge_features(bare))


def test_polarized_crowd_disagrees_much_more_than_the_default_one():
    items = simulated_items(300, seed=0)
    prompts, responses = [i[0] for i in items], [i[1] for i in items]
    figs = {}
    for preset in ("default", "polarized"):
        pop = Population.from_config(CrowdConfig(preset=preset))
        figs[preset] = group_disagreement(pop.group_distributions(prompts, responses), pop.weights, HH_REWARDS)
    d, p = figs["default"], figs["polarized"]
    # measured (300 items, seed 0): mean pairwise JSD 0.12 -> 0.26 bits; reversal 0.08 -> 0.13; modal 0.20 -> 0.26
    assert float(p["mean_jsd"]) > 1.8 * float(d["mean_jsd"])
    assert float(p["reversal_weighted"]) > 1.4 * float(d["reversal_weighted"])
    assert float(p["modal_differs_weighted"]) > float(d["modal_differs_weighted"])
    assert float(p["jsd"].max()) > 0.4  # terse vs chatty: nearly opposite verdicts
