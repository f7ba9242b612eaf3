"""Benchmark the OT losses (forward + backward) against POT, measured in the same run.

    .venv/bin/python bench/ot_loss.py            # B in {1e3, 1e4, 1e5, 1e6}, L = 6
    .venv/bin/python bench/ot_loss.py --smoke    # tiny sizes, seconds

Baselines: `ot.emd2` per row (exact), `ot.batch.solve_batch` (POT's batched log-Sinkhorn)
at the same eps and tol as ours, and `torch.clone` of the inputs as the memory floor
for the closed form. Prints a table and the target ratios from issue 3.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import ot
import ot.batch
import torch

from raydprm.core import LabelScale, cost_matrix, ot_loss
from raydprm.core.ot_exact import ot_line
from raydprm.core.ot_loss import exact_ot


def timeit(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def data(B, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(B, L, generator=g, dtype=torch.float64)
    t = torch.softmax(2 * torch.randn(B, L, generator=g, dtype=torch.float64), -1)
    return z, t


def fwd_bwd(z, t, M, method, **kw):
    zz = z.clone().requires_grad_(True)
    ot_loss(zz, t, M, method=method, from_logits=True, reduction="sum", **kw).backward()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()
    sizes = [1000, 5000] if args.smoke else [1000, 10_000, 100_000, 1_000_000]
    pot_rows_max = 1000 if args.smoke else 10_000
    sink_max = 5000 if args.smoke else 100_000
    torch.set_num_threads(torch.get_num_threads())
    s = LabelScale.hh()
    costs = {"reward_gap": cost_matrix("reward_gap", s), "ordinal": cost_matrix("ordinal", s),
             "grid_l1": cost_matrix("grid_l1", s)}
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, POT {ot.__version__}")
    print(f"# L = 6, float64, eps = {args.eps}, tol = {args.tol}; times are seconds for forward+backward")
    print(f"{'B':>8} {'cost':>10} {'method':>12} {'ours_s':>9} {'pot_s':>9} {'speedup':>8} note")
    for B in sizes:
        z, t = data(B)
        p = torch.softmax(z, 1)
        for cname, M in costs.items():
            for method in ("exact", "sinkhorn", "ce", "wasserstein"):
                if method == "sinkhorn" and B > sink_max:
                    continue
                if method in ("ce", "wasserstein") and cname != "reward_gap":
                    continue
                kw = {"eps": args.eps, "tol": args.tol} if method == "sinkhorn" else {}
                fwd_bwd(z[:100], t[:100], M, method, **kw)  # warm caches (dual vertices, line check)
                ours = timeit(lambda: fwd_bwd(z, t, M, method, **kw), repeat=1 if B >= 100_000 else 3)  # noqa: B023
                pot_s, note = float("nan"), ""
                if method == "exact" and B <= pot_rows_max:
                    pn, tn, Mn = p.numpy(), t.numpy(), M.numpy()
                    t0 = time.perf_counter()
                    ref = np.array([ot.emd2(pn[i], tn[i], Mn) for i in range(B)])
                    pot_s = time.perf_counter() - t0
                    err = np.abs(exact_ot(p, t, M)[0].numpy() - ref).max()
                    note = f"vs per-row ot.emd2; max |diff| {err:.1e}"
                if method == "sinkhorn" and B <= pot_rows_max and cname == "grid_l1":
                    Mb = M.expand(B, 6, 6).contiguous()

                    def pot_batch():  # forward only: POT's envelope grad covers M, not a
                        ot.batch.solve_batch(Mb, reg=args.eps, a=p, b=t, tol=args.tol, max_iter=1000,
                                             method="log_sinkhorn", grad="detach")

                    pot_s = timeit(pot_batch, repeat=1)
                    note = "vs ot.batch.solve_batch forward only (same eps, tol)"
                speed = pot_s / ours if pot_s == pot_s else float("nan")
                print(f"{B:>8} {cname:>10} {method:>12} {ours:>9.4f} {pot_s:>9.4f} {speed:>8.1f} {note}", flush=True)
        # closed form, forward only, against one pass over its inputs
        x = torch.tensor(s.rewards, dtype=torch.float64)
        fwd = timeit(lambda: ot_line(p, t, x, 1.0), repeat=5)  # noqa: B023
        floor = timeit(lambda: (p.clone(), t.clone()), repeat=5)  # noqa: B023
        print(f"{B:>8} {'reward_gap':>10} {'closed_fwd':>12} {fwd:>9.5f} {floor:>9.5f} {fwd / floor:>8.1f} "
              "x the torch.clone floor (ratio = ours / floor)")


if __name__ == "__main__":
    main()
