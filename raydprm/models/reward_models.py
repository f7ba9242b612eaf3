"""The reward-model kinds by name, and the loader that opens whichever kind a checkpoint holds.

``REWARD_MODELS`` maps the ``kind`` written in a checkpoint's ``reward_model.json`` to its
class; the reward trainer builds its model from the same table.
"""

from __future__ import annotations

import os

import torch

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.models.backbone import HeadRewardModel, read_meta
from raydprm.models.bt import BTRewardModel
from raydprm.models.dprm import DPRM, GroupDPRM

__all__ = ["REWARD_MODELS", "load_reward_model"]

REWARD_MODELS: dict[str, type[HeadRewardModel]] = {cls.kind: cls for cls in (DPRM, GroupDPRM, BTRewardModel)}


def load_reward_model(directory: str | os.PathLike[str], scale: LabelScale | None = None,
                      dtype: str = "float32", device: str | torch.device = "cpu") -> HeadRewardModel:
    """Load whichever reward model (DPRM or Bradley-Terry) a checkpoint directory holds;
    ``scale`` is checked against the saved one where the kind predicts label distributions."""
    d, meta = read_meta(directory)
    kind = meta.get("kind", DPRM.kind)
    if kind not in REWARD_MODELS:
        raise RaydprmError(f"'{d}' holds an unknown reward model kind {kind!r}; known: {', '.join(REWARD_MODELS)}")
    return REWARD_MODELS[kind].load(d, scale=scale, dtype=dtype, device=device)
