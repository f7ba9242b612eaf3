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

Every stage writes ``<stage>/record.json`` (key = hash of its config keys and inputs) and
``state.json`` (:mod:`raydprm.cluster.run_state`); a stage whose key is unchanged is skipped,
so ``--resume`` continues at the first stage not done and PPO at its last checkpoint
(policy, critic, optimizer, KL controller, RNG: :meth:`LearnerGroup.save`; the data
position is the step, the sampling seed of step t is a function of (run.seed, t)).

Placement: a caller that holds a placement group for the run (a Tune trial, whose bundles
:func:`bundle_layout` lists) passes ``placement={role: Placement(pg, offset)}``; every actor
and task of that role then lives on its bundles (never in a placement group of its own).
``ppo_start`` is a PPO checkpoint directory to continue from instead of the run's own
(a Tune trial restored or cloned by PBT from another trial's checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from raydprm.cluster.group import GroupRestarted, Placement
from raydprm.cluster.run_state import RunState, dir_digest, stage_key, write_json
from raydprm.cluster.runtime import Resources, connect, in_ray_job
from raydprm.config import Config, save_config
from raydprm.errors import RaydprmError

__all__ = ["Pipeline", "SMOKE_OVERRIDES", "ROLES", "bundle_layout", "resolve_run_dir", "required_resources"]

log = logging.getLogger(__name__)

SMOKE_OVERRIDES = [
    "sft.n_examples=256", "sft.epochs=1", "crowd.n_items=64", "crowd.votes_per_item=6", "reward.epochs=1",
    "ppo.steps=2", "ppo.rollout_batch=8", "ppo.minibatch=8", "ppo.micro_batch=4", "ppo.epochs=1",
    "rollout.max_new_tokens=16", "pipeline.eval_prompts=16", "pipeline.bootstrap=200",
]


class RelativeOutputInJob(RaydprmError):
    """Inside a Ray job a relative run.output_dir would land in Ray's temporary working_dir copy."""


def resume_dir(path: str | Path) -> Path:
    d = Path(path).resolve()
    if not (d / "config.yaml").is_file():
        raise RaydprmError(f"--resume {path}: no config.yaml there, so it is not a raydprm run directory")
    return d


def resolve_run_dir(cfg: Config, resume: str | None = None) -> Path:
    """The run directory: ``resume`` as given, else ``run.output_dir/run.name``, which must be empty."""
    if resume:
        return resume_dir(resume)
    if in_ray_job() and not Path(cfg.run.output_dir).is_absolute():
        raise RelativeOutputInJob(
            f"run.output_dir = '{cfg.run.output_dir}' is relative: inside a Ray job the working directory is a "
            "temporary copy that Ray deletes and other nodes cannot see; give an absolute path every node can "
            "write, e.g. run.output_dir=/shared/raydprm")
    d = cfg.run.run_dir.resolve()
    RunState.check_fresh(d)
    return d


def required_resources(cfg: Config) -> Resources:
    """Logical CPUs/GPUs reserved at once (the PPO stage is the peak; + 0.1 for the store actor)."""
    cpu = (cfg.rollout.num_replicas * cfg.rollout.num_cpus + cfg.reward.num_replicas * cfg.reward.actor_num_cpus
           + cfg.ppo.num_workers * cfg.ppo.num_cpus_per_worker + 0.1)
    gpu = cfg.rollout.num_replicas * cfg.rollout.num_gpus + cfg.ppo.num_workers * cfg.ppo.num_gpus_per_worker
    return Resources(cpu=cpu, gpu=gpu)


# Roles that own bundles of a run's placement group (bundle_layout), in bundle order. "driver" is
# the caller's own process (a Tune trial); "learner" also hosts the SFT and reward-training tasks,
# which finish before the learner starts; "reference" is evaluate's SFT pool (the "rollout"
# bundles hold the PPO policy's pool then).
ROLES = ("driver", "rollout", "reward", "learner", "store", "reference")
DRIVER_CPU = 1.0
STORE_CPU = 0.1


def bundle_layout(cfg: Config) -> tuple[list[dict[str, float]], dict[str, int]]:
    """The bundles one run reserves in a placement group someone else creates, and the
    offset of each role's first bundle: one bundle for the driver, then one per actor.

    ``[{"CPU": 1}, rollout x R, reward x Q, learner x W, store, reference x R]``; a bundle's
    GPUs are the actor's. Evaluate's two pools (SFT and PPO policy) sample side by side, so
    the reference pool has bundles of its own."""
    def one(cpu: float, gpu: float = 0.0) -> dict[str, float]:
        return {"CPU": float(cpu), **({"GPU": float(gpu)} if gpu > 0 else {})}

    ro, rw, pp = cfg.rollout, cfg.reward, cfg.ppo
    per_role = {"driver": [one(DRIVER_CPU)],
                "rollout": [one(ro.num_cpus, ro.num_gpus)] * ro.num_replicas,
                "reward": [one(rw.actor_num_cpus)] * rw.num_replicas,
                "learner": [one(pp.num_cpus_per_worker, pp.num_gpus_per_worker)] * pp.num_workers,
                "store": [one(STORE_CPU)],
                "reference": [one(ro.num_cpus, ro.num_gpus)] * ro.num_replicas}
    bundles: list[dict[str, float]] = []
    offsets: dict[str, int] = {}
    for role in ROLES:
        offsets[role] = len(bundles)
        bundles += [dict(b) for b in per_role[role]]
    return bundles, offsets


@ray.remote(num_cpus=1)
def _sft_task(cfg: Config, out_dir: str) -> dict[str, Any]:
    from raydprm.models.tiny import resolve_model
    from raydprm.sim.world import sft_corpus
    from raydprm.train.sft import sft

    res = sft(resolve_model(cfg.models.policy, cfg.models.cache_dir or None),
              sft_corpus(cfg.sft.n_examples, seed=cfg.run.seed), out_dir, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
              batch_size=cfg.sft.batch_size, max_length=cfg.sft.max_length, seed=cfg.run.seed, progress=False)
    return {"path": str(res.path), "first_loss": res.first_loss, "final_loss": res.final_loss, "steps": res.steps}


@ray.remote(num_cpus=1)
def _reward_task(cfg: Config, data_dir: str, out_dir: str) -> dict[str, Any]:
    import datasets

    from raydprm.cluster.reward_train import train_reward_auto
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.models.tiny import resolve_model

    res = train_reward_auto(datasets.load_from_disk(data_dir), scale=label_scale_from_config(cfg.labels),
                            reward_cfg=cfg.reward, out_dir=out_dir, seed=cfg.run.seed, device="cpu", progress=False,
                            backbone=resolve_model(cfg.models.reward_backbone, cfg.models.cache_dir or None),
                            cpus_per_worker=cfg.reward.actor_num_cpus)
    return {k: v for k, v in res.to_dict().items() if k in ("best_dir", "best_metrics", "epochs", "seconds")}


class Pipeline:
    """One run: ``Pipeline(cfg, run_dir).fit()`` runs (or skips) every stage and returns report.json's dict
    (``until="ppo"``: the stages up to PPO, and returns ``{"ppo": history}``).

    ``on_step(pipeline, step)`` is called after every PPO step (tests use it to kill actors)."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, progress: bool = True,
                 on_step: Callable[[Pipeline, int], None] | None = None,
                 placement: dict[str, Placement] | None = None, ppo_start: str | Path | None = None,
                 until: str = "evaluate") -> None:
        if until not in ("ppo", "evaluate"):
            raise RaydprmError(f"a pipeline runs until 'ppo' or 'evaluate', not {until!r}")
        self.cfg, self.run_dir, self.progress, self.on_step = cfg, Path(run_dir).resolve(), progress, on_step
        self.placement, self.ppo_start, self.until = dict(placement or {}), ppo_start, until
        self.state = RunState(self.run_dir)
        self.rollout = self.reward = self.learner = self.loop = None
        self.last_record: dict[str, Any] = {}
        self.restarts: dict[str, int] = {}  # per role, since the last stage was recorded
        self._pools: list[tuple[str, Any]] = []
        self._stage_t0 = time.time()

    def _say(self, msg: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"[raydprm run] {msg}")  # above the progress bars, not through them

    def _bar(self, **kw: Any):
        from tqdm.auto import tqdm

        return tqdm(**{"disable": not self.progress, "leave": False, **kw})

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        runtime = connect(cfg.ray, required_resources(cfg), what="raydprm run")  # pre-flight before any file
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir)
        self._stages_bar = self._bar(total=5 if self.until == "evaluate" else 4, desc="stages", unit="stage",
                                     leave=True)
        try:
            c = cfg.to_dict()
            seed = cfg.run.seed
            sft = self._stage("sft", {"models": c["models"], "sft": c["sft"], "seed": seed}, {}, self._sft)
            sft_dir = self._abs(sft["path"])
            col = self._stage("collect", {k: c[k] for k in ("crowd", "store", "labels", "rollout")} | {"seed": seed},
                              {"sft": sft["digest"]}, lambda: self._collect(sft_dir))
            rew = self._stage("reward", {"reward": c["reward"], "labels": c["labels"], "seed": seed,
                                         "backbone": cfg.models.reward_backbone},
                              {"data": col["digest"]}, lambda: self._reward(self._abs(col["data"])))
            ppo_cfg = {"ppo": c["ppo"], "rollout": c["rollout"], "reward": c["reward"], "seed": seed}
            ppo_in = {"sft": sft["digest"], "reward": rew["digest"]}
            ppo = self._stage("ppo", ppo_cfg, ppo_in, lambda: self._ppo(stage_key("ppo", ppo_cfg, ppo_in), sft_dir,
                                                                        self._abs(rew["best_dir"])))
            if self.until == "ppo":
                return {"ppo": ppo["history"]}
            ev_cfg = {k: c[k] for k in ("crowd", "labels", "rollout")} | {"seed": seed} | {
                k: v for k, v in c["pipeline"].items() if k in ("eval_prompts", "eval_seeds", "bootstrap", "tie_margin")}
            self._stage("evaluate", ev_cfg, {"sft": sft["digest"], "policy": ppo["digest"]},
                        lambda: self._evaluate(sft_dir, self._abs(ppo["policy"]), ppo["history"]))
        finally:
            self._stages_bar.close()
            self.shutdown_workers()
            runtime.close()
        return json.loads((self.run_dir / "report.json").read_text())

    def _stage(self, name: str, config: dict[str, Any], inputs: dict[str, str],
               body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = stage_key(name, config, inputs)
        self._stages_bar.set_description(f"stage {name}")
        if self.state.done(name, key):
            self._stages_bar.update(1)
            self._say(f"{name}: inputs unchanged, done before (record {name}/record.json)")
            return self.state.record(name)["outputs"]
        self.state.invalidate(name)
        self._say(f"{name}: running")
        t0 = self._stage_t0 = time.time()
        outputs = body()
        self.state.add_restarts(self.restarts)
        self.restarts = {}
        rec = self.state.complete(name, key, inputs=inputs, config=config, outputs=outputs, started=t0)
        self._say(f"{name}: done in {rec['seconds']:.1f} s")
        self._stages_bar.update(1)
        return outputs

    # ------------------------------------------------------------------ stages
    def _sft(self) -> dict[str, Any]:
        out = ray.get(_sft_task.options(**self._task_options()).remote(self.cfg, str(self.run_dir / "sft")))
        self._say(f"  SFT loss {out['first_loss']:.2f} -> {out['final_loss']:.2f} in {out['steps']} steps")
        return {**out, "path": self._rel(out["path"]), "digest": dir_digest(out["path"])}

    def _collect(self, policy_dir: str) -> dict[str, Any]:
        """The crowd votes on world items and on the SFT policy's own samples (so the reward
        model has seen the kind of text PPO will ask it to score)."""
        from raydprm.cluster.rollout_actor import RolloutPool
        from raydprm.cluster.store_actor import StoreClient
        from raydprm.rollout.sampling import SamplingParams
        from raydprm.sim.personas import Population, simulated_items
        from raydprm.sim.world import prompts as world_prompts

        cfg = self.cfg
        store_path = cfg.store.path or str(self.run_dir / "store.db")
        if not cfg.store.path:  # a redone collect starts from an empty store, never adds to old votes
            for suffix in ("", "-wal", "-shm"):
                Path(store_path + suffix).unlink(missing_ok=True)
        pool = self._track(RolloutPool.create(cfg.rollout, policy_dir, dtype=cfg.models.dtype,
                                              placement=self.placement.get("rollout"),
                                              max_restarts=cfg.ray.max_restarts), "rollout")
        n_policy = cfg.crowd.n_items // 2
        crowd_prompts = world_prompts(n_policy, seed=cfg.run.seed + 7)
        sampled = pool.generate(crowd_prompts, SamplingParams.from_config(cfg.rollout, n=1, seed=cfg.run.seed))
        self._untrack(pool, "rollout")
        items = simulated_items(cfg.crowd.n_items - n_policy, seed=cfg.run.seed)
        items += [(crowd_prompts[r.prompt_index], r.text) for r in sampled if r.text.strip()]
        votes = Population.from_config(cfg.crowd).simulate_votes(items, cfg.crowd.votes_per_item, seed=cfg.run.seed)
        store = StoreClient.create(cfg.store, cfg.labels, default_path=store_path, num_cpus=STORE_CPU,
                                   placement=self.placement.get("store"))
        try:
            bar = self._bar(total=len(votes), desc="collect: votes", unit="vote")
            for i in range(0, len(votes), 1000):
                store.add_votes(votes[i:i + 1000])
                bar.update(len(votes[i:i + 1000]))
            bar.close()
            data, n_votes = store.export(None, cfg.store.smoothing), store.count_votes()
        finally:
            store.shutdown()
        data_dir = self.run_dir / "collect" / "data"
        data.save_to_disk(str(data_dir))
        rows = json.dumps([list(data[c]) for c in ("prompt", "response", "target")])
        self._say(f"  {n_votes} votes on {len(data)} items ({len(items) - n_policy} world, SFT samples) -> {store_path}")
        return {"store": self._rel(store_path), "votes": n_votes, "items": len(data), "data": self._rel(data_dir),
                "digest": hashlib.sha256(rows.encode()).hexdigest()}

    def _reward(self, data_dir: str) -> dict[str, Any]:
        out = ray.get(_reward_task.options(**self._task_options()).remote(self.cfg, data_dir,
                                                                        str(self.run_dir / "reward")))
        bm = out["best_metrics"]
        self._say(f"  loss={self.cfg.reward.loss}: held-out OT distance {bm.get('ot_distance', float('nan')):.3f}")
        return {**out, "best_dir": self._rel(out["best_dir"]), "digest": dir_digest(out["best_dir"])}

    def _ppo(self, key: str, policy_dir: str, reward_dir: str) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        from raydprm.sim.world import prompts as world_prompts

        cfg, n = self.cfg, self.cfg.ppo.rollout_batch
        self.init_workers(policy_dir, reward_dir)
        if self.ppo_start is not None:  # a given checkpoint (Tune restore / PBT clone) outranks the run's own
            shutil.rmtree(self.run_dir / "ppo" / "ckpt", ignore_errors=True)
            step, history = self._load_dir(Path(self.ppo_start))
            self.ppo_start = None
            self.save_checkpoint(key, step, history)  # now the run's own: a group restart goes back to it
        else:
            step, history = self.load_checkpoint(key)
            if step == 0:  # checkpoints of an earlier PPO configuration must not outrank this one's
                shutil.rmtree(self.run_dir / "ppo" / "ckpt", ignore_errors=True)
        train_prompts = world_prompts(cfg.ppo.steps * n, seed=cfg.run.seed + 1)  # the data position is the step
        tb = SummaryWriter(str(self.run_dir / "tb"))
        bar = self._bar(total=cfg.ppo.steps, initial=step, desc="ppo")
        while step < cfg.ppo.steps:
            nxt = train_prompts[(step + 1) * n:(step + 2) * n] if step + 1 < cfg.ppo.steps else None
            try:
                rec = self.loop.step(step, train_prompts[step * n:(step + 1) * n], nxt)
            except GroupRestarted as e:  # the learner group is back at its last checkpoint: redo from there
                self._say(f"  {e}")
                self.loop.finish()
                step, history = self.load_checkpoint(key)
                if step == 0:  # no checkpoint yet: the group restarted from the SFT policy
                    self._sync()
                bar.reset(total=cfg.ppo.steps)
                bar.update(step)
                continue
            step += 1
            history.append(rec)
            self.last_record = rec  # what on_step callers (a Tune trial) report
            for k, v in rec.items():
                if k != "step":
                    tb.add_scalar(k, v, step)
            bar.update(1)
            bar.set_postfix(reward=f"{rec['reward/mean']:.3f}")
            if step % cfg.pipeline.checkpoint_every == 0 or step == cfg.ppo.steps:
                self.save_checkpoint(key, step, history)
            if self.on_step is not None:
                self.on_step(self, step)
        self.loop.finish()
        bar.close()
        tb.close()
        policy = self.learner.export_hf(self.run_dir / "ppo" / "policy")
        write_json(self.run_dir / "ppo" / "history.json", history)
        self.shutdown_workers()
        return {"policy": self._rel(policy), "digest": dir_digest(policy), "history": history, "steps": step}

    def _evaluate(self, sft_dir: str, policy_dir: str, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Both policies sample the held-out prompts under ``pipeline.eval_seeds`` seeds; the
        population judges; KL(policy || SFT) per sample = sum_t log pi(y_t) - log pi_sft(y_t)."""
        import numpy as np

        from raydprm.cluster.rollout_actor import RolloutPool
        from raydprm.evaluate.judge import judge_samples
        from raydprm.evaluate.report import build_report, policy_name, write_report
        from raydprm.rollout.sampling import SamplingParams
        from raydprm.sim.personas import Population
        from raydprm.sim.world import prompts as world_prompts

        cfg, pc = self.cfg, self.cfg.pipeline
        prompts = world_prompts(pc.eval_prompts, seed=cfg.run.seed + 999)
        mk = dict(dtype=cfg.models.dtype, max_restarts=cfg.ray.max_restarts)
        ref = self._track(RolloutPool.create(cfg.rollout, sft_dir, placement=self.placement.get("reference"), **mk),
                          "rollout")
        pol = self._track(RolloutPool.create(cfg.rollout, policy_dir, placement=self.placement.get("rollout"), **mk),
                          "rollout")
        texts: dict[str, list[list[str]]] = {"vanilla": [], "policy": []}
        kl = []
        for s in range(pc.eval_seeds):
            sp = SamplingParams.from_config(cfg.rollout, n=1, seed=cfg.run.seed * 7919 + 500 + s)
            texts["vanilla"].append([r.text for r in ref.generate(prompts, sp)])
            out = pol.generate(prompts, sp)
            texts["policy"].append([r.text for r in out])
            seqs = [r.prompt_ids + r.token_ids for r in out]
            lp, lp_ref = pol.score(seqs), ref.score(seqs)
            kl.append([float(np.sum(np.asarray(a[-len(r.token_ids):]) - np.asarray(b[-len(r.token_ids):])))
                       if r.token_ids else 0.0 for a, b, r in zip(lp, lp_ref, out)])
        self._untrack(ref, "rollout")
        self._untrack(pol, "rollout")
        pop, name = Population.from_config(cfg.crowd), policy_name(cfg.reward.loss)
        judged = {"vanilla": judge_samples(pop, cfg.labels.rewards, prompts, texts["vanilla"]),
                  name: judge_samples(pop, cfg.labels.rewards, prompts, texts["policy"], kl=np.asarray(kl))}
        report = build_report(judged, cfg.labels.rewards, margin=pc.tie_margin, n_boot=pc.bootstrap, seed=cfg.run.seed)
        self.state.add_restarts(self.restarts)
        self.restarts = {}
        stages = {k: {"seconds": v["seconds"]} for k, v in self.state.data["stages"].items()}
        stages["evaluate"] = {"seconds": time.time() - self._stage_t0}
        report.update(stages=stages, restarts={r: 0 for r in ("rollout", "reward", "learner")}
                      | self.state.data.get("restarts", {}), ppo=history)
        samples = [{"prompt": p, "vanilla": a, name: b} for p, a, b in
                   list(zip(prompts, texts["vanilla"][0], texts["policy"][0]))[:5]]
        path = write_report(report, self.run_dir, cfg.labels.names, samples)
        p = report["policies"]
        self._say(f"  E[r] vanilla {p['vanilla']['expected_reward']:.3f} -> {name} {p[name]['expected_reward']:.3f}; "
                  f"{path}")
        return {"report": "report.json"}

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
        return {"num_cpus": min(1.0, self.cfg.ppo.num_cpus_per_worker), "scheduling_strategy": at.strategy(0)}

    # ------------------------------------------------------------------ workers and checkpoints
    def init_workers(self, policy_dir: str, reward_dir: str) -> None:
        """The PPO roles: generators and learner from the SFT policy, reward replicas from the reward model."""
        from raydprm.cluster.learner_group import LearnerGroup
        from raydprm.cluster.ppo_loop import PPOLoop
        from raydprm.cluster.reward_actor import RewardPool
        from raydprm.cluster.rollout_actor import RolloutPool
        from raydprm.models.dprm import label_scale_from_config

        cfg, r = self.cfg, self.cfg.ray.max_restarts
        at = self.placement.get
        self.rollout = self._track(RolloutPool.create(cfg.rollout, policy_dir, dtype=cfg.models.dtype,
                                                      placement=at("rollout"), max_restarts=r), "rollout")
        self.reward = self._track(RewardPool.create(reward_dir, label_scale_from_config(cfg.labels), cfg.reward,
                                                    placement=at("reward"), max_restarts=r), "reward")
        self.learner = self._track(LearnerGroup.create(cfg.ppo, policy_dir, seed=cfg.run.seed, dtype=cfg.models.dtype,
                                                       placement=at("learner"), max_restarts=r), "learner")
        self.loop = PPOLoop(self.rollout, self.reward, self.learner, cfg.rollout, seed=cfg.run.seed,
                            async_rollout=cfg.ppo.async_rollout)

    def _sync(self) -> None:
        from raydprm.cluster.weight_sync import sync_policy

        self.loop.version += 1  # the generators' weight version (each sync must be newer)
        sync_policy(self.learner, self.rollout, version=self.loop.version)  # the learner publishes; handles only

    def save_checkpoint(self, key: str, step: int, history: list[dict[str, Any]]) -> None:
        """Learner state (policy, critic, optimizer, KL controller, RNG) + the driver's position; keep the newest."""
        ckpt_root = self.run_dir / "ppo" / "ckpt"
        d = ckpt_root / f"step_{step:06d}"
        self.learner.save(d)
        write_json(d / "progress.json", {"key": key, "step": step, "history": history})
        self.state.set_ppo(step, str(d.relative_to(self.run_dir)), key)
        for old in sorted(ckpt_root.glob("step_*"))[:-self.cfg.pipeline.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, key: str) -> tuple[int, list[dict[str, Any]]]:
        """Restore the last checkpoint of this PPO stage (same key) into the learner and the
        generators; (0, []) when there is none."""
        ppo = self.state.data.get("ppo", {})
        if ppo.get("key") != key or not ppo.get("checkpoint"):
            return 0, []
        return self._load_dir(self.run_dir / ppo["checkpoint"])

    def _load_dir(self, d: Path) -> tuple[int, list[dict[str, Any]]]:
        """Learner state and (step, history) of one checkpoint directory (save_checkpoint's layout)."""
        progress = json.loads((d / "progress.json").read_text())
        self.learner.load(d)
        self._sync()
        self._say(f"  PPO resumes after step {progress['step']} ({self._rel(d)})")
        return int(progress["step"]), list(progress["history"])

    def _track(self, pool: Any, role: str) -> Any:
        self._pools.append((role, pool))
        return pool

    def _untrack(self, pool: Any, role: str) -> None:
        """Shut a pool down and count its restarts for report.json."""
        self.restarts[role] = self.restarts.get(role, 0) + pool.restarts
        self._pools = [(r, p) for r, p in self._pools if p is not pool]
        pool.shutdown()

    def shutdown_workers(self) -> None:
        for role, pool in reversed(self._pools):
            try:
                self._untrack(pool, role)
            except Exception as e:  # noqa: BLE001 - best effort cleanup
                log.warning("shutdown of %s failed: %s", role, e)
        self.rollout = self.reward = self.learner = self.loop = None
