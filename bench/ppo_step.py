"""Where a PPO step's time goes, and how close weight sync is to the object store's floor.

    python bench/ppo_step.py --quick --json out.json   # tiny steps + the 124M sync (a few minutes on 2 cores)
    python bench/ppo_step.py                           # + 124M PPO steps, more repeats

Three measurements, each against a baseline taken in the same run:

1. **Weight sync vs its floor** (124M GPT-2 policy, object-store transport): the wall time of
   ``sync_policy`` (learner rank 0 gathers + publishes: digests and ``ray.put`` of raw buckets;
   the generator pulls, verifies every digest, loads, and checks the logprob probe) against a
   bare object-store round trip of the same bytes: ``ray.put`` of the same buckets in one actor,
   fetched and copied into preallocated tensors in another.
2. **PPO step split** (tiny policy; 124M without --quick), synchronous vs ``ppo.async_rollout``:
   generate / score / learn / sync wall times per step, and the share of the step spent outside
   compute (= 1 - (generator busy + reward busy + learner update + publish + replica receive) / step),
   i.e. Ray calls, transfers, serialisation and waits. Peak RSS of the driver and each actor.
3. **Closed-form OT at the memory floor**: ``ot_loss`` (1-D closed form, B = 1e6, L = 6, float32,
   forward) over ``torch.clone`` of the inputs (interleaved medians).

``--estimators`` measures instead (no Ray): 4. **PPO with a critic vs critic-free GRPO** in the
learner alone, at equal tokens (the same batch of ``--batch`` responses, ``--tokens`` prompt and
response tokens each; GRPO in groups of 4): update wall time and the process's peak RSS, each
configuration in a fresh process (so peak memory is its own), median of ``--steps`` updates
after one warm-up, ``--rounds`` interleaved rounds: ``gae`` with the value head, ``gae`` with a
separate critic, ``grpo``::

    python bench/ppo_step.py --estimators --model small-gpt2 --batch 8 --tokens 16 --steps 3 --rounds 3

``--json PATH`` writes the figures (keys in the issue: sync_seconds, sync_floor_seconds, sync_mb,
step_seconds.{sync_mode,async_mode}, closed_form_floor_ratio, and more).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [f"Q: how do i {w} ?\nA:" for w in ("bake bread", "fix a bike", "learn python", "plant a tree",
                                              "save money", "write a poem", "cook rice", "sleep better")]


class _Sender:
    """The floor's sending side: the same bytes as a published update, ``ray.put`` in buckets."""

    def __init__(self, model: str, bucket_mb: int) -> None:
        from transformers import AutoModelForCausalLM

        from raydprm.rollout.sync import iter_buckets

        torch.set_num_threads(1)
        sd = AutoModelForCausalLM.from_pretrained(model).state_dict()
        self.buckets = list(iter_buckets(sd, bucket_mb * 2**20, raw=True))

    def put(self) -> list:
        import ray

        return [ray.put(b) for b in self.buckets]


class _Receiver:
    """The floor's receiving side: fetch every bucket, copy into preallocated tensors."""

    def __init__(self, model: str) -> None:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.sd = AutoModelForCausalLM.from_pretrained(model).state_dict()

    def fetch(self, wrapped: list) -> float:
        import numpy as np
        import ray

        t0 = time.perf_counter()
        for ref in wrapped[0]:
            b = ray.get(ref)
            for name, arr in zip(b.names, b.arrays):
                dst = self.sd[name]
                np.copyto(dst.view(-1).view(torch.uint8).numpy(), arr)
        return time.perf_counter() - t0


def bench_sync(model: str, repeats: int, bucket_mb: int) -> dict:
    from raydprm.cluster.group import ActorGroup
    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.cluster.weight_sync import sync_policy
    from raydprm.config import EngineSection, PPOConfig, RolloutConfig

    learner = LearnerGroup.create(PPOConfig(), model, engine=EngineSection(engine="torch", num_cpus_per_worker=1), seed=0)
    rollout = RolloutPool.create(RolloutConfig(num_replicas=1, num_cpus=1, bucket_mb=bucket_mb, sync_timeout_s=900),
                                 model)
    sender = ActorGroup(_Sender, 1, role="floor-sender", init=lambda r: ((model, bucket_mb), {}),
                        resources={"num_cpus": 0.5}).start()
    receiver = ActorGroup(_Receiver, 1, role="floor-receiver", init=lambda r: ((model,), {}),
                          resources={"num_cpus": 0.5}).start()
    try:
        sync_t, floor_t, rep_t, pub_t = [], [], [], []
        mb = 0.0
        for v in range(1, repeats + 1):  # interleaved: floor, then sync, each repeat
            t0 = time.perf_counter()
            refs = sender.rank0(_Sender.put)
            receiver.rank0(_Receiver.fetch, [refs])
            floor_t.append(time.perf_counter() - t0)
            del refs
            t0 = time.perf_counter()
            (rep,) = sync_policy(learner, rollout, v)
            sync_t.append(time.perf_counter() - t0)
            rep_t.append(rep.seconds)
            mb = rep.nbytes / 2**20
        # the learner's own publish time (from the update handle): one more publish, not loaded
        upd = learner.publish_weights(repeats + 1, rollout.probe_ids, bucket_mb)
        pub_t.append(upd.publish_s)
        del upd
        s, f = statistics.median(sync_t), statistics.median(floor_t)
        return {"model": model, "sync_mb": round(mb, 1), "sync_seconds": s, "sync_floor_seconds": f,
                "sync_over_floor": s / f, "replica_receive_s": statistics.median(rep_t), "publish_s": pub_t[0],
                "sync_runs": sync_t, "floor_runs": floor_t}
    finally:
        for g in (sender, receiver):
            g.shutdown()
        rollout.shutdown()
        learner.shutdown()


def bench_steps(model: str, async_rollout: bool, steps: int, batch: int, new_tokens: int, rm_dir: str) -> dict:
    from raydprm.cluster.group import peak_rss_mb
    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.ppo_loop import PPOLoop
    from raydprm.cluster.reward_actor import RewardPool
    from raydprm.cluster.rollout_actor import RolloutGenerator, RolloutPool
    from raydprm.config import Config
    from raydprm.core.label_scale import LabelScale

    cfg = Config().override([f"rollout.max_new_tokens={new_tokens}", "rollout.num_cpus=0.5",
                             f"ppo.rollout_batch={batch}", f"ppo.minibatch={batch}", f"engine.micro_batch={batch}",
                             "ppo.epochs=1", "reward.actor_num_cpus=0.5", "engine.num_cpus_per_worker=1"])
    rollout = RolloutPool.create(cfg.rollout, model)
    reward = RewardPool.create(rm_dir, LabelScale.hh(), cfg.reward)
    learner = LearnerGroup.create(cfg.ppo, model, engine=cfg.engine, seed=0)
    try:
        loop = PPOLoop(rollout, reward, learner, cfg.rollout, seed=0, async_rollout=async_rollout)
        prompts = [[PROMPTS[(s * batch + i) % len(PROMPTS)] for i in range(batch)] for s in range(steps + 1)]
        recs = []
        for s in range(steps):
            g0 = rollout.group.all(RolloutGenerator.info)[0]["busy_s"]
            r0 = reward.info()[0]["busy_s"]
            rec = loop.step(s, prompts[s], prompts[s + 1] if s + 1 < steps else None)
            rec["gen_busy_s"] = rollout.group.all(RolloutGenerator.info)[0]["busy_s"] - g0
            rec["reward_busy_s"] = reward.info()[0]["busy_s"] - r0
            recs.append(rec)
        loop.finish()
        timed = recs[1:] or recs  # the first step warms caches up
        med = {k: statistics.median(r[k] for r in timed) for k in ("time/step_s", "time/generate_s", "time/score_s",
                                                                    "time/learn_s", "time/sync_s")}
        compute = statistics.median(r["gen_busy_s"] + r["reward_busy_s"] + r["ppo/update_time_s"] for r in timed)
        return {"model": model, "mode": "async" if async_rollout else "sync", "steps": steps, "batch": batch,
                "new_tokens": new_tokens, **med, "outside_compute_share": max(0.0, 1 - compute / med["time/step_s"]),
                "reward_curve": [r["reward/mean"] for r in recs],
                "peak_rss_mb": {"driver": peak_rss_mb(),
                                "generator": rollout.group.all(RolloutGenerator.info)[0]["peak_rss_mb"],
                                "reward": reward.info()[0]["peak_rss_mb"],
                                "learner": max(i["peak_rss_mb"] for i in learner.info())}}
    finally:
        rollout.shutdown()
        reward.shutdown()
        learner.shutdown()


def bench_closed_form(rounds: int, rows: int = 1_000_000, labels: int = 6) -> dict:
    from raydprm.core.ot_loss import ot_loss

    torch.manual_seed(0)
    logits = torch.softmax(torch.randn(rows, labels), -1)  # predicted probabilities
    target = torch.softmax(torch.randn(rows, labels), -1)
    cost = torch.abs(torch.arange(labels, dtype=torch.float32)[:, None] - torch.arange(labels)[None, :])
    clone_t, ot_t = [], []
    for _ in range(rounds):  # interleaved
        t0 = time.perf_counter()
        logits.clone()
        target.clone()
        clone_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            ot_loss(logits, target, cost, method="exact")
        ot_t.append(time.perf_counter() - t0)
    c, o = statistics.median(clone_t), statistics.median(ot_t)
    return {"rows": rows, "clone_s": c, "closed_form_s": o, "closed_form_floor_ratio": o / c}


ESTIMATORS = {"ppo_value_head": dict(advantage="gae", critic="value_head"),
              "ppo_separate_critic": dict(advantage="gae", critic="separate"),
              "grpo": dict(advantage="grpo")}


def _estimator_child(spec: str) -> None:
    """One configuration in this (fresh) process; prints its figures as one JSON line."""
    import resource

    from raydprm.config import EngineSection, PPOConfig
    from raydprm.train.learner import PPOLearner
    from raydprm.train.rollout_batch import RolloutBatch

    a = json.loads(spec)
    torch.set_num_threads(a["threads"])
    B, T = a["batch"], a["tokens"]
    cfg = PPOConfig(rollout_batch=B, minibatch=B, epochs=1, **ESTIMATORS[a["name"]])
    lr = PPOLearner(cfg, a["model"], engine=EngineSection(micro_batch=B, engine="torch"), seed=0)
    V = lr.ref.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, V, (T,), generator=g).tolist() for _ in range(B)]
    resp = [torch.randint(5, V, (T,), generator=g).tolist() for _ in range(B)]
    batch = RolloutBatch.from_sequences(prompts, resp, torch.randn(B, generator=g).tolist(),
                                        [[-6.9] * T for _ in range(B)], group=[i // 4 for i in range(B)])
    params = sum(p.numel() for p in lr.engine.module.parameters())
    lr.update(batch)  # warm-up
    times = []
    for _ in range(a["steps"]):
        t0 = time.perf_counter()
        lr.update(batch)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"name": a["name"], "update_s": statistics.median(times), "trainable_params": params,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_estimators(model: str, batch: int, tokens: int, steps: int, rounds: int = 1, threads: int = 1) -> list[dict]:
    """Every configuration once per round, interleaved (so load drifts hit all alike); per configuration
    the median over rounds of its update time and the largest peak RSS."""
    import subprocess

    runs: dict[str, list[dict]] = {name: [] for name in ESTIMATORS}
    for _ in range(rounds):
        for name in ESTIMATORS:
            spec = json.dumps(dict(name=name, model=model, batch=batch, tokens=tokens, steps=steps, threads=threads))
            res = subprocess.run([sys.executable, __file__, "--_estimator", spec], capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    return [r[0] | {"update_s": statistics.median(x["update_s"] for x in r),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in r), "rounds": len(r)} for r in runs.values()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny PPO steps only (plus the 124M sync); fewer repeats")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--sync-model", default="small-gpt2", help="the policy whose sync is measured (124M by default)")
    ap.add_argument("--estimators", action="store_true", help="PPO with a critic vs GRPO in the learner (no Ray)")
    ap.add_argument("--model", default="small-gpt2", help="--estimators: the policy (124M by default)")
    ap.add_argument("--batch", type=int, default=8, help="--estimators: responses per update")
    ap.add_argument("--tokens", type=int, default=16, help="--estimators: prompt tokens = response tokens per row")
    ap.add_argument("--rounds", type=int, default=1, help="--estimators: interleaved rounds (median over them)")
    ap.add_argument("--_estimator", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args._estimator:
        _estimator_child(args._estimator)
        return 0
    if args.estimators:
        from raydprm.models.tiny import ensure_tiny_models

        model = str(ensure_tiny_models(names=(args.model,))[args.model])
        print(f"# learner update, {args.model}, {args.batch} x ({args.tokens}+{args.tokens}) tokens, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        rows = bench_estimators(model, args.batch, args.tokens, args.steps or 2, args.rounds)
        base = rows[0]
        print(f"{'config':<22} {'update s':>9} {'vs ppo':>7} {'peak RSS MB':>12} {'trainable':>12}")
        for r in rows:
            print(f"{r['name']:<22} {r['update_s']:>9.2f} {r['update_s'] / base['update_s']:>7.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['trainable_params']:>12,}")
        if args.json:
            Path(args.json).write_text(json.dumps({"model": args.model, "estimators": rows}, indent=2))
        return 0

    from raydprm.cluster.runtime import connect
    from raydprm.config import RayConfig
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.dprm import DPRM
    from raydprm.models.tiny import ensure_tiny_models

    kit = {k: str(v) for k, v in ensure_tiny_models(names=("tiny-gpt2", "tiny-opt", args.sync_model)).items()}
    import tempfile

    rm_dir = str(DPRM.from_backbone("tiny-opt", LabelScale.hh(), max_length=64, seed=1).save(
        Path(tempfile.mkdtemp(prefix="raydprm-bench-ppo-")) / "rm"))
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
                 "date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0], "torch": torch.__version__}
    runtime = connect(RayConfig(num_cpus=4), what="bench/ppo_step.py")
    try:
        steps = args.steps or (4 if args.quick else 6)
        print(f"# PPO step split ({out['machine']})")
        print(f"{'model':<12} {'mode':<6} {'step s':>7} {'gen':>6} {'score':>6} {'learn':>6} {'sync':>6} {'outside':>8}")
        runs = [("tiny-gpt2", 8, 16)] + ([] if args.quick else [("small-gpt2", 4, 16)])
        out["steps"] = []
        for model, batch, new_tokens in runs:
            for mode in (False, True):
                r = bench_steps(kit[model], mode, steps, batch, new_tokens, rm_dir)
                r["model"] = model
                out["steps"].append(r)
                print(f"{model:<12} {r['mode']:<6} {r['time/step_s']:>7.2f} {r['time/generate_s']:>6.2f} "
                      f"{r['time/score_s']:>6.2f} {r['time/learn_s']:>6.2f} {r['time/sync_s']:>6.2f} "
                      f"{100 * r['outside_compute_share']:>7.0f}%", flush=True)
        tiny = {r["mode"]: r["time/step_s"] for r in out["steps"] if r["model"] == "tiny-gpt2"}
        out["step_seconds"] = {"sync_mode": tiny["sync"], "async_mode": tiny["async"]}

        print(f"\n# weight sync of {args.sync_model} (object store) vs a bare object-store round trip")
        sync = bench_sync(kit[args.sync_model], 2 if args.quick else 4, 64)
        sync["model"] = args.sync_model
        out.update({k: sync[k] for k in ("sync_seconds", "sync_floor_seconds", "sync_mb")})
        out["sync"] = sync
        print(f"{sync['sync_mb']:.0f} MB: sync {sync['sync_seconds']:.2f} s (publish {sync['publish_s']:.2f} s, "
              f"replica receive {sync['replica_receive_s']:.2f} s) vs floor {sync['sync_floor_seconds']:.2f} s "
              f"= {sync['sync_over_floor']:.2f}x (target <= 3x)", flush=True)
    finally:
        runtime.close()

    cf = bench_closed_form(3 if args.quick else 7)
    out["closed_form"] = cf
    out["closed_form_floor_ratio"] = cf["closed_form_floor_ratio"]
    print(f"\n# closed-form OT, B = 1e6: {cf['closed_form_s'] * 1e3:.1f} ms vs clone {cf['clone_s'] * 1e3:.1f} ms "
          f"= {cf['closed_form_floor_ratio']:.2f}x (target <= 2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
