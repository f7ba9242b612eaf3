"""Live preference shift: does refreshing the DPRM from the store during PPO help when the crowd changes?

Two PPO runs from the same SFT policy, collect store and reward model (the second run's
directory is seeded with the first one's finished stages by
:func:`raydprm.cluster.run_state.copy_stages`), identical but for ``pipeline.refresh_every``:

* **refresh_on**: the crowd votes on the policy's samples after every step
  (``pipeline.live_votes``), switches to ``pipeline.drift_mixture`` at ``pipeline.drift_step``,
  the store forgets with ``store.half_life_s`` on the logical clock of
  :mod:`raydprm.cluster.drift`, and every ``pipeline.refresh_every`` steps the reward replicas
  are refreshed from the store;
* **refresh_off**: the same votes flow into its own store, but the reward model is never
  refreshed (``pipeline.refresh_every=0``): PPO keeps optimising the old crowd's DPRM.

Both runs use the same seeds, so they are identical up to the first refresh. Then the SFT
policy (vanilla) and both tuned policies sample ``pipeline.eval_prompts`` held-out prompts
under ``pipeline.eval_seeds`` seeds, and the population judges them (:mod:`raydprm.evaluate`)
under the **new** mixture (the answer) and the old one (what was given up), with bootstrap 95%
intervals and head to head refresh_on vs refresh_off. The per-step curves are the exact
expected reward of each step's training samples under the new crowd (``drift/judged_new`` of
the step records).

Outputs under ``out_dir``: ``refresh_on/`` and ``refresh_off/`` (run directories),
``drift_report.json``, ``drift_report.md``, ``drift_reward.png``. Running again on the same
``out_dir`` reuses the finished stages and PPO checkpoints of both runs.

Run: ``raydprm experiments drift --out DIR [--quick] [--seed N] [key=value ...]``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DRIFT", "QUICK", "run"]

log = logging.getLogger(__name__)

# The shift: from the uniform crowd to one of detail-loving personas (scientists and artists
# want long, detailed answers; the uniform crowd includes the teenager and politician who want
# them short), 11 steps into 40; forgetting with a half-life of 10 PPO steps.
DRIFT = ["pipeline.live_votes=4", "pipeline.drift_step=11", "pipeline.drift_mixture={scientist: 1, artist: 1}",
         "pipeline.refresh_every=5", "pipeline.refresh_epochs=2", "pipeline.step_seconds=60",
         "store.half_life_s=600", "pipeline.checkpoint_every=10"]
# Tiny sizes for tests and a quick look (minutes of CPU): the shift at step 3 of 6, a refresh every 2.
QUICK = ["sft.n_examples=256", "sft.epochs=1", "crowd.n_items=64", "crowd.votes_per_item=6", "reward.epochs=1",
         "ppo.steps=6", "ppo.rollout_batch=8", "ppo.minibatch=8", "engine.micro_batch=4", "ppo.epochs=1",
         "rollout.max_new_tokens=16", "pipeline.eval_prompts=16", "pipeline.bootstrap=200",
         "pipeline.drift_step=3", "pipeline.refresh_every=2", "pipeline.refresh_epochs=1", "store.half_life_s=180",
         "pipeline.checkpoint_every=2"]
ARMS = ("refresh_on", "refresh_off")


def run(out_dir: str | Path, *, quick: bool = False, seed: int = 0, overrides: Sequence[str] = (),
        progress: bool = True) -> dict[str, Any]:
    """Both PPO runs, the evaluation under both mixtures, and the report files; returns drift_report.json's dict."""
    from raydprm.cluster.pipeline import Pipeline
    from raydprm.cluster.run_plan import required_resources
    from raydprm.cluster.run_state import copy_stages
    from raydprm.cluster.runtime import ray_session
    from raydprm.config import load_config
    from raydprm.errors import ConfigError

    out = Path(out_dir).resolve()
    base = load_config(None, [*DRIFT, *(QUICK if quick else []), f"run.seed={seed}", f"run.output_dir={out}",
                              *overrides])
    if base.pipeline.refresh_every == 0 or base.pipeline.drift_step == 0:
        raise ConfigError("raydprm experiments drift compares refresh on vs off after a shift: pipeline.refresh_every "
                          "and pipeline.drift_step must be > 0")
    cfgs = {"refresh_on": base.override(["run.name=refresh_on"]),
            "refresh_off": base.override(["run.name=refresh_off", "pipeline.refresh_every=0"])}
    t0 = time.time()
    seconds: dict[str, float] = {}
    with ray_session(base.ray, required_resources(base), what="raydprm experiments drift"):
        histories = {}
        for arm in ARMS:
            d = out / arm
            if arm == "refresh_off" and not (d / "state.json").is_file():
                copy_stages(out / "refresh_on", d, ("sft", "collect", "reward"))  # same SFT, store, reward model
            s0 = time.time()
            histories[arm] = Pipeline(cfgs[arm], d, progress=progress, until="ppo").fit()["ppo"]
            seconds[arm] = time.time() - s0
        s0 = time.time()
        judged = _evaluate(base, {"vanilla": out / "refresh_on" / "sft", **{a: out / a / "ppo" / "policy" for a in ARMS}})
        seconds["evaluate"] = time.time() - s0
    report = _report(base, judged, histories, out)
    report["seconds"] = {**seconds, "total": time.time() - t0}
    _write(report, out)
    return report


def _evaluate(cfg, policies: Mapping[str, Path]) -> dict[str, Any]:
    """Samples of every policy on the held-out prompts (``pipeline.eval_seeds`` seeds) and the
    KL estimate to the SFT policy: sum_t log pi(y_t) - log pi_SFT(y_t) on the policy's own samples."""
    from raydprm.cluster.rollout_actor import RolloutPool, sample_with_kl
    from raydprm.cluster.run_plan import eval_prompts, eval_sampling

    pc = cfg.pipeline
    prompts = eval_prompts(cfg)  # the pipeline's held-out prompts
    mk = dict(dtype=cfg.models.dtype, max_restarts=cfg.ray.max_restarts)
    ref = RolloutPool.create(cfg.rollout, str(policies["vanilla"]), **mk)
    texts: dict[str, list[list[str]]] = {}
    kl: dict[str, np.ndarray] = {}
    try:
        for name, d in policies.items():
            pool = ref if name == "vanilla" else RolloutPool.create(cfg.rollout, str(d), **mk)
            try:
                texts[name], rows = [], []
                for s in range(pc.eval_seeds):
                    if pool is ref:
                        res = pool.generate(prompts, eval_sampling(cfg, 0, s))
                        texts[name].append([r.text for r in res])
                        rows.append([0.0] * len(res))
                        continue
                    t, k = sample_with_kl(pool, ref, prompts, eval_sampling(cfg, 0, s))
                    texts[name].append(t)
                    rows.append(k)
                kl[name] = np.asarray(rows)
            finally:
                if pool is not ref:
                    pool.shutdown()
    finally:
        ref.shutdown()
    return {"prompts": prompts, "texts": texts, "kl": kl}


def _report(cfg, ev: Mapping[str, Any], histories: Mapping[str, list[dict[str, Any]]], out: Path) -> dict[str, Any]:
    from raydprm.evaluate.judge import judge_samples
    from raydprm.evaluate.report import build_report
    from raydprm.sim.personas import Population, load_personas

    pc = cfg.pipeline
    personas = load_personas(cfg.crowd.personas_source or None)
    crowds = {"new_mixture": Population(personas, pc.drift_mixture), "old_mixture": Population(personas,
                                                                                             cfg.crowd.mixture or None)}
    report: dict[str, Any] = {
        "setup": {"drift_step": pc.drift_step, "drift_mixture": dict(pc.drift_mixture),
                  "old_mixture": crowds["old_mixture"].mixture(), "live_votes": pc.live_votes,
                  "refresh_every": pc.refresh_every, "refresh_epochs": pc.refresh_epochs,
                  "step_seconds": pc.step_seconds, "half_life_s": cfg.store.half_life_s, "ppo_steps": cfg.ppo.steps,
                  "rollout_batch": cfg.ppo.rollout_batch, "seed": cfg.run.seed, "reward_loss": cfg.reward.loss,
                  "eval_prompts": pc.eval_prompts, "eval_seeds": pc.eval_seeds}}
    for key, pop in crowds.items():
        judged = {name: judge_samples(pop, cfg.labels.rewards, ev["prompts"], ev["texts"][name], kl=ev["kl"][name])
                  for name in ("vanilla", "refresh_off", "refresh_on")}
        report[key] = build_report(judged, cfg.labels.rewards, refs=("vanilla", "refresh_off"), margin=pc.tie_margin,
                                   n_boot=pc.bootstrap, seed=cfg.run.seed)
    keys = ("reward/mean", "drift/judged_new", "drift/judged_old", "drift/refreshed", "drift/store_votes")
    report["curves"] = {arm: [{"step": r["step"], **{k: r[k] for k in keys if k in r}} for r in h]
                        for arm, h in histories.items()}
    log_path = out / "refresh_on" / "ppo" / "drift" / "refreshes.json"
    report["refreshes"] = json.loads(log_path.read_text()) if log_path.is_file() else []
    report["samples"] = [{"prompt": p, **{n: ev["texts"][n][0][i] for n in ("vanilla", "refresh_off", "refresh_on")}}
                         for i, p in enumerate(ev["prompts"][:4])]
    return report


def _write(report: Mapping[str, Any], out: Path) -> None:
    from raydprm.cluster.run_state import write_json

    write_json(out / "drift_report.json", report)
    s, new, old = report["setup"], report["new_mixture"], report["old_mixture"]

    def er(rep: Mapping[str, Any], name: str) -> str:
        p = rep["policies"][name]
        lo, hi = p["expected_reward_ci95"]
        return f"{p['expected_reward']:.3f} [{lo:.3f}, {hi:.3f}]"

    def h2h(rep: Mapping[str, Any], key: str) -> str:
        h = rep["head_to_head"][key]
        o, d = h["overall"], h["expected_reward_diff"]
        return (f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]; "
                f"{o['win']:.1f} / {o['tie']:.1f} / {o['loss']:.1f}")

    lines = ["# Live preference shift: reward-model refresh on vs off", "",
             f"The crowd changes from {_fmt_mix(s['old_mixture'])} to {_fmt_mix(s['drift_mixture'])} at PPO step "
             f"{s['drift_step']} of {s['ppo_steps']} ({s['rollout_batch']} rollouts per step). After every step the "
             f"crowd casts {s['live_votes']} votes on each of the policy's samples into the store, which forgets with a "
             f"half-life of {s['half_life_s']} s = {(s['half_life_s'] or 0) / s['step_seconds']:.0f} PPO steps "
             f"({s['step_seconds']:.0f} s per step). refresh_on fine-tunes the DPRM ({s['reward_loss']}) on the store "
             f"every {s['refresh_every']} steps ({s['refresh_epochs']} epochs); refresh_off never does. Seed "
             f"{s['seed']}; evaluation on {s['eval_prompts']} held-out prompts x {s['eval_seeds']} sampling seeds, "
             "95% bootstrap intervals over prompts and seeds.", "",
             "| policy | E[r], new crowd (95% CI) | E[r], old crowd (95% CI) | KL to SFT |", "|---|---|---|---|"]
    for name in ("vanilla", "refresh_off", "refresh_on"):
        lines.append(f"| {name} | {er(new, name)} | {er(old, name)} | {new['policies'][name]['kl']:.2f} |")
    lines += ["", "Head to head: difference of E[r] (95% CI); win / tie / loss % per (prompt, sampling seed), a tie "
              "within the margin:", "",
              "| pair | new crowd | old crowd |", "|---|---|---|"]
    for key in ("refresh_on_vs_refresh_off", "refresh_on_vs_vanilla", "refresh_off_vs_vanilla"):
        lines.append(f"| {key} | {h2h(new, key)} | {h2h(old, key)} |")
    lines += ["", f"Refreshes of refresh_on: {len(report['refreshes'])} "
              f"(steps {[r['step'] for r in report['refreshes']]}, items {[r['items'] for r in report['refreshes']]})",
              "", "![reward over steps](drift_reward.png)", "",
              "Per-step curves: the exact expected reward of each step's training samples under the new crowd "
              "(drift/judged_new) and the DPRM's mean reward of those samples (reward/mean)."]
    sec = report.get("seconds")
    if sec:
        lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in sec.items())]
    (out / "drift_report.md").write_text("\n".join(lines) + "\n")
    try:
        _plot(report, out / "drift_reward.png")
    except Exception as e:  # noqa: BLE001 - the numbers are written; a plot failure must not lose them
        log.warning("drift_reward.png not written: %s", e)


def _fmt_mix(m: Mapping[str, float]) -> str:
    total = sum(m.values())
    return "{" + ", ".join(f"{k}: {v / total:.2f}" for k, v in m.items() if v > 0) + "}"


def _plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"refresh_on": "tab:blue", "refresh_off": "tab:orange"}
    for arm, rows in report["curves"].items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("drift/judged_new", np.nan) for r in rows], color=colors[arm], label=f"{arm}: new crowd")
        axes[0].plot(steps, [r.get("drift/judged_old", np.nan) for r in rows], color=colors[arm], ls=":", alpha=0.7,
                     label=f"{arm}: old crowd")
        axes[1].plot(steps, [r["reward/mean"] for r in rows], color=colors[arm], label=arm)
    for ax in axes:
        ax.axvline(report["setup"]["drift_step"], color="k", lw=0.8, ls="--")
        for r in report["refreshes"]:
            ax.axvline(r["step"], color=colors["refresh_on"], lw=0.5, alpha=0.4)
        ax.set_xlabel("PPO step")
        ax.legend(fontsize=7)
    axes[0].set_title("population E[r] of the step's samples")
    axes[1].set_title("DPRM reward of the step's samples")
    fig.suptitle("crowd shift at the dashed line; thin lines: refreshes (refresh_on)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
