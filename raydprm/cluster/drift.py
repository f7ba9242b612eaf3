"""Live preference shift during PPO: the crowd votes on the policy's current samples into the
store, its persona mixture can change at a step, the store forgets with its half-life, and
the reward replicas are refreshed from the store every K steps.

    pipeline.live_votes = V      after PPO step t the crowd casts V votes on each of the step's
                                 samples (PPOLoop.last_samples) through the store actor
    pipeline.drift_step = D      the crowd is crowd.mixture for steps t < D and
    pipeline.drift_mixture = m   pipeline.drift_mixture from step D on (0 = never changes)
    pipeline.refresh_every = K   after the votes of every step t with t % K == 0: export the store
                                 (forgetting read out at the step's time), fine-tune the served
                                 DPRM on it for pipeline.refresh_epochs epochs on reward replica 0,
                                 every replica loads the result (0 = never)

**Time.** The store forgets by vote timestamps (``store.half_life_s``, in seconds). PPO steps
are mapped to a logical clock: the live votes of step t carry

    ts_t = T0 + t * pipeline.step_seconds,      T0 = the end of the collect stage

(its record's ``started + seconds``, so every collect vote is older than every live vote,
and the clock is the same on a resume and in a run seeded by ``copy_stages``), and the
refresh after step t reads the store out at ``at = ts_t``: an item's Dirichlet evidence from a
vote of age a is weighted ``0.5 ** (a / store.half_life_s)`` (Eq. D1 of
:mod:`raydprm.core.dirichlet`), so a vote is down-weighted by ``0.5 ** (step_seconds /
half_life_s)`` per PPO step. Wall-clock time plays no part, so runs are reproducible.

In a comparison (``pipeline.policies``) every PPO arm has its own stage directory
``<name>/seed<k>/ppo/`` in place of ``ppo/`` below.

**Store.** With the default ``store.path`` (the run directory's ``store.db``, written by
collect) the PPO stage votes into its own copy ``ppo/store.db``, made from ``store.db`` when
PPO starts at step 0: the collect stage's output never changes, a PPO redone from step 0
starts from the same store, and two runs that share the earlier stages (``copy_stages``)
share the collect store but not each other's live votes. A given ``store.path`` is used in
place (a store shared with Serve): there the votes of PPO steps lost to a crash stay in the
store (vote ids are functions of (seed, step, sample, content), so a redone step that
samples the same texts adds nothing twice).

**Resume.** Each PPO checkpoint holds the drift state in ``progress.json["drift"]`` (refresh
count and log, the refreshed reward model's directory, T0, the store's vote count) and a
backup of the run's own store as of that step (``ckpt/step_N/store.db``); restoring a
checkpoint (``--resume``, a learner-group restart, a Tune restore) copies that store back and
loads the refreshed reward model into every replica, so a resumed run votes, refreshes and
ends like an uninterrupted one. Refreshed models live in ``ppo/drift/refresh_NNNNNN/best``;
``ppo/drift/refreshes.json`` logs each refresh (step, items, held-out metrics, replica versions).

Step records gain ``drift/*`` keys: ``votes_added``, ``store_votes``, ``shifted`` (1 from step D),
``judged`` (the current crowd's exact expected reward of the step's samples, Eq. P1 of
:mod:`raydprm.sim.personas`), ``judged_old``/``judged_new`` (under crowd.mixture / the drift
mixture), ``refreshed`` (1 on a refresh step), ``refreshes`` (so far), ``refresh_items``,
``refresh_delta`` (mean |r_after - r_before| of the DPRM on the step's samples: the refresh
changed what the replicas serve) and ``time/drift_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raydprm.cluster.run_state import RunState, write_json
from raydprm.cluster.store_actor import StoreClient
from raydprm.sim.personas import Population, load_personas

__all__ = ["Drift", "DRIFT_KEYS", "drift_stage_config", "crowd_mixture", "live_votes", "collect_end_time"]

log = logging.getLogger(__name__)

DRIFT_KEYS = ("live_votes", "drift_step", "drift_mixture", "refresh_every", "refresh_epochs", "step_seconds")


def drift_stage_config(cfg) -> dict[str, Any]:
    """What the PPO stage's key reads of the drift settings: nothing without live votes (the
    keys of runs without drift are unchanged), else the drift keys and the store section."""
    if cfg.pipeline.live_votes == 0:
        return {}
    c = cfg.to_dict()
    return {"drift": {k: c["pipeline"][k] for k in DRIFT_KEYS}, "store": c["store"]}


def crowd_mixture(cfg, step: int) -> dict[str, float]:
    """The persona weights of the crowd that votes on the samples of PPO step ``step`` (1-based)."""
    pc = cfg.pipeline
    return dict(pc.drift_mixture) if pc.drift_step and step >= pc.drift_step else dict(cfg.crowd.mixture)


def live_votes(population: Population, prompts: Sequence[str], responses: Sequence[str], *, votes_per_item: int,
               seed: int, ts: float) -> list[dict[str, Any]]:
    """``votes_per_item`` votes of ``population`` on every (prompt, response) with a non-blank
    response (the store refuses blank ones), all at time ``ts``; ids are functions of (seed,
    sample index, content, k), so a repeated call is an idempotent retry."""
    items = [(p, r) for p, r in zip(prompts, responses) if r.strip()]
    votes = population.simulate_votes(items, votes_per_item, seed=seed, source="live")
    for v in votes:
        v["ts"] = ts
    return votes


def collect_end_time(run_dir: Path) -> float:
    """T0 of the logical clock: the end of the collect stage (every collect vote is older)."""
    rec = RunState(run_dir).record("collect")
    if rec is None:
        from raydprm.errors import RaydprmError

        raise RaydprmError(f"run '{run_dir}' has no collect/record.json: the PPO stage's live votes need the "
                           "collect stage's store")
    return float(rec["started"]) + float(rec["seconds"])


class Drift:
    """The drift state of one PPO stage; the pipeline calls :meth:`restore` whenever PPO (re)starts
    at a step, :meth:`after_step` after every step, :meth:`save` with every checkpoint."""

    def __init__(self, cfg, run_dir: str | Path, reward_pool: Any, reward_dir: str, *, ppo_dir: str | Path | None = None,
                 placement: Any = None, store_cpu: float = 0.1, say=None) -> None:
        self.cfg, self.run_dir, self.pool = cfg, Path(run_dir), reward_pool
        self.ppo_dir = Path(ppo_dir) if ppo_dir is not None else self.run_dir / "ppo"  # the PPO stage's directory
        self.reward_dir = str(reward_dir)  # the reward stage's model: what the replicas start from
        self.placement, self.store_cpu, self.say = placement, store_cpu, say or log.info
        personas = load_personas(cfg.crowd.personas_source or None)
        self.old = Population(personas, cfg.crowd.mixture or None)
        # a bad persona name fails here, before the first PPO step, not after it
        self.new = Population(personas, cfg.pipeline.drift_mixture) if cfg.pipeline.drift_step else None
        self.rewards = np.asarray(cfg.labels.rewards, dtype=np.float64)
        self.own_store = not cfg.store.path
        self.store_path = Path(cfg.store.path) if cfg.store.path else self.ppo_dir / "store.db"
        self.store: StoreClient | None = None
        self.serving = self.reward_dir  # the model the replicas hold
        self._reset(collect_end_time(self.run_dir))

    @classmethod
    def create(cls, pipeline: Any, arm: Any, reward_dir: str, store_cpu: float) -> Drift | None:
        """The drift of the PPO stage of ``arm`` (a :class:`raydprm.cluster.run_plan.Arm`: its config
        and stage directory), or None when ``pipeline.live_votes`` is 0; the store actor takes
        ``store_cpu`` CPUs on the run's store bundle."""
        cfg = arm.cfg
        if cfg.pipeline.live_votes == 0:
            return None
        return cls(cfg, pipeline.run_dir, pipeline.reward, reward_dir, ppo_dir=pipeline.run_dir / arm.stage("ppo"),
                   placement=pipeline.placement.get("store"), store_cpu=store_cpu, say=pipeline._say)

    def _reset(self, t0: float) -> None:
        self.t0, self.refreshes, self.log, self.model_dir = t0, 0, [], None

    # ------------------------------------------------------------------ state
    def restore(self, state: dict[str, Any] | None, ckpt_dir: str | Path | None = None) -> None:
        """PPO (re)starts: at step 0 (``state`` None: the collect store, the reward stage's model)
        or at a checkpoint (its drift state and store backup)."""
        self._close_store()
        if state is None:
            self._reset(collect_end_time(self.run_dir))
            if self.own_store:
                from raydprm.store import PreferenceStore

                with PreferenceStore.from_config(self.cfg.store, self.cfg.labels, default_path=self.run_dir / "store.db",
                                                 readonly=True) as src:
                    src.backup(self.store_path)
        else:
            self.t0, self.refreshes = float(state["t0"]), int(state["refreshes"])
            self.log = list(state["log"])
            self.model_dir = state["model_dir"]
            backup = Path(ckpt_dir) / "store.db" if ckpt_dir is not None else None
            if self.own_store and backup is not None and backup.is_file():
                for suffix in ("-wal", "-shm"):
                    Path(str(self.store_path) + suffix).unlink(missing_ok=True)
                shutil.copyfile(backup, self.store_path)
        self.store = StoreClient.create(self.cfg.store, self.cfg.labels, default_path=str(self.store_path),
                                        num_cpus=self.store_cpu, placement=self.placement)
        target = self._abs(self.model_dir) if self.model_dir else self.reward_dir
        if target != self.serving:
            self.pool.load_weights(target)
            self.serving = target
        if state is not None and self.store.count_votes() != state.get("store_votes"):
            self.say(f"  drift: the store holds {self.store.count_votes()} votes, {state.get('store_votes')} at the "
                     "checkpoint (store.path is shared: votes of lost steps stay)")
        write_json(self.ppo_dir / "drift" / "refreshes.json", self.log)

    def save(self, ckpt_dir: str | Path) -> dict[str, Any]:
        """The drift state for ``progress.json`` (and the run's own store, backed up into ``ckpt_dir``)."""
        if self.own_store:
            self.store.backup(str(Path(ckpt_dir) / "store.db"))
        return {"t0": self.t0, "refreshes": self.refreshes, "log": self.log, "model_dir": self.model_dir,
                "store_votes": self.store.count_votes()}

    def _abs(self, rel: str) -> str:
        return str(self.run_dir / rel)

    # ------------------------------------------------------------------ per step
    def population(self, step: int) -> Population:
        pc = self.cfg.pipeline
        return self.new if self.new is not None and step >= pc.drift_step else self.old

    def after_step(self, step: int, prompts: Sequence[str], responses: Sequence[str],
                   judged_old: float) -> dict[str, float]:
        """Votes on step ``step``'s samples (1-based step) and, when due, a refresh of the DPRM.
        ``judged_old``: crowd.mixture's E[r] of the samples (the step record's
        ``population/expected_reward``, judged once by the pipeline)."""
        t0 = time.perf_counter()
        cfg, pc = self.cfg, self.cfg.pipeline
        pop = self.population(step)
        ts = self.t0 + step * pc.step_seconds  # ts_t = T0 + t * step_seconds
        votes = live_votes(pop, prompts, responses, votes_per_item=pc.live_votes,
                           seed=cfg.run.seed * 100_003 + step, ts=ts)
        added = self.store.add_votes(votes)["added"] if votes else 0
        rec = {"drift/votes_added": float(added), "drift/store_votes": float(self.store.count_votes()),
               "drift/shifted": float(pop is self.new)}
        if prompts:
            # E_mu[r] under the crowd's exact distribution, Eq. (P1)
            rec["drift/judged_old"] = float(judged_old)
            if self.new is not None:
                rec["drift/judged_new"] = float(np.mean(self.new.true_distributions(list(prompts), list(responses))
                                                        @ self.rewards))
            rec["drift/judged"] = rec["drift/judged_new"] if pop is self.new else rec["drift/judged_old"]
        rec["drift/refreshed"] = 0.0
        if pc.refresh_every and step % pc.refresh_every == 0:
            rec.update(self._refresh(step, ts, prompts, responses))
        rec["drift/refreshes"] = float(self.refreshes)
        rec["time/drift_s"] = time.perf_counter() - t0
        return rec

    def _refresh(self, step: int, at: float, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        cfg = self.cfg
        before = self.pool.score(list(prompts), list(responses))["reward"] if prompts else None
        data = self.store.export(None, cfg.store.smoothing, at=at)  # forgetting read out at the step's time
        out = self.ppo_dir / "drift" / f"refresh_{step:06d}"
        rcfg = dataclasses.replace(cfg.reward, epochs=cfg.pipeline.refresh_epochs, patience=0)
        res = self.pool.refresh(data, str(out), rcfg, seed=cfg.run.seed * 1009 + step)
        self.refreshes += 1
        self.serving = res["best_dir"]
        self.model_dir = str(Path(res["best_dir"]).relative_to(self.run_dir))
        rec = {"drift/refreshed": 1.0, "drift/refresh_items": float(res["items"])}
        if before is not None:
            after = self.pool.score(list(prompts), list(responses))["reward"]
            rec["drift/refresh_delta"] = float(np.mean(np.abs(after - before)))
        metrics = {k: float(v) for k, v in res["best_metrics"].items() if isinstance(v, (int, float))}
        self.log.append({"step": step, "at": at, "items": res["items"], "model": self.model_dir,
                         "versions": res["versions"], "epochs": res["epochs"], "seconds": res["seconds"],
                         "metrics": metrics})
        write_json(self.ppo_dir / "drift" / "refreshes.json", self.log)
        if "ot_distance" in metrics:
            rec["drift/refresh_ot"] = metrics["ot_distance"]
        self.say(f"  drift: refresh {self.refreshes} after step {step} on {res['items']} items "
                 f"(replica versions {res['versions']})")
        return rec

    def close(self) -> None:
        self._close_store()

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.shutdown()
            self.store = None
