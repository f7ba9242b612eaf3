"""Pure math on tensors (torch/numpy only): OT losses, label scales, Dirichlet updates, PPO math.

The names below are loaded on first use (PEP 562), so that importing one torch-free
module of core (``raydprm.core.hh_labels``, read by the config) does not load torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# public name -> the core module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("COST_NAMES", "cost_matrix", "validate_cost"), "cost"),
    **dict.fromkeys(("dirichlet_mean", "dirichlet_update", "dirichlet_variance"), "dirichlet"),
    **dict.fromkeys(("masked_gae", "masked_mean", "whiten"), "gae"),
    **dict.fromkeys(("HH_LABELS", "HH_REWARDS"), "hh_labels"),
    **dict.fromkeys(("adaptive_kl_controller", "fixed_kl_controller", "kl_estimate", "shape_rewards",
                     "update_kl_coef"), "kl"),
    "LabelScale": "label_scale",
    **dict.fromkeys(("OT_METHODS", "ot_loss", "ot_loss_with_stats"), "ot_loss"),
    **dict.fromkeys(("PAIRWISE_LOSSES", "pairwise_loss", "reduce_pairs", "DIRECT_ALIGNMENT_LOSSES"), "pairwise_loss"),
    **dict.fromkeys(("aggregate", "clipped_surrogate", "clipped_value_loss", "entropy_bonus", "entropy_from_logits",
                     "token_logprobs"), "ppo_loss"),
    **dict.fromkeys(("SMOOTHINGS", "targeted_smoothing"), "smoothing"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raydprm.core' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"raydprm.core.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _CoreModule(types.ModuleType):
    """After loading a submodule the import system binds it on this package under its
    name; where a public function has that name (``ot_loss``) the function stays bound,
    as it did when this file imported everything eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _CoreModule
