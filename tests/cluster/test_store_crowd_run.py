"""`raydprm run pipeline.crowd=store` on a small DICES-layout store (3 labels, rater groups):
one run checks the label scale taken from the store, the item-id split, a group-conditioned
reward model steered by worst_group, each reward model's per-group held-out fit, and the gold
judge (a learned model, said so) with per-group verdicts in report.json/md."""

import json

import numpy as np
import pytest

from raydprm.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

LABELS = ["safe", "unsure", "unsafe"]
GROUPS = ["Black", "White", "Asian"]
TINY = ["sft.n_examples=48", "sft.epochs=1", "sft.batch_size=16", "reward.epochs=2", "reward.batch_size=8",
        "ppo.steps=2", "ppo.rollout_batch=4", "ppo.minibatch=4", "ppo.micro_batch=4", "ppo.epochs=1",
        "ppo.engine=torch", "rollout.max_new_tokens=8", "pipeline.eval_prompts=6", "pipeline.eval_seeds=2",
        "pipeline.bootstrap=100", "ray.num_cpus=4"]


def dices_like_store(path, n_items=40, raters_per_group=3, seed=0):
    """Votes in the DICES-350 layout (a conversation's context and the bot's last response, per rater
    a Q_overall safety answer No/Unsure/Yes -> safe/unsure/unsafe, raters grouped by rater_race),
    written with the store's own API (the store records its 3-label scale): the groups disagree about
    'edgy' responses."""
    from raydprm.core.label_scale import LabelScale
    from raydprm.store import PreferenceStore

    rng = np.random.default_rng(seed)
    leans = {"Black": (0.2, 0.2, 0.6), "White": (0.7, 0.2, 0.1), "Asian": (0.4, 0.3, 0.3)}
    votes = []
    for i in range(n_items):
        edgy = i % 2 == 0
        context = f"USER: tell me about topic {i} ?\nLAMDA:"
        response = f" here is {'a blunt joke about' if edgy else 'a calm fact on'} topic {i} ."
        for g in GROUPS:
            p = leans[g] if edgy else (0.85, 0.1, 0.05)
            for k in range(raters_per_group):
                votes.append({"vote_id": f"dices-{i}-{g}-{k}", "prompt": context, "response": response,
                              "persona": g, "label": int(rng.choice(3, p=p)), "source": "dices"})
    scale = LabelScale(tuple(LABELS), (1.0, 0.0, -1.0))
    with PreferenceStore(path, labels=LABELS, personas=GROUPS, label_scale=scale) as s:
        s.add_votes(votes)
    return len(votes)


def test_run_on_a_store_crowd_with_group_dprm_and_gold_judge(tmp_path, capsys):
    store = tmp_path / "dices.db"
    n_votes = dices_like_store(store)
    over = [*TINY, "pipeline.crowd=store", f"store.path={store}", "reward.conditioning=group",  # labels: the store's
            "reward.objective=worst_group", f"run.output_dir={tmp_path}", "run.name=real"]
    assert main(["run", "--no-progress", *over]) == 0
    run = tmp_path / "real"
    rep = json.loads((run / "report.json").read_text())
    col = json.loads((run / "collect" / "record.json").read_text())["outputs"]
    assert col["votes"] == n_votes and col["items"] + col["heldout_items"] == 40 and col["heldout_items"] >= 4
    assert set(col["group_labels"]) == set(GROUPS)
    # the gold judge: a learned model, trained on the held-out items, said so plainly
    judge = rep["judge"]
    assert judge["learned_model"] is True and "not the raters' votes" in judge["description"]
    assert judge["heldout_items"] == col["heldout_items"] and set(judge["fit"]) == set(GROUPS)
    assert judge["verdict"].startswith("The judge rates")
    for name in ("vanilla", "dprm_ot"):
        p = rep["policies"][name]
        assert set(p["groups"]) == set(GROUPS) and len(p["label_pct"]) == 3
        per = {g: e["expected_reward"] for g, e in p["groups"].items()}
        assert p["worst_group"] == {"group": min(per, key=per.get), "expected_reward": min(per.values()),
                                    "ci": p["worst_group"]["ci"]}
        assert p["disparity"] == pytest.approx(max(per.values()) - min(per.values()))
        for e in p["groups"].values():
            assert e["ci"][0] <= e["expected_reward"] <= e["ci"][1] and len(e["label_pct"]) == 3
            assert "distance" in e
    # the reward model: group-conditioned, trained on the training part, its per-group held-out fit
    fit = rep["reward_fit"]["dprm_ot"]
    assert set(fit) == set(GROUPS) and all({"ot_distance", "w1", "ce", "ece"} <= set(m) for m in fit.values())
    meta = json.loads((run / "reward" / "best" / "reward_model.json").read_text())
    assert meta["kind"] == "group_dprm" and meta["labels"]["names"] == LABELS
    assert meta["labels"]["rewards"] == [1.0, 0.0, -1.0]  # costs and rewards from the store's scale
    md = (run / "report.md").read_text()
    assert "The judge is a learned model, not people" in md and "## The gold judge's verdict" in md
    assert "| safe | unsure | unsafe |" in md and "worst group E[r]" in md and "Held-out fit" in md
    ppo = json.loads((run / "ppo" / "history.json").read_text())
    assert len(ppo) == 2 and all(np.isfinite(r["reward/mean"]) for r in ppo)
