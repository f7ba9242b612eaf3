"""Exports of the preference store: items with their target distributions (pooled, a persona /
group mixture, or post-stratified to a target population; optionally one side of the split by
item id) and the recorded pairs, as ``datasets.Dataset`` objects."""

from __future__ import annotations

from collections.abc import Mapping

from raydprm.store import reads
from raydprm.store.split import heldout_mask
from raydprm.store.sqlite_db import StoreError

__all__ = ["export_items", "export_pairs"]


def export_items(store, persona_weights: Mapping[str, float] | None = None, smoothing: float = 0.0,
                 min_votes: int = 1, at: float | None = None, *, split: str | None = None,
                 heldout_fraction: float = 0.2, split_seed: int = 0):
    """A ``datasets.Dataset`` for DPRM training, one row per item with >= ``min_votes`` votes:
    ``item_id, prompt, response, target`` (posterior mean (L,)), ``variance`` (L,),
    ``n_votes`` and ``persona_counts`` ({persona: undecayed counts (L,)} over all personas).

    ``persona_weights`` re-weights groups (a mixture; post-stratification to a target
    population). ``split="train"`` / ``"heldout"`` keeps one side of the deterministic
    split by item id (:func:`raydprm.store.split.heldout_mask` with ``heldout_fraction``
    and ``split_seed``); None keeps every item."""
    import datasets

    if split is not None and split not in ("train", "heldout"):
        raise StoreError(f"split must be 'train', 'heldout' or None, got {split!r}")
    try:
        heldout_mask([], heldout_fraction, split_seed)
    except ValueError as e:
        raise StoreError(str(e)) from None
    if persona_weights is not None:  # refuse a bad mixture even when no item qualifies
        reads.weights(store, persona_weights)
    if smoothing and not (0 <= smoothing < 1):
        raise StoreError(f"smoothing must lie in [0, 1), got {smoothing!r}")
    names = store.personas
    zero = [0.0] * store.num_labels
    rows: dict[str, list] = {k: [] for k in ("item_id", "prompt", "response", "target", "variance", "n_votes",
                                             "persona_counts")}
    for it in reads.all_posteriors(store, persona_weights, at, min_votes):
        if split is not None and bool(heldout_mask([it.item_id], heldout_fraction, split_seed)[0]) != (
                split == "heldout"):
            continue
        rows["item_id"].append(it.item_id)
        rows["prompt"].append(it.prompt)
        rows["response"].append(it.response)
        rows["target"].append(reads.smooth(it.mean, smoothing).tolist())
        rows["variance"].append(it.variance.tolist())
        rows["n_votes"].append(int(it.n_votes))
        rows["persona_counts"].append({q: (it.personas[q].counts.tolist() if q in it.personas else zero)
                                       for q in names})
    L = store.num_labels
    feats = datasets.Features({
        "item_id": datasets.Value("string"), "prompt": datasets.Value("string"),
        "response": datasets.Value("string"), "target": datasets.Sequence(datasets.Value("float64"), length=L),
        "variance": datasets.Sequence(datasets.Value("float64"), length=L), "n_votes": datasets.Value("int64"),
        "persona_counts": {q: datasets.Sequence(datasets.Value("float64"), length=L) for q in names}})
    return datasets.Dataset.from_dict(rows, features=feats)


def export_pairs(store):
    """Recorded pairwise comparisons as a ``datasets.Dataset`` (prompt, chosen, rejected, annotator)."""
    import datasets

    with store._read() as cur:
        rows = cur.execute(
            "SELECT a.prompt, a.response, b.response, p.annotator, p.source FROM pairs p "
            "JOIN items a ON a.item_id = p.chosen_item JOIN items b ON b.item_id = p.rejected_item "
            "ORDER BY p.ts, p.pair_id").fetchall()
    cols = ("prompt", "chosen", "rejected", "annotator", "source")
    return datasets.Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(cols)},
                                      features=datasets.Features({c: datasets.Value("string") for c in cols}))
