"""The durable Bayesian preference store: an append-only SQLite (WAL) vote log with
per-(item, persona) Dirichlet posteriors, mixture queries, forgetting and exports.

API for the rest of raydprm (names kept stable):

* :class:`PreferenceStore` — ``groups()`` (rater groups = personas with votes),
  ``group_posteriors()`` (per-(item, group) alphas/counts as arrays), ``group_counts()``,
  ``group_disagreement()``, ``label_scale()`` (the store's recorded :class:`LabelScale`),
  ``export(..., split="train"|"heldout", heldout_fraction=, split_seed=)``;
* :func:`heldout_mask` / :func:`split_items` — the deterministic split of items by item id;
* :func:`store_label_scale` / :func:`check_labels_config` / :func:`labels_config_for` — a config's
  ``labels.*`` against a store, and the store's scale as a ``LabelsConfig``;
* :func:`raydprm.store.importer.import_file` — per-rater datasets through a mapping or preset.
"""

from raydprm.store.preference_store import (
                                            DEFAULT_STORE_PERSONAS,
                                            GroupPosteriors,
                                            PreferenceStore,
                                            StoreError,
                                            UnknownItemError,
)
from raydprm.store.scale import LabelScaleConflict, check_labels_config, labels_config_for, store_label_scale
from raydprm.store.split import heldout_mask, split_items
from raydprm.store.votes import VoteError, item_id

__all__ = ["PreferenceStore", "StoreError", "UnknownItemError", "VoteError", "item_id", "DEFAULT_STORE_PERSONAS",
           "GroupPosteriors", "heldout_mask", "split_items", "store_label_scale", "check_labels_config",
           "LabelScaleConflict", "labels_config_for"]
