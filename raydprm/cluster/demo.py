"""The end-to-end demo: every component, once, on Ray, on the embedded default.

Stages (each a Ray actor or task; the driver only moves small objects around)::

    1 sft       tiny policy learns the simulated world (mixed-quality SFT corpus)
    2 crowd     the persona population votes on world items -> PreferenceStoreActor (SQLite)
    3 dprm      DPRM fit to the store's posterior distributions with the OT loss
    4 ppo       RolloutPool -> RewardPool (E_mu[r]) -> LearnerGroup (PPO), verified weight sync
    5 evaluate  the population judges Vanilla (SFT) and DPRM-OT policies on held-out prompts

This is not yet the full pipeline (`raydprm run`: placement groups, resume, the BT/CE/W
baselines of the paper's Table 2); it runs the components that exist end to end and says
so in its report. Outputs: ``<run_dir>/{config.yaml, report.md, metrics.json, demo.png}``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydprm.cluster.runtime import Resources, connect
from raydprm.config import Config, save_config

log = logging.getLogger(__name__)

SMOKE_OVERRIDES = [
    "sft.n_examples=256", "sft.epochs=1", "crowd.n_items=64", "crowd.votes_per_item=6", "reward.epochs=1",
    "ppo.steps=2", "ppo.rollout_batch=8", "ppo.minibatch=8", "ppo.micro_batch=4", "ppo.epochs=1",
    "rollout.max_new_tokens=16",
]


def _say(msg: str) -> None:
    print(f"[raydprm demo] {msg}", flush=True)


def required_resources(cfg: Config) -> Resources:
    """Logical CPUs/GPUs the demo's actors reserve at once (the PPO stage is the peak)."""
    cpu = (cfg.rollout.num_replicas * cfg.rollout.num_cpus + cfg.reward.num_replicas * cfg.reward.actor_num_cpus
           + cfg.ppo.num_workers * cfg.ppo.num_cpus_per_worker + 0.1)  # + the store actor
    gpu = cfg.rollout.num_replicas * cfg.rollout.num_gpus + cfg.ppo.num_workers * cfg.ppo.num_gpus_per_worker
    return Resources(cpu=cpu, gpu=gpu)


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
def _dprm_task(cfg: Config, data, out_dir: str) -> dict[str, Any]:
    from raydprm.cluster.reward_train import train_reward_auto
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.models.tiny import resolve_model

    res = train_reward_auto(data, scale=label_scale_from_config(cfg.labels), reward_cfg=cfg.reward,
                            backbone=resolve_model(cfg.models.reward_backbone, cfg.models.cache_dir or None),
                            out_dir=out_dir, seed=cfg.run.seed, device="cpu", progress=False,
                            cpus_per_worker=cfg.reward.actor_num_cpus)
    return res.to_dict()


def _population(cfg: Config):
    from raydprm.sim.personas import Population

    return Population.from_config(cfg.crowd)


def judge(cfg: Config, prompts: list[str], responses: list[str]) -> dict[str, Any]:
    """What the population thinks: label shares (%), expected reward, per-persona E[r]."""
    pop = _population(cfg)
    rewards = np.asarray(cfg.labels.rewards)
    mus = pop.true_distributions(prompts, responses)  # (B, L)
    per_persona = np.stack([np.stack([pop.personas[n].judge(p, r) for p, r in zip(prompts, responses)])
                            for n in pop.names])  # (P, B, L)
    return {"label_pct": (100 * mus.mean(0)).tolist(), "expected_reward": float((mus @ rewards).mean()),
            "persona_rewards": {n: (per_persona[i] @ rewards).tolist() for i, n in enumerate(pop.names)}}


def head_to_head(a: dict[str, Any], b: dict[str, Any], tie: float = 0.05) -> dict[str, dict[str, float]]:
    """Per persona: % of prompts where b's response beats / ties / loses to a's."""
    out = {}
    for name, ra in a["persona_rewards"].items():
        d = np.asarray(b["persona_rewards"][name]) - np.asarray(ra)
        out[name] = {"win": float(100 * (d > tie).mean()), "tie": float(100 * (np.abs(d) <= tie).mean()),
                     "loss": float(100 * (d < -tie).mean())}
    return out


def run_demo(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Run every stage; returns the metrics also written to ``metrics.json``."""
    from tqdm.auto import tqdm

    from raydprm.cluster.learner_group import LearnerGroup
    from raydprm.cluster.ppo_loop import PPOLoop
    from raydprm.cluster.reward_actor import RewardPool
    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.cluster.store_actor import StoreClient
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.rollout.sampling import SamplingParams
    from raydprm.sim.personas import simulated_items
    from raydprm.sim.world import prompts as world_prompts

    run_dir = cfg.run.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    t0 = time.time()
    metrics: dict[str, Any] = {"run_dir": str(run_dir)}
    runtime = connect(cfg.ray, required_resources(cfg), what="raydprm demo")
    restarts = cfg.ray.max_restarts
    pools: list[Any] = []
    try:
        # 1 -------------------------------------------------------------- SFT
        _say(f"1/5 SFT of {cfg.models.policy} on {cfg.sft.n_examples} simulated examples")
        sft = ray.get(_sft_task.remote(cfg, str(run_dir / "sft")))
        metrics["sft"] = sft
        _say(f"    loss {sft['first_loss']:.2f} -> {sft['final_loss']:.2f} in {sft['steps']} steps")

        # 2 -------------------------------------------------------------- crowd -> store
        # The crowd votes on world items of every quality and on the SFT policy's own
        # samples, so the DPRM has seen the kind of text PPO will ask it to score.
        policy_dir = sft["path"]
        rollout = RolloutPool.create(cfg.rollout, policy_dir, dtype=cfg.models.dtype, max_restarts=restarts)
        pools.append(rollout)
        n_policy = cfg.crowd.n_items // 2
        crowd_prompts = world_prompts(n_policy, seed=cfg.run.seed + 7)
        sampled = rollout.generate(crowd_prompts, SamplingParams.from_config(cfg.rollout, n=1, seed=cfg.run.seed))
        items = simulated_items(cfg.crowd.n_items - n_policy, seed=cfg.run.seed)
        items += [(crowd_prompts[r.prompt_index], r.text) for r in sampled if r.text.strip()]
        store_path = cfg.store.path or str(run_dir / "store.db")
        _say(f"2/5 crowd of {len(_population(cfg).names)} personas votes on {len(items)} items "
             f"({len(items) - n_policy} world, {n_policy} SFT samples) -> {store_path}")
        store = StoreClient.create(cfg.store, cfg.labels, default_path=store_path)
        pools.append(store)
        votes = _population(cfg).simulate_votes(items, cfg.crowd.votes_per_item, seed=cfg.run.seed)
        bar = tqdm(total=len(votes), desc="votes", unit="vote", disable=not progress, leave=False)
        for i in range(0, len(votes), 1000):
            store.add_votes(votes[i:i + 1000])
            bar.update(len(votes[i:i + 1000]))
        bar.close()
        metrics["store"] = store.stats()
        data = store.export(None, cfg.store.smoothing)
        _say(f"    {store.count_votes()} votes on {len(data)} items")

        # 3 -------------------------------------------------------------- DPRM
        _say(f"3/5 DPRM ({cfg.models.reward_backbone} + linear head) with loss={cfg.reward.loss} cost={cfg.reward.cost}")
        dprm = ray.get(_dprm_task.remote(cfg, data, str(run_dir / "reward")))
        metrics["dprm"] = {k: dprm[k] for k in ("best_dir", "best_metrics", "epochs", "seconds") if k in dprm}
        bm = dprm["best_metrics"]
        _say(f"    held-out OT distance {bm.get('ot_distance', float('nan')):.3f}, "
             f"expected-reward error {bm.get('er_error', float('nan')):.3f}")

        # 4 -------------------------------------------------------------- PPO
        _say(f"4/5 PPO: {cfg.ppo.steps} steps x {cfg.ppo.rollout_batch} rollouts, engine={cfg.rollout.engine}, "
             f"learner={cfg.ppo.engine} x{cfg.ppo.num_workers} (ZeRO {cfg.ppo.zero_stage})")
        reward = RewardPool.create(dprm["best_dir"], label_scale_from_config(cfg.labels), cfg.reward,
                                   max_restarts=restarts)
        pools.append(reward)
        learner = LearnerGroup.create(cfg.ppo, policy_dir, seed=cfg.run.seed, dtype=cfg.models.dtype)
        pools.append(learner)

        eval_prompts = world_prompts(64, seed=cfg.run.seed + 999)
        greedy = SamplingParams.from_config(cfg.rollout, temperature=0.0, n=1, seed=None)
        vanilla = [r.text for r in rollout.generate(eval_prompts, greedy)]

        train_prompts = world_prompts(cfg.ppo.steps * cfg.ppo.rollout_batch, seed=cfg.run.seed + 1)
        n = cfg.ppo.rollout_batch
        loop = PPOLoop(rollout, reward, learner, cfg.rollout, seed=cfg.run.seed, async_rollout=cfg.ppo.async_rollout)
        history = []
        bar = tqdm(range(cfg.ppo.steps), desc="ppo", disable=not progress, leave=False)
        for step in bar:
            nxt = train_prompts[(step + 1) * n:(step + 2) * n] if step + 1 < cfg.ppo.steps else None
            rec = loop.step(step, train_prompts[step * n:(step + 1) * n], nxt)
            history.append(rec)
            bar.set_postfix(reward=f"{rec['reward/mean']:.3f}", kl=f"{rec.get('ppo/approx_kl', 0):.3f}")
        bar.close()
        loop.finish()
        metrics["ppo"] = history
        tuned = [r.text for r in rollout.generate(eval_prompts, greedy)]
        learner.export_hf(run_dir / "policy")

        # 5 -------------------------------------------------------------- evaluate
        _say("5/5 the population judges Vanilla (SFT) vs DPRM-OT on 64 held-out prompts")
        ev = {"vanilla": judge(cfg, eval_prompts, vanilla), "dprm_ot": judge(cfg, eval_prompts, tuned)}
        ev["dprm_ot_vs_vanilla"] = head_to_head(ev["vanilla"], ev["dprm_ot"])
        ev["dprm_scores"] = {k: float(reward.score(eval_prompts, v)["expected"].mean())
                             for k, v in (("vanilla", vanilla), ("dprm_ot", tuned))}
        ev["samples"] = [{"prompt": p, "vanilla": a, "dprm_ot": b}
                         for p, a, b in list(zip(eval_prompts, vanilla, tuned))[:5]]
        metrics["eval"] = ev
    finally:
        for p in reversed(pools):
            try:
                p.shutdown()
            except Exception as e:  # pragma: no cover - best effort cleanup
                log.warning("shutdown failed: %s", e)
        runtime.close()
    metrics["seconds"] = time.time() - t0
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    write_report(cfg, metrics, run_dir)
    _say(f"done in {metrics['seconds']:.0f} s: {run_dir / 'report.md'}")
    return metrics


def write_report(cfg: Config, metrics: dict[str, Any], run_dir: Path) -> Path:
    """report.md (the paper's Table 2 shape for the two policies) and demo.png."""
    ev = metrics["eval"]
    names = list(cfg.labels.names)
    lines = ["# raydprm demo report", "",
             "What ran: SFT -> simulated crowd -> preference store -> DPRM (OT loss) -> PPO -> evaluation,",
             "each stage on local Ray actors. Not yet included: the BT-RM, DPRM-CE and DPRM-W policies of the",
             "paper's Table 2 (the pipeline issue adds them), placement groups and resume.", "",
             "## Labels of each policy's responses as judged by the population (%)", "",
             "| policy | " + " | ".join(names) + " | E[r] |", "|---" * (len(names) + 2) + "|"]
    for k in ("vanilla", "dprm_ot"):
        row = ev[k]
        lines.append(f"| {k} | " + " | ".join(f"{x:.1f}" for x in row["label_pct"]) + f" | {row['expected_reward']:.3f} |")
    lines += ["", "## DPRM-OT vs Vanilla, head to head per persona (% of prompts)", "",
              "| persona | win | tie | loss |", "|---|---|---|---|"]
    for p, r in ev["dprm_ot_vs_vanilla"].items():
        lines.append(f"| {p} | {r['win']:.1f} | {r['tie']:.1f} | {r['loss']:.1f} |")
    ppo = metrics["ppo"]
    lines += ["", "## PPO", "", f"mean DPRM reward of rollouts: step 1 {ppo[0]['reward/mean']:.3f} -> "
              f"step {len(ppo)} {ppo[-1]['reward/mean']:.3f}; the DPRM's own view of the held-out responses: "
              f"vanilla {ev['dprm_scores']['vanilla']:.3f}, dprm_ot {ev['dprm_scores']['dprm_ot']:.3f}.", "",
              "## Samples", ""]
    for s in ev["samples"]:
        lines += [f"- `{s['prompt']!r}`", f"  - vanilla: `{s['vanilla']}`", f"  - dprm_ot: `{s['dprm_ot']}`"]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    try:
        _plot(names, ev, ppo, run_dir / "demo.png")
    except Exception as e:  # a missing font or backend must not lose the report
        log.warning("plot failed: %s", e)
    return out


def _plot(names: list[str], ev: dict[str, Any], ppo: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(names))
    for i, k in enumerate(("vanilla", "dprm_ot")):
        a.bar(x + (i - 0.5) * 0.4, ev[k]["label_pct"], width=0.4, label=f"{k} (E[r]={ev[k]['expected_reward']:.2f})")
    a.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=7)
    a.set_ylabel("% of responses")
    a.set_title("population's labels of each policy")
    a.legend(fontsize=8)
    b.plot([r["step"] for r in ppo], [r["reward/mean"] for r in ppo], marker="o")
    b.set_xlabel("PPO step")
    b.set_ylabel("mean DPRM reward of rollouts")
    b.set_title("PPO")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
