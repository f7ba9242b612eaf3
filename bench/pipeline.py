"""Where the time and memory of one `raydprm run` go.

    python bench/pipeline.py --quick --json out.json   # SMOKE_OVERRIDES (`raydprm run --smoke`), ~1-2 min
    python bench/pipeline.py                           # the embedded default (`raydprm run`), ~4-6 min on 2 cores
    python bench/pipeline.py --quick --warm both       # the same run with fresh actors per stage, then warm ones
    python bench/pipeline.py --compare --seeds 3 --warm on   # `raydprm run --compare --seeds 3` (five policies)

Runs the pipeline once into a temporary run directory (deleted unless ``--keep``) and prints:

1. **Wall time** of the whole run (``Pipeline.fit``, Ray start-up included) and of each stage
   (``state.json``; the rest of the run is Ray start/stop and the driver's own work), each as a
   share of the whole run.
2. **PPO step split**: per step the wall time of generate / score / learn / sync (the loop's
   ``time/*_s``) and the in-actor compute of each phase, measured where it runs: generator
   ``busy_s`` (seconds inside ``engine.generate``), reward replica ``busy_s`` (inside
   ``DPRM.score``), learner ``ppo/update_time_s`` (inside ``PPOLearner.update`` on rank 0); with
   several replicas the slowest one's (the step waits for it). Baseline: the step's wall time.
   ``outside compute = 1 - (generate + score + learn compute) / step``: Ray calls,
   (de)serialisation, object-store transfers, waits and the driver's own work; the weight sync
   (learner publishes, generators pull, verify, load, probe) is a transfer and counts as outside,
   and is also shown on its own. The PPO stage's wall time against the sum of its steps gives
   what the stage spends outside the steps (starting the actors, checkpoints, export).
3. **Peak RSS** (MiB) of the driver (this process) and of each PPO role's actors (the largest
   rank), read after the last PPO step. The SFT/reward-training tasks, the store actor and
   evaluate's pools are not measured.

``--warm on|off|both`` (default on): ``pipeline.warm_actors``; ``both`` runs the pipeline with fresh
actors per stage first (the baseline), then with warm ones, and prints the ratios of their wall
times (whole run, PPO stage(s)) and whether their policies' numbers agree. With warm actors the
first PPO step's generator compute includes the reused generators' earlier work (collect's); the
medians leave the first step out. ``--compare`` runs ``--compare`` (``pipeline.policies`` = the
five policies of `raydprm run --compare`, ``--seeds``) and reports wall time and seconds per kind
of stage only (no step probe).

``--json PATH`` writes every figure (per-step records included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = ("generate", "score", "learn")


class StepProbe:
    """``Pipeline(on_step=...)``: after each PPO step, the in-actor compute of that step (deltas of the
    actors' cumulative busy seconds) and, at the last step, every PPO role's peak RSS."""

    def __init__(self, steps: int) -> None:
        self.steps, self.records, self.rss = steps, [], {}
        self._busy: dict[str, list[float]] = {}

    def _delta(self, role: str, infos: list[dict]) -> float:
        now = [i["busy_s"] for i in infos]
        before = self._busy.get(role, [0.0] * len(now))  # fresh actors start at 0
        self._busy[role] = now
        return max(a - b for a, b in zip(now, before))  # the slowest replica is on the step's critical path

    def __call__(self, pipe, step: int) -> None:
        from raydprm.cluster.rollout_actor import RolloutGenerator

        rec = dict(pipe.last_record, at=time.time())
        gen, rew = pipe.rollout.group.all(RolloutGenerator.info), pipe.reward.info()
        rec["compute/generate_s"] = self._delta("rollout", gen)
        rec["compute/score_s"] = self._delta("reward", rew)
        rec["compute/learn_s"] = rec["ppo/update_time_s"]
        compute = sum(rec[f"compute/{p}_s"] for p in PHASES)
        rec["outside_compute_s"] = max(0.0, rec["time/step_s"] - compute)
        rec["outside_compute_share"] = rec["outside_compute_s"] / rec["time/step_s"]
        self.records.append(rec)
        if step == self.steps:
            self.rss = {"rollout": max(i["peak_rss_mb"] for i in gen), "reward": max(i["peak_rss_mb"] for i in rew),
                        "learner": max(i["peak_rss_mb"] for i in pipe.learner.info())}


def summarise(records: list[dict]) -> dict:
    """Medians over the steps after the first (which warms caches up), and the totals."""
    timed = records[1:] or records
    keys = ["time/step_s", *(f"time/{p}_s" for p in (*PHASES, "sync")), *(f"compute/{p}_s" for p in PHASES),
            "outside_compute_s", "outside_compute_share"]
    med = {k: statistics.median(r[k] for r in timed) for k in keys}
    step_total = sum(r["time/step_s"] for r in records)
    outside_total = sum(r["outside_compute_s"] for r in records)
    sync_total = sum(r["time/sync_s"] for r in records)
    return {"median": med, "steps": len(records), "step_total_s": step_total,
            "outside_compute_share_total": outside_total / step_total,
            "sync_share_total": sync_total / step_total,
            "other_outside_share_total": max(0.0, outside_total - sync_total) / step_total}


COMPARE = "pipeline.policies=[vanilla,bt,dprm_c,dprm_w,dprm_ot]"


def one_run(overrides: list[str], compare: bool, keep: bool) -> dict:
    """One pipeline run in a temporary run directory: its figures (see the module docstring)."""
    from raydprm.cluster.group import peak_rss_mb
    from raydprm.cluster.pipeline import Pipeline
    from raydprm.config import load_config

    out_root = Path(tempfile.mkdtemp(prefix="raydprm-bench-pipeline-"))
    cfg = load_config(None, [*overrides, f"run.output_dir={out_root}", "run.name=bench"])
    run_dir = cfg.run.run_dir.resolve()
    out: dict = {"warm_actors": cfg.pipeline.warm_actors, "load_at_start": os.getloadavg()[0],
                 "ppo_steps": cfg.ppo.steps, "rollout_batch": cfg.ppo.rollout_batch,
                 "max_new_tokens": cfg.rollout.max_new_tokens}
    probe = None if compare else StepProbe(cfg.ppo.steps)
    try:
        t0 = time.perf_counter()
        report = Pipeline(cfg, run_dir, progress=False, on_step=probe).fit()
        wall = time.perf_counter() - t0
        state = json.loads((run_dir / "state.json").read_text())
        stages = {s: v["seconds"] for s, v in state["stages"].items()}
        out.update(wall_s=wall, stages_s=stages, stage_totals_s=report["stage_totals"],
                   outside_stages_s=wall - sum(stages.values()), load_at_end=os.getloadavg()[0],
                   restarts=report["restarts"], expected_reward={k: v["expected_reward"]
                                                                 for k, v in report["policies"].items()})
        if probe is not None:
            out.update(peak_rss_mb={"driver": peak_rss_mb(), **probe.rss}, ppo=summarise(probe.records),
                       ppo_steps_records=probe.records)
            out["ppo"]["stage_over_steps"] = stages["ppo"] / out["ppo"]["step_total_s"]
            ppo_rec = json.loads((run_dir / "ppo" / "record.json").read_text())
            first, last = probe.records[0], probe.records[-1]
            before = first["at"] - first["time/step_s"] - ppo_rec["started"]  # starting the PPO actors, step 0 sync
            after = ppo_rec["started"] + ppo_rec["seconds"] - last["at"]  # export, shutdown
            out["ppo"]["split_s"] = {"before_first_step": before, "steps": out["ppo"]["step_total_s"],
                                     "between_steps": stages["ppo"] - before - after - out["ppo"]["step_total_s"],
                                     "after_last_step": after}
            out["ppo_history"] = [{k: v for k, v in r.items() if not k.startswith("time/") and not k.endswith("_s")}
                                  for r in ppo_rec["outputs"]["history"]]
    finally:
        if keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(out_root, ignore_errors=True)
    return out


def show(out: dict) -> None:
    wall, stages = out["wall_s"], out["stages_s"]
    print(f"\n## pipeline.warm_actors = {str(out['warm_actors']).lower()} (load {out['load_at_start']:.1f} -> "
          f"{out['load_at_end']:.1f})")
    print(f"whole run {wall:7.1f} s   (baseline for the shares below)")
    for s, sec in (stages if "ppo" in out else out["stage_totals_s"]).items():
        print(f"  {s:<22} {sec:7.1f} s  {100 * sec / wall:5.1f}%")
    print(f"  {'(Ray, driver)':<22} {out['outside_stages_s']:7.1f} s  {100 * out['outside_stages_s'] / wall:5.1f}%")
    if "ppo" not in out:
        return
    p, m = out["ppo"], out["ppo"]["median"]
    print(f"\n# PPO step (median of steps 2..{p['steps']}; baseline = the step's wall time)")
    print(f"{'phase':<9} {'wall s':>7} {'compute s':>10}")
    for ph in PHASES:
        print(f"{ph:<9} {m[f'time/{ph}_s']:>7.3f} {m[f'compute/{ph}_s']:>10.3f}")
    print(f"{'sync':<9} {m['time/sync_s']:>7.3f} {'-':>10}")
    print(f"{'step':<9} {m['time/step_s']:>7.3f} {sum(m[f'compute/{ph}_s'] for ph in PHASES):>10.3f}")
    print(f"outside compute: {100 * m['outside_compute_share']:.0f}% of the step (median); over all steps "
          f"{100 * p['outside_compute_share_total']:.0f}% = weight sync {100 * p['sync_share_total']:.0f}% + "
          f"Ray calls/transfers/waits/driver {100 * p['other_outside_share_total']:.0f}%")
    sp = p["split_s"]
    print(f"PPO stage / sum of its steps = {p['stage_over_steps']:.2f}x: before the first step (actor start-up) "
          f"{sp['before_first_step']:.1f} s, steps {sp['steps']:.1f} s, between steps (checkpoints, this probe) "
          f"{sp['between_steps']:.1f} s, after the last (export, shutdown) {sp['after_last_step']:.1f} s")
    print("# peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in out["peak_rss_mb"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SMOKE_OVERRIDES (the sizes of `raydprm run --smoke`)")
    ap.add_argument("--warm", choices=("on", "off", "both"), default="on",
                    help="pipeline.warm_actors; both = off (baseline), then on, in this run")
    ap.add_argument("--compare", action="store_true", help="`raydprm run --compare` (five policies)")
    ap.add_argument("--seeds", type=int, default=3, help="--compare: seeds per policy")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (printed)")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value) after the defaults / --quick")
    args = ap.parse_args(argv)

    from raydprm.cluster.run_plan import SMOKE_OVERRIDES

    overrides = [*(SMOKE_OVERRIDES if args.quick else []),
                 *([COMPARE, f"pipeline.seeds={args.seeds}"] if args.compare else []), *args.overrides]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
                 "uptime_at_start": uptime, "python": sys.version.split()[0],
                 "mode": ("quick (SMOKE_OVERRIDES)" if args.quick else "default") + (" --compare" if args.compare else ""),
                 "overrides": overrides, "runs": {}}
    modes = {"on": ["true"], "off": ["false"], "both": ["false", "true"]}[args.warm]
    for w in modes:
        out["runs"][w] = one_run([*overrides, f"pipeline.warm_actors={w}"], args.compare, args.keep)
    print(f"# raydprm run, {out['mode']} ({out['machine']}; {uptime})")
    for r in out["runs"].values():
        show(r)
    if len(modes) == 2:
        off, on = out["runs"]["false"], out["runs"]["true"]
        same = off["expected_reward"] == on["expected_reward"] and off.get("ppo_history") == on.get("ppo_history")
        kinds = ("ppo", "align", "evaluate")
        ratios = {k: on["stage_totals_s"][k] / off["stage_totals_s"][k] for k in kinds if off["stage_totals_s"].get(k)}
        out["warm_over_fresh"] = {"wall": on["wall_s"] / off["wall_s"], **ratios, "same_numbers": same}
        print(f"\n# warm / fresh actors: whole run {on['wall_s']:.1f} / {off['wall_s']:.1f} s = "
              f"{on['wall_s'] / off['wall_s']:.2f}x; " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
              + f"; same E[r] per policy and PPO step records: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
