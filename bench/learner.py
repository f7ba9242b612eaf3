"""PPO learner benchmark: update throughput (tokens/s) and peak memory per worker for
1 vs 2 CPU workers and ZeRO 0 vs 2, with the tiny and the GPT-2-small-sized (124M)
policies; in the same run, the same update written as a single-process plain torch loop
(the baseline).

    python bench/learner.py                 # tiny (B=32) and small-gpt2 (B=8) configs
    python bench/learner.py --quick         # tiny only
    python bench/learner.py --models small  # the 124M rows only
    python bench/learner.py --json out.json

Every configuration runs in a fresh subprocess (so peak RSS is its own): one warm-up
update, then ``--steps`` timed updates on the same kind of batch (fixed prompt and
response lengths). tokens/s = (prompt + response tokens) x epochs / wall time of one
update (experience + PPO epochs), median over the timed updates. Peak memory = the
process's max RSS (MiB) — the learner process for 1 worker, each Ray actor for 2 (the
largest is reported). Every worker runs 1 torch thread (so 2 workers use 2 cores), plus
one 1-worker run with one thread per core. The plain loop's final weights are checked against the
torch-engine learner's (same seed and batches) so the baseline does the same update.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MODELS = {"tiny": "tiny-gpt2", "small": "small-gpt2"}


def make_batch(B: int, P: int, T: int, vocab: int, seed: int):
    from raydprm.train.rollout_batch import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, vocab, (B, P), generator=g).tolist()
    resp = torch.randint(5, vocab, (B, T), generator=g).tolist()
    return RolloutBatch.from_sequences(prompts, resp, torch.randn(B, generator=g).tolist(),
                                       [[-5.0] * T for _ in range(B)], pad_id=1)


def ppo_config(spec: dict):
    """The learner's ``ppo`` and ``engine`` sections (keyword arguments of PPOLearner / LearnerGroup.create)."""
    from raydprm.config import EngineSection, PPOConfig

    B = spec["batch"]
    return {"ppo": PPOConfig(rollout_batch=B, minibatch=B // 2, epochs=spec["epochs"], lr=1e-4),
            "engine": EngineSection(micro_batch=spec["micro"], engine=spec.get("engine", "deepspeed"),
                                    zero_stage=spec.get("zero", 0), optimizer=spec.get("optimizer", "adamw"),
                                    offload_optimizer=spec.get("offload", False), num_workers=spec.get("workers", 1),
                                    num_cpus_per_worker=float(spec.get("cpus_per_worker", 1)))}


# ----------------------------------------------------------------------------- baseline


def plain_torch_update(model, ref, opt, batch, ppo, mu: int, seed: int, step: int, beta: float) -> None:
    """The learner's update, written out as one plain single-process torch loop."""
    from raydprm.core.gae import masked_gae, whiten
    from raydprm.core.kl import kl_estimate, shape_rewards
    from raydprm.core.ppo_loss import clipped_surrogate, clipped_value_loss, token_logprobs
    from raydprm.models.policy import sequence_inputs

    def fwd(b):
        ids, attn, pos = sequence_inputs(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        return model(ids, attn, pos, b.response_ids.shape[1])

    mask = batch.response_mask
    with torch.no_grad():
        lps, vals, refs = [], [], []
        for i in range(0, len(batch), mu):
            b = batch.select(slice(i, i + mu))
            logits, v = fwd(b)
            lps.append(token_logprobs(logits, b.response_ids))
            vals.append(v)
            ids, attn, pos = sequence_inputs(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
            T = b.response_ids.shape[1]
            rl = ref(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1,
                     use_cache=False).logits[:, :-1]
            refs.append(token_logprobs(rl, b.response_ids))
        m = mask.float()
        old_lp, old_v, ref_lp = torch.cat(lps) * m, torch.cat(vals) * m, torch.cat(refs) * m
        kl = kl_estimate(old_lp, ref_lp, ppo.kl_estimator, mask)
        rewards, _ = shape_rewards(batch.rewards, kl, mask, beta)
        adv, ret = masked_gae(rewards, old_v, mask, ppo.gamma, ppo.lam)
        adv = whiten(adv, mask)
    B, M = len(batch), ppo.minibatch
    for epoch in range(ppo.epochs):
        perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + epoch))
        for s in range(0, B, M):
            rows = perm[s:s + M]
            n_tok = mask[rows].sum()
            for i in range(0, M, mu):
                idx = rows[i:i + mu]
                b = batch.select(idx)
                logits, v = fwd(b)
                lp = token_logprobs(logits, b.response_ids)
                pg, _ = clipped_surrogate(lp, old_lp[idx], adv[idx], b.response_mask, ppo.clip_ratio, "token_mean", n_tok)
                vf, _ = clipped_value_loss(v, old_v[idx], ret[idx], b.response_mask, ppo.value_clip, "token_mean", n_tok)
                (pg + ppo.vf_coef * vf).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ppo.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- one configuration


def run_one(spec: dict) -> dict:
    """Run one configuration in this process; returns its figures."""
    from raydprm.config import EngineConfig
    from raydprm.models.tiny import resolve_model

    model_name = MODELS[spec["model"]]
    resolve_model(model_name)
    torch.set_num_threads(spec.get("threads", 1))
    sections = ppo_config(spec)
    ppo, mu = sections["ppo"], EngineConfig.of(sections["engine"], sections["ppo"]).worker_micro_batch
    vocab = 800
    batches = [make_batch(spec["batch"], spec["prompt_len"], spec["response_len"], vocab, s)
               for s in range(spec["steps"] + 1)]
    tokens = batches[0].num_tokens * ppo.epochs
    times: list[float] = []
    peak = []
    extra: dict = {}
    if spec["kind"] == "plain":
        from raydprm.models.policy import load_policy, load_reference

        torch.manual_seed(0)
        model = load_policy(model_name)
        ref = load_reference(model_name)
        opt = torch.optim.AdamW(model.parameters(), lr=ppo.lr, weight_decay=ppo.weight_decay)
        for step, b in enumerate(batches):
            t0 = time.perf_counter()
            plain_torch_update(model, ref, opt, b, ppo, mu, seed=0, step=step, beta=ppo.beta)
            times.append(time.perf_counter() - t0)
        if spec.get("check"):
            from raydprm.train.learner import PPOLearner

            lr = PPOLearner(**ppo_config({**spec, "engine": "torch"}), policy=model_name, seed=0)
            for b in batches:
                lr.update(b)
            got = lr.full_state_dict()
            want = model.state_dict()
            extra["max_param_diff_vs_learner"] = max(float((got[k] - want[k]).abs().max()) for k in want)
        peak.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    elif spec.get("workers", 1) == 1:
        from raydprm.train.learner import PPOLearner

        lr = PPOLearner(**sections, policy=model_name, seed=0)
        for b in batches:
            times.append(lr.update(b)["ppo/update_time_s"])
        peak.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    else:
        from raydprm.cluster.learner_group import LearnerGroup
        from raydprm.cluster.runtime import connect
        from raydprm.config import RayConfig

        runtime = connect(RayConfig(num_cpus=os.cpu_count() or 1), what="bench/learner.py")
        group = LearnerGroup.create(**sections, policy=model_name, seed=0, timeout_s=3600)
        try:
            for b in batches:
                times.append(group.update(b)["ppo/update_time_s"])
            peak = [i["peak_rss_mb"] for i in group.info()]
        finally:
            group.shutdown()
            runtime.close()
    timed = times[1:] or times
    upd = statistics.median(timed)
    return {**spec, "tokens_per_update": tokens, "update_s": upd, "tokens_per_s": tokens / upd,
            "peak_rss_mb_per_worker": max(peak), "warmup_s": times[0], **extra}


def configurations(models: list[str], steps: int) -> list[dict]:
    cores = os.cpu_count() or 2
    # 1 torch thread per worker everywhere (2 workers = 2 cores), plus one 1-worker run with
    # all cores' threads: on a shared 2-core box intra-op threads can cost more than they give
    shapes = {"tiny": dict(batch=32, micro=8, prompt_len=16, response_len=32, epochs=2),
              "small": dict(batch=8, micro=4, prompt_len=16, response_len=16, epochs=1)}
    out = []
    for model in models:
        base = dict(model=model, steps=steps, **shapes[model])
        out.append({**base, "kind": "plain", "name": "plain torch loop (baseline)", "check": model == "tiny"})
        out.append({**base, "kind": "learner", "name": "learner torch engine, 1 worker", "engine": "torch"})
        for zero in (0, 2):
            out.append({**base, "kind": "learner", "name": f"DeepSpeed ZeRO {zero}, 1 worker", "zero": zero})
        out.append({**base, "kind": "learner", "name": f"DeepSpeed ZeRO 0, 1 worker, {cores} threads", "zero": 0,
                    "threads": cores})
        out.append({**base, "kind": "learner", "name": "DeepSpeed ZeRO 2 + optimizer offload, DeepSpeedCPUAdam, 1 worker",
                    "zero": 2, "offload": True, "optimizer": "ds_adam"})
        for zero in (0, 2):
            out.append({**base, "kind": "learner", "name": f"DeepSpeed ZeRO {zero}, 2 Ray workers", "zero": zero,
                        "workers": 2, "cpus_per_worker": 1})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny policy only")
    ap.add_argument("--models", default="tiny,small", help="comma list of tiny, small (default both)")
    ap.add_argument("--steps", type=int, default=2, help="timed updates after one warm-up (default 2)")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one spec (JSON)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    from tqdm.auto import tqdm

    results = []
    models = ["tiny"] if args.quick else [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    for spec in tqdm(configurations(models, args.steps), desc="learner bench", unit="config"):
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"FAILED {spec['model']} / {spec['name']}:\n{proc.stderr[-3000:]}", file=sys.stderr)
            results.append({**spec, "error": proc.stderr[-500:]})
            continue
        results.append(json.loads(line[-1][len("RESULT "):]))
    print("\n| policy | configuration | batch (P+T) x epochs | update s | tokens/s | peak RSS MiB / worker |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['name']} | failed | | | |")
            continue
        shape = f"{r['batch']} x ({r['prompt_len']}+{r['response_len']}) x {r['epochs']}"
        print(f"| {MODELS[r['model']]} | {r['name']} | {shape} | {r['update_s']:.2f} | {r['tokens_per_s']:.0f} "
              f"| {r['peak_rss_mb_per_worker']:.0f} |")
    for r in results:
        if "max_param_diff_vs_learner" in r:
            print(f"\nbaseline check ({MODELS[r['model']]}): max |plain loop - learner| parameter difference "
                  f"after {r['steps'] + 1} updates = {r['max_param_diff_vs_learner']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
