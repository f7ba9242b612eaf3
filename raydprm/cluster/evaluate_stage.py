"""The evaluate stage of a run (:meth:`Pipeline._evaluate <raydprm.cluster.pipeline.Pipeline>`): the
trained policies and the SFT policy sample the held-out prompts, the run's judge judges them and
report.json / report.md are written."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from raydprm.cluster.run_plan import Arm, eval_sampling
from raydprm.cluster.warm import reuse_generators, rollout_shape

__all__ = ["evaluate"]


def evaluate(pipe: Any, sft_dir: str, trained: list[tuple[Arm, dict[str, Any]]]) -> dict[str, Any]:
    """``pipe``: the run's :class:`~raydprm.cluster.pipeline.Pipeline` (its pools, placement and state).
    Every policy samples the held-out prompts under ``pipeline.eval_seeds`` sampling seeds
    per training seed, the SFT policy (vanilla) under the same ones, so samples pair up by
    (seed, prompt); the run's judge (the population, or a store crowd's gold judge:
    :class:`~raydprm.cluster.crowd_source.EvalJudge`) judges; KL(policy || SFT) per sample is the
    exact per-token KL over the vocabulary summed along the sampled response (:func:`sample_with_kl`)."""
    from raydprm.cluster.crowd_source import EvalJudge
    from raydprm.cluster.rollout_actor import RolloutPool, sample_with_kl
    from raydprm.evaluate.report import build_report, curves, write_report

    cfg, pc = pipe.cfg, pipe.cfg.pipeline
    judge = EvalJudge(cfg, pipe.run_dir, pipe.state.record("collect")["outputs"])
    prompts = judge.prompts
    n_seeds = pc.seeds if pc.policies else 1
    # row r = (training seed k, sampling seed e); k = 0, e < eval_seeds are a single run's rows
    rows = [(k, eval_sampling(cfg, k, e)) for k in range(n_seeds) for e in range(pc.eval_seeds)]
    if not pipe.warm.persistent:  # (a sweep trial's pools stay for the next trial: the reference has bundles of its own)
        pipe.warm.drop("learner", "reward")  # their groups go before the reference pool takes its own
    pipe._release_placement(keep=pipe.warm.roles)
    ref = pipe.warm.get("reference", {**rollout_shape(cfg), "sleep_mode": False}, lambda: RolloutPool.create(
        cfg.rollout, sft_dir, placement=pipe.placement.get("reference"), dtype=cfg.models.dtype,
        max_restarts=cfg.ray.max_restarts), lambda p: reuse_generators(p, sft_dir, cfg.rollout))
    names = list(dict.fromkeys(arm.name for arm, _ in trained))
    texts: dict[str, list[list[str]]] = {"vanilla": [[r.text for r in ref.generate(prompts, sp)] for _, sp in rows]}
    kl: dict[str, list[list[float]]] = {}
    bar = pipe._bar(total=len(trained), desc="evaluate: policies", unit="policy")
    pol = None  # one pool for every trained policy (warm: PPO's): each loads its weights from disk in turn
    for name in names:
        texts[name], kl[name] = [[] for _ in rows], [[] for _ in rows]
        for arm, out in ((a, o) for a, o in trained if a.name == name):
            if pol is None:
                pol = pipe._generators(cfg, pipe._abs(out["policy"]))
            else:
                pol.load_checkpoint(pipe._abs(out["policy"]))
            for i, (k, sp) in enumerate(rows):
                if k != arm.seed_index:
                    continue
                texts[name][i], kl[name][i] = sample_with_kl(pol, ref, prompts, sp)
            bar.update(1)
    bar.close()
    if pol is not None:
        pipe.warm.done(pol)
    pipe.warm.done(ref)
    if not pipe.warm.persistent:
        pipe.warm.drop("rollout", "reference")
    elif judge.heldout is not None:  # the gold judge's task takes the learner's first bundle
        pipe.warm.drop("learner")
    judge.load(pipe._task_options())  # a gold judge trains here (once), after the generators are gone
    judged = {"vanilla": judge(texts["vanilla"])}
    for name in names:
        judged[name] = judge(texts[name], kl=np.asarray(kl[name]))
    report = build_report(judged, cfg.labels.rewards, margin=pc.tie_margin, n_boot=pc.bootstrap, seed=cfg.run.seed,
                          seed_groups=[k for k, _ in rows], group_reference=judge.reference,
                          all_pairs=bool(pc.policies), group_diffs=True)
    rewards = {arm.prefix.rstrip("/") or arm.name: (pipe.state.record(arm.stage("reward")), arm.cfg)
               for arm, _ in trained if arm.kind == "ppo"}
    report.update(judge.report_blocks(report, rewards, pipe._rel))
    stages = {k: {"seconds": v["seconds"]} for k, v in pipe.state.data["stages"].items()}
    stages["evaluate"] = {"seconds": time.time() - pipe._stage_t0}
    totals: dict[str, float] = {}  # per kind of stage (a comparison has one reward/ppo/align per policy and seed)
    for k, v in stages.items():
        totals[k.rsplit("/", 1)[-1]] = totals.get(k.rsplit("/", 1)[-1], 0.0) + v["seconds"]
    report.update(stages=stages, stage_totals=totals, restarts={r: 0 for r in ("rollout", "reward", "learner")}
                  | pipe.state.data.get("restarts", {}))
    if pc.policies:
        report.update(compare={"policies": ["vanilla", *names], "seeds": n_seeds, "eval_seeds": pc.eval_seeds,
                               "prompts": len(prompts), "ppo_steps": cfg.ppo.steps, "align_steps": cfg.align.steps},
                      curves=curves({n: [o["history"] for a, o in trained if a.name == n] for n in names}))
    else:
        report.update(ppo=trained[0][1]["history"])
    samples = [{"prompt": p, **{n: texts[n][0][i] for n in texts}} for i, p in enumerate(prompts[:5])]
    path = write_report(report, pipe.run_dir, cfg.labels.names, samples)
    p = report["policies"]
    pipe._say("  E[r] " + ", ".join(f"{n} {p[n]['expected_reward']:.3f}" for n in p) + f"; {path}")
    return {"report": "report.json"}
