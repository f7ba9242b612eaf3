"""A toy PPO loop that needs no reward model: reward = fraction of response tokens that
are target tokens (one id or a set). It exercises the whole learner (experience, GAE, clipping, KL
control, engine, weight hand-back) and shows learning within a minute of CPU.

Generation uses plain ``model.generate`` on a driver-side copy of the policy, refreshed
from the learner after every update (the rollout engines and weight sync are the rollout
component's; this loop depends on neither). ``learner`` is anything with
``update(RolloutBatch) -> dict`` and ``policy_state_dict() -> dict`` (or ``state_dict()``):
a :class:`~raydprm.train.learner.PPOLearner` or a Ray ``LearnerGroup``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from raydprm.core.ppo_loss import token_logprobs
from raydprm.models.policy import load_reference, load_tokenizer
from raydprm.train.rollout_batch import RolloutBatch

__all__ = ["target_token_reward", "generate_rollouts", "default_targets", "run_toy_ppo"]


def target_token_reward(response_ids: Sequence[Sequence[int]], targets: Sequence[int] | int) -> list[float]:
    """Fraction of each response's tokens that are a target token (0 for an empty response)."""
    tset = {targets} if isinstance(targets, int) else set(targets)
    return [sum(t in tset for t in r) / max(len(r), 1) for r in response_ids]


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
                      max_prompt_tokens: int = 48) -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    """Sample one response per prompt with ``model.generate``; returns (prompt ids,
    response ids up to and including EOS, sampled-token logprobs)."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens)
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, output_logits=True)
    P = enc["input_ids"].shape[1]
    seq = out.sequences[:, P:]  # (B, T)
    logits = torch.stack(out.logits, dim=1) / max(temperature, 1e-6)  # (B, T, V)
    lp = token_logprobs(logits, seq)  # (B, T)
    prompt_ids, resp_ids, resp_lp = [], [], []
    for b in range(seq.shape[0]):
        p = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
        r = seq[b].tolist()
        if tokenizer.eos_token_id in r:
            r = r[:r.index(tokenizer.eos_token_id) + 1]
        prompt_ids.append(p)
        resp_ids.append(r)
        resp_lp.append(lp[b, :len(r)].tolist())
    return prompt_ids, resp_ids, resp_lp


def default_targets(tokenizer, every: int = 8) -> list[int]:
    """Every ``every``-th non-special token id: the default target set.

    A random-init tiny policy is close to uniform over its ~800 tokens, so one target token
    would be sampled about once per batch (no learning signal in a minute); an eighth of
    the vocabulary starts near 12% and gives PPO a clear gradient. A single token id works
    too (``target=<id>``) with a policy that already emits it sometimes.
    """
    specials = set(tokenizer.all_special_ids)
    return [i for i in range(0, len(tokenizer), every) if i not in specials]


def run_toy_ppo(learner: Any, policy: str, *, steps: int, batch_size: int, max_new_tokens: int = 8,
                target: int | Sequence[int] | None = None, seed: int = 0, progress: bool = True,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Run ``steps`` PPO iterations on the target-token reward; returns per-step metrics
    (the learner's ``ppo/*`` plus ``toy/reward``, ``toy/num_targets``, ``toy/response_len``).
    ``target``: one token id or a set of ids; None = :func:`default_targets`."""
    from raydprm.sim.world import prompts as world_prompts

    torch.manual_seed(seed)
    tok = load_tokenizer(policy)
    model = load_reference(policy)  # a frozen copy for sampling; refreshed after each update
    if target is None:
        target = default_targets(tok)
    get_state = getattr(learner, "policy_state_dict", None) or learner.state_dict
    history = []
    bar = tqdm(range(steps), desc="toy PPO", disable=not progress, unit="step")
    for step in bar:
        p_ids, r_ids, r_lp = generate_rollouts(model, tok, world_prompts(batch_size, seed=seed + 1 + step), max_new_tokens)
        rewards = target_token_reward(r_ids, target)
        batch = RolloutBatch.from_sequences(p_ids, r_ids, rewards, r_lp, pad_id=tok.pad_token_id)
        metrics = dict(learner.update(batch))
        metrics.update({"toy/reward": sum(rewards) / len(rewards), "toy/num_targets": float(1 if isinstance(target, int) else len(target)),
                        "toy/response_len": sum(map(len, r_ids)) / len(r_ids)})
        model.load_state_dict(get_state())
        history.append(metrics)
        bar.set_postfix(reward=f"{metrics['toy/reward']:.3f}", kl=f"{metrics['ppo/kl']:.3f}")
        if on_step is not None:
            on_step(step, metrics)
    return history
