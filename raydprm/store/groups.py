"""Rater groups as personas: how much groups disagree, and post-stratification, in pure numpy.

Inputs are the per-(item, group) undecayed vote counts ``counts`` (I, P, L) of
:meth:`PreferenceStore.group_posteriors`.

Disagreement between groups p and q, the Jensen-Shannon divergence in bits (0 <= JS <= 1) of
:func:`raydprm.core.disagreement.js_divergence`,

    JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m),   m = (p + q) / 2                   (G1)

of (a) their label distributions over all items (counts summed over items, normalised) and
(b) per item, averaged over the items both groups voted on. The share of items where the
majority's modal label differs from a group's (G2) is taken over the items the group voted on;
the majority is the pooled crowd (every vote of every group); ties go to the lower label index.
These are the figures of :func:`raydprm.core.disagreement.group_disagreement` for a store's
vote counts, where a group need not have voted on every item: its missing (item, group) cells
are left out rather than read as a distribution.

Post-stratification (G3): a target population gives each group a share pi_g (sum 1); the
re-weighted posterior of an item is the mixture sum_g pi_g Dir(alpha_g) (a group that did not
vote on the item contributes its prior), instead of pooling votes in the proportions the raters
happened to be recruited in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from raydprm.core.disagreement import js_divergence

__all__ = ["group_disagreement", "poststratification_weights"]


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS(p, q) in bits (Eq. G1) of rows (..., L), as numpy."""
    return js_divergence(torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)).numpy()


def _normalise(c: np.ndarray) -> np.ndarray:
    s = c.sum(-1, keepdims=True)
    return np.divide(c, s, out=np.zeros_like(c), where=s > 0)


def group_disagreement(counts: np.ndarray, groups: Sequence[str]) -> dict:
    """Disagreement of the groups of ``counts`` (I, P, L): ``{"js_labels": {p: {q: JS}},
    "js_items": {p: {q: mean per-item JS or None}}, "modal_differs": {p: share or None}}``."""
    c = np.asarray(counts, dtype=np.float64)  # (I, P, L)
    P = c.shape[1]
    marg = _normalise(c.sum(0))  # (P, L) each group's label distribution over all items
    per_item = _normalise(c)  # (I, P, L)
    voted = c.sum(-1) > 0  # (I, P)
    js_labels: dict[str, dict[str, float]] = {}
    js_items: dict[str, dict[str, float | None]] = {}
    for a in range(P):
        js_labels[groups[a]], js_items[groups[a]] = {}, {}
        for b in range(P):
            js_labels[groups[a]][groups[b]] = round(float(_js(marg[a], marg[b])), 6)  # (Eq. G1)
            both = voted[:, a] & voted[:, b]
            js_items[groups[a]][groups[b]] = (round(float(_js(per_item[both, a], per_item[both, b]).mean()), 6)
                                              if both.any() else None)
    majority = c.sum(1).argmax(-1)  # (I,) modal label of the pooled crowd (Eq. G2)
    modal = c.argmax(-1)  # (I, P)
    modal_differs = {groups[p]: (round(float((modal[voted[:, p], p] != majority[voted[:, p]]).mean()), 6)
                                 if voted[:, p].any() else None) for p in range(P)}
    return {"js_labels": js_labels, "js_items": js_items, "modal_differs": modal_differs}


def poststratification_weights(target: Mapping[str, float], groups: Sequence[str]) -> dict[str, float]:
    """Group weights pi_g (sum 1) of a target population ``{group: share}`` (Eq. G3); refuses a
    group the store does not know, a negative or non-finite share, and an all-zero target."""
    if not isinstance(target, Mapping) or not target:
        raise ValueError("the target population must be a non-empty mapping {group: share}")
    unknown = [g for g in target if g not in groups]
    if unknown:
        raise ValueError(f"the target population names groups the store does not have: {unknown} "
                         f"(groups: {', '.join(groups)})")
    w = {}
    for g, x in target.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x < 0:
            raise ValueError(f"the share of group '{g}' must be a finite number >= 0, got {x!r}")
        w[g] = float(x)
    total = sum(w.values())
    if total <= 0:
        raise ValueError("the target population's shares are all zero")
    return {g: x / total for g, x in w.items()}
