"""Models: the tiny offline kit (``tiny``), the reward models (``backbone``, ``dprm``, ``bt``,
``reward_models``), the policy with its value function (``policy``) and the LLM judge."""

from raydprm.models.tiny import TINY_MODELS, ensure_tiny_models, resolve_model

__all__ = ["TINY_MODELS", "ensure_tiny_models", "resolve_model"]
