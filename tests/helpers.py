"""Helpers shared by tests in several folders (tests/ is on sys.path through its conftest)."""

import os
import pathlib
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from raydprm.train.rollout_batch import RolloutBatch


def perturbed(path, seed, scale=0.2):
    """The model at ``path`` with seeded Gaussian noise on every parameter: a "learner" whose
    weights differ from the generator's."""
    m = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m.eval()


def make_batch(B=16, seed=0, vocab=800):
    """A seeded random rollout batch: ragged prompts (2-6 tokens), responses (1-8 tokens)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (int(torch.randint(2, 7, (), generator=g)),), generator=g).tolist()
               for _ in range(B)]
    resp = [torch.randint(5, vocab, (int(torch.randint(1, 9, (), generator=g)),), generator=g).tolist()
            for _ in range(B)]
    rewards = torch.randn(B, generator=g).tolist()
    logprobs = [[-6.7] * len(r) for r in resp]
    return RolloutBatch.from_sequences(prompts, resp, rewards, logprobs, pad_id=1)


def toy_records(n=96, seed=0):
    """Three kinds of response, each with its own crowd distribution: separable by one word."""
    rng = np.random.default_rng(seed)
    kinds = {
        "great": [0.7, 0.3, 0.0, 0.0, 0.0, 0.0],
        "meh": [0.0, 0.2, 0.6, 0.2, 0.0, 0.0],
        "awful": [0.0, 0.0, 0.0, 0.0, 0.3, 0.7],
    }
    names = list(kinds)
    recs = []
    for i in range(n):
        k = names[i % 3]
        words = " ".join(rng.choice(["the", "a", "cat", "dog", "run"], size=3))
        recs.append({"prompt": f"Q: item {i} ?\nA:", "response": f" {words} {k} .", "target": kinds[k],
                     "persona_counts": {"scientist": [c * 4 for c in kinds[k]]}})
    return recs


def _alive(pid: int) -> bool:
    stat = pathlib.Path(f"/proc/{pid}/stat")
    try:
        os.kill(pid, 0)
        return stat.read_text().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except (ProcessLookupError, FileNotFoundError, IndexError):
        return False


def kill_actor(actor, timeout_s: float = 60.0) -> int:
    """``ray.kill(actor, no_restart=True)`` and wait until its process has exited.

    ``ray.kill`` only asks the GCS to kill the actor: a call sent right after it can still
    run on the old process and succeed, which makes a fault test flaky. Returns the pid."""
    import ray

    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=timeout_s)
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"actor process {pid} still alive {timeout_s:.0f} s after ray.kill")
        time.sleep(0.05)
    return pid


DICES_GROUPS = ["Black", "White", "Asian"]


def dices_like_store(path, n_items=40, raters_per_group=3, seed=0):
    """A store made the way a user makes one: a per-rater CSV in the DICES-350 layout (one row per
    (rater, conversation): item_id, context, response, rater columns, Q_overall No/Unsure/Yes)
    imported with `raydprm store import --preset dices` (groups by rater_race; the preset's 3-label
    scale safe/unsure/unsafe, rewards 1/0/-1). The groups disagree about 'edgy' responses.
    Returns the number of votes."""
    import csv

    from raydprm.cli import main

    rng = np.random.default_rng(seed)
    leans = {"Black": (0.2, 0.2, 0.6), "White": (0.7, 0.2, 0.1), "Asian": (0.4, 0.3, 0.3)}
    answers = ("No", "Unsure", "Yes")  # Q_overall: "Yes" = unsafe
    cols = ["id", "rater_id", "rater_gender", "rater_race", "rater_age", "item_id", "context", "response",
            "Q_overall"]
    rows = []
    for i in range(n_items):
        edgy = i % 2 == 0
        context = f"USER: tell me about topic {i} ?\nLAMDA:"
        response = f" here is {'a blunt joke about' if edgy else 'a calm fact on'} topic {i} ."
        for gi, g in enumerate(DICES_GROUPS):
            p = leans[g] if edgy else (0.85, 0.1, 0.05)
            for k in range(raters_per_group):
                rows.append({"id": str(len(rows)), "rater_id": str(100 * gi + k), "rater_gender": ("Man", "Woman")[k % 2],
                             "rater_race": g, "rater_age": "gen z", "item_id": str(i), "context": context,
                             "response": response, "Q_overall": answers[int(rng.choice(3, p=p))]})
    csv_path = pathlib.Path(path).with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    assert main(["store", "import", "--db", str(path), "--file", str(csv_path), "--preset", "dices"]) == 0
    return len(rows)
