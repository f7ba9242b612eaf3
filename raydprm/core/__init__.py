"""Pure math on tensors (torch/numpy only): OT losses, label scales, Dirichlet updates, PPO math."""

from raydprm.core.cost import COST_NAMES, cost_matrix, validate_cost  # noqa: F401
from raydprm.core.dirichlet import dirichlet_mean, dirichlet_update, dirichlet_variance  # noqa: F401
from raydprm.core.gae import masked_gae, masked_mean, whiten  # noqa: F401
from raydprm.core.kl import (  # noqa: F401
    adaptive_kl_controller,
    fixed_kl_controller,
    kl_estimate,
    shape_rewards,
    update_kl_coef,
)
from raydprm.core.label_scale import LabelScale  # noqa: F401
from raydprm.core.ot_loss import OT_METHODS, ot_loss, ot_loss_with_stats  # noqa: F401
from raydprm.core.ppo_loss import (  # noqa: F401
    aggregate,
    clipped_surrogate,
    clipped_value_loss,
    entropy_bonus,
    entropy_from_logits,
    token_logprobs,
)
from raydprm.core.smoothing import SMOOTHINGS, targeted_smoothing  # noqa: F401
