"""Load test of `POST /score` on loopback: bounded concurrent clients for a bounded time.

Starts a local Ray instance and the reward Serve app (``raydprm.serve.app``) with the
tiny backbone (an untrained DPRM unless ``--model`` is given: latency does not depend
on the weights), then runs ``--clients`` closed-loop clients (asyncio + httpx) for
``--duration`` seconds after a ``--warmup``. Each request scores ``--items`` items.
``--bad-fraction`` of the requests are malformed on purpose (they must get 4xx, and
the good ones around them must still succeed).

Prints throughput, p50/p90/p99 latency of the good requests and error counts
(unexpected 4xx, 5xx, transport errors). Target on a 2-core CPU box with the tiny
model: zero 5xx and p99 < 500 ms at 16 clients.

    python bench/serve_load.py --clients 16 --duration 20
    python bench/serve_load.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import socket
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

PROMPTS = ["Q: how do I boil an egg ?\nA:", "Q: what should i know about investing ?\nA:",
           "Q: can you explain how to plant seeds ?\nA:", "Q: how do vaccines work ?\nA:"]
RESPONSES = [" put it in boiling water for eight minutes .", " use bank with interest every day .",
             " dig a small hole , drop the seed , cover it and water it daily .", " no ."]
BAD_BODIES = ['{"items": []}', "{not json", '{"items": [{"prompt": 1, "response": "r"}]}', '{"items": [{"prompt": "p"}]}']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


async def _client(cid: int, base: str, items: int, bad_fraction: float, t_start: float, t_end: float,
                  stats: dict) -> None:
    import httpx

    rng = random.Random(cid)
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        while time.perf_counter() < t_end:
            bad = rng.random() < bad_fraction
            if bad:
                kw = {"content": rng.choice(BAD_BODIES), "headers": {"content-type": "application/json"}}
            else:
                k = rng.randrange(len(PROMPTS))
                kw = {"json": {"items": [{"prompt": PROMPTS[(k + j) % 4], "response": RESPONSES[(k + j) % 4]}
                                         for j in range(items)]}}
            t0 = time.perf_counter()
            try:
                r = await c.post("/score", **kw)
                code = r.status_code
            except httpx.HTTPError:
                code = -1
            dt = time.perf_counter() - t0
            if t0 < t_start:  # warm-up
                continue
            if code == -1:
                stats["transport_errors"] += 1
            elif code >= 500:
                stats["5xx"] += 1
            elif bad:
                stats["bad_sent"] += 1
                stats["bad_answered_4xx" if 400 <= code < 500 else "bad_not_4xx"] += 1
            elif code == 200:
                stats["ok"] += 1
                stats["lat"].append(dt)
            else:
                stats["unexpected_4xx"] += 1


async def _run(base: str, clients: int, duration: float, warmup: float, items: int, bad_fraction: float) -> dict:
    stats = {"ok": 0, "5xx": 0, "unexpected_4xx": 0, "transport_errors": 0, "bad_sent": 0, "bad_answered_4xx": 0,
             "bad_not_4xx": 0, "lat": []}
    now = time.perf_counter()
    t_start, t_end = now + warmup, now + warmup + duration
    await asyncio.gather(*[_client(i, base, items, bad_fraction, t_start, t_end, stats) for i in range(clients)])
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per client count")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--items", type=int, default=1, help="items per request")
    ap.add_argument("--bad-fraction", type=float, default=0.05)
    ap.add_argument("--model", default=None, help="trained reward model directory (default: a fresh tiny DPRM)")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="serve.num_cpus per replica")
    ap.add_argument("--max-replicas", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.clients, args.duration, args.warmup = [4], 3.0, 1.0

    import ray

    from raydprm.config import Config
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.dprm import DPRM
    from raydprm.serve.app import build_app, serve_app

    port = _free_port()
    cfg = Config().override([f"serve.port={port}", f"serve.num_cpus={args.num_cpus}",
                             f"serve.max_replicas={args.max_replicas}"])
    scale = LabelScale.from_config(cfg.labels)
    tmp = tempfile.mkdtemp()
    model_dir = args.model or str(DPRM.from_backbone("tiny-opt", scale).save(Path(tmp) / "rm"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        serve_app(build_app(model_dir, scale, cfg.reward, cfg.serve, token=""), cfg.serve)
        base = f"http://127.0.0.1:{port}"
        for n in args.clients:
            s = asyncio.run(_run(base, n, args.duration, args.warmup, args.items, args.bad_fraction))
            lat = s.pop("lat")
            row = {"clients": n, "items_per_request": args.items, "seconds": args.duration,
                   "req_per_s": s["ok"] / args.duration, "items_per_s": s["ok"] * args.items / args.duration,
                   "p50_ms": 1000 * _pct(lat, 50), "p90_ms": 1000 * _pct(lat, 90), "p99_ms": 1000 * _pct(lat, 99),
                   **s}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    print(f"Machine: {platform.machine()} container, 2 CPUs for Ray, no GPU; date {date.today().isoformat()}. "
          f"Tiny DPRM (tiny-opt), 1 replica x {args.num_cpus} CPU (max {args.max_replicas}), serve.batch "
          f"max {cfg.serve.max_batch_size} / {cfg.serve.batch_wait_timeout_s * 1000:g} ms; "
          f"{args.items} item(s)/request; {args.bad_fraction:.0%} malformed requests mixed in; "
          f"{args.duration:g} s measured after {args.warmup:g} s warm-up.\n")
    print("| clients | req/s | p50 ms | p90 ms | p99 ms | ok | 5xx | unexpected 4xx | transport errors "
          "| malformed sent -> 4xx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['req_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['ok']} | {r['5xx']} | {r['unexpected_4xx']} | {r['transport_errors']} "
              f"| {r['bad_sent']} -> {r['bad_answered_4xx']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    ok = all(r["5xx"] == 0 and r["transport_errors"] == 0 and r["bad_not_4xx"] == 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
