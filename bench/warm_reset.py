"""What warm reuse saves per arm: starting a PPO role's actors vs turning live ones into another run's.

    python bench/warm_reset.py            # the kit's tiny-gpt2, one generator, one learner rank

In one Ray session, each timed once after a warm-up start (Ray's worker pool and the OS page
cache are then warm for both sides, so the gap is the actor's own start: its process, imports,
model and engine):

- ``LearnerGroup.create`` (a new rank: process, torch/transformers/DeepSpeed imports, policy,
  reference, engine) vs ``LearnerGroup.reset`` (the same rank builds policy, reference, engine
  again in place, bit for bit what create builds: tests/cluster/test_learner_reset.py);
- ``RolloutPool.create`` vs ``RolloutPool.load_checkpoint(dir, version=0)``.

Prints seconds and the ratio start / reuse for each role, with the machine load.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import ray

    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.config import EngineSection, PPOConfig, RolloutConfig
    from raydprm.models import ensure_tiny_models

    policy = str(ensure_tiny_models()["tiny-gpt2"])
    ppo, engine = PPOConfig(rollout_batch=8, minibatch=4), EngineSection(micro_batch=4, num_cpus_per_worker=0.5)
    rcfg = RolloutConfig(num_replicas=1, num_cpus=0.5)
    load0 = os.getloadavg()[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        timings: dict[str, float] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            out = fn()
            timings[name] = time.perf_counter() - t0
            return out

        LearnerGroup.create(ppo, policy, engine=engine, seed=0).shutdown()  # warm-up: Ray's workers, the page cache
        group = timed("learner create", lambda: LearnerGroup.create(ppo, policy, engine=engine, seed=0))
        with tempfile.TemporaryDirectory() as d:
            other = group.export_hf(d)
            timed("learner reset", lambda: group.reset(other, seed=1))
            group.shutdown()
            RolloutPool.create(rcfg, policy).shutdown()
            pool = timed("rollout create", lambda: RolloutPool.create(rcfg, policy))
            timed("rollout load_checkpoint", lambda: pool.load_checkpoint(other, version=0))
            pool.shutdown()
    finally:
        ray.shutdown()
    load1 = os.getloadavg()[0]
    print(f"# warm reuse vs a new actor, tiny-gpt2 (x86_64, {os.cpu_count()} cores, load {load0:.1f} -> {load1:.1f})")
    for role, reuse in (("learner", "reset"), ("rollout", "load_checkpoint")):
        a, b = timings[f"{role} create"], timings[f"{role} {reuse}"]
        print(f"{role:8s} create {a:7.2f} s   {reuse:16s} {b:6.2f} s   start / reuse = {a / b:6.1f}x")


if __name__ == "__main__":
    main()
