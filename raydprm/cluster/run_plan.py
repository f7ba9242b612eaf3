"""What a run is before anything runs: its policies and seeds (:class:`Arm`), its run
directory, the resources it reserves and the bundles it takes from a caller's placement
group (a Tune trial's). :mod:`raydprm.cluster.pipeline` runs what this plans."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raydprm.cluster.placement import layout_groups, peak_resources
from raydprm.cluster.run_state import RunState
from raydprm.cluster.runtime import Resources, in_ray_job
from raydprm.config import (
    GROUP_POLICIES,
    PLURAL_POLICIES,
    PPO_POLICY_LOSS,
    Config,
    apply_overrides,
    from_dict,
)
from raydprm.errors import ConfigError, RaydprmError

__all__ = ["Arm", "DRIVER_CPU", "ROLES", "RelativeOutputInJob", "SMOKE_OVERRIDES", "arms", "bundle_layout",
           "eval_prompts", "eval_sampling", "required_resources", "resolve_run_dir", "resume_dir"]

# The --smoke sizes: every stage runs, in seconds (tests, `ray job submit ... --smoke`).
SMOKE_OVERRIDES = [
    "sft.n_examples=256", "sft.epochs=1", "crowd.n_items=64", "crowd.votes_per_item=6", "reward.epochs=1",
    "ppo.steps=2", "ppo.rollout_batch=8", "ppo.minibatch=8", "engine.micro_batch=4", "ppo.epochs=1",
    "rollout.max_new_tokens=16", "pipeline.eval_prompts=16", "pipeline.bootstrap=200", "align.steps=2",
    "align.batch=8",
]


@dataclass(frozen=True)
class Arm:
    """One policy a run trains: ``name`` (a policy of :data:`raydprm.config.POLICIES` other than
    vanilla), the index of its seed, the prefix of its stages' names and directories (``""``
    for a single run, ``"<name>/seed<k>/"`` in a comparison) and its own config (``run.seed``
    and ``reward.loss`` (and, for a pluralistic policy, ``reward.conditioning`` and ``reward.objective``)
    or ``align.algo`` set for it)."""

    name: str
    seed_index: int
    prefix: str
    cfg: Config

    @property
    def kind(self) -> str:
        """``ppo`` (reward model, then PPO against it) or ``align`` (direct alignment on the store's pairs)."""
        return "ppo" if self.name in PPO_POLICY_LOSS or self.name in GROUP_POLICIES or self.name in PLURAL_POLICIES \
            else "align"

    def stage(self, stage: str) -> str:
        return self.prefix + stage


def arms(cfg: Config) -> list[Arm]:
    """The policies a run trains, seed-major (every policy of seed 0 first, so a comparison has a
    complete first seed early). A single run (``pipeline.policies`` empty) trains the PPO policy
    of ``reward.loss`` under ``run.seed``; a comparison each of ``pipeline.policies`` (vanilla is
    the SFT policy: nothing to train) under seeds ``run.seed + k``, k < ``pipeline.seeds``."""
    from raydprm.evaluate.report import policy_name

    pc = cfg.pipeline
    if not pc.policies:
        return [Arm(policy_name(cfg.reward.loss), 0, "", cfg)]
    out = []
    for k in range(pc.seeds):
        for name in pc.policies:
            if name == "vanilla":
                continue
            out.append(Arm(name, k, f"{name}/seed{k}/", _arm_config(cfg, name, k)))
    return out


def _arm_config(cfg: Config, name: str, k: int) -> Config:
    """The run's config with the seed and the fields that make policy ``name``; one line naming the
    policy when they do not fit the run's config (e.g. ``reward.group_weights`` set for a BT policy)."""
    try:
        return from_dict(apply_overrides(cfg.to_dict(), [f"run.seed={cfg.run.seed + k}",
                                                         *_policy_overrides(cfg, name)]))
    except ConfigError as e:
        raise ConfigError(f"policy {name!r} of pipeline.policies: {e}") from None


def _policy_overrides(cfg: Config, name: str) -> list[str]:
    """What makes a comparison's policy ``name`` out of the run's config."""
    if name in PPO_POLICY_LOSS:
        return [f"reward.loss={PPO_POLICY_LOSS[name]}"]
    if name in GROUP_POLICIES:  # the same ppo.rollout_batch responses per step as PPO, in groups per prompt
        loss, advantage = GROUP_POLICIES[name]
        n = cfg.rollout.n_per_prompt if cfg.rollout.n_per_prompt >= 2 else 4
        return [f"reward.loss={loss}", f"ppo.advantage={advantage}", f"rollout.n_per_prompt={n}"]
    if name in PLURAL_POLICIES:  # PPO with PPO's budget against a group-conditioned reward model
        return [f"reward.{key}={value}" for key, value in PLURAL_POLICIES[name].items()]
    return [f"align.algo={name}"]


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
    """Logical CPUs/GPUs reserved at once: the largest stage's placement groups under
    ``pipeline.layout`` (:func:`~raydprm.cluster.placement.peak_resources`)."""
    return peak_resources(cfg)


# Roles that own bundles of a run's placement group (bundle_layout), in bundle order. "driver" is
# the caller's own process (a Tune trial); "learner" also hosts the SFT and reward-training tasks,
# which finish before the learner starts; "reference" is evaluate's SFT pool (the "rollout"
# bundles hold the PPO policy's pool then).
ROLES = ("driver", "rollout", "reward", "learner", "store", "reference")
DRIVER_CPU = 1.0


def bundle_layout(cfg: Config) -> tuple[list[dict[str, float]], dict[str, int]]:
    """The bundles one run reserves in a placement group someone else creates, and the
    offset of each role's first bundle: one bundle for the driver, then one per actor.

    ``[{"CPU": 1}, rollout x R, reward x Q, learner x W, store, reference x R]``; a bundle's
    GPUs are the actor's. Evaluate's two pools (SFT and PPO policy) sample side by side, so
    the reference pool has bundles of its own. ``pipeline.layout = colocate``: the rollout
    and learner entries are one list of shared bundles, and both roles start at its offset."""
    def one(cpu: float, gpu: float = 0.0) -> dict[str, float]:
        return {"CPU": float(cpu), **({"GPU": float(gpu)} if gpu > 0 else {})}

    ro, rw, en = cfg.rollout, cfg.reward, cfg.engine
    per_role = {"driver": [one(DRIVER_CPU)],
                "rollout": [one(ro.num_cpus, ro.num_gpus)] * ro.num_replicas,
                "reward": [one(rw.actor_num_cpus)] * rw.num_replicas,
                "learner": [one(en.num_cpus_per_worker, en.num_gpus_per_worker)] * en.num_workers,
                "store": [one(cfg.pipeline.store_num_cpus)],
                "reference": [one(ro.num_cpus, ro.num_gpus)] * ro.num_replicas}
    if cfg.pipeline.layout == "colocate":
        per_role["rollout"], per_role["learner"] = [], layout_groups(cfg)["policy"]
    bundles: list[dict[str, float]] = []
    offsets: dict[str, int] = {}
    for role in ROLES:
        offsets[role] = len(bundles)
        bundles += [dict(b) for b in per_role[role]]
    if cfg.pipeline.layout == "colocate":
        offsets["rollout"] = offsets["learner"]
    return bundles, offsets


def eval_prompts(cfg: Config) -> list[str]:
    """The held-out prompts every evaluation samples (``pipeline.eval_prompts`` of them; no
    training step sees them: those are drawn with ``run.seed + 1``)."""
    from raydprm.sim.world import prompts as world_prompts

    return world_prompts(cfg.pipeline.eval_prompts, seed=cfg.run.seed + 999)


def eval_sampling(cfg: Config, train_seed: int, eval_seed: int):
    """The sampling parameters of evaluation sample ``eval_seed`` (< ``pipeline.eval_seeds``) of the
    policy trained under seed index ``train_seed``; the SFT policy samples with the same ones, so
    samples pair up by (seed, prompt)."""
    from raydprm.rollout.sampling import SamplingParams

    return SamplingParams.from_config(cfg.rollout, n=1, seed=(cfg.run.seed + train_seed) * 7919 + 500 + eval_seed)
