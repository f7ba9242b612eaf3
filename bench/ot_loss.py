"""Benchmark the OT losses (forward + backward) against POT, measured in the same run.

    .venv/bin/python bench/ot_loss.py            # B in {1e3, 1e4, 1e5, 1e6}, L = 6 (a few minutes)
    .venv/bin/python bench/ot_loss.py --quick    # B in {1e3, 1e4}, floor at 1e5, about a minute

Every figure is the median of `--repeat` runs, baseline and ours interleaved run by run so
both see the same machine load. Baselines (POT, same process, same torch threads):

* `ot.emd2` per row (numpy inputs: its cheapest call) for the exact methods. It is timed on
  a subsample of `--emd-rows` rows and extrapolated linearly to B (said so in the output);
  the values are compared row by row on that subsample.
* `ot.batch.solve_batch(method="log_sinkhorn")` at the same eps, tol and max_iter as our
  Sinkhorn, forward only (ours is forward + backward), for B <= `--pot-batch-max`.
  POT stops on the L2 norm of the row-marginal error, checked every 10 iterations; ours on
  the L1 norm (the stricter of the two). Both final errors are printed, as L1 over both
  marginals of each solver's plan, with the iterations each used.
* `torch.clone` of the two (B, L) inputs: one pass over them, the memory-bound floor for the
  closed form (forward only, as is the floor).

* Memory floor (issue 15), float32, reward_gap cost: the closed form against `torch.clone`
  of its two (B, L) inputs at B = 1e6 (`--floor-b`; 1e5 with --quick), on 1 and 2 torch
  threads (`--floor-threads`): the bare solver (value only); the fused kernel
  (`line_w1_loss`, input checks off) forward and forward + backward; `ot_loss` forward
  without a tape (input checks on), on the tape (dual kept for backward), forward + backward
  (reduction "sum", "mean", and from logits); and the unfused pipeline it replaced (two
  check passes, DualOT over per-row values and duals, sum, backward) as the in-run A/B.
  Interleaved round by round; the ratio of medians is the figure, the min..max of the
  per-round ratios its spread, the same ratio in process CPU time beside it, and the ratio
  of the least CPU times over the rounds (the least disturbed run of each: on a shared box
  the most faithful figure of the code's own cost).
* Sinkhorn scaling: our Sinkhorn time at the largest B over the time at B / 10 (target:
  at most 12x for 10x the rows), wall and CPU time.

Torch runs on `--threads` threads (default 1): on a shared 2-core box a second OpenMP
thread that gets descheduled makes every op wait (we saw 100x slowdowns), which would
measure the neighbours, not the code.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np
import ot
import ot.batch
import torch

from raydprm.core import LabelScale, cost_matrix, ot_loss, ot_loss_with_stats
from raydprm.core.label_scale import check_distribution
from raydprm.core.ot_exact import ot_line
from raydprm.core.ot_loss import dual_ot, exact_ot, line_w1_loss

COSTS = ("reward_gap", "ordinal", "grid_l1")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def rounds(fns, repeat):
    """Run fns round-robin `repeat` times; return per-function lists of (wall, cpu) seconds."""
    out = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def floor_section(B, repeat, scale, threads):
    """Closed form (float32, reward_gap) against the clone floor on `threads` torch threads;
    prints and returns the ratios (median wall, and min CPU time: the least disturbed round)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(2 * torch.randn(B, 6, generator=g), -1)
    t = torch.softmax(2 * torch.randn(B, 6, generator=g), -1)
    z = torch.log(p) + 0.5  # logits of p
    M = cost_matrix("reward_gap", scale).float()
    x = torch.tensor(scale.rewards)

    def on_tape(reduction="sum", inp=p, from_logits=False):
        return ot_loss(inp.detach().requires_grad_(True), t, M, method="closed_form", reduction=reduction,
                       from_logits=from_logits)

    def kernel(backward):
        loss = line_w1_loss(p.detach().requires_grad_(backward), t, x, "sum", check=(False, False))
        if backward:
            loss.backward()

    def unfused():  # the pre-fusion pipeline: two checks, DualOT over per-row values, sum, backward
        check_distribution(t, name="target")
        check_distribution(p, name="pred")
        pp = p.detach().requires_grad_(True)
        dual_ot(pp, t, lambda a, b, need: exact_ot(a, b, M, need=need)[:3] + ({},), None).sum().backward()

    fns = {
        "clone floor (both inputs)": lambda: (p.clone(), t.clone()),
        "solver, value only": lambda: ot_line(p, t, x, need=(False, False)),
        "kernel fwd, no checks": lambda: kernel(False),
        "kernel fwd+bwd, no checks": lambda: kernel(True),
        "ot_loss fwd, no tape": lambda: ot_loss(p, t, M, method="closed_form", reduction="none"),
        "ot_loss fwd on tape": on_tape,
        "ot_loss fwd+bwd": lambda: on_tape().backward(),
        "ot_loss fwd+bwd, mean": lambda: on_tape("mean").backward(),
        "ot_loss fwd+bwd, logits": lambda: on_tape("mean", z, True).backward(),
        "unfused fwd+bwd (DualOT)": unfused,
    }
    for fn in fns.values():
        fn()  # warm caches (line embedding, block layout, dual table)
    res = rounds(fns, repeat)
    floor = res["clone floor (both inputs)"]
    fw = statistics.median(w for w, _ in floor)
    fc = statistics.median(c for _, c in floor)
    fmin = min(c for _, c in floor)
    print(f"\n# memory floor: closed form, reward_gap, L = 6, float32, B = {B:.0e}, {threads} thread(s), "
          f"{repeat} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':>27} {'median_s':>9} {'ratio':>6} {'per-round min..max':>19} {'cpu ratio':>9} {'min-cpu ratio':>13}")
    ratios = {}
    for k, v in res.items():
        w = statistics.median(x for x, _ in v)
        c = statistics.median(y for _, y in v)
        per = [x / f for (x, _), (f, _) in zip(v, floor)]
        ratios[k] = (w / fw, min(y for _, y in v) / fmin)
        print(f"{k:>27} {w:>9.4g} {w / fw:>6.2f} {min(per):>9.2f}..{max(per):<9.2f} {c / fc:>9.2f} "
              f"{ratios[k][1]:>13.2f}", flush=True)
    return ratios


def interleaved(fns, repeat):
    """Run fns round-robin `repeat` times; return (medians, last outputs)."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            dt, outs[k] = timed(fn)
            times[k].append(dt)
    return [statistics.median(t) for t in times], outs


def data(B, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(B, L, generator=g, dtype=torch.float64)
    t = torch.softmax(2 * torch.randn(B, L, generator=g, dtype=torch.float64), -1)
    return z, t


def fwd_bwd(z, t, M, method, stats=None, **kw):
    zz = z.clone().requires_grad_(True)
    loss, st = ot_loss_with_stats(zz, t, M, method=method, from_logits=True, reduction="sum", **kw)
    loss.backward()
    if stats is not None:
        stats.update(st)
    return float(loss.detach())


def marg_l1(P, a, b):
    """Max over rows of the L1 error of both marginals of plans P (B, L, L)."""
    return float(((P.sum(2) - a).abs().sum(1) + (P.sum(1) - b).abs().sum(1)).max())


def issue3_targets(summary):
    print("\n# targets (issue 3)")
    if ("floor", 1_000_000) in summary:
        r = summary[("floor", 1_000_000)]
        print(f"closed form within 5x of the clone floor at B=1e6: {r:.2f}x -> {'MET' if r <= 5 else 'MISSED'}")
    r = summary[("exact", "grid_l1", 10_000)]
    e = summary[("exact_err", "grid_l1", 10_000)]
    print(f"exact general cost (grid_l1, dual vertices) vs per-row ot.emd2 at B=1e4: {r:.0f}x faster, "
          f"max diff {e:.1e} -> {'MET' if r >= 10 and e <= 1e-9 else 'MISSED'}")
    for cname in COSTS:
        r = summary.get(("sinkhorn", cname, 10_000))
        if r is not None:
            print(f"sinkhorn vs ot.batch.solve_batch at B=1e4 ({cname}): {r:.1f}x -> {'MET' if r >= 2 else 'MISSED'}")
    print("fused GPU kernel >= 10x torch Sinkhorn at B=1e5: not measured here (no GPU on this machine)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="B in {1e3, 1e4} only, fewer repeats")
    ap.add_argument("--smoke", action="store_true", help="alias of --quick")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=None, help="runs per figure (default 3 full, 3 quick)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--emd-rows", type=int, default=2000, help="subsample for per-row ot.emd2")
    ap.add_argument("--pot-batch-max", type=int, default=10_000, help="largest B for ot.batch.solve_batch")
    ap.add_argument("--floor-b", type=float, default=None, help="B of the memory-floor section (1e6; 1e5 quick)")
    ap.add_argument("--floor-repeat", type=int, default=11, help="interleaved rounds of the memory-floor section")
    ap.add_argument("--floor-only", action="store_true", help="run the memory-floor section only (seconds)")
    ap.add_argument("--floor-threads", type=int, nargs="+", default=[1, 2],
                    help="torch thread counts of the memory-floor section (default: 1 2)")
    args = ap.parse_args()
    quick = args.quick or args.smoke
    sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000, 1_000_000]
    repeat = args.repeat or 3
    torch.set_num_threads(args.threads)
    scale = LabelScale.hh()
    costs = {c: cost_matrix(c, scale) for c in COSTS}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M} {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f}, "
          f"torch {torch.__version__} ({args.threads} thread), POT {ot.__version__}")
    print(f"# L = 6, float64; eps = {args.eps}, tol = {args.tol}, max_iter = {args.max_iter}; "
          f"median of {repeat} interleaved runs; times in seconds")
    if args.floor_only:
        sizes = []
    else:
        print(f"{'B':>8} {'cost':>10} {'method':>12} {'ours_s':>9} {'base_s':>9} {'base/ours':>9}  note")
    summary = {}

    def row(B, cname, method, ours, base, note):
        ratio = base / ours if base == base else float("nan")
        print(f"{B:>8} {cname:>10} {method:>12} {ours:>9.4g} {base:>9.4g} {ratio:>9.3g}  {note}", flush=True)
        return ratio

    for B in sizes:
        z, t = data(B)
        p = torch.softmax(z, 1)
        n_emd = min(B, args.emd_rows)
        pn, tn = p[:n_emd].numpy(), t[:n_emd].numpy()
        # closed form, forward only, vs one pass over its inputs
        x = torch.tensor(scale.rewards, dtype=torch.float64)
        ot_line(p[:100], t[:100], x, 1.0)
        (floor, fwd), _ = interleaved([lambda: (p.clone(), t.clone()), lambda: ot_line(p, t, x, 1.0)],  # noqa: B023
                                      max(repeat, 5))
        row(B, "reward_gap", "closed_fwd", fwd, floor, f"base = torch.clone floor; ours/floor = {fwd / floor:.2f}")
        summary[("floor", B)] = fwd / floor
        for cname, M in costs.items():
            Mn = M.numpy()
            # exact: closed form (1-D costs) or dual vertices (grid_l1), vs per-row ot.emd2
            fwd_bwd(z[:100], t[:100], M, "exact")  # warm the per-cost caches
            (emd_s, ours), (ref, _) = interleaved(
                [lambda: np.array([ot.emd2(pn[i], tn[i], Mn) for i in range(n_emd)]),  # noqa: B023
                 lambda: fwd_bwd(z, t, M, "exact")], repeat)  # noqa: B023
            emd_b = emd_s * B / n_emd
            err = float(np.abs(exact_ot(p[:n_emd], t[:n_emd], M)[0].numpy() - ref).max())
            solver = exact_ot(p[:2], t[:2], M)[3]["solver"]
            extra = f" (extrapolated from {n_emd} rows)" if n_emd < B else ""
            summary[("exact", cname, B)] = row(
                B, cname, f"exact:{solver[:6]}", ours, emd_b,
                f"base = per-row ot.emd2{extra}; max |value diff| {err:.1e}")
            summary[("exact_err", cname, B)] = err
            # Sinkhorn (ours fwd+bwd) vs ot.batch.solve_batch (forward only)
            kw = {"eps": args.eps, "tol": args.tol, "max_iter": args.max_iter}
            fwd_bwd(z[:100], t[:100], M, "sinkhorn", **kw)
            st, sk_cpu = {}, []

            def ours_sk():
                c0 = time.process_time()
                fwd_bwd(z, t, M, "sinkhorn", st, **kw)  # noqa: B023
                sk_cpu.append(time.process_time() - c0)  # noqa: B023

            fns = [ours_sk]
            pot = B <= args.pot_batch_max
            if pot:
                Mb = M.expand(B, 6, 6).contiguous()
                fns.insert(0, lambda: ot.batch.solve_batch(  # noqa: B023
                    Mb, reg=args.eps, a=p, b=t, tol=args.tol, max_iter=args.max_iter,  # noqa: B023
                    method="log_sinkhorn", reg_type="kl", grad="detach"))
            reps = repeat if B <= 100_000 else 1
            meds, outs = interleaved(fns, reps)
            ours = meds[-1]
            summary[("sk_wall", cname, B)] = ours
            summary[("sk_cpu", cname, B)] = statistics.median(sk_cpu)
            note = (f"ours: {st['iterations']} it ({st['newton_steps']} Newton), "
                    f"L1 marg err {st['marginal_error']:.1e}")
            if pot:
                res = outs[0]
                note += (f"; solve_batch: {res.log['n_iter'] + 1} it, L1 marg err "
                         f"{marg_l1(res.plan, p, t):.1e}; base fwd only")
                summary[("sinkhorn", cname, B)] = row(B, cname, "sinkhorn", ours, meds[0], note)
            else:
                row(B, cname, "sinkhorn", ours, float("nan"), note + ("; 1 run" if reps == 1 else ""))
        for method in ("ce", "wasserstein"):
            fwd_bwd(z[:100], t[:100], None, method)
            (ours,), _ = interleaved([lambda: fwd_bwd(z, t, None, method)], repeat)  # noqa: B023
            row(B, "(none)", method, ours, float("nan"), "cost-free baselines of the paper")

    if not args.floor_only:
        issue3_targets(summary)
    floor_b = int(args.floor_b or (100_000 if quick else 1_000_000))
    print("\n# bytes per row (L = 6, float32) crossing main memory: clone reads 48, writes 48 (two fresh "
          "(B, L) tensors); the fused loss reads 48 (a, b) and writes 24 (the dual f, on the tape) or 4 "
          "(per-row values, no tape); every other temporary lives in one cache-sized row block")
    summary15 = {th: floor_section(floor_b, args.floor_repeat, scale, th) for th in args.floor_threads}
    torch.set_num_threads(args.threads)
    for th, ratios in summary15.items():
        print(f"\n# targets (issue 15), B = {floor_b:.0e} for the floor, {th} thread(s); ratio of medians "
              "(ratio of least CPU times)")
        r, rc = ratios["ot_loss fwd, no tape"]
        k, kc = ratios["kernel fwd, no checks"]
        print(f"closed form forward within 2x of the clone floor: ot_loss (checks on) {r:.2f}x ({rc:.2f}x) -> "
              f"{'MET' if max(r, rc) <= 2 else 'MISSED'}; kernel without checks {k:.2f}x ({kc:.2f}x) -> "
              f"{'MET' if max(k, kc) <= 2 else 'MISSED'}")
        r, rc = ratios["ot_loss fwd+bwd"]
        k, kc = ratios["kernel fwd+bwd, no checks"]
        u, uc = ratios["unfused fwd+bwd (DualOT)"]
        print(f"closed form forward + backward within 4x: ot_loss (checks on, 'sum') {r:.2f}x ({rc:.2f}x) -> "
              f"{'MET' if max(r, rc) <= 4 else 'MISSED'}; 'mean' {ratios['ot_loss fwd+bwd, mean'][0]:.2f}x; "
              f"kernel without checks {k:.2f}x ({kc:.2f}x) -> {'MET' if max(k, kc) <= 4 else 'MISSED'}; "
              f"unfused DualOT path {u:.2f}x ({uc:.2f}x)")
    hi = sizes[-1] if sizes else 0
    lo = hi // 10
    for cname in COSTS if sizes else ():
        w = summary[("sk_wall", cname, hi)] / summary[("sk_wall", cname, lo)]
        c = summary[("sk_cpu", cname, hi)] / summary[("sk_cpu", cname, lo)]
        print(f"sinkhorn time B={hi:.0e} / B={lo:.0e} ({cname}): wall {w:.1f}x, cpu {c:.1f}x -> "
              f"{'MET' if max(w, c) <= 12 else ('MET on cpu time' if c <= 12 else 'MISSED')} (target <= 12x)")


if __name__ == "__main__":
    main()
