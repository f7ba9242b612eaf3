"""Load test of `POST /score` on loopback: bounded concurrent clients for a bounded time.

Starts a local Ray instance and the reward Serve app (``raydprm.serve.app``) with the
tiny backbone (an untrained DPRM unless ``--model`` is given: latency does not depend
on the weights), then runs ``--clients`` closed-loop clients (asyncio + httpx) for
``--duration`` seconds after a ``--warmup``. Each request scores ``--items`` items.
``--bad-fraction`` of the requests are bad on purpose, careless or hostile (malformed
JSON, schema errors, JSON nested 1000 deep, 5000-digit integers, NaN): they must get 4xx,
and the good ones around them must still succeed.

Each client count runs twice in the same Ray instance: a baseline with no bad requests,
then the mix; the table gives the good requests' p99 of both and their ratio (the cost of
the bad requests to the good ones). Then one chunked upload of 4x the body limit without
Content-Length checks that the server answers 413 without reading it all.

Prints throughput, p50/p90/p99 latency of the good requests and error counts
(unexpected 4xx, 5xx, transport errors). Targets on a 2-core CPU box with the tiny
model: zero 5xx at 32 clients with 10% bad requests.

    python bench/serve_load.py --clients 32 --bad-fraction 0.1 --duration 15
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
BAD_BODIES = ['{"items": []}', "{not json", '{"items": [{"prompt": 1, "response": "r"}]}', '{"items": [{"prompt": "p"}]}',
              "[" * 1000 + "]" * 1000, '{"a": ' * 1000 + "1" + "}" * 1000, '{"items": ' + "[" * 1000 + "]" * 1000 + "}",
              '{"items": ' + "9" * 5000 + "}", '{"items": [{"prompt": "p", "response": "r", "w": NaN}]}']


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
    ap.add_argument("--clients", type=int, nargs="+", default=[32])
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per client count")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--items", type=int, default=1, help="items per request")
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--model", default=None, help="trained reward model directory (default: a fresh tiny DPRM)")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="serve.num_cpus per replica")
    ap.add_argument("--max-replicas", type=int, default=1)
    ap.add_argument("--no-chunked-check", action="store_true", help="skip the oversized chunked upload")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.clients, args.duration, args.warmup, args.no_chunked_check = [4], 3.0, 1.0, True

    import ray

    from raydprm.config import Config
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.dprm import DPRM
    from raydprm.serve.app import build_app, max_body_bytes, serve_app, shutdown_serve

    port = _free_port()
    cfg = Config().override([f"serve.port={port}", f"serve.num_cpus={args.num_cpus}",
                             f"serve.max_replicas={args.max_replicas}"])
    scale = LabelScale.from_config(cfg.labels)
    tmp = tempfile.mkdtemp()
    model_dir = args.model or str(DPRM.from_backbone("tiny-opt", scale).save(Path(tmp) / "rm"))
    import os

    from raydprm.serve.app import proxy_environment

    os.environ.update(proxy_environment(cfg.serve))  # the proxy's body limit (inherited by Ray's workers)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    chunked = None
    try:
        serve_app(build_app(model_dir, scale, cfg.reward, cfg.serve, token=""), cfg.serve)
        base = f"http://127.0.0.1:{port}"
        for n in args.clients:
            for bad in (0.0, args.bad_fraction):  # baseline, then the mix, in the same instance
                s = asyncio.run(_run(base, n, args.duration, args.warmup, args.items, bad))
                lat = s.pop("lat")
                row = {"clients": n, "bad_fraction": bad, "items_per_request": args.items, "seconds": args.duration,
                       "req_per_s": s["ok"] / args.duration, "items_per_s": s["ok"] * args.items / args.duration,
                       "p50_ms": 1000 * _pct(lat, 50), "p90_ms": 1000 * _pct(lat, 90),
                       "p99_ms": 1000 * _pct(lat, 99), **s}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        if not args.no_chunked_check:
            chunked = _chunked_upload(base, max_body_bytes(cfg.serve))
            print(json.dumps({"chunked": chunked}), file=sys.stderr)
    finally:
        shutdown_serve()
        ray.shutdown()
    print(f"Machine: {platform.machine()} container, 2 CPUs for Ray, no GPU; date {date.today().isoformat()}. "
          f"Tiny DPRM (tiny-opt), 1 replica x {args.num_cpus} CPU (max {args.max_replicas}), serve.batch "
          f"max {cfg.serve.max_batch_size} / {cfg.serve.batch_wait_timeout_s * 1000:g} ms; "
          f"{args.items} item(s)/request; {args.bad_fraction:.0%} malformed requests mixed in; "
          f"{args.duration:g} s measured after {args.warmup:g} s warm-up.\n")
    print("| clients | bad | req/s | p50 ms | p90 ms | p99 ms | p99 / baseline | ok | 5xx | unexpected 4xx "
          "| transport errors | bad sent -> 4xx |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(b for b in rows if b["clients"] == r["clients"] and b["bad_fraction"] == 0.0)
        print(f"| {r['clients']} | {r['bad_fraction']:.0%} | {r['req_per_s']:.1f} | {r['p50_ms']:.1f} "
              f"| {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_ms'] / ref['p99_ms']:.2f} | {r['ok']} | {r['5xx']} "
              f"| {r['unexpected_4xx']} | {r['transport_errors']} | {r['bad_sent']} -> {r['bad_answered_4xx']} |")
    if chunked:
        print(f"\nChunked upload without Content-Length, {chunked['offered_mb']:.0f} MB offered against a "
              f"{chunked['limit_mb']:.1f} MB limit: HTTP {chunked['status']}, {chunked['sent_mb']:.1f} MB sent before "
              f"the answer ({chunked['sent_mb'] / chunked['limit_mb']:.2f}x the limit), {chunked['seconds']:.2f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "chunked": chunked}, indent=2))
    ok = all(r["5xx"] == 0 and r["transport_errors"] == 0 and r["bad_not_4xx"] == 0 for r in rows)
    ok = ok and (chunked is None or chunked["status"] == 413)
    return 0 if ok else 1


def _chunked_upload(base: str, limit: int, factor: int = 4) -> dict:
    """POST ``factor`` x ``limit`` bytes as a chunked body (no Content-Length); how much was
    sent before the server answered, and what it answered."""
    import httpx

    chunk = b" " * (1 << 20)
    sent = 0
    n = factor * limit // len(chunk)

    def body():
        nonlocal sent
        for _ in range(n):
            sent += len(chunk)
            yield chunk

    t0 = time.perf_counter()
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            status = c.post("/score", content=body(), headers={"content-type": "application/json"}).status_code
    except httpx.HTTPError as e:  # the server may close the connection after answering
        status = f"closed ({type(e).__name__})"
    return {"status": status, "sent_mb": sent / 2 ** 20, "limit_mb": limit / 2 ** 20, "offered_mb": n * len(chunk) / 2 ** 20,
            "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    sys.exit(main())
