"""The PPO learner: one process (one rank of a data-parallel group) holding the policy
with its value function, the frozen reference, and a training engine.

One :meth:`PPOLearner.update` on a :class:`RolloutBatch` of ``B`` rollouts:

1. *Experience* on this rank's contiguous shard ``B / W`` (no gradients): the policy's
   logprobs ("old" logprobs; or the rollout's own with ``ppo.use_rollout_logprobs``) and
   values, the reference logprobs, per-token KL, shaped rewards
   ``r_t = -beta kl_t + [t = last] score`` and GAE advantages / returns. The shards are
   all-gathered so every rank holds the whole batch's experience; advantages are
   whitened over the whole batch.
2. ``ppo.epochs`` passes over the batch in shuffled minibatches of ``ppo.minibatch`` rows
   (the shuffle depends only on (seed, step, epoch), so it is identical on every rank and
   for every world size). Each rank takes its ``minibatch / W`` rows of a minibatch,
   in ``grad_accum`` micro-batches; the loss of a micro-batch is scaled with the
   *minibatch's* token (or sequence) count, so the applied gradient is exactly the
   gradient of the minibatch loss whatever ``W`` and the accumulation are.
3. The KL controller updates beta from the batch's mean sequence KL.

Metrics are namespaced ``ppo/...`` floats; see :meth:`PPOLearner.update`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raydprm.config import PPOConfig
from raydprm.core.gae import masked_gae, whiten
from raydprm.core.kl import kl_estimate, sequence_kl, shape_rewards, update_kl_coef
from raydprm.core.ppo_loss import (
    clipped_surrogate,
    clipped_value_loss,
    entropy_bonus,
    entropy_from_logits,
    token_logprobs,
)
from raydprm.errors import RaydprmError
from raydprm.models.policy import export_hf, load_policy, load_reference, load_tokenizer, sequence_inputs
from raydprm.train.ds_engine import build_engine, init_process_group
from raydprm.train.metric_sums import MetricSums
from raydprm.train.rollout_batch import RolloutBatch, RolloutBatchError

log = logging.getLogger(__name__)

__all__ = ["PPOLearner", "set_seed", "rng_state", "set_rng_state"]

_COMPLETE = "COMPLETE"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG this process uses (python, numpy, torch CPU and CUDA)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)



def write_checkpoint(d: Path, engine: Any, rank: int, world_size: int, meta: dict[str, Any]) -> Path:
    """The learners' checkpoint protocol (collective): every rank saves its engine shard and RNG
    states, then rank 0 writes ``learner_state.json`` (``meta``) and the ``COMPLETE`` marker."""
    d.mkdir(parents=True, exist_ok=True)
    (d / _COMPLETE).unlink(missing_ok=True)
    engine.save(d / "engine")
    torch.save(rng_state(), d / f"rng_rank{rank}.pt")
    if world_size > 1:
        dist.barrier()
    if rank == 0:
        (d / "learner_state.json").write_text(json.dumps(meta, indent=1))
        (d / _COMPLETE).write_text("ok\n")
    if world_size > 1:
        dist.barrier()
    return d


def read_checkpoint_meta(d: Path, engine: Any, world_size: int) -> dict[str, Any]:
    """``learner_state.json`` of a complete checkpoint written by the same world size and engine."""
    if not (d / _COMPLETE).is_file():
        raise RaydprmError(f"'{d}' is not a complete learner checkpoint (no {_COMPLETE} marker)")
    meta = json.loads((d / "learner_state.json").read_text())
    if meta["world_size"] != world_size or meta["engine"] != engine.name:
        raise RaydprmError(f"checkpoint '{d}' was written by {meta['world_size']} {meta['engine']} worker(s); "
                           f"this learner has {world_size} {engine.name} worker(s)")
    return meta


def restore_engine_and_rng(d: Path, engine: Any, rank: int) -> None:
    engine.load(d / "engine")
    set_rng_state(torch.load(d / f"rng_rank{rank}.pt", weights_only=False))

class PPOLearner:
    """One rank of the PPO learner (``world_size = ppo.num_workers``).

    ``policy``: kit name, directory or hub name of the initial policy (and, unless
    ``ppo.reference`` says otherwise, of the reference). With more than one worker (or
    the DeepSpeed engine) the process joins a torch.distributed group at
    ``master_addr:master_port`` (a free local port when None and ``world_size == 1``).
    """

    def __init__(self, ppo: PPOConfig, policy: str, *, seed: int = 0, rank: int = 0, master_addr: str = "127.0.0.1",
                 master_port: int | None = None, device: str = "auto", dtype: str = "float32",
                 trust_remote_code: bool = False):
        self.ppo = ppo
        self.policy_name = policy
        self.seed = seed
        self.rank = rank
        self.world_size = ppo.num_workers
        self.trust_remote_code = trust_remote_code
        if self.world_size > 1 and master_port is None:
            raise ValueError("a learner group of more than one worker needs an explicit master_port")
        self.device = _device(device)
        if self.world_size > 1 or ppo.engine == "deepspeed":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            init_process_group(rank, self.world_size, master_addr, master_port, backend, ppo.dist_timeout_s)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        set_seed(seed)
        model = load_policy(policy, ppo.critic, ppo.critic_model, dtype, trust_remote_code).to(self.device)
        self.ref = load_reference(ppo.reference or policy, dtype, trust_remote_code).to(self.device)
        self.engine = build_engine(model, ppo)
        self.kl_coef = float(ppo.beta)
        self.step = 0

    # ------------------------------------------------------------------ helpers

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the ranks' equal-shaped shards along dim 0 (rank order)."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    def _sum_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def _forward(self, b: RolloutBatch, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attn, pos = sequence_inputs(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        with torch.set_grad_enabled(grad), self.engine.autocast():
            return self.engine.forward(ids, attn, pos, b.response_ids.shape[1])  # (B, T, V), (B, T)

    @torch.no_grad()
    def _ref_logits(self, b: RolloutBatch) -> torch.Tensor:
        ids, attn, pos = sequence_inputs(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        T = b.response_ids.shape[1]
        with self.engine.autocast():
            out = self.ref(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
        return out.logits[:, :-1]  # (B, T, V)

    def _to_device(self, b: RolloutBatch) -> RolloutBatch:
        if self.device.type == "cpu":
            return b
        return RolloutBatch(*(getattr(b, f).to(self.device) for f in
                              ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "rewards")))

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
        mu = ppo.worker_micro_batch
        old_lp, old_v, ref_lp, exact_kl = [], [], [], []
        for i in range(0, len(local), mu):
            mb = local.select(slice(i, i + mu))
            logits, values = self._forward(mb, grad=False)
            old_lp.append(token_logprobs(logits, mb.response_ids))
            old_v.append(values.float())
            ref_logits = self._ref_logits(mb)  # (mu, T, V)
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
        rewards, _ = shape_rewards(local.rewards.float(), kl, mask, self.kl_coef)  # r_t = -beta kl_t (+ score)
        adv, ret = masked_gae(rewards, values, mask, ppo.gamma, ppo.lam)
        lp_diff = ((logp - local.logprobs.float()).abs() * m).sum(1)  # rollout vs learner logprobs
        exp = {"logp_old": logp_old, "values": values, "adv": adv, "ret": ret, "kl": kl, "lp_diff": lp_diff,
               "ref_lp": ref, "kl_exact": torch.cat(exact_kl)}
        exp = {k: self._gather(v) for k, v in exp.items()}
        full_mask = batch.response_mask.to(self.device)
        if ppo.whiten_advantages:
            exp["adv"] = whiten(exp["adv"], full_mask)  # over the whole batch: same on every rank
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
        B, M, Mw, mu, G = len(batch), ppo.minibatch, ppo.worker_minibatch, ppo.worker_micro_batch, ppo.grad_accum
        # loss sums are weighted by each micro-batch's share of its minibatch's aggregation
        # count, token statistics by the micro-batch's valid tokens; summed over ranks below
        sums = MetricSums("policy_loss", "value_loss", "agg_count", "clipfrac", "approx_kl", "entropy",
                          "vf_clipfrac", "tokens")
        grad_norms, n_opt_steps = [], 0
        for epoch in range(ppo.epochs):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 1_009 + epoch)
            perm = torch.randperm(B, generator=g)  # same on every rank and every world size
            for start in range(0, B, M):
                rows = perm[start:start + M]
                n_tok = mask[rows].sum().double()
                agg_count = n_tok if ppo.loss_agg == "token_mean" else torch.tensor(float(M), dtype=torch.float64)
                denom = (agg_count / (W * G)).float()  # engines average over W ranks x G micro-batches
                mine = rows[r * Mw:(r + 1) * Mw]
                for i in range(0, Mw, mu):
                    idx = mine[i:i + mu]
                    mb = full.select(idx.to(self.device) if self.device.type != "cpu" else idx)
                    mmask = mb.response_mask
                    logits, values = self._forward(mb, grad=True)
                    logp = token_logprobs(logits, mb.response_ids)
                    pg, s_pg = clipped_surrogate(logp, exp["logp_old"][idx], exp["adv"][idx], mmask, ppo.clip_ratio,
                                                 ppo.loss_agg, denom)
                    vf, s_vf = clipped_value_loss(values.float(), exp["values"][idx], exp["ret"][idx], mmask,
                                                  ppo.value_clip, ppo.loss_agg, denom)
                    if ppo.entropy_coef > 0:
                        ent_loss, s_ent = entropy_bonus(entropy_from_logits(logits), mmask, ppo.entropy_coef,
                                                        ppo.loss_agg, denom)
                    else:
                        with torch.no_grad():
                            ent_loss, s_ent = entropy_bonus(entropy_from_logits(logits), mmask, 0.0)
                        ent_loss = 0.0
                    loss = pg + ppo.vf_coef * vf + ent_loss
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
                             tokens=k)
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
        return {
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

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """All weights of the actor-critic (ZeRO-3 partitions gathered); collective."""
        return self.engine.full_state_dict()

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy LM's weights under their HF names (what a rollout engine loads); collective."""
        return {k[len("lm."):]: v for k, v in self.full_state_dict().items() if k.startswith("lm.")}

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

    def export_hf(self, out_dir: str | os.PathLike[str]) -> Path | None:
        """Write the policy as an ordinary HF directory (rank 0 writes; collective)."""
        state = self.policy_state_dict()
        out = None
        if self.rank == 0:
            tok = load_tokenizer(self.policy_name, self.trust_remote_code)
            out = export_hf(state, self.policy_name, out_dir, tok, self.trust_remote_code)
        if self.world_size > 1:
            dist.barrier()
        return out

    # ------------------------------------------------------------------ state

    def save(self, ckpt_dir: str | os.PathLike[str]) -> Path:
        """Engine (model + optimizer), KL controller, step counter and every rank's RNG
        states; collective. A checkpoint is complete once ``COMPLETE`` exists."""
        meta = {"step": self.step, "kl_coef": self.kl_coef, "seed": self.seed, "world_size": self.world_size,
                "engine": self.engine.name, "zero_stage": self.ppo.zero_stage, "policy": self.policy_name}
        return write_checkpoint(Path(ckpt_dir), self.engine, self.rank, self.world_size, meta)

    def load(self, ckpt_dir: str | os.PathLike[str]) -> None:
        """Resume from :meth:`save` (same world size and engine); collective."""
        d = Path(ckpt_dir)
        meta = read_checkpoint_meta(d, self.engine, self.world_size)
        restore_engine_and_rng(d, self.engine, self.rank)
        self.step = int(meta["step"])
        self.kl_coef = float(meta["kl_coef"])
        self.seed = int(meta["seed"])
