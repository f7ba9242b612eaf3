"""The store crowd's pieces without Ray: the collect stage's item-id split and saved parts, each
group's own labels, PPO's prompts from the training part, the gold judge's settings and verdict."""

import datasets
import pytest
from helpers import DICES_GROUPS as GROUPS
from helpers import dices_like_store

from raydprm.cluster.crowd_source import (
    GOLD_SPLIT_SEED,
    gold_reward_config,
    gold_verdict,
    group_labels,
    store_collect,
    store_ppo_prompts,
)
from raydprm.config import load_config
from raydprm.errors import RaydprmError
from raydprm.store import heldout_mask
from raydprm.train.reward_data import config_with_store_labels


def test_store_collect_splits_by_item_id_and_keeps_group_labels(tmp_path):
    store = tmp_path / "d.db"
    dices_like_store(store, n_items=30)
    cfg = config_with_store_labels(load_config(None, ["pipeline.crowd=store", f"store.path={store}",
                                                      "pipeline.gold_fraction=0.3"]))
    assert list(cfg.labels.names) == ["safe", "unsure", "unsafe"] and cfg.labels.grid is None  # 1-D grid: store only
    out = store_collect(cfg, tmp_path)
    train, held = datasets.load_from_disk(out["paths"]["data"]), datasets.load_from_disk(out["paths"]["heldout"])
    assert len(train) + len(held) == 30 and out["votes"] == 30 * 3 * 3
    assert not heldout_mask(train["item_id"], 0.3, GOLD_SPLIT_SEED).any()
    assert heldout_mask(held["item_id"], 0.3, GOLD_SPLIT_SEED).all()
    assert set(out["group_labels"]) == set(GROUPS) and all(sum(v) == pytest.approx(1) for v in
                                                           out["group_labels"].values())
    assert group_labels(held) == out["heldout_group_labels"]
    again = store_collect(cfg, tmp_path / "again")
    assert again["digest"] == out["digest"]  # deterministic


def test_gold_settings_and_verdict():
    cfg = load_config(None, ["reward.loss=bt"])
    g = gold_reward_config(cfg)
    assert g.conditioning == "group" and g.loss == "ot" and g.objective == "population"
    rep = {"policies": {"vanilla": {"expected_reward": 0.1, "expected_reward_ci95": [0.0, 0.2],
                                    "worst_group": {"group": "A", "expected_reward": -0.1}, "disparity": 0.3},
                        "dprm_ot": {"expected_reward": 0.4, "expected_reward_ci95": [0.3, 0.5]}},
           "head_to_head": {"dprm_ot_vs_vanilla": {"expected_reward_diff": {"mean": 0.3, "ci95": [0.1, 0.5]}}}}
    v = gold_verdict(rep)
    assert v.startswith("The judge rates dprm_ot highest") and "dprm_ot is better than vanilla by +0.300" in v
    assert "vanilla: worst group A at -0.100, disparity 0.300" in v


def test_store_ppo_prompts_are_the_training_parts_that_fit_the_token_limit(tiny_policy):
    from raydprm.models.policy import load_tokenizer

    tok = load_tokenizer(tiny_policy)
    long = "a much longer prompt about many topics " * 8
    data = datasets.Dataset.from_dict({"prompt": ["short one", long, "short one", "two words"]})
    limit = len(tok(long, add_special_tokens=False)["input_ids"]) - 1  # the long prompt is one token over
    prompts, kept, dropped = store_ppo_prompts(data, tok, limit, 7, seed=1)
    assert (kept, dropped) == (2, 1) and len(prompts) == 7  # distinct prompts counted once
    for k in range(0, 6, 2):  # every pass is a permutation of the kept prompts
        assert sorted(prompts[k:k + 2]) == ["short one", "two words"]
    assert store_ppo_prompts(data, tok, limit, 7, seed=1)[0] == prompts  # seeded: the data position is the step
    assert store_ppo_prompts(data, tok, limit + 1, 7, seed=1)[1:] == (3, 0)
    with pytest.raises(RaydprmError, match=r"none of the 3 prompts .* rollout.max_prompt_tokens=1 "):
        store_ppo_prompts(data, tok, 1, 7, seed=1)
