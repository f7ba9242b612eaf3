"""Quick length-bias run: the Luce rule prefers short sentences even for the long
annotator; the length-normalised rule does not (Table 2's direction)."""

import json
from dataclasses import replace

import pytest

from raydprm.experiments import length_bias

pytestmark = pytest.mark.slow

TINY = replace(length_bias.QUICK, n_corpus=1000, lm_steps=80, n_samples=120, n_pairs=96, adapt_steps=10,
               n_eval_samples=96)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb")
    length_bias.run(out, settings=TINY, log=lambda *_: None)
    m = json.loads((out / "metrics.json").read_text())
    m["_pngs"] = sorted(p.name for p in out.glob("*.png"))
    return m


def test_annotator_lms_learn_their_length_ranges(metrics):
    fr = metrics["sampled_length_fractions"]
    assert fr["short"]["S"] > 0.9
    assert fr["long"]["L"] > 0.6
    assert metrics["mean_length"]["short"] < metrics["mean_length"]["whole"] < metrics["mean_length"]["long"]


def test_luce_prefers_short_even_for_the_long_annotator(metrics):
    long_ = metrics["table2"]["long"]
    assert long_["luce_P(S>L)"] > 0.9
    assert long_["length_normalised_P(S>L)"] < 0.5 < long_["luce_P(S>L)"]
    assert long_["length_normalised_P(S>L)"] < metrics["table2"]["short"]["length_normalised_P(S>L)"]


def test_outputs(metrics):
    assert metrics["_pngs"] == ["lengths_adapted.png", "lengths_pretrained.png"]
    for k in ("annotator_mixture", "density_mixture"):
        assert sum(metrics["adapted_length_fractions"][k].values()) == pytest.approx(1.0)
