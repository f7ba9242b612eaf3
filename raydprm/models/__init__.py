"""Models: the tiny offline kit, and (later) the DPRM and policy/value modules."""

from raydprm.models.tiny import TINY_MODELS, ensure_tiny_models, resolve_model

__all__ = ["TINY_MODELS", "ensure_tiny_models", "resolve_model"]
