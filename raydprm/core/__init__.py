"""Pure math on tensors (torch/numpy only): OT losses, label scales, Dirichlet updates, PPO math."""
