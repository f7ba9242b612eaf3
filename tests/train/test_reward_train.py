"""Reward training: OT on a separable toy set, the baselines, BT on crowd pairs, metrics, data checks."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import toy_records

from raydprm.config import RewardConfig
from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.train.reward import evaluate_checkpoint, resolve_cost, train_reward
from raydprm.train.reward_data import (
    examples_from_records,
    pairs_from_targets,
    simulate_store_export,
    split_examples,
)
from raydprm.train.reward_metrics import distribution_metrics, expected_calibration_error, spearman

SCALE = LabelScale.hh()




def test_reward_ot_on_separable_toy_set_reaches_low_ot_distance(tiny_kit, tmp_path):
    ex = examples_from_records(toy_records(), 6)
    cfg = RewardConfig(loss="ot", cost="reward_gap", lr=1e-2, epochs=12, batch_size=16, patience=0,
                       eval_fraction=0.25)
    res = train_reward(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=tmp_path, progress=False)
    first, best = res.history[0]["eval"], res.best_metrics
    assert best["ot_distance"] < 0.15, best  # targets are ~1.6 reward units apart
    assert best["ot_distance"] < 0.3 * first["ot_distance"]
    assert best["er_error"] < 0.15
    assert "scientist" in best["persona"] and best["persona"]["scientist"]["items"] > 0
    # artefacts: best/last checkpoints, metrics log, TensorBoard events, result.json
    assert (tmp_path / "best" / "reward_model.json").is_file()
    assert (tmp_path / "last" / "trainer_state.pt").is_file()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/train_loss" in x for x in lines) and any("reward/eval_ot_distance" in x for x in lines)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    # the saved best model evaluates to the recorded best metrics
    _, held = split_examples(ex, cfg.eval_fraction, 0)
    again = evaluate_checkpoint(tmp_path / "best", held, SCALE, "reward_gap")
    assert math.isclose(again["ot_distance"], best["ot_distance"], rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.parametrize("loss", ["wasserstein", "ce", "ot-sinkhorn", "ot-grid"])
def test_reward_baseline_losses_train(tiny_kit, loss):
    ex = examples_from_records(toy_records(48), 6)
    kw = {"ot-sinkhorn": dict(loss="ot", ot_method="sinkhorn"), "ot-grid": dict(loss="ot", cost="grid_l1")}
    cfg = RewardConfig(lr=3e-3, epochs=3, batch_size=16, patience=0, **kw.get(loss, {"loss": loss}))
    res = train_reward(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=None, progress=False)
    assert res.steps == 9 and len(res.history) == 3
    assert res.best_metrics["ot_distance"] < res.history[0]["eval"]["ot_distance"] + 1e-9
    assert all(math.isfinite(h["train_loss"]) for h in res.history)


def test_reward_early_stopping(tiny_kit):
    ex = examples_from_records(toy_records(48), 6)
    cfg = RewardConfig(loss="ce", lr=1e-12, epochs=10, batch_size=16, patience=2, eval_every=1)
    res = train_reward(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=None, progress=False)
    assert res.stopped_early and res.steps == 3  # first eval is the best; two without improvement


def test_reward_bt_learns_the_crowd_ordering(tiny_kit, tmp_path):
    """BT on pairs drawn from the crowd's votes ranks held-out items like the crowd's expected reward."""
    from raydprm.sim.personas import Population, simulated_items

    pop = Population()
    items = simulated_items(240, seed=3)
    recs = [{"prompt": p, "response": r, "target": pop.true_distribution(p, r).tolist()} for p, r in items]
    ex = examples_from_records(recs, 6)
    cfg = RewardConfig(loss="bt", lr=2e-3, epochs=3, batch_size=32, patience=0, bt_pairs_per_item=4)
    res = train_reward(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=tmp_path, progress=False)
    best = res.best_metrics
    assert best["rank_corr"] > 0.6, best
    assert best["pair_accuracy"] > 0.65, best
    assert (tmp_path / "best" / "reward_model.json").is_file()


def test_reward_pairs_follow_label_rewards():
    recs = [{"prompt": "Q\nA:", "response": f" r{i}", "target": np.eye(6)[i % 6].tolist()} for i in range(30)]
    ex = examples_from_records(recs, 6)
    pairs = pairs_from_targets(ex, SCALE.rewards, pairs_per_item=6, seed=0)
    assert len(pairs) > 50
    reward_of = {f" r{i}": SCALE.rewards[i % 6] for i in range(30)}
    assert all(reward_of[c] > reward_of[r] for c, r in zip(pairs.chosen, pairs.rejected))


def test_reward_metrics_facts():
    torch.manual_seed(0)
    mu = torch.softmax(torch.randn(20, 6, dtype=torch.float64), -1)
    M = resolve_cost("reward_gap", SCALE)
    m = distribution_metrics(mu, mu, SCALE.reward_tensor(), M)
    assert m["ot_distance"] < 1e-9 and m["er_error"] < 1e-12  # W(mu, mu) = 0
    # one-hot ideal on the best label: OT = r_best - E_mu[r] (docs/equations.md)
    ideal = torch.zeros(20, 6, dtype=torch.float64)
    ideal[:, 0] = 1
    m2 = distribution_metrics(mu, ideal, SCALE.reward_tensor(), M)
    assert math.isclose(m2["ot_distance"], float((1.0 - mu @ SCALE.reward_tensor()).mean()), rel_tol=1e-9)
    # ECE: a prediction whose confidence equals the crowd's mass on its label is calibrated
    t = torch.tensor([[0.8, 0.2, 0, 0, 0, 0]] * 4, dtype=torch.float64)
    assert expected_calibration_error(t, t) < 1e-12
    assert math.isclose(expected_calibration_error(t, torch.roll(t, 1, -1)), 0.8, rel_tol=1e-9)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_reward_data_errors_name_the_problem(tmp_path):
    with pytest.raises(RaydprmError, match="empty"):
        examples_from_records([], 6)
    with pytest.raises(RaydprmError, match="row 1: 'target' has 3 entries, expected 6"):
        examples_from_records([{"prompt": "p", "response": "r", "target": [1, 0, 0, 0, 0, 0]},
                               {"prompt": "p", "response": "r", "target": [1, 0, 0]}], 6)
    with pytest.raises(RaydprmError, match="no 'response' column"):
        examples_from_records([{"prompt": "p", "target": [1, 0, 0, 0, 0, 0]}], 6)
    with pytest.raises(RaydprmError, match="neither a cost name"):
        resolve_cost("nope", SCALE)
    bad = tmp_path / "m.npy"
    np.save(bad, np.ones((6, 6)))
    with pytest.raises(RaydprmError, match="zero diagonal"):
        resolve_cost(str(bad), SCALE)
    good = tmp_path / "ok.npy"
    np.save(good, np.abs(np.arange(6)[:, None] - np.arange(6)[None, :]).astype(float))
    assert resolve_cost(str(good), SCALE).shape == (6, 6)


def test_reward_trains_from_a_store_export(tiny_kit, tmp_path):
    """The real path: simulated crowd -> SQLite store -> datasets export -> trainer."""
    from raydprm.config import Config

    c = Config().override(["crowd.n_items=40", "crowd.votes_per_item=6"])
    ds = simulate_store_export(tmp_path / "store.db", crowd_cfg=c.crowd, store_cfg=c.store, labels_cfg=c.labels)
    assert len(ds) >= 30 and "persona_counts" in ds.column_names
    cfg = RewardConfig(loss="ot", epochs=1, batch_size=16)
    res = train_reward(ds, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=None, progress=False)
    assert set(res.best_metrics["persona"]) >= {"scientist", "artist"}
