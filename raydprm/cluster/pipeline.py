"""`raydprm run`: the RLHF pipeline as resumable stages on Ray.

    sft -> collect -> reward[loss] -> ppo[reward] -> evaluate

============  ===========================================================  ====================
stage         what runs (Ray)                                              outputs in run_dir
============  ===========================================================  ====================
sft           a task: the tiny policy learns the simulated world           sft/
collect       RolloutPool samples the SFT policy; the crowd votes on those  store.db, collect/data
              and on world items through the StoreClient
reward        a task (Ray Train when reward.num_workers > 1)               reward/best
ppo           RolloutPool -> RewardPool -> LearnerGroup, weights published   ppo/ckpt/step_N,
              by the learner; a checkpoint every pipeline.checkpoint_every  ppo/policy, tb/
evaluate      two RolloutPools (SFT, PPO policy) sample held-out prompts     report.{json,md,png}
              under several seeds; the population judges (raydprm.evaluate)
============  ===========================================================  ====================

With ``pipeline.live_votes`` the crowd also votes on the policy's samples during PPO, can change
at ``pipeline.drift_step``, and the reward replicas are refreshed from the store every
``pipeline.refresh_every`` steps (:mod:`raydprm.cluster.drift`).

Every stage writes ``<stage>/record.json`` (key = hash of its config keys and inputs) and
``state.json`` (:mod:`raydprm.cluster.run_state`); a stage whose key is unchanged is skipped,
so ``--resume`` continues at the first stage not done and PPO at its last checkpoint
(policy, critic, optimizer, KL controller, RNG: :meth:`LearnerGroup.save`; the data
position is the step, the sampling seed of step t is a function of (run.seed, t)).

Placement: a caller that holds a placement group for the run (a Tune trial, whose bundles
:func:`~raydprm.cluster.run_plan.bundle_layout` lists) passes
``placement={role: Placement(pg, offset)}``; every actor and task of that role then lives on its bundles (never in a placement group of its own).
Without one, the run places each role on a placement group of its own for the stages that
use it (:class:`~raydprm.cluster.placement.RolePlacements`); ``pipeline.layout = colocate``
puts generators and learner on shared bundles, where they take turns (docs/pipeline.md).
Warm actors (``pipeline.warm_actors``, :mod:`raydprm.cluster.warm`): each role's pool starts once
and is reused (collect's generators -> every PPO stage's -> evaluate's policy pool; reward
replicas and learner across the arms), so every arm's reward stage runs before the first
training stage (their task takes a learner bundle), PPO arms before direct-alignment ones.
A sweep's trial passes ``warm=``, its process's persistent :class:`~raydprm.cluster.warm.WarmPools`:
the pools outlive the run for the next trial (:mod:`raydprm.tune.sweep`).
``ppo_start`` is a PPO checkpoint directory to continue from instead of the run's own
(a Tune trial restored or cloned by PBT from another trial's checkpoint).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydprm.cluster.drift import Drift
from raydprm.cluster.group import GroupRestarted, Placement
from raydprm.cluster.placement import RolePlacements
from raydprm.cluster.run_plan import Arm, arms, required_resources
from raydprm.cluster.run_state import (
    RunState,
    dir_digest,
    newest_intact_checkpoint,
    read_json,
    save_checkpoint_dir,
    verify_checkpoint,
    write_json,
)
from raydprm.cluster.runtime import connect
from raydprm.cluster.stage_keys import check_key_version, key_of
from raydprm.cluster.stage_tasks import reward_task, sft_task
from raydprm.cluster.step_log import StepLog
from raydprm.cluster.warm import (
    WarmPools,
    learner_shape,
    pool_pids,
    reuse_generators,
    reward_shape,
    rollout_shape,
    warm_enabled,
)
from raydprm.config import Config, save_config
from raydprm.errors import DiskFull, RaydprmError, disk_full, is_disk_full

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """One run: ``Pipeline(cfg, run_dir).fit()`` runs (or skips) every stage and returns report.json's dict
    (``until="ppo"``: the stages up to PPO, and returns ``{"ppo": history}``).

    A comparison (``pipeline.policies``, `raydprm run --compare`) shares the sft and collect stages
    and trains each policy under each seed in stages of its own (``<name>/seed<k>/reward``,
    ``.../ppo`` or ``.../align``), then one evaluate stage judges them all on the same prompts.

    ``on_step(pipeline, step)`` is called after every PPO step (tests use it to kill actors)."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, progress: bool = True,
                 on_step: Callable[[Pipeline, int], None] | None = None,
                 placement: dict[str, Placement] | None = None, ppo_start: str | Path | None = None,
                 until: str = "evaluate", warm: WarmPools | None = None) -> None:
        if until not in ("ppo", "evaluate"):
            raise RaydprmError(f"a pipeline runs until 'ppo' or 'evaluate', not {until!r}")
        if until == "ppo" and cfg.pipeline.policies:
            raise RaydprmError("a comparison (pipeline.policies) runs until 'evaluate': its answer is the evaluation")
        self.cfg, self.run_dir, self.progress, self.on_step = cfg, Path(run_dir).resolve(), progress, on_step
        # a caller's placement (Tune) is used as given; otherwise fit() places each role itself
        self.own_placement = None if placement is not None else RolePlacements(cfg)
        self.placement: Any = dict(placement) if placement is not None else self.own_placement
        self.ppo_start, self.until = ppo_start, until
        self.arms = arms(cfg)
        self.arm = self.arms[0]  # the policy being trained now
        self.state = RunState(self.run_dir)
        self.rollout = self.reward = self.learner = self.loop = self.drift = None
        self.last_record: dict[str, Any] = {}
        self._pools: list[tuple[str, Any]] = []
        self._stage_t0 = time.time()
        self._stage_name = ""  # the stage running now (restart events name it)
        # nccl weight sync forms a broadcast group per PPO stage: its generators and learner start afresh
        if warm is None:
            self.warm = WarmPools(warm_enabled(cfg), self._say, self._track, self._untrack)
        else:  # a sweep trial's process holds pools across trials: this run takes them over
            self.warm = warm
            warm.adopt(warm_enabled(cfg), self._say, self._track, self._untrack)

    def _say(self, msg: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"[raydprm run] {msg}")  # above the progress bars, not through them

    def _bar(self, **kw: Any):
        from tqdm.auto import tqdm

        return tqdm(**{"disable": not self.progress, "leave": False, **kw})

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        check_key_version(self.run_dir)  # a run keyed by an older scheme is refused before any file
        from raydprm.cluster.tracking import check_installed, end_open_trackers

        check_installed(cfg.run.loggers)  # a tracker's missing package, before any work
        runtime = connect(cfg.ray, required_resources(cfg), what="raydprm run")  # pre-flight before any file
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir)
        n_stages = 2 + sum(2 if a.kind == "ppo" else 1 for a in self.arms) + (self.until == "evaluate")
        self._stages_bar = self._bar(total=n_stages, desc="stages", unit="stage", leave=True)
        try:
            c = cfg.to_dict()
            sft = self._stage("sft", c, {}, self._sft)
            sft_dir = self._abs(sft["path"])
            col = self._stage("collect", c, {"sft": sft["digest"]}, lambda: self._collect(sft_dir))
            trained = self._train_arms(sft, col)
            if self.until == "ppo":
                return {"ppo": trained[0][1]["history"]}
            ev_in = {"sft": sft["digest"]} | {arm.prefix + "policy": out["digest"] for arm, out in trained}
            self._stage("evaluate", c, ev_in, lambda: self._evaluate(sft_dir, trained))
        except BaseException as e:  # the tracker runs of a stage that died end FAILED, or KILLED by a signal
            end_open_trackers(e)
            raise
        finally:
            self._stages_bar.close()
            self.shutdown_workers()
            self._release_placement()
            runtime.close()
        return json.loads((self.run_dir / "report.json").read_text())

    def _train_arms(self, sft: dict[str, Any], col: dict[str, Any]) -> list[tuple[Arm, dict[str, Any]]]:
        """Every PPO arm's reward stage first (a task on the learner's first bundle, which the warm
        learner holds from the first PPO stage on), then the training stages, PPO arms before
        direct-alignment ones (one change of learner kind); (arm, training outputs) in arm order."""
        rews = {i: self._stage(a.stage("reward"), a.cfg.to_dict(), {"data": col["digest"]},
                               lambda a=a: self._reward(a, self._abs(col["data"])))
                for i, a in enumerate(self.arms) if a.kind == "ppo"}
        order = sorted(range(len(self.arms)), key=lambda i: self.arms[i].kind != "ppo")
        out = {i: self._train(self.arms[i], sft, col, rews.get(i)) for i in order}
        return [(a, out[i]) for i, a in enumerate(self.arms)]

    def _train(self, arm: Arm, sft: dict[str, Any], col: dict[str, Any], rew: dict[str, Any] | None) -> dict[str, Any]:
        """The training stage of one policy: ppo[reward] (``rew``: its reward stage's outputs), or align;
        its outputs hold ``policy`` (the exported HF directory), its ``digest``, the training ``history``
        and the ``pids`` of the actors that trained it."""
        self.arm = arm
        ac, sft_dir = arm.cfg.to_dict(), self._abs(sft["path"])
        if arm.kind == "align":
            al_in = {"sft": sft["digest"], "data": col["digest"]}
            key = key_of(arm.stage("align"), ac, al_in)[0]
            return self._stage(arm.stage("align"), ac, al_in,
                               lambda: self._align(arm, key, sft_dir, self._abs(col["data"])))
        assert rew is not None
        # a store crowd's PPO prompts come from col["data"], which the reward digest covers (its model trained on it)
        ppo_in = {"sft": sft["digest"], "reward": rew["digest"]}
        key = key_of(arm.stage("ppo"), ac, ppo_in)[0]
        return self._stage(arm.stage("ppo"), ac, ppo_in,
                           lambda: self._ppo(arm, key, sft_dir, self._abs(rew["best_dir"]), self._abs(col["data"])))

    def _stage(self, name: str, c: dict[str, Any], inputs: dict[str, str],
               body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``body`` unless the stage is done under the key of what it reads of the config dict
        ``c`` and of its ``inputs`` (:mod:`raydprm.cluster.stage_keys`)."""
        key, config = key_of(name, c, inputs)
        self._stages_bar.set_description(f"stage {name}")
        if self.state.done(name, key):
            self._stages_bar.update(1)
            self._say(f"{name}: inputs unchanged, done before (record {name}/record.json)")
            return self.state.record(name)["outputs"]
        self.state.invalidate(name)
        self._stage_name, self.last_record = name, {}  # a restart event names this stage and its PPO step
        self._say(f"{name}: running")
        t0 = self._stage_t0 = time.time()
        try:
            outputs = body()
        except Exception as e:  # a full disk deep inside a task or an actor: name the stage's directory
            if is_disk_full(e) and not isinstance(e, DiskFull):
                raise disk_full(self.run_dir / name, f"the outputs of stage {name} (never trusted without its "
                                f"record: `--resume` redoes them)") from None
            raise
        self._release_placement(keep=self.warm.roles)  # the next stage places what it uses; warm pools stay
        rec = self.state.complete(name, key, inputs=inputs, config=config, outputs=outputs, started=t0)
        self._say(f"{name}: done in {rec['seconds']:.1f} s")
        self._stages_bar.update(1)
        return outputs

    # ------------------------------------------------------------------ stages
    def _sft(self) -> dict[str, Any]:
        self.warm.drop("learner")  # a sweep's previous trial may hold it warm on the bundle the task takes
        out = ray.get(sft_task.options(**self._task_options()).remote(self.cfg, str(self.run_dir / "sft")))
        self._say(f"  SFT loss {out['first_loss']:.2f} -> {out['final_loss']:.2f} in {out['steps']} steps")
        return {**out, "path": self._rel(out["path"]), "digest": dir_digest(out["path"])}

    def _collect(self, policy_dir: str) -> dict[str, Any]:
        """The crowd's votes (:mod:`raydprm.cluster.crowd_source`): the store's (``pipeline.crowd = store``),
        or the simulated crowd's on world items and on the SFT policy's own samples."""
        from raydprm.cluster import crowd_source
        from raydprm.rollout.sampling import SamplingParams

        cfg = self.cfg
        if cfg.pipeline.crowd == "store":
            out, msg = crowd_source.store_collect_stage(cfg, self.run_dir, self._rel)
        else:
            pool = self._generators(cfg, policy_dir)
            prompts = crowd_source.sim_prompts(cfg)
            sampled = pool.generate(prompts, SamplingParams.from_config(cfg.rollout, n=1, seed=cfg.run.seed))
            self.warm.done(pool)  # warm: PPO's generators
            out, msg = crowd_source.sim_collect(cfg, self.run_dir, [(prompts[r.prompt_index], r.text) for r in sampled],
                                                placement=self.placement.get("store"), bar=self._bar, rel=self._rel)
        self._say(msg)
        return out

    def _reward(self, arm: Arm, data_dir: str) -> dict[str, Any]:
        self.warm.drop("learner")  # (as in _sft; within a run every reward stage comes before the learner)
        out = ray.get(reward_task.options(**self._task_options()).remote(arm.cfg, data_dir,
                                                                        str(self.run_dir / arm.stage("reward"))))
        bm = out["best_metrics"]
        if "group_ot_distance" in bm:  # a group-conditioned DPRM: each group's fit
            self._say(f"  loss={arm.cfg.reward.loss}, conditioning=group: held-out OT distance per group "
                      + ", ".join(f"{g} {m['ot_distance']:.3f}" for g, m in bm.get("persona", {}).items()))
        elif "ot_distance" in bm:
            self._say(f"  loss={arm.cfg.reward.loss}: held-out OT distance {bm['ot_distance']:.3f}")
        else:  # Bradley-Terry predicts no distribution: its pairwise accuracy on held-out pairs
            self._say(f"  loss={arm.cfg.reward.loss}: held-out pair accuracy {bm.get('pair_accuracy', float('nan')):.3f}")
        return {**out, "best_dir": self._rel(out["best_dir"]), "digest": dir_digest(out["best_dir"])}

    def _ppo(self, arm: Arm, key: str, policy_dir: str, reward_dir: str, data_dir: str) -> dict[str, Any]:
        """The RL stage: :meth:`PPOLoop.step` per step (generate -> score -> advantages + update ->
        publish) on the world's prompts or a store crowd's training prompts, then the step hooks: the
        population judges the step's samples and, with live votes, the crowd votes on them
        (:class:`~raydprm.cluster.drift.Drift`)."""
        from raydprm.cluster.crowd_source import ppo_prompts
        from raydprm.sim.personas import Population

        cfg = arm.cfg
        n = cfg.ppo.rollout_batch // cfg.rollout.n_per_prompt  # prompts per step
        judge, rewards = Population.from_config(cfg.crowd), np.asarray(cfg.labels.rewards, dtype=np.float64)
        train_prompts, source, msg = ppo_prompts(cfg, policy_dir, data_dir, cfg.ppo.steps * n)
        if msg:
            self._say(msg)
        self.init_workers(policy_dir, reward_dir, cfg)
        self.drift = Drift.create(self, arm, reward_dir, cfg.pipeline.store_num_cpus)  # None without live votes

        def ppo_step(step: int) -> dict[str, Any]:
            nxt = train_prompts[(step + 1) * n:(step + 2) * n] if step + 1 < cfg.ppo.steps else None
            rec = self.loop.step(step, train_prompts[step * n:(step + 1) * n], nxt)
            prompts, texts = self.loop.last_samples
            # the population's E[r] of the step's samples, sum_l p_pop(l | x, y) r_l averaged: one scale for
            # every policy (a reward model's own score is not: BT-RM's is a logit)
            rec["population/expected_reward"] = float(np.mean(judge.true_distributions(prompts, texts) @ rewards)) \
                if texts and cfg.pipeline.crowd == "sim" else float("nan")
            if self.drift is not None:  # the crowd votes on this step's samples; a refresh when due
                rec.update(self.drift.after_step(step + 1, prompts, texts, rec["population/expected_reward"]))
            return rec

        out = self._train_stage(arm, key, cfg.ppo.steps, ppo_step, lambda r: {
            "reward": f"{r['reward/mean']:.3f}", "pop": f"{r['population/expected_reward']:.3f}"})
        return {**out, **source}

    def _align(self, arm: Arm, key: str, policy_dir: str, data_dir: str) -> dict[str, Any]:
        """Direct alignment (``align.algo``) from the SFT policy on response pairs of the store's
        export: hard labels (the crowd's preferred response) for dpo/ipo/slic/rrhf, the crowd's
        preference probability P(a > b) as a soft label for crowd_dpo. ``align.steps`` updates of
        ``align.batch`` pairs, checkpointed and resumed like PPO."""
        import datasets

        from raydprm.cluster.learner_group import LearnerGroup
        from raydprm.models.policy import load_tokenizer
        from raydprm.train.direct_alignment import PairBatch, pair_batches, pairs_from_export

        cfg, a = arm.cfg, arm.cfg.align
        pairs = pairs_from_export(datasets.load_from_disk(data_dir), cfg.labels.rewards,
                                  pairs_per_prompt=a.pairs_per_prompt, ties=a.ties, min_margin=a.min_margin,
                                  hard=a.algo != "crowd_dpo", seed=cfg.run.seed)
        tok = load_tokenizer(policy_dir)
        self.learner = self.warm.get("learner", learner_shape("align", cfg.engine),
                                     lambda: LearnerGroup.create_aligner(a, policy_dir, engine=cfg.engine, seed=cfg.run.seed,
                                                                         placement=self.placement.get("learner"),
                                                                         max_restarts=cfg.ray.max_restarts),
                                     lambda g: g.reset(policy_dir, seed=cfg.run.seed, align=a, engine=cfg.engine))
        self._say(f"  {a.algo}: {len(pairs)} pairs from the store, {a.steps} updates of {a.batch}")
        stream: list[Any] = [-1, None]  # (position, iterator): the seeded stream of batches, skipped to the step

        def align_step(step: int) -> dict[str, Any]:
            if stream[0] != step:
                stream[:] = [step, itertools.islice(pair_batches(pairs, a.batch, seed=cfg.run.seed), step, None)]
            batch = PairBatch.from_pairs(next(stream[1]), tok, a.max_prompt_tokens, a.max_response_tokens)
            m = self.learner.update(batch)
            stream[0] += 1
            return {"step": step + 1, **{k: float(v) for k, v in m.items()}}

        out = self._train_stage(arm, key, a.steps, align_step,
                                lambda r: {"loss": f"{r.get('align/loss', float('nan')):.3f}"})
        return {**out, "pairs": len(pairs)}

    def _train_stage(self, arm: Arm, key: str, total: int, one_step: Callable[[int], dict[str, Any]],
                     postfix: Callable[[dict[str, Any]], dict[str, str]]) -> dict[str, Any]:
        """The training-stage loop of PPO and direct alignment: resume at the last checkpoint (or
        ``ppo_start``), ``one_step(step)`` -> the step's record, logged (:meth:`metrics_log`), a
        checkpoint every ``pipeline.checkpoint_every`` steps and at the end, ``on_step``; a learner
        group restarted (:class:`GroupRestarted`) goes back to its last checkpoint and the loop
        redoes the steps since. Returns the exported policy, its digest and the history."""
        out_dir = self.run_dir / arm.stage(arm.kind)
        if self.ppo_start is not None:  # a given checkpoint (Tune restore / PBT clone) outranks the run's own
            shutil.rmtree(out_dir / "ckpt", ignore_errors=True)
            step, history = self._load_dir(Path(self.ppo_start))
            self.ppo_start = None
            self.save_checkpoint(key, step, history)  # now the run's own: a group restart goes back to it
        else:
            step, history = self.load_checkpoint(key)
            if step == 0:  # checkpoints of an earlier configuration must not outrank this one's
                shutil.rmtree(out_dir / "ckpt", ignore_errors=True)
        metrics = self.metrics_log(arm)
        bar = self._bar(total=total, initial=step, desc=arm.stage(arm.kind))
        while step < total:
            try:
                rec = one_step(step)
            except GroupRestarted as e:  # the learner group is back at its last checkpoint: redo from there
                self._say(f"  {e}")
                if self.loop is not None:
                    self.loop.finish(collect=False)
                step, history = self.load_checkpoint(key)
                if step == 0 and self.loop is not None:  # no checkpoint yet: the group restarted from the SFT policy
                    self.loop.publish()
                bar.reset(total=total)
                bar.update(step)
                continue
            step += 1
            history.append(rec)
            self.last_record = rec  # what on_step callers (a Tune trial) report
            metrics.log(rec, step)
            bar.update(1)
            bar.set_postfix(**postfix(rec))
            if step % self.cfg.pipeline.checkpoint_every == 0 or step == total:
                self.save_checkpoint(key, step, history)
            if self.on_step is not None:
                self.on_step(self, step)
        if self.loop is not None:
            self.loop.finish()
        bar.close()
        metrics.close()
        policy = self.learner.export_hf(out_dir / "policy")
        write_json(out_dir / "history.json", history)
        pids = self._end_training()
        return {"policy": self._rel(policy), "digest": dir_digest(policy), "history": history, "steps": step,
                "pids": pids}

    def metrics_log(self, arm: Arm) -> StepLog:
        """Where a training stage's step records go: the loggers of ``run.loggers`` (TensorBoard under
        ``tb/<prefix>``, MLflow, W&B: :mod:`raydprm.cluster.tracking`), with the policy's resolved config
        as params, every metric under the names TensorBoard shows."""
        from raydprm.cluster.tracking import open_trackers

        return open_trackers(arm.cfg.run, self.run_dir, arm.prefix, params=arm.cfg.to_dict())

    def _evaluate(self, sft_dir: str, trained: list[tuple[Arm, dict[str, Any]]]) -> dict[str, Any]:
        from raydprm.cluster.evaluate_stage import evaluate

        return evaluate(self, sft_dir, trained)

    def _rel(self, path: str | Path) -> str:
        """Paths in records are relative to the run directory (so a run directory can be moved)."""
        p = Path(path).resolve()
        return str(p.relative_to(self.run_dir)) if p.is_relative_to(self.run_dir) else str(p)

    def _abs(self, path: str) -> str:
        return str(self.run_dir / path)  # an absolute ``path`` stays as it is

    def _task_options(self) -> dict[str, Any]:
        """The SFT and reward-training tasks run on the learner's first bundle when the run is
        placed (the learner starts after them). They do not capture their children: Ray Train's
        workers (reward.num_workers > 1) get Train's own placement group, outside this one."""
        at = self.placement.get("learner")
        if at is None:
            return {}
        return {"num_cpus": min(1.0, self.cfg.engine.num_cpus_per_worker), "scheduling_strategy": at.strategy(0)}

    # ------------------------------------------------------------------ workers and checkpoints
    def init_workers(self, policy_dir: str, reward_dir: str, cfg: Config | None = None) -> None:
        """The PPO roles: generators and learner from the SFT policy, reward replicas from the reward
        model; ``cfg``: the config of the policy being trained (default: the run's)."""
        from raydprm.cluster.learner_group import LearnerGroup
        from raydprm.cluster.ppo_loop import PPOLoop
        from raydprm.cluster.reward_actor import RewardPool
        from raydprm.models.dprm import label_scale_from_config

        cfg = cfg or self.cfg
        r, at, scale = cfg.ray.max_restarts, self.placement.get, label_scale_from_config(cfg.labels)
        colocate = cfg.pipeline.layout == "colocate"
        self.rollout = self._generators(cfg, policy_dir)
        rw = cfg.reward
        self.reward = self.warm.get("reward", reward_shape(rw),
                                    lambda: RewardPool.create(reward_dir, scale, rw, placement=at("reward"),
                                                              max_restarts=r),
                                    lambda p: p.reload(reward_dir, scale, rw))
        self.learner = self.warm.get("learner", learner_shape("ppo", cfg.engine),
                                     lambda: LearnerGroup.create(cfg.ppo, policy_dir, engine=cfg.engine,
                                                                 seed=cfg.run.seed, dtype=cfg.models.dtype,
                                                                 placement=at("learner"), max_restarts=r),
                                     lambda g: g.reset(policy_dir, seed=cfg.run.seed, ppo=cfg.ppo, engine=cfg.engine,
                                                       dtype=cfg.models.dtype))
        self.loop = PPOLoop(self.rollout, self.reward, self.learner, cfg.rollout, seed=cfg.run.seed,
                            async_rollout=cfg.ppo.async_rollout, colocate=colocate)

    def _generators(self, cfg: Config, policy_dir: str) -> Any:
        """The rollout pool on ``policy_dir``: the warm one (the policy loaded, versions from 0, ``cfg``'s
        sampling) or a new one. Every stage asks for the same shape (``sleep_mode`` under colocate too)."""
        from raydprm.cluster.rollout_actor import RolloutPool

        ro, colocate = cfg.rollout, cfg.pipeline.layout == "colocate"
        return self.warm.get("rollout", rollout_shape(cfg), lambda: RolloutPool.create(
            ro, policy_dir, dtype=cfg.models.dtype, placement=self.placement.get("rollout"),
            max_restarts=cfg.ray.max_restarts, sleep_mode=colocate), lambda p: reuse_generators(p, policy_dir, ro))

    def _end_training(self) -> dict[str, list[int]]:
        """A training stage is through with its pools: their actors' pids (the stage's record keeps
        them); warm ones stay for the next stage, others are shut down."""
        if self.drift is not None:
            self.drift.close()
        pools = {r: p for r, p in (("rollout", self.rollout), ("reward", self.reward), ("learner", self.learner))
                 if p is not None}
        pids = {r: pool_pids(p) for r, p in pools.items()}
        for p in pools.values():
            self.warm.done(p)
        self.rollout = self.reward = self.learner = self.loop = self.drift = None
        return pids

    def save_checkpoint(self, key: str, step: int, history: list[dict[str, Any]]) -> None:
        """Learner state (policy, critic, optimizer, KL controller, RNG) + the driver's position, under the
        training stage of the policy being trained (``<prefix>ppo/ckpt`` or ``<prefix>align/ckpt``), then its
        manifest (every file's xxh3 digest) last; keep the newest. state.json's ``ppo`` entry names the last
        one; progress.json holds the stage key, so a checkpoint of another stage or configuration never
        matches. A save that fails (a full disk: one line naming the directory) leaves no directory behind."""
        ckpt_root = self.run_dir / self.arm.stage(self.arm.kind) / "ckpt"
        d = ckpt_root / f"step_{step:06d}"
        save_checkpoint_dir(d, step, self.learner.save, lambda: {"key": key, "step": step, "history": history}
                            | ({"drift": self.drift.save(d)} if self.drift is not None else {}))
        self.state.set_ppo(step, str(d.relative_to(self.run_dir)), key)
        for old in sorted(ckpt_root.glob("step_*"))[:-self.cfg.pipeline.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, key: str) -> tuple[int, list[dict[str, Any]]]:
        """Restore the newest intact checkpoint of this training stage (same key) into the learner and the
        generators; (0, []) when there is none. A damaged one (its manifest's digests disagree, a file or the
        manifest is missing, progress.json is garbled) is reported in one line and the previous one is tried."""
        ppo = self.state.data.get("ppo", {})
        named = [self.run_dir / ppo["checkpoint"]] if ppo.get("key") == key and ppo.get("checkpoint") else []
        root = self.run_dir / self.arm.stage(self.arm.kind) / "ckpt"

        def say(msg: str) -> None:
            self._say(f"  {msg}")
            log.warning("%s", msg)
        d, progress = newest_intact_checkpoint(named + sorted(root.glob("step_*"), reverse=True), key, say)
        if d is not None:
            return self._load_dir(d, progress)
        if progress:  # every checkpoint was damaged
            self._say(f"  no intact checkpoint of {self.arm.stage(self.arm.kind)} left: it starts from step 0")
        if self.drift is not None:
            self.drift.restore(None)
        return 0, []

    def _load_dir(self, d: Path, progress: dict[str, Any] | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Learner state and (step, history) of one checkpoint directory (save_checkpoint's layout),
        verified against its manifest first."""
        if progress is None:
            verify_checkpoint(d)
            progress = read_json(d / "progress.json", what="a checkpoint's progress",
                                 way_out="start from another checkpoint")
        self.learner.load(d)
        if self.loop is not None:
            self.loop.publish()  # the generators take the checkpoint's policy
        if self.drift is not None:
            self.drift.restore(progress.get("drift"), d)
        what = "PPO" if self.arm.kind == "ppo" else self.arm.cfg.align.algo
        self._say(f"  {what} resumes after step {progress['step']} ({self._rel(d)})")
        return int(progress["step"]), list(progress["history"])

    def _release_placement(self, keep: list[str] | None = None) -> None:
        """Remove the run's own placement groups (never a caller's), but those of the roles in ``keep``."""
        if self.own_placement is not None:
            self.own_placement.release(keep=keep or ())

    def _track(self, pool: Any, role: str) -> Any:
        """Keep ``pool`` for shutdown and restart counting; log each of its restarts as it happens."""
        group, inner = pool.group, pool.group.on_restart

        def on_restart(g: Any, ranks: list[int]) -> None:
            self._log_restart(role, g, ranks)
            if inner is not None:  # the pool's own catch-up (weights, rejoin + last checkpoint)
                inner(g, ranks)

        group.on_restart = on_restart
        self._pools.append((role, pool))
        return pool

    def _log_restart(self, role: str, group: Any, ranks: list[int]) -> None:
        """One line in ``restarts.jsonl`` (the run's fault log) and on the console per restart."""
        event = {"time": time.time(), "stage": self._stage_name, "role": role, "ranks": list(ranks),
                 "mode": group.restart_mode, "restart": group.restarts, "max_restarts": group.max_restarts,
                 "after_ppo_step": int(self.last_record.get("step", 0))}
        with open(self.run_dir / "restarts.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")
        self.state.add_restarts({role: 1})  # counted now: a run killed later in the stage keeps it
        what = "the whole group" if group.restart_mode == "group" else f"rank(s) {list(ranks)}"
        self._say(f"  {role}: restarted {what} during {self._stage_name} (restart {group.restarts}/"
                  f"{group.max_restarts}, after PPO step {event['after_ppo_step']})")

    def _untrack(self, pool: Any) -> None:
        """Shut a pool down (its restarts were counted as they happened)."""
        self._pools = [(r, p) for r, p in self._pools if p is not pool]
        pool.shutdown()

    def shutdown_workers(self) -> None:
        if self.drift is not None:
            self.drift.close()
        kept = self.warm.kept()  # a sweep trial's pools stay for the next trial
        for role, pool in reversed(self._pools):
            if any(p is pool for p in kept):
                continue
            try:
                self._untrack(pool)
            except Exception as e:  # noqa: BLE001 - best effort cleanup
                log.warning("shutdown of %s failed: %s", role, e)
        self.warm.forget()
        self.rollout = self.reward = self.learner = self.loop = self.drift = None
