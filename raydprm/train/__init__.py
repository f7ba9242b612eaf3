"""Single-process training: SFT, reward models, the PPO learner (no ray here)."""
