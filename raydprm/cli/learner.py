"""`raydprm learner toy`: the PPO learner on a toy reward (fraction of target tokens).

Runs in-process by default (one rank, DeepSpeed on CPU unless ``engine.engine=torch``); with
``--workers N`` (N > 1) or ``--ray`` the learner is a Ray actor group of N ranks in one
torch.distributed group. Config keys of the ``ppo`` and ``engine`` sections apply (``engine.zero_stage=2``,
``ppo.kl_controller=adaptive``, ...); the toy sets its own batch shape and learning rate.
"""

from __future__ import annotations

import argparse

from raydprm.cli.common import add_config_args, check_model_refs, config_from_args, ensure_run_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learner", help="PPO learner: run the toy PPO loop.",
                       description="The PPO learner (DeepSpeed ZeRO engine, Ray actor group).")
    lsub = p.add_subparsers(dest="learner_cmd", metavar="ACTION", required=True)
    t = lsub.add_parser("toy", help="Toy PPO: reward = fraction of response tokens in a target set.",
                        description="PPO on the tiny policy with reward = fraction of sampled tokens that are "
                        "target tokens; the mean reward rises within a minute of CPU.")
    t.add_argument("--steps", type=int, default=20, help="PPO iterations (default 20).")
    t.add_argument("--batch", type=int, default=32, help="Rollouts per iteration (default 32).")
    t.add_argument("--max-new-tokens", type=int, default=8, help="Tokens sampled per response (default 8).")
    t.add_argument("--lr", type=float, default=3e-3, help="Learning rate of the toy (default 3e-3).")
    t.add_argument("--workers", type=int, default=1, help="Learner ranks; > 1 runs a Ray actor group.")
    t.add_argument("--ray", action="store_true", help="Use a Ray actor group even with one worker.")
    t.add_argument("--target", type=int, default=None,
                   help="One target token id (default: every 8th token id of the vocabulary).")
    t.add_argument("--out", default=None, help="Export the trained policy as an HF directory here.")
    t.add_argument("--smoke", action="store_true", help="2 steps, batch 8, 4 tokens: checks the wiring.")
    t.add_argument("--no-progress", action="store_true", help="No progress bar.")
    add_config_args(t)
    t.set_defaults(handler=_toy)


def _toy(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from raydprm.errors import RaydprmError

    cfg = config_from_args(args)
    check_model_refs(cfg, "models.policy")
    ensure_run_dir(cfg)
    steps, batch, new_tokens = (2, 8, 4) if args.smoke else (args.steps, args.batch, args.max_new_tokens)
    if steps < 1 or batch < 2 or new_tokens < 1 or args.workers < 1:
        raise RaydprmError("--steps, --max-new-tokens and --workers must be >= 1 and --batch >= 2")
    if batch % (2 * args.workers):
        raise RaydprmError(f"--batch {batch} must be a multiple of 2 x --workers = {2 * args.workers}")
    minibatch = batch // 2
    ppo = dataclasses.replace(cfg.ppo, lr=args.lr, rollout_batch=batch, minibatch=minibatch)
    engine = dataclasses.replace(cfg.engine, micro_batch=minibatch // args.workers, num_workers=args.workers)
    from raydprm.train.learner_toy import run_toy_ppo

    use_ray = args.ray or args.workers > 1
    group = runtime = None
    if use_ray:
        from raydprm.cluster.learner_group import LearnerGroup
        from raydprm.cluster.runtime import Resources, connect

        runtime = connect(cfg.ray, Resources(cpu=engine.num_workers * engine.num_cpus_per_worker,
                                             gpu=engine.num_workers * engine.num_gpus_per_worker), what="raydprm learner toy")
        try:
            learner = group = LearnerGroup.create(ppo, cfg.models.policy, engine=engine, seed=cfg.run.seed, dtype=cfg.models.dtype)
        except BaseException:
            runtime.close()
            raise
    else:
        from raydprm.train.learner import PPOLearner

        learner = PPOLearner(ppo, cfg.models.policy, engine=engine, seed=cfg.run.seed, dtype=cfg.models.dtype)
    run_dir = cfg.run.run_dir / "learner_toy"
    run_dir.mkdir(parents=True, exist_ok=True)
    from raydprm.config import save_config

    save_config(dataclasses.replace(cfg, ppo=ppo, engine=engine), run_dir)  # the effective config, flags included
    try:
        with open(run_dir / "metrics.jsonl", "w") as f:
            hist = run_toy_ppo(learner, cfg.models.policy, steps=steps, batch_size=batch, max_new_tokens=new_tokens,
                               target=args.target, seed=cfg.run.seed, progress=not args.no_progress,
                               on_step=lambda i, m: f.write(json.dumps({"step": i, **m}) + "\n"))
        if args.out:
            print(f"exported policy: {learner.export_hf(args.out)}")
    finally:
        if group is not None:
            group.shutdown()
        if runtime is not None:
            runtime.close()
    k = max(1, len(hist) // 4)
    first = sum(m["toy/reward"] for m in hist[:k]) / k
    last = sum(m["toy/reward"] for m in hist[-k:]) / k
    print(f"toy PPO: {len(hist)} steps, {args.workers} worker(s), engine {engine.engine} (ZeRO {engine.zero_stage}); "
          f"mean reward first {k}: {first:.3f}, last {k}: {last:.3f}; "
          f"{hist[-1]['ppo/tokens_per_s']:.0f} tokens/s; metrics in {run_dir / 'metrics.jsonl'}")
    return 0
