"""The Ray Tune adapter (the only module that imports ``ray.tune``): a sweep of pipeline runs.

    sweep_dir = run_sweep(space, base_cfg, sweep_dir)            # `raydprm sweep SPACE.yaml`
    sweep_dir = run_sweep(space, base_cfg, sweep_dir, resume=True)   # `--resume`: Tuner.restore

A trial is the unchanged pipeline (:class:`raydprm.cluster.pipeline.Pipeline`) run on the
base config with the trial's dotted keys applied, in ``<sweep_dir>/runs/<trial id>``.

Resources (the Tune traps, and what this does about each):

- Every actor a trial creates is reserved up front by its ``PlacementGroupFactory``:
  :func:`~raydprm.cluster.run_plan.bundle_layout` lists one small bundle for the trial's
  own process, then one bundle per actor (generators, reward replicas, learner ranks, store,
  evaluate's reference generators). The trial never creates a placement group: the pipeline
  puts each role on its bundles of the trial's group (``Placement(pg, offset)``), so nothing
  is pulled into the group at random (ray#38706) and no second group waits for resources the
  trial itself holds (ray#47439, ray#25239).
- Ray Train inside a trial (``reward.num_workers > 1``) follows Train V2's pattern: the
  training task on the trial's bundle does not capture its children, Train's controller and
  workers get Train's own placement group, and ``max_concurrent_trials`` leaves room for
  those workers (:mod:`raydprm.tune.capacity`).
- ``max_concurrent_trials`` = what fits of each trial's bundles in the cluster's resources
  (its autoscaler's maximum when Ray knows it); ``TUNE_MAX_PENDING_TRIALS_PG`` is raised to
  it, so an autoscaling cluster sees every pending trial's demand at once (ray#43451).

Metrics, reported every PPO step (namespaced): ``population/expected_reward`` (the
simulated population's E[r] of the step's samples, from the pipeline's step record),
``reward/mean`` (the DPRM's reward), ``ppo/kl``, ``ppo/kl_coef``, ``reward/ot_distance`` (the DPRM's held-out OT distance); the
last report adds the held-out evaluation: ``eval/expected_reward``, ``eval/kl``,
``eval/win_rate`` (vs the SFT policy, "Vanilla"), ``eval/vanilla_expected_reward``.
A Tune checkpoint (the pipeline's PPO checkpoint: learner state + position) goes with every
pipeline checkpoint, so schedulers can pause, resume and clone trials; a trial started from a
checkpoint continues PPO from it, and one cloned by PBT with another ``ppo.beta`` continues
with its own beta (the learner's KL coefficient is reset to the trial's).

Warm actors across trials (``pipeline.warm_actors``, default true; :mod:`raydprm.cluster.warm`):
the Tuner reuses a trial's actor (``TuneConfig(reuse_actors=True)``) for the next trial with the
same resource request; Tune keeps that actor's placement group with it, so its pools (generators,
reward replicas, learner, evaluate's reference generators) still sit on the bundles the next trial
holds. They stay alive in the trial's process (:data:`_WARM`) and the next trial's pipeline loads
its models into them (reset/reload, as between a comparison's arms); a trial on another placement
group or layout starts anew (one line), a failed trial shuts them down, and Tune stopping the process
(the sweep's end, a trial stopped or paused and not reused) shuts them down (:class:`_ClosesWarmPools`).

Storage: the sweep directory is Tune's experiment directory and holds every trial's run
directory; trials write there directly, so on a multi-node cluster it must be on a disk every
node mounts. Each node is asked whether it sees the sweep's marker file (at the start, and by
every trial), and a node that does not fails with :class:`SharedStorageError`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raydprm.cluster.group import Placement
from raydprm.cluster.pipeline import Pipeline
from raydprm.cluster.run_plan import bundle_layout
from raydprm.cluster.run_state import MANIFEST, copy_stages, verify_checkpoint, write_json, write_manifest
from raydprm.cluster.runtime import InsufficientResources, Resources, connect
from raydprm.cluster.warm import WarmPools, warm_enabled
from raydprm.config import Config, save_config
from raydprm.errors import RaydprmError
from raydprm.tune.capacity import demand, max_concurrent, shortfall
from raydprm.tune.results import result_row, write_results
from raydprm.tune.space import Param, SweepSpace

__all__ = ["run_sweep", "load_saved_space", "trial_config", "trial_bundles", "SweepError", "SharedStorageError",
           "MARKER", "SPACE_FILE"]

MARKER = ".raydprm-sweep.json"
SPACE_FILE = "space.pkl"
UPSTREAM = ("sft", "collect", "reward")  # stages trials with the same keys share (copied, then key-checked)


class SweepError(RaydprmError):
    """A sweep cannot start or continue."""


class SharedStorageError(SweepError):
    """A node cannot see the sweep directory: on a multi-node cluster it must be shared."""


# --------------------------------------------------------------------------- configs and bundles


def trial_config(base: Config, space: SweepSpace, labels: Mapping[str, Any], runs_dir: Path, trial_id: str) -> Config:
    """The base config with a trial's dotted keys applied; its run directory is ``runs_dir/trial_id``."""
    return base.override([*space.overrides_of(labels), f"run.output_dir={json.dumps(str(runs_dir))}",
                          f"run.name={json.dumps(trial_id)}"])


def trial_bundles(cfg: Config) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(the trial's placement-group bundles, what Ray Train reserves outside them)."""
    bundles, _ = bundle_layout(cfg)
    rw = cfg.reward
    outside = [{"CPU": rw.actor_num_cpus}] * rw.num_workers if rw.num_workers > 1 else []
    return bundles, outside


def _factory(cfg: Config) -> tune.PlacementGroupFactory:
    bundles, _ = trial_bundles(cfg)
    return tune.PlacementGroupFactory(bundles, strategy="PACK")


def _domain(p: Param) -> Any:
    if p.kind in ("grid", "named", "dirichlet"):
        return tune.grid_search(list(p.args))
    if p.kind == "choice":
        return tune.choice(list(p.args))
    if p.kind == "uniform":
        return tune.uniform(*p.args)
    if p.kind == "loguniform":
        return tune.loguniform(*p.args)
    if p.kind == "randint":
        return tune.randint(p.args[0], p.args[1] + 1)  # Tune's upper bound is exclusive; ours is not
    return p.args[0]  # a fixed value


def _mutation(p: Param) -> Any:
    return list(p.args) if p.kind in ("grid", "choice") else _domain(p)


# --------------------------------------------------------------------------- storage


def _sees(path: str) -> bool:
    return Path(path).is_file()


def check_shared_storage(sweep_dir: Path) -> None:
    """Every alive node must see ``sweep_dir``'s marker file (a one-node cluster trivially does)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    probe = ray.remote(num_cpus=0)(_sees)
    marker = str(sweep_dir / MARKER)
    refs = {n["NodeManagerAddress"] + f" ({n['NodeID'][:8]})":
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
            for n in nodes}
    blind = [name for name, ref in refs.items() if not ray.get(ref, timeout=120)]
    if blind:
        raise SharedStorageError(_storage_msg(sweep_dir, ", ".join(blind), len(nodes)))


def _storage_msg(sweep_dir: Path, who: str, n_nodes: int | None = None) -> str:
    nodes = f"the cluster has {n_nodes} nodes and " if n_nodes else ""
    return (f"sweep storage '{sweep_dir}' is a local path: {nodes}{who} cannot see it; on a multi-node cluster the "
            "sweep's storage must be shared: set run.output_dir to a directory every node mounts (NFS, a "
            "Kubernetes PersistentVolumeClaim such as /mnt/raydprm)")


# --------------------------------------------------------------------------- the trial


@dataclass(frozen=True)
class _Setup:
    space: SweepSpace
    base: Config
    sweep_dir: str
    until: str
    reuse: bool = False  # Tune reuses trial actors: their warm pools stay for the next trial


def _where(actor: Any) -> dict[str, Any]:
    """Inside an actor (or the trial): the placement group Ray runs it in, and the process."""
    return {"placement_group": ray.get_runtime_context().get_placement_group_id(), "pid": os.getpid()}


def record_placement(pipe: Pipeline, path: Path) -> None:
    """Write where the trial and each PPO actor run (``placement.json``): the placement group each
    actor reports from inside itself, and the bundle it was scheduled on."""
    roles = {"rollout": pipe.rollout.group, "reward": pipe.reward.group, "learner": pipe.learner.group}
    actors = {role: [{**w, "bundle": None if g.placement is None else g.placement.bundle_offset + rank}
                     for rank, w in enumerate(ray.get([a.__ray_call__.remote(_where) for a in g.actors]))]
              for role, g in roles.items()}
    write_json(path, {"trial": _where(None), "actors": actors})


class _Reporter:
    """Reports one trial's metrics to Tune every PPO step, with a checkpoint when the pipeline saved one."""

    def __init__(self, cfg: Config, run_dir: Path, trial_id: str) -> None:
        self.cfg, self.run_dir, self.trial_id = cfg, run_dir, trial_id
        self.last: dict[str, float] = {}

    def _ot(self, pipe: Pipeline) -> float:
        rec = pipe.state.record("reward") or {}
        return float(rec.get("outputs", {}).get("best_metrics", {}).get("ot_distance", math.nan))

    def on_step(self, pipe: Pipeline, step: int) -> None:

        if not self.last:  # the first step of this (re)start
            record_placement(pipe, self.run_dir / "placement.json")
        rec = pipe.last_record
        self.last = {"step": step, "population/expected_reward": rec["population/expected_reward"],
                     "reward/mean": rec["reward/mean"],
                     "reward/expected": rec["reward/expected"], "ppo/kl": rec.get("ppo/kl", math.nan),
                     "ppo/kl_coef": rec.get("ppo/kl_coef", math.nan), "reward/ot_distance": self._ot(pipe)}
        if step % self.cfg.pipeline.checkpoint_every == 0 or step == self.cfg.ppo.steps:
            d = self.run_dir / "ppo" / "ckpt" / f"step_{step:06d}"  # what Pipeline.save_checkpoint just wrote
            write_json(d / "trial.json", {"trial_id": self.trial_id, "ppo.beta": self.cfg.ppo.beta})
            tune.report(dict(self.last), checkpoint=tune.Checkpoint.from_directory(str(d)))
        else:
            tune.report(dict(self.last))

    def final(self, out: Mapping[str, Any]) -> dict[str, Any]:
        from raydprm.evaluate.report import policy_name

        m: dict[str, Any] = dict(self.last)
        if not m and out.get("ppo"):  # PPO was done before this (re)start: its last record
            rec = out["ppo"][-1]
            m = {"step": rec["step"], "population/expected_reward": rec.get("population/expected_reward", math.nan),
                 "reward/mean": rec["reward/mean"],
                 "reward/expected": rec["reward/expected"], "ppo/kl": rec.get("ppo/kl", math.nan),
                 "ppo/kl_coef": rec.get("ppo/kl_coef", math.nan), "reward/ot_distance": math.nan}
        if "policies" in out:
            name = policy_name(self.cfg.reward.loss)
            pol, van = out["policies"][name], out["policies"]["vanilla"]
            m.update({"eval/expected_reward": pol["expected_reward"], "eval/kl": pol["kl"],
                      "eval/vanilla_expected_reward": van["expected_reward"],
                      "eval/win_rate": out["head_to_head"][f"{name}_vs_vanilla"]["overall"]["win"]})
        m["pipeline_done"] = 1
        return m


def _donor(runs: Path, run_dir: Path, cfg: Config) -> Path | None:
    """The finished-upstream run whose config differs from ``cfg`` in the fewest keys."""
    import yaml

    def flat(d: Mapping[str, Any], pre: str = "") -> dict[str, str]:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": json.dumps(v)})
        return out

    mine, best, best_diff = flat(cfg.to_dict()), None, None
    for d in runs.iterdir() if runs.is_dir() else ():
        if d == run_dir or not (d / "sft" / "record.json").is_file() or not (d / "config.yaml").is_file():
            continue
        theirs = flat(yaml.safe_load((d / "config.yaml").read_text()) or {})
        diff = sum(theirs.get(k) != v for k, v in mine.items() if not k.startswith(("run.", "ppo.", "pipeline.")))
        if best_diff is None or diff < best_diff:
            best, best_diff = d, diff
    return best


def _unpack(ckpt: Any, run_dir: Path, cfg: Config) -> Path:
    """A Tune checkpoint -> a PPO checkpoint directory for Pipeline(ppo_start=...). When PBT gave
    this trial another beta than the checkpoint's, the learner continues with the trial's own."""
    d = run_dir / "ppo" / "start"
    shutil.rmtree(d, ignore_errors=True)
    ckpt.to_directory(str(d))
    manifest = (d / MANIFEST).is_file()
    if manifest:  # what Tune hands back is what the trial saved (a checkpoint saved before manifests has none)
        verify_checkpoint(d)
    meta = json.loads((d / "trial.json").read_text())
    edited = meta.get("ppo.beta") != cfg.ppo.beta
    if edited:
        state = d / "learner_state.json"
        learner = json.loads(state.read_text())
        learner["kl_coef"] = cfg.ppo.beta
        state.write_text(json.dumps(learner, indent=1))
    if edited or not manifest:
        write_manifest(d)  # the checkpoint the pipeline verifies is this trial's own
    progress = json.loads((d / "progress.json").read_text())
    with open(run_dir / "restores.jsonl", "a") as fh:  # a trial's history of restores (PBT clones included)
        fh.write(json.dumps({"from_trial": meta.get("trial_id"), "step": progress["step"],
                             "from_beta": meta.get("ppo.beta"), "beta": cfg.ppo.beta, "time": time.time()}) + "\n")
    return d


class TrackingCallback(tune.Callback):
    """``run.loggers`` other than TensorBoard for a sweep: one tracker run per trial, opened on the
    driver (so a trial paused, restored or cloned by PBT stays one run), with the trial's resolved
    config as params and every result Tune receives (the PPO step's metrics, under TensorBoard's
    names) at its step. Each trial's pipeline still writes its own TensorBoard logs."""

    def __init__(self, config_of: Any, runs_dir: str | Path, loggers: tuple[str, ...]) -> None:
        self.config_of, self.runs_dir, self.loggers = config_of, Path(runs_dir), loggers
        self.open: dict[str, Any] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from dataclasses import replace

        from raydprm.cluster.tracking import open_trackers

        if trial.trial_id in self.open:
            return
        cfg = self.config_of(dict(trial.config), trial.trial_id)
        run_cfg = replace(cfg.run, loggers=self.loggers)
        self.open[trial.trial_id] = open_trackers(run_cfg, self.runs_dir / trial.trial_id, params=cfg.to_dict())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        t = self.open.get(trial.trial_id)
        if t is None:
            return
        step = int(result.get("step") or result.get("training_iteration") or 0)
        t.log_metrics({k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))
                       and not isinstance(v, bool)}, step)

    def _end(self, trial: Any, status: str) -> None:
        t = self.open.pop(trial.trial_id, None)
        if t is not None:
            t.close(status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FINISHED")  # done, or stopped by the scheduler

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Tune ends (also after a SIGINT, which Tune turns into a last checkpoint): a trial still
        open never completed, so its run ends KILLED (FINISHED/FAILED by its state if Tune has one)."""
        for trial in trials:
            state = getattr(trial, "status", "")
            self._end(trial, {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(state, "KILLED"))


def _tracking_callbacks(setup: _Setup) -> list[Any]:
    loggers = tuple(x for x in setup.base.run.loggers if x != "tensorboard")
    if not loggers:
        return []
    runs = Path(setup.sweep_dir) / "runs"
    return [TrackingCallback(lambda labels, tid: trial_config(setup.base, setup.space, labels, runs, tid), runs,
                             loggers)]


# --------------------------------------------------------------------------- warm pools across trials

_WARM: dict[str, Any] = {"pools": None, "where": None}  # this process's warm pools and where they sit
_RUNNING = threading.RLock()  # held while a trial's pipeline runs (its clean-up included)
THREAD_TIMEOUT_S = "120"  # how long Tune's reuse waits for a stopped trial's thread (its default, 2 s, is too short)


def close_warm(wait_s: float = 120.0) -> None:
    """Shut this process's warm pools down, once the trial running here (if any) is through."""
    got = _RUNNING.acquire(timeout=wait_s)
    try:
        pools, _WARM["pools"], _WARM["where"] = _WARM["pools"], None, None
        if pools is not None:
            pools.close()
    finally:
        if got:
            _RUNNING.release()


def trial_warm(cfg: Config, where: Any, reuse: bool) -> WarmPools | None:
    """The warm pools this trial's pipeline takes over (``where``: the trial's placement group and
    role offsets); new ones when the held ones sit elsewhere; None without reuse."""
    if not (reuse and warm_enabled(cfg)):
        close_warm()
        return None
    if _WARM["pools"] is not None and _WARM["where"] != where:
        print("[raydprm sweep] the warm actors of this process's previous trial sit on another placement group "
              "or layout: new actors", flush=True)
        close_warm()
    if _WARM["pools"] is None:  # the pipeline that adopts them sets their callbacks
        _WARM.update(pools=WarmPools(True, print, lambda p, role: p, lambda p: p.shutdown(), persistent=True),
                     where=where)
    return _WARM["pools"]


class _ClosesWarmPools:
    """Mixin of the trial's trainable (``__mixins__``): when Tune stops the trial's actor (the sweep's
    end, a failed trial, a trial stopped or paused whose actor no other trial reuses), its process's
    warm pools are shut down with it, never left behind."""

    def cleanup(self) -> None:
        try:
            super().cleanup()  # type: ignore[misc]
        finally:  # (a trial thread still in a stage does not hold them up: Tune kills the process 10 s on)
            close_warm(wait_s=5.0)


def pipeline_trial(config: dict[str, Any], setup: _Setup) -> None:
    """One Tune trial: the pipeline with this trial's keys, on the trial's placement group."""
    from ray.util import get_current_placement_group

    trial_id = tune.get_context().get_trial_id()
    sweep_dir = Path(setup.sweep_dir)
    if not (sweep_dir / MARKER).is_file():
        raise SharedStorageError(_storage_msg(sweep_dir, f"node {ray.util.get_node_ip_address()}"))
    runs = sweep_dir / "runs"
    cfg = trial_config(setup.base, setup.space, config, runs, trial_id)
    run_dir = runs / trial_id
    if not (run_dir / "state.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        donor = _donor(runs, run_dir, cfg)
        if donor is not None:
            copy_stages(donor, run_dir, UPSTREAM)
    ckpt = tune.get_checkpoint()
    start = _unpack(ckpt, run_dir, cfg) if ckpt is not None else None
    pg = get_current_placement_group()
    _, offsets = bundle_layout(cfg)
    placement = {role: Placement(pg, off) for role, off in offsets.items() if role != "driver"} if pg else {}
    cfg = cfg.override(["run.loggers=[tensorboard]" if "tensorboard" in cfg.run.loggers else "run.loggers=[]"])
    reporter = _Reporter(cfg, run_dir, trial_id)  # (the driver's TrackingCallback logs to mlflow/wandb)
    # a reused actor's Tune waits for this trial's thread to end (a paused trial's pipeline cleans up first)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", THREAD_TIMEOUT_S)
    with _RUNNING:
        warm = trial_warm(cfg, (pg.id.hex() if pg else None, tuple(sorted(offsets.items()))), setup.reuse)
        try:
            out = Pipeline(cfg, run_dir, progress=False, on_step=reporter.on_step, placement=placement,
                           ppo_start=start, until=setup.until, warm=warm).fit()
        except Exception:  # a failed trial's pools may be broken, and its actor is not reused
            close_warm()
            raise
    tune.report(reporter.final(out))


pipeline_trial.__mixins__ = (_ClosesWarmPools,)  # type: ignore[attr-defined]

POOL_ACTORS = ("RolloutGenerator", "RewardActor", "LearnerActor")  # what a trial's pools are made of


def leftover_pool_actors(wait_s: float = 30.0) -> list[str]:
    """The class names of this job's pool actors still alive (none, once Tune has stopped every
    trial's process), after waiting up to ``wait_s`` for shut-downs in flight."""
    from ray._private import state

    job, deadline = ray.get_runtime_context().get_job_id(), time.monotonic() + wait_s
    while True:
        try:
            alive = state.actors(actor_state_name="ALIVE").values()
        except Exception:  # noqa: BLE001 - the GCS's actor table is a debugging API: no answer, no check
            return []
        left = [a["ActorClassName"] for a in alive if a.get("JobID") == job
                and str(a.get("ActorClassName", "")).rsplit(".", 1)[-1] in POOL_ACTORS]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


# --------------------------------------------------------------------------- the sweep


def load_saved_space(sweep_dir: str | Path) -> SweepSpace:
    """The space a sweep started with (what --resume continues; Tune's own state is pickled too)."""
    p = Path(sweep_dir) / SPACE_FILE
    if not p.is_file():
        raise SweepError(f"--resume {sweep_dir}: no {SPACE_FILE} there; pass the sweep file after --resume")
    return pickle.loads(p.read_bytes())


def _cluster_max() -> tuple[dict[str, float], bool]:
    """(the most the cluster can offer, whether that is known): its autoscaler's maximum when Ray
    publishes it (autoscaler v2, KubeRay), else what it has now; unknown when an autoscaler that
    does not publish its maximum (v1) is running."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    have = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:
        top = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - no cluster config published (v1 autoscaler, local instance)
        top = {}
    try:
        autoscaler = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) is not None
    except Exception:  # noqa: BLE001 - no GCS key: no autoscaler
        autoscaler = False
    known = bool(top) or not autoscaler
    return {k: max(have.get(k, 0.0), float(top.get(k, 0.0))) for k in set(have) | set(top)}, known


def _scheduler(space: SweepSpace, base: Config) -> Any:
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    s, o = space.scheduler, space.scheduler.options
    if s.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=o.get("max_t", base.ppo.steps),
                             grace_period=o.get("grace_period", 1), reduction_factor=o.get("reduction_factor", 2))
    if s.type == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=o.get("perturbation_interval",
                                                                   base.pipeline.checkpoint_every),
                                       hyperparam_mutations={p.key: _mutation(p) for p in s.mutations},
                                       quantile_fraction=o.get("quantile_fraction", 0.25),
                                       resample_probability=o.get("resample_probability", 0.25),
                                       synch=o.get("synch", False))
    return None


def _trainable(setup: _Setup) -> Any:
    runs = Path(setup.sweep_dir) / "runs"

    def resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return _factory(trial_config(setup.base, setup.space, config, runs, "resources"))

    return tune.with_resources(tune.with_parameters(pipeline_trial, setup=setup), resources)


def plan(space: SweepSpace, base: Config, cap: int = 0) -> tuple[dict[str, float], int]:
    """(what the largest trial reserves, trials at once) on the connected cluster; raises
    :class:`InsufficientResources` when one trial cannot fit even at the cluster's maximum."""
    import itertools

    grids = [[(p.key, a) for a in p.args] if p.discrete else [(p.key, p.args[1])] for p in space.params]
    worst: dict[str, float] = {}
    for combo in itertools.islice(itertools.product(*grids), 256):  # resource keys are rarely swept
        cfg = trial_config(base, space, dict(combo), Path("/"), "plan")
        d = demand(*trial_bundles(cfg))
        worst = {k: max(worst.get(k, 0.0), d.get(k, 0.0)) for k in set(worst) | set(d)}
    top, known = _cluster_max()
    missing = shortfall(worst, top)
    if not known:  # an autoscaler of unknown size: the limit given, else what fits now (Tune's pending trials ask)
        print(f"[raydprm sweep] the cluster has {top.get('CPU', 0):g} CPUs now and an autoscaler whose maximum Ray "
              "does not publish (v1): pending trials ask it for nodes; set max_concurrent to run more at once",
              flush=True)
        return worst, cap or space.max_concurrent or max_concurrent(worst, top)
    if missing:
        parts = "; ".join(f"{k} needs {n:g}, the cluster offers {h:g}" for k, (n, h) in sorted(missing.items()))
        raise InsufficientResources(f"one trial of sweep '{space.name}' does not fit: {parts} (per trial: one "
                                    "bundle for its driver and one per actor; lower replicas/workers or their "
                                    "CPUs/GPUs, or use a bigger cluster)")
    return worst, max_concurrent(worst, top, cap or space.max_concurrent)


def run_sweep(space: SweepSpace, base: Config, sweep_dir: str | Path, *, resume: bool = False, cap: int = 0,
              until: str = "evaluate", verbose: int = 1) -> Path:
    """Run (or with ``resume`` continue) the sweep in ``sweep_dir``; write results.{csv,md} and plots there."""
    sweep_dir = Path(sweep_dir).resolve()
    probe_cfg = trial_config(base, space, {}, sweep_dir / "runs", "plan")
    one = demand(*trial_bundles(probe_cfg))
    want = cap or space.max_concurrent or 1
    local = base.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(one.get("CPU", 1.0) * want))
    runtime = connect(base.ray, Resources(cpu=one.get("CPU", 0.0), gpu=one.get("GPU", 0.0)),
                      what=f"sweep '{space.name}' (one trial)", local_num_cpus=local)
    try:
        per_trial, n = plan(space, base, cap)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        marker = sweep_dir / MARKER
        if not resume:
            write_json(marker, {"space": str(space.path), "created": time.time(), "until": until})
            save_config(base, sweep_dir, "base_config.yaml")
            # the parsed space (absolute cost files, the Dirichlet draws) for --resume
            (sweep_dir / SPACE_FILE).write_bytes(pickle.dumps(space))
        elif not marker.is_file():
            raise SweepError(f"--resume {sweep_dir}: not a sweep directory (no {MARKER})")
        check_shared_storage(sweep_dir)
        pending = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG", "")
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(n, int(pending) if pending.isdigit() else 0))
        print(f"[raydprm sweep] {space.name}: {n} trial(s) at once, each reserving "
              + ", ".join(f"{v:g} {k}" for k, v in sorted(per_trial.items())) + f"; storage {sweep_dir}", flush=True)
        reuse = base.pipeline.warm_actors  # actors (and their warm pools) reused across trials
        setup = _Setup(space=space, base=base, sweep_dir=str(sweep_dir), until=until, reuse=reuse)
        if resume:
            if not tune.Tuner.can_restore(str(sweep_dir)):
                raise SweepError(f"--resume {sweep_dir}: Tune has no experiment state there to continue")
            tuner = tune.Tuner.restore(str(sweep_dir), trainable=_trainable(setup), resume_unfinished=True,
                                       resume_errored=True)
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator

            tuner = tune.Tuner(
                _trainable(setup),
                param_space={p.key: _domain(p) for p in space.params},
                # the concurrency limit goes to the generator: Tune ignores max_concurrent_trials when
                # given a SearchGenerator (and warns)
                tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=space.num_samples,
                                            scheduler=_scheduler(space, base), reuse_actors=reuse,
                                            search_alg=BasicVariantGenerator(max_concurrent=n,
                                                                             random_state=space.seed)),
                run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent), verbose=verbose,
                                          # PBT clones from other trials' checkpoints: keep a few more
                                          checkpoint_config=tune.CheckpointConfig(
                                              num_to_keep=4 if space.scheduler.type == "pbt" else 2),
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          callbacks=_tracking_callbacks(setup)))
        try:
            grid = tuner.fit()
        except BaseException as e:  # SIGTERM skips Tune's clean-up: the trials' tracker runs end here
            from raydprm.cluster.tracking import end_open_trackers

            end_open_trackers(e)
            raise
        left = leftover_pool_actors()
        if left:  # (they end with the driver's job; a sweep that leaves none is what the tests check)
            print(f"[raydprm sweep] {len(left)} pool actor(s) outlived the trials: {', '.join(sorted(set(left)))}",
                  flush=True)
        try:  # Tune's own trial states tell a scheduler's stop from an interruption
            states = {t.trial_id: t.status for t in grid._experiment_analysis.trials}
        except AttributeError:
            states = {}
        rows, unfinished = [], 0
        for r in grid:
            m = dict(r.metrics or {})
            tid = str(m.get("trial_id") or Path(r.path).name)
            state = states.get(tid, "TERMINATED")
            status = ("error" if r.error else "done" if m.get("pipeline_done") else
                      "stopped" if state == "TERMINATED" else "unfinished")
            unfinished += status == "unfinished"
            rows.append(result_row(space, dict(r.config or {}), m, trial_id=tid, status=status,
                                   error=str(r.error).strip().splitlines()[-1] if r.error else ""))
        write_results(sweep_dir, space, rows)
        if unfinished:
            print(f"[raydprm sweep] interrupted with {unfinished} trial(s) unfinished: continue with "
                  f"`raydprm sweep --resume {sweep_dir}`", flush=True)
    finally:
        runtime.close()
    return sweep_dir
