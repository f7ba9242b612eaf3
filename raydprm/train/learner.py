"""The PPO learner: one process (one rank of a data-parallel group) holding the policy
with its value function, the frozen reference, and a training engine.

One :meth:`PPOLearner.update` on a :class:`RolloutBatch` of ``B`` rollouts:

1. *Experience* on this rank's contiguous shard ``B / W`` (no gradients): the policy's
   logprobs ("old" logprobs; or the rollout's own with ``ppo.use_rollout_logprobs``) and
   values, the reference logprobs and the per-token KL. The shards are all-gathered, and the
   advantages of the whole batch come from ``ppo.advantage`` (:mod:`raydprm.core.advantages`:
   GAE on ``r_t = -beta kl_t + [t = last] score``, whitened over the batch; or a critic-free
   estimator over the batch's groups, with no value head at all). ``ppo.kl_in = loss`` moves
   ``beta kl_t`` from the rewards into the loss.
2. ``ppo.epochs`` passes over the batch in shuffled minibatches of ``ppo.minibatch`` rows
   (the shuffle depends only on (seed, step, epoch), so it is identical on every rank and
   for every world size). Each rank takes its ``minibatch / W`` rows of a minibatch,
   in ``grad_accum`` micro-batches, with the policy loss ``ppo.policy_loss``
   (:data:`raydprm.core.ppo_loss.POLICY_LOSSES`); the loss of a micro-batch is scaled with the
   *minibatch's* token (or sequence) count, so the applied gradient is exactly the
   gradient of the minibatch loss whatever ``W`` and the accumulation are.
3. The KL controller updates beta from the batch's mean sequence KL.

Metrics are namespaced ``ppo/...`` floats; see :meth:`PPOLearner.update`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raydprm.config import EngineConfig, EngineSection, PPOConfig
from raydprm.core.advantages import ADVANTAGES
from raydprm.core.gae import whiten
from raydprm.core.kl import kl_estimate, sequence_kl, update_kl_coef
from raydprm.core.ppo_loss import (
    POLICY_LOSSES,
    aggregate,
    clipped_value_loss,
    entropy_bonus,
    entropy_from_logits,
    token_logprobs,
)
from raydprm.errors import RaydprmError
from raydprm.models.policy import load_policy, sequence_inputs
from raydprm.train.metric_sums import MetricSums
from raydprm.train.rank import LearnerRank
from raydprm.train.rollout_batch import RolloutBatch, RolloutBatchError

log = logging.getLogger(__name__)

__all__ = ["PPOLearner", "PolicyOnly"]


class PolicyOnly(torch.nn.Module):
    """The policy LM without a value function (critic-free estimators): ``forward`` returns the
    response logits and ``None`` for the values; parameters are ``lm.*``, as in ActorCritic."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.train(False)

    def train(self, mode: bool = True) -> PolicyOnly:
        return super().train(False)  # always eval mode (dropout off); gradients still flow

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                response_len: int) -> tuple[torch.Tensor, None]:
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=response_len + 1, use_cache=False)
        return out.logits[:, :-1], None  # (B, T, V)


class PPOLearner(LearnerRank):
    """One rank of the PPO learner (``world_size = engine.num_workers``) on the rank base
    (:class:`~raydprm.train.rank.LearnerRank`: device, process group, seeds, reference, engine,
    checkpoints).

    ``policy``: kit name, directory or hub name of the initial policy (and, unless
    ``engine.reference`` says otherwise, of the reference). With more than one worker (or
    the DeepSpeed engine) the process joins a torch.distributed group at
    ``master_addr:master_port`` (a free local port when None and ``world_size == 1``).
    ``engine``: the ``engine.*`` section (how the group runs), joined with ``ppo.*``'s optimisation
    keys into :class:`~raydprm.config.EngineConfig`.
    """

    def __init__(self, ppo: PPOConfig, policy: str, *, engine: EngineSection | None = None, seed: int = 0,
                 rank: int = 0, master_addr: str = "127.0.0.1", master_port: int | None = None, device: str = "auto",
                 dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__(EngineConfig.of(engine or EngineSection(), ppo), policy, seed=seed, rank=rank, master_addr=master_addr,
                         master_port=master_port, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        self.ppo = ppo
        critic = ppo.critic if ppo.uses_critic else "value_head"
        model = load_policy(policy, critic, ppo.critic_model if ppo.uses_critic else "", dtype, trust_remote_code)
        if not ppo.uses_critic:  # a critic-free estimator: the policy alone, no value head, no critic optimizer state
            model = PolicyOnly(model.lm)
        self._build(model)
        self.kl_coef = float(ppo.beta)

    # ------------------------------------------------------------------ helpers

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the ranks' equal-shaped shards along dim 0 (rank order)."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    def _forward(self, b: RolloutBatch, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attn, pos = sequence_inputs(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        with torch.set_grad_enabled(grad), self.engine.autocast():
            return self.engine.forward(ids, attn, pos, b.response_ids.shape[1])  # (B, T, V), (B, T)

    def _to_device(self, b: RolloutBatch) -> RolloutBatch:
        if self.device.type == "cpu":
            return b
        return RolloutBatch(*(getattr(b, f).to(self.device) for f in
                              ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "rewards",
                               "group")))

    def _check(self, batch: RolloutBatch) -> None:
        if not isinstance(batch, RolloutBatch):
            raise RolloutBatchError(f"update() takes a RolloutBatch, got {type(batch).__name__}")
        B, M = len(batch), self.ppo.minibatch
        if B % M:
            raise RolloutBatchError(f"a batch of {B} rollouts does not split into minibatches of ppo.minibatch = {M}")

    # ------------------------------------------------------------------ experience

    @torch.no_grad()
    def _experience(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        ppo = self.ppo
        local = self._to_device(batch.shard(self.rank, self.world_size))
        mu = self.ecfg.worker_micro_batch
        old_lp, old_v, ref_lp, exact_kl = [], [], [], []
        for i in range(0, len(local), mu):
            mb = local.select(slice(i, i + mu))
            logits, values = self._forward(mb, grad=False)
            old_lp.append(token_logprobs(logits, mb.response_ids))
            old_v.append(values.float() if values is not None else torch.zeros_like(old_lp[-1]))
            ref_logits = self._ref_logits(*sequence_inputs(mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask),
                                           mb.response_ids.shape[1])  # (mu, T, V)
            ref_lp.append(token_logprobs(ref_logits, mb.response_ids))
            # the exact vocabulary KL of each response, for reports (ppo/kl_exact); the penalty keeps ppo.kl_estimator
            exact_kl.append(sequence_kl(logits, ref_logits, mb.response_mask, torch.float32))  # (mu,)
        mask = local.response_mask
        m = mask.float()
        logp = torch.cat(old_lp) * m  # (B_w, T)
        values = torch.cat(old_v) * m
        ref = torch.cat(ref_lp) * m
        if ppo.use_rollout_logprobs:
            logp_old = local.logprobs.float() * m
        else:
            logp_old = logp
        kl = kl_estimate(logp_old, ref, ppo.kl_estimator, mask)  # (B_w, T)
        lp_diff = ((logp - local.logprobs.float()).abs() * m).sum(1)  # rollout vs learner logprobs
        exp = {"logp_old": logp_old, "values": values, "kl": kl, "lp_diff": lp_diff, "ref_lp": ref,
               "kl_exact": torch.cat(exact_kl)}
        exp = {k: self._gather(v) for k, v in exp.items()}
        # advantages over the whole batch (a group's baseline needs every response to its prompt):
        # the same numbers on every rank; GAE is row by row, so its numbers are those of each shard
        full = self._to_device(batch)
        beta = self.kl_coef if ppo.kl_in == "reward" else 0.0  # r_t = -beta kl_t + [t = last] score
        exp["adv"], exp["ret"] = ADVANTAGES[ppo.advantage](
            full.rewards.float(), exp["kl"], full.response_mask, full.group, values=exp["values"], gamma=ppo.gamma,
            lam=ppo.lam, kl_coef=beta)
        if ppo.whiten_advantages and ppo.advantage == "gae":
            exp["adv"] = whiten(exp["adv"], full.response_mask)  # over the whole batch: same on every rank
        return exp

    # ------------------------------------------------------------------ update

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One PPO update. Metrics (floats, identical on every rank):

        ``ppo/policy_loss``, ``ppo/value_loss`` (aggregated as ``ppo.loss_agg``, averaged
        over minibatches and epochs), ``ppo/clipfrac``, ``ppo/approx_kl`` (k3 of
        KL(old || new)), ``ppo/entropy``, ``ppo/vf_clipfrac`` (token means),
        ``ppo/grad_norm`` (mean over optimizer steps, before clipping), ``ppo/kl_coef``
        (beta used), ``ppo/kl_coef_next``, ``ppo/kl`` (mean sequence KL to the reference, as
        ``ppo.kl_estimator`` estimates it: what the penalty and the controller use), ``ppo/kl_exact``
        (mean sequence KL to the reference, exact over the vocabulary: what reports plot),
        ``ppo/reward`` (mean score), ``ppo/returns``, ``ppo/values``,
        ``ppo/rollout_logprob_diff`` (mean |rollout - learner| logprob per token),
        ``ppo/tokens_per_s`` (prompt + response tokens x epochs / wall time),
        ``ppo/samples_per_s``, ``ppo/update_time_s``, ``ppo/optimizer_steps``, ``ppo/step``.
        """
        self._check(batch)
        ppo, W, r = self.ppo, self.world_size, self.rank
        t0 = time.perf_counter()
        exp = self._experience(batch)
        full = self._to_device(batch)
        mask = full.response_mask
        e = self.ecfg
        B, M, Mw, mu, G = len(batch), ppo.minibatch, e.worker_minibatch, e.worker_micro_batch, e.grad_accum
        # loss sums are weighted by each micro-batch's share of its minibatch's aggregation
        # count, token statistics by the micro-batch's valid tokens; summed over ranks below
        sums = MetricSums("policy_loss", "value_loss", "agg_count", "clipfrac", "approx_kl", "entropy",
                          "vf_clipfrac", "tokens", "kl_loss", "dual_clipfrac")
        policy_loss, critic, kl_loss = POLICY_LOSSES[ppo.policy_loss], ppo.uses_critic, ppo.kl_in == "loss"
        grad_norms, n_opt_steps = [], 0
        for epoch in range(ppo.epochs):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 1_009 + epoch)
            perm = torch.randperm(B, generator=g)  # same on every rank and every world size
            for start in range(0, B, M):
                rows = perm[start:start + M]
                n_tok = mask[rows].sum().double()
                agg_count = n_tok if ppo.loss_agg == "token_mean" else torch.tensor(
                    float(M * (mask.shape[1] if ppo.loss_agg == "token_sum" else 1)), dtype=torch.float64)
                denom = (agg_count / (W * G)).float()  # engines average over W ranks x G micro-batches
                mine = rows[r * Mw:(r + 1) * Mw]
                for i in range(0, Mw, mu):
                    idx = mine[i:i + mu]
                    mb = full.select(idx.to(self.device) if self.device.type != "cpu" else idx)
                    mmask = mb.response_mask
                    logits, values = self._forward(mb, grad=True)
                    logp = token_logprobs(logits, mb.response_ids)
                    pg, s_pg = policy_loss(logp, exp["logp_old"][idx], exp["adv"][idx], mmask, clip_low=ppo.clip_ratio,
                                           clip_high=ppo.clip_ratio_high, clip_c=ppo.dual_clip_c, agg=ppo.loss_agg,
                                           denominator=denom)
                    if critic:
                        vf, s_vf = clipped_value_loss(values.float(), exp["values"][idx], exp["ret"][idx], mmask,
                                                      ppo.value_clip, ppo.loss_agg, denom)
                    else:
                        vf, s_vf = torch.zeros(()), {"vf_clipfrac": torch.zeros(())}
                    kl_term = self.kl_coef * aggregate(kl_estimate(logp, exp["ref_lp"][idx], ppo.kl_estimator, mmask),
                                                       mmask, ppo.loss_agg, denom) if kl_loss else torch.zeros(())
                    if ppo.entropy_coef > 0:
                        ent_loss, s_ent = entropy_bonus(entropy_from_logits(logits), mmask, ppo.entropy_coef,
                                                        ppo.loss_agg, denom)
                    else:
                        with torch.no_grad():
                            ent_loss, s_ent = entropy_bonus(entropy_from_logits(logits), mmask, 0.0)
                        ent_loss = 0.0
                    loss = pg + ppo.vf_coef * vf + ent_loss
                    if kl_loss:  # (GRPO, Eq. 3) + beta KL(pi || pi_ref) in the loss instead of the reward
                        loss = loss + kl_term
                    if self.engine.backward(loss):
                        n_opt_steps += 1
                        if self.engine.last_grad_norm is not None:
                            grad_norms.append(self.engine.last_grad_norm)
                    k = mmask.sum().double().cpu()
                    d = denom.double().cpu()
                    sums.add(policy_loss=pg.detach().double().cpu() * d,
                             value_loss=vf.detach().double().cpu() * d,
                             clipfrac=s_pg["clipfrac"].double().cpu() * k,
                             approx_kl=s_pg["approx_kl"].double().cpu() * k,
                             entropy=s_ent["entropy"].double().cpu() * k,
                             vf_clipfrac=s_vf["vf_clipfrac"].double().cpu() * k,
                             tokens=k, kl_loss=kl_term.detach().double().cpu() * d,
                             dual_clipfrac=s_pg.get("dual_clipfrac", torch.zeros(())).double().cpu() * k)
                sums.add(agg_count=float(agg_count) / W)  # each rank adds its share; summed over ranks below
        sums.reduce(lambda t: self._sum_ranks(t.to(self.device) if self.device.type == "cuda" else t))
        elapsed = time.perf_counter() - t0
        # KL controller: beta from the mean sequence KL of this batch (Ziegler et al. 2019)
        seq_kl = float((exp["kl"] * mask).sum(1).mean())
        beta_used = self.kl_coef
        self.kl_coef, _ = update_kl_coef(ppo.kl_controller, beta_used, seq_kl, B, ppo.target_kl, ppo.kl_horizon)
        self.step += 1
        n_tok_all = float(batch.num_tokens) * ppo.epochs
        m = mask.float()
        tokens = sums["tokens"]
        out = {
            "ppo/policy_loss": sums["policy_loss"] / sums["agg_count"],
            "ppo/value_loss": sums["value_loss"] / sums["agg_count"],
            "ppo/clipfrac": sums["clipfrac"] / tokens,
            "ppo/approx_kl": sums["approx_kl"] / tokens,
            "ppo/entropy": sums["entropy"] / tokens,
            "ppo/vf_clipfrac": sums["vf_clipfrac"] / tokens,
            "ppo/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
            "ppo/kl_coef": beta_used,
            "ppo/kl_coef_next": self.kl_coef,
            "ppo/kl": seq_kl,
            "ppo/kl_exact": float(exp["kl_exact"].mean()),
            "ppo/reward": float(batch.rewards.float().mean()),
            "ppo/returns": float((exp["ret"] * m).sum() / m.sum()),
            "ppo/values": float((exp["values"] * m).sum() / m.sum()),
            "ppo/rollout_logprob_diff": float(exp["lp_diff"].sum() / m.sum()),
            "ppo/tokens_per_s": n_tok_all / elapsed,
            "ppo/samples_per_s": B * ppo.epochs / elapsed,
            "ppo/update_time_s": elapsed,
            "ppo/optimizer_steps": float(n_opt_steps),
            "ppo/step": float(self.step),
        }
        if not critic:  # no value function: nothing to report
            for k in ("ppo/value_loss", "ppo/vf_clipfrac", "ppo/values"):
                del out[k]
        if kl_loss:
            out["ppo/kl_loss"] = sums["kl_loss"] / sums["agg_count"]
        if ppo.policy_loss == "dual_clip":
            out["ppo/dual_clipfrac"] = sums["dual_clipfrac"] / tokens
        return out

    # ------------------------------------------------------------------ offload (colocated layout)

    def offload(self, parts: tuple[str, ...] = ("optimizer", "params")) -> list[str]:
        """Give the GPU to a colocated rollout engine: ``optimizer`` (moments, master weights,
        gradients) and/or ``params`` (policy, critic and the frozen reference) to host memory
        (:meth:`Engine.offload`; a no-op on the CPU). :meth:`reload` undoes it."""
        done = self.engine.offload(tuple(parts))
        if "params" in parts and self.device.type == "cuda":
            self.ref.to("cpu")
            torch.cuda.empty_cache()
            done = sorted({*done, "reference"})
        return done

    def reload(self) -> None:
        self.engine.reload()
        if self.device.type == "cuda":
            self.ref.to(self.device)

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def score(self, sequences) -> list[list[float]]:
        """Teacher-forced logprobs under the current policy: entry ``t`` of row ``i`` is
        ``log p(seq_i[t+1] | seq_i[:t+1])`` (the rollout engines' ``score`` convention, for
        weight-sync probes). Collective under ZeRO-3."""
        seqs = [list(map(int, s)) for s in sequences]
        if not seqs or any(len(s) < 2 for s in seqs):
            raise RaydprmError("score() needs sequences of at least 2 tokens")
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        attn = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        with self.engine.autocast():
            logits, _ = self.engine.forward(ids, attn, pos, L - 1)  # (B, L-1, V): predicts tokens 1..L-1
        lp = token_logprobs(logits, ids[:, 1:]).cpu()
        return [lp[i, :len(s) - 1].tolist() for i, s in enumerate(seqs)]

    # ------------------------------------------------------------------ state

    def _meta(self) -> dict[str, Any]:
        return super()._meta() | {"kl_coef": self.kl_coef}  # + the KL controller

    def _restore(self, meta: dict[str, Any], d: Path) -> None:
        super()._restore(meta, d)
        self.kl_coef = float(meta["kl_coef"])
