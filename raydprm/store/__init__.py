"""The durable Bayesian preference store: an append-only SQLite (WAL) vote log with
per-(item, persona) Dirichlet posteriors, mixture queries, forgetting and exports."""

from raydprm.store.preference_store import (
                                            DEFAULT_STORE_PERSONAS,
                                            PreferenceStore,
                                            StoreError,
                                            UnknownItemError,
)
from raydprm.store.votes import VoteError, item_id

__all__ = ["PreferenceStore", "StoreError", "UnknownItemError", "VoteError", "item_id", "DEFAULT_STORE_PERSONAS"]
