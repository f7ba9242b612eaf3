"""The label scale travels with the store: read it, and check a config's ``labels.*`` against it.

A store records its label scale (names, rewards, optional grid) when it is created (an import
with a mapping's ``scale:``, ``store init`` with ``labels.*``). Commands that train on or serve a
store take the scale from it; a config that sets ``labels.*`` to something else is refused in one
line naming both, rather than silently training a 6-label model on a 3-label crowd.
"""

from __future__ import annotations

import math
import os
from typing import Any

from raydprm.core.label_scale import LabelScale
from raydprm.store.preference_store import PreferenceStore, StoreError

__all__ = ["store_label_scale", "check_labels_config", "labels_config_is_default", "labels_config_for",
           "LabelScaleConflict"]


class LabelScaleConflict(StoreError):
    """``labels.*`` of a config differs from the label scale recorded in the store."""


def store_label_scale(path: str | os.PathLike[str]) -> LabelScale:
    """The label scale recorded in the store at ``path`` (opened read-only)."""
    with PreferenceStore(path, readonly=True) as s:
        return s.label_scale()


def labels_config_is_default(labels_cfg: Any) -> bool:
    """True when ``labels_cfg`` is the default ``LabelsConfig`` (the user set no ``labels.*``)."""
    from raydprm.config import LabelsConfig

    d = LabelsConfig()
    return (tuple(labels_cfg.names) == tuple(d.names) and tuple(labels_cfg.rewards) == tuple(d.rewards)
            and labels_cfg.grid == d.grid)


def check_labels_config(labels_cfg: Any, scale: LabelScale, store_path: str | os.PathLike[str] = "the store"
                        ) -> LabelScale:
    """Return the scale to use with a store whose scale is ``scale``, given a config's ``labels``.

    The default ``LabelsConfig`` (no ``labels.*`` set) defers to the store: ``scale`` is returned.
    Otherwise ``labels.names`` and ``labels.rewards`` must equal the store's (rewards within 1e-9)
    and ``labels.grid``, when both have one, too; else :class:`LabelScaleConflict` names both.
    """
    if labels_config_is_default(labels_cfg):
        return scale
    names, rewards = list(labels_cfg.names), [float(r) for r in labels_cfg.rewards]
    grid = None if labels_cfg.grid is None else [[float(c) for c in g] for g in labels_cfg.grid]
    same = (names == list(scale.names) and len(rewards) == len(scale.rewards)
            and all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(rewards, scale.rewards)))
    if same and grid is not None and scale.grid is not None:
        same = grid == [list(g) for g in scale.grid]
    if not same:
        raise LabelScaleConflict(
            f"labels.* of the config (names {names}, rewards {rewards}"
            + (f", grid {grid}" if grid is not None else "") + f") conflict with the label scale of store "
            f"'{store_path}' (names {list(scale.names)}, rewards {list(scale.rewards)}"
            + (f", grid {[list(g) for g in scale.grid]}" if scale.grid is not None else "")
            + "); leave labels.* unset to use the store's")
    return scale


def labels_config_for(scale: LabelScale):
    """The ``LabelsConfig`` of a label scale, for a config that must take the store's scale:
    ``dataclasses.replace(cfg, labels=labels_config_for(check_labels_config(cfg.labels, scale, path)))``.

    ``labels.grid`` holds (helpfulness, harm) pairs only; a grid of another width (a DICES store's
    1-D ordinal grid) is left out of the config (``grid=None``) and stays readable from the store."""
    from raydprm.config import LabelsConfig

    pairs = scale.grid is not None and all(len(g) == 2 for g in scale.grid)
    return LabelsConfig(names=tuple(scale.names), rewards=tuple(scale.rewards),
                        grid=tuple(tuple(g) for g in scale.grid) if pairs else None)
