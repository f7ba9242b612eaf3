"""The store API other layers use: label scale, groups, per-(item, group) posteriors, the split."""

import dataclasses
import sqlite3

import numpy as np
import pytest

from raydprm.config import LabelsConfig
from raydprm.core.label_scale import LabelScale
from raydprm.store import (
    LabelScaleConflict,
    PreferenceStore,
    StoreError,
    check_labels_config,
    heldout_mask,
    item_id,
    labels_config_for,
    split_items,
    store_label_scale,
)
from raydprm.store.groups import group_disagreement, poststratification_weights

SAFETY = LabelScale(names=("safe", "unsure", "unsafe"), rewards=(1.0, 0.0, -1.0), grid=((0.0,), (1.0,), (2.0,)))


def _votes(rng, n, groups, items):
    out = []
    for k in range(n):
        out.append({"vote_id": f"v{k}", "prompt": f"p{items[k % len(items)]}", "response": "r",
                    "persona": groups[rng.integers(len(groups))], "label": int(rng.integers(3)),
                    "ts": 1000.0 + k})
    return out


def test_label_scale_is_recorded_and_checked(tmp_path):
    db = tmp_path / "s.db"
    with PreferenceStore(db, label_scale=SAFETY) as s:
        assert s.label_scale() == SAFETY and s.labels == ["safe", "unsure", "unsafe"]
    assert store_label_scale(db) == SAFETY
    # an old-style store (names only) gets rewards 1 .. 0; the HH store the HH scale
    with PreferenceStore(tmp_path / "n.db", labels=["a", "b", "c"]) as s:
        assert s.label_scale().rewards == (1.0, 0.5, 0.0)
    assert store_label_scale(PreferenceStore(tmp_path / "h.db").path) == LabelScale.hh()
    with pytest.raises(StoreError, match="label scale"):
        PreferenceStore(db, label_scale=dataclasses.replace(SAFETY, rewards=(1.0, 0.5, -1.0)))
    # config: the default defers to the store, the same scale passes, another is refused in one line
    assert check_labels_config(LabelsConfig(), SAFETY, db) == SAFETY
    same = LabelsConfig(names=SAFETY.names, rewards=SAFETY.rewards, grid=None)
    assert check_labels_config(same, SAFETY, db) == SAFETY
    with pytest.raises(LabelScaleConflict) as e:
        check_labels_config(dataclasses.replace(same, rewards=(1.0, 0.2, -1.0)), SAFETY, db)
    lc = labels_config_for(SAFETY)
    lc.validate()
    assert lc.grid is None and LabelScale.from_config(lc).same_labels(SAFETY)  # a 1-D grid has no config form
    assert check_labels_config(lc, SAFETY, db) == SAFETY
    assert labels_config_for(LabelScale.hh()) == LabelsConfig()
    msg = str(e.value)
    assert "\n" not in msg and "[1.0, 0.2, -1.0]" in msg and "[1.0, 0.0, -1.0]" in msg and str(db) in msg


def test_group_posteriors_equal_a_recount(tmp_path):
    rng = np.random.default_rng(0)
    groups = ["teacher", "ceo", "artist"]
    votes = _votes(rng, 200, groups, list(range(17)))
    with PreferenceStore(tmp_path / "s.db", label_scale=SAFETY, prior=0.5) as s:
        for i in range(0, 200, 37):
            s.add_votes(votes[i:i + 37])
        assert s.groups() == [g for g in s.personas if g in groups]
        gp = s.group_posteriors()
        assert gp.alpha.shape == (17, 3, 3) and gp.counts.shape == (17, 3, 3)
        for i, iid in enumerate(gp.item_ids):
            for p, g in enumerate(gp.groups):
                c = np.zeros(3)
                for v in votes:
                    if v["persona"] == g and item_id(v["prompt"], "r") == iid:
                        c[v["label"]] += 1
                np.testing.assert_array_equal(gp.counts[i, p], c)
                np.testing.assert_allclose(gp.alpha[i, p], 0.5 + c)
                assert gp.n_votes[i, p] == c.sum()
        counts = s.group_counts()
        assert sum(v["votes"] for v in counts.values()) == 200
        sub = s.group_posteriors(["ceo"], item_ids=gp.item_ids[:4])
        assert sub.groups == ["ceo"] and sub.item_ids == gp.item_ids[:4]
        with pytest.raises(StoreError, match="unknown personas"):
            s.group_posteriors(["nobody"])


def test_split_is_deterministic_by_item_id():
    ids = [f"item{i}" for i in range(2000)]
    m = heldout_mask(ids, 0.25, seed=3)
    assert abs(m.mean() - 0.25) < 0.03
    # order and company do not matter; a different seed gives another split; fraction is monotone
    assert (heldout_mask(ids[::-1], 0.25, seed=3)[::-1] == m).all()
    assert (heldout_mask(ids[:10], 0.25, seed=3) == m[:10]).all()
    assert (heldout_mask(ids, 0.25, seed=4) != m).any()
    assert (heldout_mask(ids, 0.5, seed=3) >= m).all()
    train, held = split_items(ids, 0.25, seed=3)
    assert len(train) + len(held) == 2000 and not set(train) & set(held)
    with pytest.raises(ValueError, match="fraction"):
        heldout_mask(ids, 1.5)


def test_export_split_partitions_the_items(tmp_path):
    rng = np.random.default_rng(1)
    with PreferenceStore(tmp_path / "s.db", label_scale=SAFETY) as s:
        s.add_votes(_votes(rng, 300, ["teacher", "ceo"], list(range(60))))
        a = s.export(split="train", heldout_fraction=0.3, split_seed=7)
        b = s.export(split="heldout", heldout_fraction=0.3, split_seed=7)
        assert len(a) + len(b) == 60 and not set(a["item_id"]) & set(b["item_id"])
        assert set(b["item_id"]) == set(split_items(s.export()["item_id"], 0.3, 7)[1])


def test_disagreement_and_poststratification_math():
    import torch

    from raydprm.core import disagreement as core

    # with every group voting on every item, the figures are the core's on the normalised counts
    # (N, G, L) counts with 7 votes per (item, group): the pooled crowd is then the equal-weight mixture
    full = np.random.default_rng(0).multinomial(7, [0.5, 0.3, 0.2], size=(40, 3)).astype(float)
    d_store = group_disagreement(full, ["a", "b", "c"])
    d_core = core.group_disagreement(full)
    np.testing.assert_allclose([[d_store["js_items"][p][q] for q in "abc"] for p in "abc"], d_core["jsd"].numpy(),
                               atol=1e-6)
    assert [d_store["modal_differs"][g] for g in "abc"] == pytest.approx(d_core["modal_differs"].numpy().tolist())
    assert float(core.js_divergence(torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))) == pytest.approx(1.0)
    # two items, groups a and b: a says label 0 twice, b says label 2; the majority (3 votes) 0
    counts = np.zeros((2, 2, 3))
    counts[0, 0, 0] = 2
    counts[0, 1, 2] = 1
    counts[1, 0, 0] = 1
    d = group_disagreement(counts, ["a", "b"])
    assert d["js_labels"]["a"]["b"] == pytest.approx(1.0) and d["js_labels"]["a"]["a"] == 0
    assert d["modal_differs"] == {"a": 0.0, "b": 1.0}
    assert d["js_items"]["a"]["b"] == pytest.approx(1.0)
    assert poststratification_weights({"a": 3, "b": 1}, ["a", "b"]) == {"a": 0.75, "b": 0.25}
    with pytest.raises(ValueError, match="does not have"):
        poststratification_weights({"c": 1}, ["a", "b"])


def test_closed_store_file_alone_holds_every_vote(tmp_path):
    db = tmp_path / "s.db"
    s = PreferenceStore(db, synchronous="NORMAL")
    s.add_votes([{"vote_id": f"v{i}", "prompt": "p", "response": f"r{i}", "persona": "ceo", "label": 0}
                 for i in range(500)])
    reader = PreferenceStore(db, readonly=True)  # another connection stays open: SQLite alone would
    s.close()                                    # not checkpoint the WAL when the writer closes
    alone = tmp_path / "copy" / "store.db"
    alone.parent.mkdir()
    alone.write_bytes(db.read_bytes())  # the main file only: no -wal, no -shm
    assert not (alone.parent / "store.db-wal").exists()
    with PreferenceStore(alone, readonly=True) as c:
        assert c.count_votes() == 500
    con = sqlite3.connect(alone)
    assert con.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 500
    con.close()
    reader.close()
