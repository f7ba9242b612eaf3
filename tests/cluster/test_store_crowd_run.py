"""`raydprm run pipeline.crowd=store` on a small DICES-layout store (3 labels, rater groups):
one run checks the label scale taken from the store, the item-id split, a group-conditioned
reward model steered by worst_group, each reward model's per-group held-out fit, and the gold
judge (a learned model, said so) with per-group verdicts in report.json/md; PPO samples the
store's training prompts."""

import json

import datasets
import numpy as np
import pytest
from helpers import DICES_GROUPS as GROUPS
from helpers import dices_like_store

from raydprm.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

LABELS = ["safe", "unsure", "unsafe"]
TINY = ["sft.n_examples=48", "sft.epochs=1", "sft.batch_size=16", "reward.epochs=2", "reward.batch_size=8",
        "ppo.steps=2", "ppo.rollout_batch=4", "ppo.minibatch=4", "engine.micro_batch=4", "ppo.epochs=1",
        "engine.engine=torch", "rollout.max_new_tokens=8", "pipeline.eval_prompts=6", "pipeline.eval_seeds=2",
        "pipeline.bootstrap=100", "ray.num_cpus=4"]


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
    # PPO samples the training part's prompts (none is over rollout.max_prompt_tokens here), and says so
    ppo_rec = json.loads((run / "ppo" / "record.json").read_text())["outputs"]
    train = datasets.load_from_disk(str(run / col["data"]))
    assert ppo_rec["prompts"] == len(set(train["prompt"])) and ppo_rec["prompts_dropped"] == 0
    assert (f"PPO samples {ppo_rec['prompts']} prompts of the store's training part; 0 dropped (over 192 tokens)"
            in capsys.readouterr().out)
