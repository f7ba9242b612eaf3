"""Preference store: public API, mixtures by hand, forgetting, export, HH import, active collection."""

import json

import numpy as np
import pytest

from raydprm.config import HH_LABELS, StoreConfig
from raydprm.sim.personas import Population
from raydprm.store import DEFAULT_STORE_PERSONAS, PreferenceStore, StoreError, UnknownItemError
from raydprm.store.hh import import_hh, split_transcript

P, R = "Q: how do i bake bread ?\nA:", " bread needs flour and yeast ."


def vote(i, label=0, persona="scientist", **kw):
    return {"vote_id": f"v{i}", "prompt": P, "response": R, "persona": persona, "label": label} | kw


def test_new_store_knows_default_personas_and_labels(tmp_path):
    s = PreferenceStore(tmp_path / "s.db")
    for p in ("scientist", "teacher", "politician", "teenager", "ceo", "artist"):
        assert p in s.personas
    assert set(DEFAULT_STORE_PERSONAS) <= set(s.personas)
    assert s.labels == list(HH_LABELS)
    r = s.add_votes([vote(1, label=0), vote(2, label="neutral_harmless"),
                     vote(3, dist=[0.5, 0, 0, 0.5, 0, 0], label=None)])
    assert r == {"added": 3, "duplicates": 0}
    assert s.count_votes() == 3 and s.count_votes("scientist") == 3 and s.count_items() == 1
    # pooled posterior: prior 1 + counts [1.5, 1, 0, 0.5, 0, 0]
    alpha = np.array([2.5, 2, 1, 1.5, 1, 1])
    np.testing.assert_allclose(s.distribution(P, R), alpha / alpha.sum())
    np.testing.assert_allclose(s.posterior(P, R)["alpha"], alpha)
    assert s.counts(P, R) == {"scientist": [1.5, 1.0, 0.0, 0.5, 0.0, 0.0]}
    with pytest.raises(UnknownItemError, match="not in the store"):
        s.distribution(P, " something else")
    s.close()
    # reopening keeps everything; different labels are refused
    s2 = PreferenceStore(tmp_path / "s.db")
    assert s2.count_votes() == 3
    with pytest.raises(StoreError, match="created with labels"):
        PreferenceStore(tmp_path / "s.db", labels=["good", "bad"])


def test_mixture_query_matches_hand_computation(tmp_path):
    s = PreferenceStore(tmp_path / "s.db", prior=0.5)
    s.add_votes([vote(1, 0, "scientist"), vote(2, 0, "scientist"), vote(3, 2, "teenager")])
    a_sci = np.array([2.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    a_teen = np.array([0.5, 0.5, 1.5, 0.5, 0.5, 0.5])
    a_ceo = np.full(6, 0.5)  # has not voted: its prior
    w = np.array([2.0, 1.0, 1.0]) / 4
    means = [a / a.sum() for a in (a_sci, a_teen, a_ceo)]
    expect = sum(wi * m for wi, m in zip(w, means))
    got = s.distribution(P, R, {"scientist": 2.0, "teenager": 1.0, "ceo": 1.0})
    np.testing.assert_allclose(got, expect, atol=1e-12)
    # mixture variance by the law of total variance
    var = [a * (a.sum() - a) / (a.sum() ** 2 * (a.sum() + 1)) for a in (a_sci, a_teen, a_ceo)]
    ev = sum(wi * (v + m**2) for wi, v, m in zip(w, var, means)) - expect**2
    np.testing.assert_allclose(s.variance(P, R, {"scientist": 2.0, "teenager": 1.0, "ceo": 1.0}), ev, atol=1e-12)
    # the batched query equals item-by-item queries, and names the first unknown item
    other = " flour ."
    s.add_votes([vote(4, 1, "artist", response=other)])
    mix = {"scientist": 2.0, "teenager": 1.0, "ceo": 1.0}
    np.testing.assert_allclose(s.distributions([(P, R), (P, other), (P, R)], mix),
                               [s.distribution(P, R, mix), s.distribution(P, other, mix), s.distribution(P, R, mix)])
    np.testing.assert_allclose(s.distributions([(P, other), (P, R)]), [s.distribution(P, other), s.distribution(P, R)])
    with pytest.raises(UnknownItemError, match="'x'"):
        s.distributions([(P, R), ("x", "y")])
    with pytest.raises(StoreError, match="unknown personas"):
        s.distribution(P, R, {"pirate": 1.0})
    with pytest.raises(StoreError, match="not all zero"):
        s.distribution(P, R, {"ceo": 0.0})


def test_forgetting_halves_old_weight_after_one_half_life(tmp_path):
    h = 100.0
    s = PreferenceStore(tmp_path / "s.db", half_life_s=h, prior=1.0)
    s.add_votes([vote(1, 0, ts=1000.0), vote(2, 0, ts=1000.0)])
    a = s.posterior(P, R, at=1000.0)["alpha"]
    assert a[0] == pytest.approx(3.0)  # prior 1 + 2 votes
    a = s.posterior(P, R, at=1000.0 + h)["alpha"]
    assert a[0] == pytest.approx(2.0)  # evidence 2 -> 1 after one half-life
    # a new vote one half-life later weighs as much as both old votes together
    s.add_votes([vote(3, 2, ts=1000.0 + h)])
    a = np.array(s.posterior(P, R, at=1000.0 + h)["alpha"])
    np.testing.assert_allclose(a, [2.0, 1, 2.0, 1, 1, 1])
    np.testing.assert_allclose(s.recount(P, R, at=1000.0 + h), a)
    # reopening never changes the half-life; reconfigure() rebuilds the posteriors from the log
    s.close()
    with pytest.raises(StoreError, match=r"half_life_s = 100\.0 but store\.half_life_s = 0\.0"):
        PreferenceStore(tmp_path / "s.db", half_life_s=0.0)
    s2 = PreferenceStore(tmp_path / "s.db")
    assert s2.half_life_s == h
    assert s2.reconfigure(half_life_s=0.0)["votes_replayed"] == 3
    np.testing.assert_allclose(s2.posterior(P, R)["alpha"], [3, 1, 2, 1, 1, 1])
    assert PreferenceStore(tmp_path / "s.db", readonly=True).half_life_s == 0.0


def test_population_truth_matches_store_frequencies(tmp_path):
    pop = Population()
    s = PreferenceStore(tmp_path / "s.db", prior=0.01)
    item = [(P, " bread needs flour . you could also cheat on the test .")]
    votes = pop.simulate_votes(item, 6000, seed=3)
    for i in range(0, len(votes), 2000):
        s.add_votes(votes[i:i + 2000])
    truth = pop.true_distribution(*item[0])
    assert np.abs(np.array(s.distribution(*item[0])) - truth).max() < 0.02
    # per-persona mixture queries recover each persona's own judgement
    sci = pop.personas["scientist"].judge(*item[0])
    assert np.abs(np.array(s.distribution(*item[0], {"scientist": 1.0})) - sci).max() < 0.05


def test_export_active_collection_and_stats(tmp_path):
    s = PreferenceStore(tmp_path / "s.db")
    s.add_votes([vote(i, i % 2) for i in range(20)])
    s.add_votes([{"vote_id": "x1", "prompt": P, "response": " um .", "persona": "teenager", "label": 2}])
    new = s.add_items([(P, " fresh answer .")])
    top = s.items_needing_votes(k=3)
    assert [t["item_id"] for t in top][0] == new[0]  # no votes: prior variance is the largest
    assert top[0]["variance"] > top[1]["variance"] > top[2]["variance"]
    assert top[-1]["n_votes"] == 20
    ds = s.export()
    assert len(ds) == 2 and set(ds.column_names) >= {"prompt", "response", "target", "persona_counts", "n_votes"}
    row = [r for r in ds if r["n_votes"] == 20][0]
    assert row["persona_counts"]["scientist"] == [10.0, 10.0, 0, 0, 0, 0]
    assert row["persona_counts"]["artist"] == [0.0] * 6
    assert sum(row["target"]) == pytest.approx(1.0)
    st = s.stats()
    assert st["votes"] == 21 and st["items"] == 3 and st["votes_per_persona"]["teenager"] == 1
    assert st["synchronous"] == "FULL"


def test_hh_import_is_idempotent_and_records_pairs(tmp_path):
    f = tmp_path / "hh.jsonl"
    rows = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello {i}", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go away"}
            for i in range(5)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    s = PreferenceStore(tmp_path / "s.db")
    out = import_hh(s, f, progress=False)
    assert out == {"rows": 5, "votes": 10, "duplicates": 0, "pairs": 5}
    assert import_hh(s, f, progress=False)["votes"] == 0  # re-import adds nothing
    assert s.count_votes("hh") == 10
    prompt, resp = split_transcript(rows[0]["chosen"])
    assert prompt == "\n\nHuman: hi 0\n\nAssistant:" and resp == " hello 0"
    assert s.distribution(prompt, resp)[0] == pytest.approx(2 / 7)
    pairs = s.export_pairs()
    assert len(pairs) == 5 and pairs[0]["rejected"] == " go away"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "x", "rejected": "y"}))
    with pytest.raises(StoreError, match="line 1, field 'chosen'"):
        import_hh(s, bad, progress=False)
    with pytest.raises(StoreError, match="does not exist"):
        import_hh(s, tmp_path / "none.jsonl", progress=False)


def test_from_config_and_bad_arguments(tmp_path):
    s = PreferenceStore.from_config(StoreConfig(path=str(tmp_path / "c.db"), synchronous="NORMAL", half_life_s=10.0))
    assert s.stats()["synchronous"] == "NORMAL" and s.half_life_s == 10.0
    with pytest.raises(StoreError, match="directory"):
        PreferenceStore(tmp_path)
    with pytest.raises(StoreError, match="prior"):
        PreferenceStore(tmp_path / "x.db", prior=0.0)
    s.add_persona("alice", "a human annotator")
    assert "alice" in s.personas
    assert s.add_votes([vote(1, persona="alice")])["added"] == 1
