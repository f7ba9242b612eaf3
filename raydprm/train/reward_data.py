"""Reward-model training data: rows of a preference-store export, split by item, and
Bradley-Terry pairs drawn from the same crowd.

A store export (``datasets.Dataset``) has one row per (prompt, response) item with
its target label distribution (the crowd's posterior mean) and per-persona vote counts.
:func:`examples_from_dataset` turns it into tensors; column names are read leniently
(``target`` or ``distribution``; ``persona_counts`` as a mapping or as parallel
``personas`` / ``counts`` lists) so that hand-made datasets work too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raydprm.errors import RaydprmError

__all__ = ["RewardExamples", "PairExamples", "examples_from_dataset", "examples_from_records", "split_examples",
           "pairs_from_targets", "pairs_from_records", "config_with_store_labels"]

TARGET_COLUMNS = ("target", "distribution", "mu")


@dataclass
class RewardExamples:
    """N items: texts, target distributions (N, L) and per-persona vote counts (P, N, L)."""

    prompts: list[str]
    responses: list[str]
    targets: torch.Tensor  # (N, L) float64, rows sum to 1
    persona_names: list[str] = field(default_factory=list)
    persona_counts: torch.Tensor | None = None  # (P, N, L) votes of each persona on each item

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int]) -> RewardExamples:
        idx = list(idx)
        pc = self.persona_counts[:, idx] if self.persona_counts is not None else None
        return RewardExamples([self.prompts[i] for i in idx], [self.responses[i] for i in idx],
                              self.targets[idx], list(self.persona_names), pc)

    def group_targets(self, prior: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Each rater group's (persona's) posterior mean label distribution per item and which
        (item, group) cells have votes: ``(t (N, G, L), voted (N, G) bool)``, with
        t_ngl = (c_ngl + a) / (n_ng + L a) (a Dirichlet(a) prior; the store's default a = 1)."""
        if self.persona_counts is None or not self.persona_names:
            raise RaydprmError("the preference data has no per-group vote counts (persona_counts): a "
                               "group-conditioned reward model (reward.conditioning = group) needs them")
        c = self.persona_counts.double().permute(1, 0, 2)  # (N, G, L)
        n = c.sum(-1)  # (N, G)
        L = c.shape[-1]
        return (c + prior) / (n[..., None] + L * prior), n > 0

    def group_shares(self) -> list[float]:
        """Each group's share of the votes (G,) (the population's default group weights)."""
        if self.persona_counts is None:
            return []
        v = self.persona_counts.double().sum((1, 2))  # (G,)
        return (v / v.sum()).tolist() if float(v.sum()) > 0 else [1.0 / len(v)] * len(v)


@dataclass
class PairExamples:
    """M pairs for the Bradley-Terry baseline: (prompt, response) of the chosen and of the
    rejected side (the prompts are equal for pairs on one prompt)."""

    chosen_prompts: list[str]
    chosen: list[str]
    rejected_prompts: list[str]
    rejected: list[str]

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, idx: Sequence[int]) -> PairExamples:
        idx = list(idx)
        return PairExamples([self.chosen_prompts[i] for i in idx], [self.chosen[i] for i in idx],
                            [self.rejected_prompts[i] for i in idx], [self.rejected[i] for i in idx])


def _persona_counts(row: Mapping[str, Any], L: int) -> dict[str, list[float]]:
    pc = row.get("persona_counts")
    if isinstance(pc, Mapping):
        return {str(k): list(v) for k, v in pc.items() if v is not None}
    if isinstance(pc, list) and pc and isinstance(pc[0], Mapping):  # [{"persona", "counts"}]
        return {str(d["persona"]): list(d["counts"]) for d in pc}
    names, counts = row.get("personas"), row.get("counts")
    if isinstance(names, list) and isinstance(counts, list):
        return {str(n): list(c) for n, c in zip(names, counts)}
    return {}


def examples_from_records(records: Sequence[Mapping[str, Any]], num_labels: int) -> RewardExamples:
    """Rows (dicts) -> :class:`RewardExamples`; validates every row and names the bad one."""
    if len(records) == 0:
        raise RaydprmError("the preference data is empty: add votes to the store first")
    first = records[0]
    tcol = next((c for c in TARGET_COLUMNS if c in first), None)
    for col in ("prompt", "response"):
        if col not in first:
            raise RaydprmError(f"preference data has no '{col}' column (columns: {', '.join(first)})")
    if tcol is None:
        raise RaydprmError(f"preference data has no target column (one of {', '.join(TARGET_COLUMNS)}; "
                           f"columns: {', '.join(first)})")
    prompts, responses, targets, pcs = [], [], [], []
    for i, row in enumerate(records):
        t = np.asarray(row[tcol], dtype=np.float64)
        if t.shape != (num_labels,):
            raise RaydprmError(f"row {i}: '{tcol}' has {t.size} entries, expected {num_labels} (one per label)")
        if not np.all(np.isfinite(t)) or np.any(t < 0) or t.sum() <= 0:
            raise RaydprmError(f"row {i}: '{tcol}' must be finite, >= 0 and not all zero")
        prompts.append(str(row["prompt"]))
        responses.append(str(row["response"]))
        targets.append(t / t.sum())
        pcs.append(_persona_counts(row, num_labels))
    names = sorted({n for d in pcs for n in d})
    counts = None
    if names:
        counts = torch.zeros(len(names), len(records), num_labels, dtype=torch.float64)  # (P, N, L)
        for i, d in enumerate(pcs):
            for n, c in d.items():
                if len(c) != num_labels:
                    raise RaydprmError(f"row {i}: persona '{n}' has {len(c)} counts, expected {num_labels}")
                counts[names.index(n), i] = torch.tensor(c, dtype=torch.float64)
    return RewardExamples(prompts, responses, torch.tensor(np.stack(targets)), names, counts)


def examples_from_dataset(ds, num_labels: int) -> RewardExamples:
    """A ``datasets.Dataset`` (a store export) -> :class:`RewardExamples`."""
    return examples_from_records(ds.to_list() if hasattr(ds, "to_list") else list(ds), num_labels)


def split_examples(ex: RewardExamples, eval_fraction: float, seed: int = 0) -> tuple[RewardExamples, RewardExamples]:
    """Seeded split of items into (train, held-out); both non-empty."""
    n = len(ex)
    if n < 2:
        raise RaydprmError(f"need at least 2 items to hold some out for evaluation, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_eval = min(max(1, int(round(eval_fraction * n))), n - 1)
    return ex.subset(sorted(perm[n_eval:])), ex.subset(sorted(perm[:n_eval]))


def pairs_from_targets(ex: RewardExamples, rewards: Sequence[float], pairs_per_item: int = 4,
                       seed: int = 0) -> PairExamples:
    """Bradley-Terry pairs from the crowd's label distributions.

    For each item a and each of ``pairs_per_item`` draws: a partner item b (same prompt
    when the data has one, else any item), one vote for each (label ~ target), and the
    item whose voted label has the higher reward is ``chosen``; ties are discarded.
    So P(a > b) is the crowd's probability that a voter rates a above b.
    """
    rng = np.random.default_rng(seed)
    r = np.asarray(rewards, dtype=np.float64)
    t = ex.targets.numpy()
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(ex.prompts):
        by_prompt.setdefault(p, []).append(i)
    CP, C, RP, R = [], [], [], []
    n = len(ex)
    for a in range(n):
        same = by_prompt[ex.prompts[a]]
        for _ in range(pairs_per_item):
            b = int(rng.choice(same)) if len(same) > 1 else int(rng.integers(n))
            if b == a:
                continue
            ra = r[rng.choice(len(r), p=t[a])]
            rb = r[rng.choice(len(r), p=t[b])]
            if ra == rb:
                continue
            win, lose = (a, b) if ra > rb else (b, a)
            CP.append(ex.prompts[win])
            C.append(ex.responses[win])
            RP.append(ex.prompts[lose])
            R.append(ex.responses[lose])
    return PairExamples(CP, C, RP, R)


def pairs_from_records(records: Sequence[Mapping[str, Any]]) -> PairExamples:
    """Rows with prompt, chosen, rejected (e.g. :func:`raydprm.sim.pairs.sample_pairs`)."""
    P, C, R = [], [], []
    for i, row in enumerate(records):
        for col in ("prompt", "chosen", "rejected"):
            if col not in row:
                raise RaydprmError(f"pair {i} has no '{col}' field")
        P.append(str(row["prompt"]))
        C.append(str(row["chosen"]))
        R.append(str(row["rejected"]))
    return PairExamples(P, C, list(P), R)


def simulate_store_export(store_path, *, crowd_cfg, store_cfg, labels_cfg, seed: int = 0, progress: bool = False):
    """Fill the preference store at ``store_path`` with simulated crowd votes (idempotent:
    vote ids are deterministic in the seed) and return its export (a ``datasets.Dataset``).

    Items: ``crowd.n_items`` world (prompt, response) pairs; votes: ``crowd.votes_per_item``
    per item from the persona mixture ``crowd.mixture``; targets smoothed by ``store.smoothing``.
    """
    from raydprm.sim.personas import Population, simulated_items
    from raydprm.store import PreferenceStore

    pop = Population.from_config(crowd_cfg)
    items = simulated_items(crowd_cfg.n_items, seed=seed)
    votes = pop.simulate_votes(items, crowd_cfg.votes_per_item, seed=seed)
    with PreferenceStore.from_config(store_cfg, labels_cfg, path=str(store_path), personas=pop.names) as store:
        store.add_votes(votes)
        return store.export(pop.mixture() if crowd_cfg.mixture else None, smoothing=store_cfg.smoothing)


def config_with_store_labels(cfg, path=None):
    """``cfg`` with ``labels`` taken from the existing store at ``path`` (default ``store.path``), when there is one.

    The store's recorded label scale wins over the default labels; ``labels.*`` given explicitly must
    equal the store's, else one error names both (:func:`raydprm.store.check_labels_config`). Costs,
    rewards and report label names then follow the store's scale."""
    import dataclasses
    from pathlib import Path

    from raydprm.store import check_labels_config, labels_config_for, store_label_scale

    path = str(path or cfg.store.path)
    if not path or not Path(path).is_file():
        return cfg
    labels = labels_config_for(check_labels_config(cfg.labels, store_label_scale(path), path))
    return cfg if labels == cfg.labels else dataclasses.replace(cfg, labels=labels)
