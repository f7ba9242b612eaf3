"""raydprm's RL step next to TRL's GRPOTrainer on the same work, in one run.

    pip install -c constraints.txt -e '.[bench]'     # trl + accelerate (not core dependencies)
    python bench/vs_trl.py --quick --json out.json   # 4 steps a side (a few minutes on 2 cores)
    python bench/vs_trl.py                           # 8 steps a side

Both sides train the same tiny policy (the tiny kit's ``tiny-gpt2``, or ``--policy DIR``, e.g. a
run's ``sft/``) on the same prompts (``raydprm.sim.world.prompts``, in the same order), with the same
reward function (the DPRM's expected reward E_mu[r] = sum_l mu_l r_l, ``--reward DIR`` or a DPRM
on the tiny ``tiny-opt`` backbone; on TRL's side wrapped as a reward function), the same sampling
(temperature 1, ``--new-tokens`` tokens at most per response), the same batch (``--batch``
responses per step, ``--group`` per prompt) and one optimizer update per step (one epoch, one
minibatch = the batch), the same learning rate, clip ratio and KL coefficient:

- **TRL**: ``GRPOTrainer`` (``use_cpu=True``), policy, reference and reward model in this process.
- **raydprm**: ``PPOLoop`` over a RolloutPool, a RewardPool and a LearnerGroup (one actor each,
  ``engine.engine=torch``), GRPO advantages (``ppo.advantage=grpo``, ``rollout.n_per_prompt``) when
  this raydprm has them, else PPO with its value head (printed as ``ppo``).

It prints, per side: start-up (building the trainer / starting the actors), the median wall time
of a step (the first step, which warms caches, left out), samples/s (= batch / step), the tokens
sampled per step, and raydprm / TRL ratios. Every figure carries the 1-minute load average read
when it was taken (the box is shared). ``--json PATH`` writes them.

What each side does that the other does not is in bench/RESULTS.md (vs TRL).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_USE_CPU", "true")

LR, CLIP, BETA = 5e-4, 0.2, 0.05  # raydprm's ppo.lr / ppo.clip_ratio / ppo.beta defaults, given to both sides


def load() -> float:
    return round(os.getloadavg()[0], 1)


def step_prompts(steps: int, batch: int, group: int) -> list[list[str]]:
    """The unique prompts of each step (batch // group of them), the same on both sides."""
    from raydprm.sim.world import prompts as world_prompts

    per = batch // group
    flat = world_prompts(steps * per, seed=1)
    return [flat[s * per:(s + 1) * per] for s in range(steps)]


def run_trl(policy: str, rm_dir: str, prompts: list[list[str]], batch: int, group: int, new_tokens: int) -> dict:
    t0 = time.perf_counter()  # start-up: importing transformers + TRL (torch is in the process already), the models
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from raydprm.models.reward_models import load_reward_model

    rm = load_reward_model(rm_dir)

    def dprm_expected_reward(prompts, completions, **_):
        """TRL's reward function: the DPRM's expected reward of each (prompt, completion)."""
        return rm.score(list(prompts), list(completions)).expected.tolist()

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.t: list[float] = []
            self.loads: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter() - self._t0)
            self.loads.append(load())

    tok = AutoTokenizer.from_pretrained(policy)
    tok.pad_token = tok.pad_token or tok.eos_token
    steps = len(prompts)
    ds = Dataset.from_dict({"prompt": [p for ps in prompts for p in ps]})
    out_dir = tempfile.mkdtemp(prefix="raydprm-vs-trl-")
    args = GRPOConfig(output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, seed=0, report_to="none",
                      save_strategy="no", logging_steps=1, max_steps=steps, learning_rate=LR, epsilon=CLIP, beta=BETA,
                      per_device_train_batch_size=batch, num_generations=group, gradient_accumulation_steps=1,
                      steps_per_generation=1, num_iterations=1, max_completion_length=new_tokens, temperature=1.0,
                      top_p=1.0, top_k=0, shuffle_dataset=False, dataloader_num_workers=0, max_grad_norm=1.0,
                      disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0)
    clock = Clock()
    trainer = GRPOTrainer(model=policy, reward_funcs=dprm_expected_reward, args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[clock])
    startup, startup_load = time.perf_counter() - t0, load()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = [h["completions/mean_length"] * batch for h in logs]
    return {"side": "trl", "algo": "grpo", "startup_s": startup, "startup_load": startup_load, "step_s": clock.t,
            "step_load": clock.loads, "tokens_per_step": tokens, "reward": [h.get("reward") for h in logs]}


def run_raydprm(policy: str, rm_dir: str, prompts: list[list[str]], batch: int, group: int, new_tokens: int) -> dict:
    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.ppo_loop import PPOLoop
    from raydprm.cluster.reward_actor import RewardPool
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.config import Config, RolloutConfig
    from raydprm.core.label_scale import LabelScale

    grpo = "n_per_prompt" in RolloutConfig.__dataclass_fields__  # the critic-free estimators are in this raydprm
    overrides = [f"rollout.max_new_tokens={new_tokens}", "rollout.num_cpus=0.5", "rollout.temperature=1.0",
                 f"ppo.rollout_batch={batch}", f"ppo.minibatch={batch}", f"engine.micro_batch={batch}", "ppo.epochs=1",
                 f"ppo.lr={LR}", f"ppo.clip_ratio={CLIP}", f"ppo.beta={BETA}", "engine.engine=torch",
                 "reward.actor_num_cpus=0.5", "engine.num_cpus_per_worker=1"]
    if grpo:
        overrides += ["ppo.advantage=grpo", f"rollout.n_per_prompt={group}"]
    cfg = Config().override(overrides)
    t0 = time.perf_counter()
    rollout = RolloutPool.create(cfg.rollout, policy)
    reward = RewardPool.create(rm_dir, LabelScale.hh(), cfg.reward)
    learner = LearnerGroup.create(cfg.ppo, policy, engine=cfg.engine, seed=0)
    startup, startup_load = time.perf_counter() - t0, load()
    # GRPO samples rollout.n_per_prompt responses of each prompt itself; PPO gets each prompt `group` times
    per_step = prompts if grpo else [[p for p in ps for _ in range(group)] for ps in prompts]
    sampled: list[int] = []  # tokens the generators sampled, per generate call (the loop's only one a step)
    generate = rollout.generate

    def counted(*a, **kw):
        resp = generate(*a, **kw)
        sampled.append(sum(len(r.token_ids) for r in resp))
        return resp

    rollout.generate = counted
    try:
        loop = PPOLoop(rollout, reward, learner, cfg.rollout, seed=0)
        recs, loads = [], []
        for s, ps in enumerate(per_step):
            recs.append(loop.step(s, ps, None))
            loads.append(load())
        loop.finish()
    finally:
        rollout.shutdown()
        reward.shutdown()
        learner.shutdown()
    return {"side": "raydprm", "algo": "grpo" if grpo else "ppo", "startup_s": startup, "startup_load": startup_load,
            "step_s": [r["time/step_s"] for r in recs], "step_load": loads,
            # one generate call a step in sync mode; if the loop samples some other way, say so (nan)
            "tokens_per_step": sampled if len(sampled) == len(recs) else [float("nan")],
            "reward": [r["reward/mean"] for r in recs],
            "split_s": {k: statistics.median(r[f"time/{k}_s"] for r in recs[1:] or recs)
                        for k in ("generate", "score", "learn", "sync")}}


def summary(r: dict, batch: int) -> dict:
    timed = r["step_s"][1:] or r["step_s"]  # the first step warms caches up
    med = statistics.median(timed)
    return {"step_s": med, "samples_per_s": batch / med, "tokens_per_step": statistics.mean(r["tokens_per_step"]),
            "load": statistics.mean(r["step_load"][1:] or r["step_load"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 steps a side")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8, help="responses per step (both sides)")
    ap.add_argument("--group", type=int, default=4, help="responses per prompt (GRPO's group)")
    ap.add_argument("--new-tokens", type=int, default=16, help="most tokens sampled per response")
    ap.add_argument("--policy", default=None, help="policy directory (default: the tiny kit's tiny-gpt2)")
    ap.add_argument("--reward", default=None, help="DPRM directory (default: a DPRM on the tiny-opt backbone)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.batch % args.group:
        ap.error(f"--batch {args.batch} is not a multiple of --group {args.group}")
    if importlib.util.find_spec("trl") is None:
        print("bench/vs_trl.py needs the bench extra: pip install -c constraints.txt -e '.[bench]'", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)  # each raydprm actor computes on one thread; so does TRL's process

    from raydprm.cluster.runtime import connect
    from raydprm.config import RayConfig
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.dprm import DPRM
    from raydprm.models.tiny import ensure_tiny_models

    kit = {k: str(v) for k, v in ensure_tiny_models(names=("tiny-gpt2", "tiny-opt")).items()}
    policy = args.policy or kit["tiny-gpt2"]
    rm_dir = args.reward or str(DPRM.from_backbone(kit["tiny-opt"], LabelScale.hh(), max_length=64, seed=1).save(
        Path(tempfile.mkdtemp(prefix="raydprm-vs-trl-rm-")) / "rm"))
    steps = args.steps or (4 if args.quick else 8)
    prompts = step_prompts(steps, args.batch, args.group)
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
                 "python": sys.version.split()[0], "torch": torch.__version__, "trl": importlib.metadata.version("trl"),
                 "steps": steps, "batch": args.batch, "group": args.group, "new_tokens": args.new_tokens,
                 "policy": policy, "load_start": load()}
    print(f"# {steps} steps of {args.batch} responses ({args.group} per prompt, <= {args.new_tokens} tokens), "
          f"one optimizer update each; {out['machine']}, load {out['load_start']}", flush=True)
    out["trl"] = run_trl(policy, rm_dir, prompts, args.batch, args.group, args.new_tokens)
    runtime = connect(RayConfig(num_cpus=4), what="bench/vs_trl.py")
    try:
        out["raydprm"] = run_raydprm(policy, rm_dir, prompts, args.batch, args.group, args.new_tokens)
    finally:
        runtime.close()
    s = {k: summary(out[k], args.batch) for k in ("trl", "raydprm")}
    print(f"{'side':<8} {'algo':<5} {'start s':>8} {'step s':>7} {'samples/s':>9} {'tok/step':>8} {'load':>5}")
    for k in ("trl", "raydprm"):
        print(f"{k:<8} {out[k]['algo']:<5} {out[k]['startup_s']:>8.1f} {s[k]['step_s']:>7.2f} "
              f"{s[k]['samples_per_s']:>9.2f} {s[k]['tokens_per_step']:>8.1f} {s[k]['load']:>5.1f}")
    ratio = s["raydprm"]["step_s"] / s["trl"]["step_s"]
    print(f"raydprm / TRL: step time {ratio:.2f}x, samples/s {1 / ratio:.2f}x, start-up "
          f"{out['raydprm']['startup_s'] / out['trl']['startup_s']:.2f}x; raydprm's step split (median s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in out["raydprm"]["split_s"].items()))
    out.update(summary=s, step_ratio=ratio, load_end=load())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
