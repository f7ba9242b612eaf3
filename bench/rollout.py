"""Rollout benchmark: generation tokens/s of the vLLM vs transformers engines, and
weight-sync time per MB for each transport, measured in one run.

    python bench/rollout.py            # batch 64 x 64 new tokens, tiny policy + 124M GPT-2
    python bench/rollout.py --quick    # batch 16 x 16 tokens, syncs of the tiny policy only

Generation: both engines in this process, one after the other, on the same prompts,
sampling at temperature 1 with ``ignore_eos`` so every sequence makes exactly
``--new-tokens`` tokens; tokens/s = generated tokens / wall time of one ``generate``
call (after one warm-up call). Weight sync: a Ray pool with one replica; the time is
the wall time of ``pool.sync_weights`` (publish into the object store + transfer +
checksum verification + in-place load + probe), divided by the state dict's MB.

The tiny policy is the kit's ``tiny-gpt2``; when its head size is one vLLM's CPU
attention lacks (16), the same architecture with 32-wide heads is used for both engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def tiny_policy(workdir: Path) -> str:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from raydprm.models.tiny import resolve_model

    path = Path(resolve_model("tiny-gpt2"))
    cfg = json.loads((path / "config.json").read_text())
    if cfg["n_embd"] // cfg["n_head"] in VLLM_CPU_HEAD_SIZES:
        return str(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_embd"] // 32,
                                   n_positions=cfg["n_positions"], vocab_size=cfg["vocab_size"],
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id))
    out = workdir / "tiny-gpt2-h32"
    m.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def prompts(n: int) -> list[str]:
    topics = ["the weather", "a good answer", "why people vote", "the crowd", "a recipe", "space travel",
              "honest advice", "a short story"]
    return [f"Tell me about {topics[i % len(topics)]} ({i})" for i in range(n)]


def bench_generate(engine_name: str, model: str, batch: int, new_tokens: int, threads: int) -> dict:
    from raydprm.rollout.engine import make_engine
    from raydprm.rollout.sampling import SamplingParams

    t0 = time.perf_counter()
    eng = make_engine(engine_name, model, batch_size=batch, kv_cache_memory_mb=256, max_prompt_tokens=64)
    start_s = time.perf_counter() - t0
    torch.set_num_threads(threads)  # the same for both engines (vLLM changes it while starting)
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0, ignore_eos=True)
    ps = prompts(batch)
    try:
        eng.generate(ps[:4], sp.with_(max_new_tokens=4))  # warm-up
        t0 = time.perf_counter()
        out = eng.generate(ps, sp)
        dt = time.perf_counter() - t0
    finally:
        eng.shutdown()
    toks = sum(r.num_tokens for r in out)
    return {"engine": engine_name, "startup_s": round(start_s, 2), "tokens": toks, "seconds": round(dt, 3),
            "tokens_per_s": round(toks / dt, 1)}


def bench_sync(model: str, transports: list[tuple[str, str]], repeats: int) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from raydprm.cluster.rollout_actor import RolloutPool
    from raydprm.cluster.weight_sync import publish
    from raydprm.config import RolloutConfig
    from raydprm.rollout.sync import build_manifest, probe_logprobs

    learner = AutoModelForCausalLM.from_pretrained(model).eval()
    sd = learner.state_dict()
    mb = build_manifest(sd, 1).nbytes / 2**20
    t0 = time.perf_counter()
    build_manifest(sd, 1)
    manifest_s = time.perf_counter() - t0
    rows = []
    for engine, transport in transports:
        pool = RolloutPool.create(RolloutConfig(engine=engine, num_replicas=1, num_cpus=1, kv_cache_memory_mb=256,
                                                weight_sync=transport, bucket_mb=64, sync_timeout_s=600), model)
        try:
            times = []
            for v in range(1, repeats + 1):
                with torch.no_grad():
                    for p in learner.parameters():
                        p.mul_(1.0 + 1e-3)
                sd = learner.state_dict()
                expected = probe_logprobs(learner, pool.probe_ids)
                t0 = time.perf_counter()  # publish (manifest + buckets into the object store) + pull + verify
                (rep,) = pool.sync_weights(publish(sd, v, expected, bucket_mb=64))
                times.append(time.perf_counter() - t0)
            best = min(times)
            rows.append({"engine": engine, "transport": transport, "mb": round(mb, 1), "seconds": round(best, 3),
                         "ms_per_mb": round(1000 * best / mb, 2), "replica_s": round(rep.seconds, 3),
                         "probe_max_diff": rep.probe_max_diff, "manifest_s": round(manifest_s, 3)})
        finally:
            pool.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 16 x 16 tokens; sync the tiny policy only")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--models", default="tiny,small", help="comma list of tiny,small")
    ap.add_argument("--no-sync", action="store_true", help="skip the weight-sync part")
    ap.add_argument("--no-generate", action="store_true", help="skip the generation part")
    ap.add_argument("--sync-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both engines (1 = vLLM's own serving choice; robust on shared CPUs)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    batch = args.batch or (16 if args.quick else 64)
    new_tokens = args.new_tokens or (16 if args.quick else 64)
    workdir = Path(tempfile.mkdtemp(prefix="raydprm-bench-rollout-"))

    from raydprm.models.tiny import resolve_model

    models = {}
    for m in args.models.split(","):
        if m == "tiny":
            models["tiny-gpt2"] = tiny_policy(workdir)
        elif m == "small":
            models["small-gpt2 (124M)"] = resolve_model("small-gpt2")
        else:
            ap.error(f"unknown model '{m}' (tiny, small)")

    results: dict = {"machine": f"{os.cpu_count()}-core CPU, torch threads {args.threads}, no GPU, "
                                f"load average {os.getloadavg()[0]:.1f} at start"
                     if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                     "date": time.strftime("%Y-%m-%d"), "batch": batch, "new_tokens": new_tokens, "generate": [],
                     "sync": []}
    print(f"# generation: batch {batch} x {new_tokens} new tokens ({results['machine']})")
    print(f"{'model':<20} {'engine':<13} {'start s':>8} {'gen s':>8} {'tokens/s':>10}")
    for label, path in ({} if args.no_generate else models).items():
        per = {}
        for eng in ("transformers", "vllm"):
            r = bench_generate(eng, path, batch, new_tokens, args.threads)
            r["model"] = label
            per[eng] = r
            results["generate"].append(r)
            print(f"{label:<20} {eng:<13} {r['startup_s']:>8.2f} {r['seconds']:>8.2f} {r['tokens_per_s']:>10.1f}",
                  flush=True)
        ratio = per["vllm"]["tokens_per_s"] / per["transformers"]["tokens_per_s"]
        results.setdefault("ratios", {})[label] = round(ratio, 2)
        print(f"{label:<20} vllm / transformers tokens/s = {ratio:.2f}x")

    if not args.no_sync:
        from raydprm.cluster.runtime import connect
        from raydprm.config import RayConfig

        runtime = connect(RayConfig(num_cpus=2), what="bench/rollout.py")
        try:
            sync_models = {k: v for k, v in models.items() if not (args.quick and "small" in k)}
            print("\n# weight sync (Ray pool, 1 replica; publish + transfer + verify + load + probe)")
            print(f"{'model':<20} {'engine':<13} {'transport':<13} {'MB':>7} {'sync s':>8} {'ms/MB':>8} {'probe diff':>11}")
            for label, path in sync_models.items():
                rows = bench_sync(path, [("transformers", "object_store"), ("vllm", "object_store"),
                                         ("vllm", "vllm_rpc")], args.sync_repeats)
                for r in rows:
                    r["model"] = label
                    results["sync"].append(r)
                    print(f"{label:<20} {r['engine']:<13} {r['transport']:<13} {r['mb']:>7.1f} {r['seconds']:>8.2f} "
                          f"{r['ms_per_mb']:>8.2f} {r['probe_max_diff']:>11.2g}", flush=True)
            print(f"{'(any)':<20} {'vllm':<13} {'nccl':<13} skipped: needs CUDA" if not torch.cuda.is_available()
                  else "nccl: run tests/cluster/test_rollout_pool.py on a GPU node")
        finally:
            runtime.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
