"""The checks of the GPU acceptance check, one function each; each runs in its own process.

``python -m raydprm.doctor.checks NAME PLAN_JSON OUT_JSON`` runs check ``NAME`` with the
:class:`Plan` read from ``PLAN_JSON`` and keeps ``OUT_JSON`` up to date as it goes (atomic
rewrites after every item), so a check that is killed at its budget still leaves the
figures it had. :mod:`raydprm.doctor.report` starts these processes, one at a time.

A check is a list of *items*, each ``pass``, ``fail`` (a stated tolerance missed), ``skip``
(with the reason), ``info`` (a figure with no pass/fail) or ``error`` (an exception, one
line); an item that raises does not stop the next one. The checks, on ``plan.device``:

* ``kit``: builds the policy of the kit from its config (``small-gpt2``, 124M; ``tiny-gpt2``
  in the dry run) once, so the later checks share the cached directory.
* ``ot``: the fused Triton Sinkhorn kernel against the torch batched Sinkhorn at each
  ``plan.ot_sizes`` (fp32): values equal to 1e-5 when both run the same iterations (the
  kernel's reference, ``newton=False``, ``tol=0``), then the time ratio at tol 1e-5 against
  the torch default (Sinkhorn-Newton) and the plain iterations; the exact solvers
  (closed form, dual vertices) on the device against the CPU: values to 1e-5, gradients to
  1e-5 on all rows but at most ``EXACT_TIE_ROWS`` of them (ties have several optimal duals); and
  0 <= OT_eps - OT <= eps log L between the torch Sinkhorn and the exact value.
* ``learner``: one PPO update of :class:`~raydprm.train.learner.PPOLearner` (one rank, no
  Ray): fp32 on the device against the CPU learner's first update on the same batch
  (losses within ``LEARNER_ATOL + LEARNER_RTOL * |cpu|``, gradient norm ``GRAD_NORM_RTOL``), then DeepSpeed
  ZeRO-2 in bf16: update time, peak device memory, finite losses.
* ``rollout``: :class:`~raydprm.rollout.hf_engine.HFEngine` tokens/s (greedy, ``plan.rollout_prompts``
  x ``plan.rollout_new_tokens``) and its logprobs against the learner's for the same tokens
  (fp32 within ``ROLLOUT_FP32_ATOL``; bf16 reported).
* ``sync``: :mod:`raydprm.rollout.sync` on device tensors (manifest, buckets, a verified
  update with the probe, a tampered tensor refused) and a hand-over of ``plan.ipc_bytes``
  between two processes (CUDA IPC handles on a GPU, shared memory on the CPU) in ms/GB
  against a copy floor measured in the same run.
* ``nccl``: an all-reduce between two ranks; skipped (with the reason) on one GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHECKS = ("kit", "ot", "learner", "rollout", "sync", "nccl")

OT_EQ_ATOL = 1e-5  # fused kernel vs torch, same iterations, fp32
EXACT_ATOL = 1e-5  # exact OT on the device vs the CPU, fp32 values and gradients
EXACT_TIE_ROWS = 1e-4  # share of rows whose gradient may differ (a tie: several optimal duals)
LEARNER_ATOL, LEARNER_RTOL = 1e-4, 1e-4  # fp32 learner on the device vs the CPU, first update
# the gradient norm: DeepSpeed and torch sum the squares of ~124M fp32 entries in different
# orders (4e-5 relative seen between the two engines on one CPU)
GRAD_NORM_RTOL = 1e-3
ROLLOUT_FP32_ATOL = 1e-3  # engine (KV cache) vs learner (teacher forced) logprobs, fp32
SYNC_PROBE_TOL = 1e-4  # probe after a verified fp32 update


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one run (``plan_for`` builds the three modes)."""

    mode: str  # "full" | "quick" | "cpu-dry-run"
    device: str  # "cuda" | "cpu"
    policy: str  # a kit name (built from its config) or a model directory
    ot_sizes: tuple[int, ...]
    ot_repeats: int
    ot_same_iters: int  # iterations of the kernel-vs-torch equality run (tol = 0)
    ot_max_iter: int  # cap of the timed runs (tol = 1e-5)
    learner_batch: int  # rows of the timed bf16 updates
    learner_cmp_batch: int  # rows of the fp32 device-vs-CPU update (the CPU does it too: kept small)
    learner_micro: int
    learner_prompt: int
    learner_response: int
    learner_steps: int
    rollout_prompts: int
    rollout_prompt_len: int
    rollout_new_tokens: int
    bucket_bytes: int
    ipc_bytes: int
    ipc_repeats: int
    budgets: dict[str, float]
    threads: int | None = None  # torch threads in every check (None: torch's default)
    nccl_bytes: int = 256 << 20

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        d["ot_sizes"] = tuple(d["ot_sizes"])
        return cls(**d)


# Budgets (s) per check on one H100: quick sums to 3.5 min at worst (typically less), full to
# 8 min. A check past its budget is killed; its figures so far are kept.
_QUICK_BUDGETS = {"kit": 40, "ot": 40, "learner": 55, "rollout": 35, "sync": 30, "nccl": 10}
_FULL_BUDGETS = {"kit": 60, "ot": 90, "learner": 150, "rollout": 60, "sync": 90, "nccl": 30}
# the dry run: caps for a loaded CI box (it takes ~40 s of CPU time in all)
_DRY_BUDGETS = {"kit": 180, "ot": 120, "learner": 180, "rollout": 150, "sync": 120, "nccl": 10}


def plan_for(quick: bool = False, cpu_dry_run: bool = False, policy: str | None = None,
             budget_scale: float = 1.0) -> Plan:
    """The plan of a run: full or ``quick`` on the GPU, or tiny sizes on the CPU."""
    if cpu_dry_run:
        p = Plan(mode="cpu-dry-run", device="cpu", policy=policy or "tiny-gpt2", ot_sizes=(96,), ot_repeats=1,
                 ot_same_iters=24, ot_max_iter=40,
                 learner_batch=8, learner_cmp_batch=8, learner_micro=4, learner_prompt=6, learner_response=6, learner_steps=2,
                 rollout_prompts=8, rollout_prompt_len=6, rollout_new_tokens=8, bucket_bytes=128 << 10,
                 ipc_bytes=8 << 20, ipc_repeats=2, budgets=dict(_DRY_BUDGETS), threads=1, nccl_bytes=1 << 20)
    elif quick:
        p = Plan(mode="quick", device="cuda", policy=policy or "small-gpt2", ot_sizes=(10_000, 100_000, 1_000_000),
                 ot_repeats=3, ot_same_iters=200, ot_max_iter=1000, learner_batch=16, learner_cmp_batch=8, learner_micro=8, learner_prompt=32, learner_response=32,
                 learner_steps=2, rollout_prompts=64, rollout_prompt_len=32, rollout_new_tokens=64,
                 bucket_bytes=64 << 20, ipc_bytes=512 << 20, ipc_repeats=3, budgets=dict(_QUICK_BUDGETS))
    else:
        p = Plan(mode="full", device="cuda", policy=policy or "small-gpt2", ot_sizes=(10_000, 100_000, 1_000_000),
                 ot_repeats=5, ot_same_iters=200, ot_max_iter=1000, learner_batch=32, learner_cmp_batch=8, learner_micro=8, learner_prompt=64, learner_response=64,
                 learner_steps=3, rollout_prompts=64, rollout_prompt_len=32, rollout_new_tokens=64,
                 bucket_bytes=64 << 20, ipc_bytes=2 << 30, ipc_repeats=5, budgets=dict(_FULL_BUDGETS))
    if budget_scale != 1.0:
        p = dataclasses.replace(p, budgets={k: v * budget_scale for k, v in p.budgets.items()})
    return p


# ----------------------------------------------------------------------------- recording


class Skip(Exception):
    """Raised inside an item: it is skipped, with this reason."""


class Recorder:
    """One check's result, rewritten to ``path`` (atomically) after every change."""

    def __init__(self, name: str, path: Path, budget_s: float):
        self.path = path
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.result: dict[str, Any] = {"name": name, "status": "running", "reason": None, "figures": {},
                                       "items": []}
        self.flush()

    def time_left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=_plain))
        os.replace(tmp, self.path)

    def figures(self, **kw: Any) -> None:
        self.result["figures"].update(kw)
        self.flush()

    @contextlib.contextmanager
    def item(self, name: str) -> Iterator[dict[str, Any]]:
        """An item: yields its dict (set ``["figures"]``, call :func:`expect`); an exception
        makes it ``error`` (one line here, the traceback on stderr), :class:`Skip` ``skip``."""
        it: dict[str, Any] = {"name": name, "status": "running", "reason": None, "figures": {}}
        self.result["items"].append(it)
        self.flush()
        t0 = time.perf_counter()
        try:
            yield it
            if it["status"] == "running":
                it["status"] = "pass"
        except Skip as e:
            it["status"], it["reason"] = "skip", str(e)
        except Exception as e:  # isolated: the next item still runs
            traceback.print_exc()
            it["status"], it["reason"] = "error", _one_line(f"{type(e).__name__}: {e}")
        finally:
            it["seconds"] = round(time.perf_counter() - t0, 3)
            self.flush()

    def need(self, seconds: float) -> None:
        """Inside an item: skip it when less than ``seconds`` of the check's budget is left."""
        if seconds and self.time_left() < seconds:
            raise Skip(f"per-check budget: {self.time_left():.0f} s left of {self.budget_s:.0f} s, "
                       f"this item needs ~{seconds:.0f} s")

    def finish(self) -> dict[str, Any]:
        self.result["status"] = overall_status([i["status"] for i in self.result["items"]])
        if self.result["status"] == "skip":
            self.result["reason"] = "; ".join(dict.fromkeys(i["reason"] for i in self.result["items"] if i["reason"]))
        self.result["seconds"] = round(time.perf_counter() - self.t0, 3)
        # what this process loaded: the check must run without ray and vllm (and says where raydprm came from)
        self.result["raydprm_file"] = sys.modules["raydprm"].__file__
        self.result["loaded"] = sorted(m for m in ("ray", "vllm", "deepspeed", "triton", "transformers")
                                       if m in sys.modules)
        self.flush()
        return self.result


def overall_status(statuses: list[str]) -> str:
    """error > fail > pass (pass/info present) > skip."""
    for s in ("timeout", "error", "fail", "running"):
        if s in statuses:
            return "error" if s == "running" else s
    if any(s in ("pass", "info") for s in statuses):
        return "pass"
    return "skip"


def expect(item: dict[str, Any], ok: bool, reason: str) -> None:
    """Mark ``item`` failed with ``reason`` unless ``ok``."""
    if not ok:
        item["status"] = "fail"
        item["reason"] = reason if item["reason"] is None else f"{item['reason']}; {reason}"


def _one_line(s: str, limit: int = 400) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _plain(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _sig(x: float, n: int = 4) -> float:
    """x rounded to n significant digits (figures in the report, not in comparisons)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, n - 1 - int(math.floor(math.log10(abs(x)))))


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, repeats: int = 1) -> tuple[Any, float]:
    """(last result, median wall seconds over ``repeats`` calls), device synchronized."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


# ----------------------------------------------------------------------------- kit


def check_kit(plan: Plan, rec: Recorder) -> None:
    from raydprm.models.tiny import TINY_MODELS, resolve_model

    with rec.item("build_policy") as it:
        t0 = time.perf_counter()
        path = resolve_model(plan.policy)
        it["figures"] = {"policy": plan.policy, "path": path, "seconds": round(time.perf_counter() - t0, 2),
                         "built_from_config": plan.policy in TINY_MODELS}
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(path)
        n = cfg.n_layer * (12 * cfg.n_embd ** 2) + cfg.vocab_size * cfg.n_embd + cfg.n_positions * cfg.n_embd \
            if cfg.model_type == "gpt2" else None
        it["figures"]["approx_params_M"] = None if n is None else round(n / 1e6, 1)


# ----------------------------------------------------------------------------- OT


def _simplex_rows(B: int, L: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(B, L, generator=g), -1)  # (B, L) fp32


def _kernel_vs_torch(plan: Plan, a, b, Md, eps: float) -> dict[str, Any]:
    """The fused kernel against the torch Sinkhorn on rows a, b (B, L): equality after the same
    iterations, then times at tol 1e-5 (median of plan.ot_repeats; the kernel compiled first)."""
    from raydprm.core.sinkhorn import sinkhorn
    from raydprm.core.triton_sinkhorn import triton_sinkhorn

    dev = plan.device
    same = dict(tol=0.0, max_iter=plan.ot_same_iters)  # the same iterations: equal up to rounding
    v_t = triton_sinkhorn(a, b, Md, eps, **same)[0]
    v_p = sinkhorn(a, b, Md, eps, newton=False, check_every=1, **same)[0]
    d_same = float((v_t - v_p).abs().max())
    run = dict(tol=1e-5, max_iter=plan.ot_max_iter)
    if dev == "cuda":
        triton_sinkhorn(a, b, Md, eps, **run)  # compile
    tr, t_tri = _timed(lambda: triton_sinkhorn(a, b, Md, eps, **run), dev, plan.ot_repeats)
    nw, t_newton = _timed(lambda: sinkhorn(a, b, Md, eps, **run), dev, plan.ot_repeats)
    pl, t_plain = _timed(lambda: sinkhorn(a, b, Md, eps, newton=False, check_every=5, **run), dev, plan.ot_repeats)
    return {
        "B": a.shape[0], "same_iterations": plan.ot_same_iters, "max_abs_diff_same_iterations": _sig(d_same),
        "tolerance": OT_EQ_ATOL, "triton_s": _sig(t_tri), "torch_newton_s": _sig(t_newton),
        "torch_plain_s": _sig(t_plain), "speedup_vs_torch_newton": _sig(t_newton / t_tri, 3),
        "speedup_vs_torch_plain": _sig(t_plain / t_tri, 3),
        "iterations": {"triton": tr[3]["iterations"], "torch_newton": nw[3]["iterations"],
                       "torch_plain": pl[3]["iterations"]},
        "converged": {"triton": bool(tr[3]["converged"]), "torch_newton": bool(nw[3]["converged"]),
                      "torch_plain": bool(pl[3]["converged"])},
        "max_abs_diff_vs_newton_at_tol": _sig(float((tr[0] - nw[0]).abs().max())),
    }


def check_ot(plan: Plan, rec: Recorder) -> None:
    import torch

    from raydprm.core import LabelScale, cost_matrix, ot_loss
    from raydprm.core.ot_exact import ot_dual_vertices
    from raydprm.core.sinkhorn import sinkhorn
    from raydprm.core.triton_sinkhorn import triton_available

    dev = plan.device
    M = cost_matrix("grid_l1", LabelScale.hh()).float()  # (L, L), L = 6
    L = M.shape[0]
    Md = M.to(dev)
    eps = 0.1
    triton_why = None
    if not triton_available():
        triton_why = "triton is not installed"
    elif dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        triton_why = "on the CPU the kernel runs only under TRITON_INTERPRET=1"
    rec.figures(cost="grid_l1 (hh scale, L = 6)", eps=eps, dtype="float32",
                triton_mode=None if triton_why else ("compiled" if dev == "cuda" else "interpreter"))
    last_s = 0.0
    for B in plan.ot_sizes:
        a, b = _simplex_rows(B, L, 1).to(dev), _simplex_rows(B, L, 2).to(dev)
        with rec.item(f"triton_vs_torch_B{B:.0e}") as it:
            rec.need(3 * last_s)  # skip a size that cannot fit: guess 3x the time of the last one
            if triton_why:
                raise Skip(triton_why)
            t_start = time.perf_counter()
            it["figures"] = _kernel_vs_torch(plan, a, b, Md, eps)
            d_same = it["figures"]["max_abs_diff_same_iterations"]
            expect(it, d_same <= OT_EQ_ATOL, f"kernel and torch differ by {d_same:.3g} > {OT_EQ_ATOL:g} "
                                             f"after the same {plan.ot_same_iters} iterations")
            last_s = time.perf_counter() - t_start
    # the exact solvers: on the device vs the CPU (values and gradients), fp32
    B = plan.ot_sizes[-1]
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(B, L, generator=g)  # logits (B, L)
    t = _simplex_rows(B, L, 4)
    for cost_name, solver in (("reward_gap", "closed form (W1 on a line)"), ("grid_l1", "dual vertices")):
        with rec.item(f"exact_{cost_name}_device_vs_cpu") as it:
            C = cost_matrix(cost_name, LabelScale.hh()).float()

            def run(device: str, C=C):
                zz = z.to(device).requires_grad_(True)
                v = ot_loss(zz, t.to(device), C.to(device), method="exact", from_logits=True, reduction="none")
                v.sum().backward()
                return v.detach(), zz.grad

            run("cpu")  # warm-up (the dual-vertex table of this cost is built once and cached)
            (v_c, g_c), t_cpu = _timed(lambda: run("cpu"), "cpu")
            run(dev)  # warm-up (kernels)
            (v_d, g_d), t_dev = _timed(lambda: run(dev), dev, plan.ot_repeats)
            dv = float((v_d.cpu() - v_c).abs().max())
            row_dg = (g_d.cpu() - g_c).abs().amax(1)  # (B,)
            # a row at a tie (A_k = B_k in the closed form, two vertices with equal scores) has
            # several optimal duals, and float rounding on another device may pick another one:
            # the gradients must agree on all but such rare rows
            off = float((row_dg > EXACT_ATOL).double().mean())
            it["figures"] = {"B": B, "solver": solver, "max_abs_diff_value": _sig(dv),
                             "max_abs_diff_grad": _sig(float(row_dg.max())), "rows_grad_differ": _sig(off),
                             "tolerance": EXACT_ATOL, "rows_tolerance": EXACT_TIE_ROWS, "device_s": _sig(t_dev),
                             "cpu_s": _sig(t_cpu), "speedup_vs_cpu": _sig(t_cpu / t_dev, 3)}
            expect(it, dv <= EXACT_ATOL, f"device and CPU values differ by {dv:.3g} > {EXACT_ATOL:g}")
            expect(it, off <= EXACT_TIE_ROWS, f"gradients differ by > {EXACT_ATOL:g} on {off:.3g} of the rows "
                                              f"(> {EXACT_TIE_ROWS:g}: more than ties explain)")
    with rec.item("sinkhorn_vs_exact_bound") as it:
        n = min(B, 100_000)
        a, b = _simplex_rows(n, L, 5).to(dev), _simplex_rows(n, L, 6).to(dev)
        v_s, _, _, st = sinkhorn(a, b, Md, eps, tol=1e-5)
        v_e, *_ = ot_dual_vertices(a.double(), b.double(), Md.double())
        gap = (v_s.double() - v_e)  # 0 <= OT_eps - OT <= eps log L  (sinkhorn.py, below Eq. K1)
        lo, hi = float(gap.min()), float(gap.max())
        bound = eps * math.log(L)
        it["figures"] = {"B": n, "min_gap": _sig(lo), "max_gap": _sig(hi), "bound_eps_log_L": _sig(bound),
                         "converged": bool(st["converged"])}
        expect(it, lo >= -1e-4 and hi <= bound + 1e-4, f"OT_eps - OT in [{lo:.3g}, {hi:.3g}], "
                                                        f"outside [0, eps log L = {bound:.3g}] (slack 1e-4)")


# ----------------------------------------------------------------------------- learner


def _ppo_config(plan: Plan, *, engine: str, precision: str, zero_stage: int, batch: int | None = None):
    """The PPO learner's ``ppo`` and ``engine`` sections for one update of ``batch`` rows (default
    ``plan.learner_batch``): one minibatch = the whole batch, one epoch, so the losses are those of
    the initial weights and two devices can be compared."""
    from raydprm.config import EngineSection, PPOConfig

    B = batch or plan.learner_batch
    return {"ppo": PPOConfig(rollout_batch=B, minibatch=B, epochs=1, lr=1e-5),
            "engine": EngineSection(micro_batch=min(plan.learner_micro, B), num_workers=1, engine=engine,
                                    zero_stage=zero_stage, precision=precision)}


def _vocab_size(policy: str) -> int:
    """Token ids the check draws: below both the tokenizer's size and the model's vocabulary
    (``small-gpt2`` has GPT-2's 50257 rows but the kit's small tokenizer)."""
    import transformers

    from raydprm.models.tiny import resolve_model

    path = resolve_model(policy)
    n_tok = len(transformers.AutoTokenizer.from_pretrained(path))
    return min(n_tok, int(transformers.AutoConfig.from_pretrained(path).vocab_size))


def _learner_batch(plan: Plan, vocab: int, seed: int, rows: int | None = None):
    import torch

    from raydprm.train.rollout_batch import RolloutBatch

    B, P, T = rows or plan.learner_batch, plan.learner_prompt, plan.learner_response
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, vocab, (B, P), generator=g).tolist()
    resp = torch.randint(5, vocab, (B, T), generator=g).tolist()
    return RolloutBatch.from_sequences(prompts, resp, torch.randn(B, generator=g).tolist(),
                                       [[-5.0] * T for _ in range(B)], pad_id=0)


def deepspeed_import_error() -> str | None:
    """None when deepspeed imports here, else the last line of its import error (asked in a
    subprocess: only :mod:`raydprm.train.ds_engine` imports deepspeed)."""
    import subprocess

    from raydprm.train.ds_engine import deepspeed_available

    if deepspeed_available():
        return None
    out = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    return _one_line(lines[-1] if lines else f"exit status {out.returncode}")


def _free() -> None:
    """Give back what the objects just deleted held (host and device memory)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_COMPARED = ("ppo/policy_loss", "ppo/value_loss", "ppo/entropy", "ppo/grad_norm", "ppo/kl")


def check_learner(plan: Plan, rec: Recorder) -> None:
    import torch

    from raydprm.train.learner import PPOLearner

    if plan.device == "cuda":  # fp32 means fp32: no TF32 matmuls in the comparison
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ds_err = deepspeed_import_error()
    engine = "deepspeed" if ds_err is None else "torch"
    vocab = _vocab_size(plan.policy)
    batch = _learner_batch(plan, vocab, seed=0, rows=plan.learner_cmp_batch)
    rec.figures(policy=plan.policy, batch=plan.learner_batch, fp32_batch=plan.learner_cmp_batch,
                prompt_tokens=plan.learner_prompt,
                response_tokens=plan.learner_response, micro_batch=plan.learner_micro,
                deepspeed=ds_err or "importable", tolerance=f"|dev - cpu| <= {LEARNER_ATOL:g} + {LEARNER_RTOL:g} |cpu| "
                                                                   f"(grad norm: {GRAD_NORM_RTOL:g} |cpu|)")
    cpu_metrics: dict[str, float] = {}
    with rec.item("cpu_fp32_reference") as it:
        lr = PPOLearner(**_ppo_config(plan, engine="torch", precision="fp32", zero_stage=0,
                                    batch=plan.learner_cmp_batch), policy=plan.policy, seed=0, device="cpu")
        cpu_metrics = lr.update(batch)
        it["status"] = "info"
        it["figures"] = {k: _sig(cpu_metrics[k], 8) for k in _COMPARED} | {
            "update_s": _sig(cpu_metrics["ppo/update_time_s"])}
        del lr
        _free()
    with rec.item(f"{engine}_zero2_fp32_vs_cpu" if engine == "deepspeed" else "torch_fp32_vs_cpu") as it:
        if not cpu_metrics:
            raise Skip("the CPU reference update did not run")
        lr = PPOLearner(**_ppo_config(plan, engine=engine, precision="fp32", zero_stage=2 if engine == "deepspeed" else 0,
                                    batch=plan.learner_cmp_batch), policy=plan.policy, seed=0, device=plan.device)
        m = lr.update(batch)
        diffs = {k: abs(m[k] - cpu_metrics[k]) for k in _COMPARED}
        it["figures"] = {"engine": lr.engine.name, **{k: _sig(m[k], 8) for k in _COMPARED},
                         "abs_diff": {k: _sig(v, 3) for k, v in diffs.items()}, "update_s": _sig(m["ppo/update_time_s"])}
        rtol = {"ppo/grad_norm": GRAD_NORM_RTOL}
        bad = [k for k in _COMPARED
               if not diffs[k] <= LEARNER_ATOL + rtol.get(k, LEARNER_RTOL) * abs(cpu_metrics[k])]
        expect(it, not bad, "first update differs from the CPU learner's: "
                            + ", ".join(f"{k} by {diffs[k]:.3g}" for k in bad))
        del lr
        _free()
    with rec.item("deepspeed_zero2_bf16_step" if engine == "deepspeed" else "torch_bf16_step") as it:
        if plan.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            it["figures"]["allocated_before_GiB"] = _sig(torch.cuda.memory_allocated() / 2**30)
        lr = PPOLearner(**_ppo_config(plan, engine=engine, precision="bf16", zero_stage=2 if engine == "deepspeed" else 0),
                        policy=plan.policy, seed=0, device=plan.device)
        times, metrics = [], []
        for step in range(plan.learner_steps):  # the first update is the warm-up
            _sync(plan.device)
            t0 = time.perf_counter()
            metrics.append(lr.update(_learner_batch(plan, vocab, seed=step)))
            _sync(plan.device)
            times.append(time.perf_counter() - t0)
        steady = times[1:] or times
        m = metrics[-1]
        tokens = plan.learner_batch * (plan.learner_prompt + plan.learner_response)
        it["figures"] |= {"engine": lr.engine.name, "zero_stage": 2 if engine == "deepspeed" else None,
                         "first_update_s": _sig(times[0]), "update_s": _sig(statistics.median(steady)),
                         "tokens_per_s": _sig(tokens / statistics.median(steady)),
                         "policy_loss": _sig(m["ppo/policy_loss"]), "value_loss": _sig(m["ppo/value_loss"]),
                         "grad_norm": _sig(m["ppo/grad_norm"])}
        if plan.device == "cuda":
            it["figures"]["peak_memory_GiB"] = _sig(torch.cuda.max_memory_allocated() / 2**30)
            it["figures"]["peak_reserved_GiB"] = _sig(torch.cuda.max_memory_reserved() / 2**30)
        else:
            import resource

            it["figures"]["peak_rss_MiB"] = _sig(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        bad = [k for mm in metrics for k in ("ppo/policy_loss", "ppo/value_loss", "ppo/grad_norm")
               if not math.isfinite(mm[k])]
        expect(it, not bad, f"non-finite {sorted(set(bad))}")
        del lr
        _free()
    if ds_err is not None:
        with rec.item("deepspeed_zero2_bf16_step") as it:
            raise Skip(f"deepspeed cannot be imported here ({ds_err}); the steps above used the plain torch engine "
                       "(install the carried wheels: pip install --no-deps wheels/*.whl)")


# ----------------------------------------------------------------------------- rollout


def _learner_logprobs(plan: Plan, precision: str, responses) -> list[list[float]]:
    """The learner's (teacher-forced) logprobs of each response's tokens."""
    from raydprm.train.learner import PPOLearner

    engine = "deepspeed" if deepspeed_import_error() is None else "torch"
    lr = PPOLearner(**_ppo_config(plan, engine=engine, precision=precision, zero_stage=2 if engine == "deepspeed" else 0),
                    policy=plan.policy, seed=0, device=plan.device)
    try:
        scored = lr.score([r.prompt_ids + r.token_ids for r in responses])
        return [s[len(r.prompt_ids) - 1:] for s, r in zip(scored, responses)]
    finally:
        del lr
        _free()


def check_rollout(plan: Plan, rec: Recorder) -> None:
    import torch

    from raydprm.rollout.hf_engine import HFEngine
    from raydprm.rollout.sampling import SamplingParams

    if plan.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    vocab = _vocab_size(plan.policy)
    g = torch.Generator().manual_seed(7)
    prompts = torch.randint(5, vocab, (plan.rollout_prompts, plan.rollout_prompt_len), generator=g).tolist()
    sp = SamplingParams(max_new_tokens=plan.rollout_new_tokens, temperature=0.0, ignore_eos=True)
    rec.figures(policy=plan.policy, prompts=plan.rollout_prompts, prompt_tokens=plan.rollout_prompt_len,
                new_tokens=plan.rollout_new_tokens, sampling="greedy, ignore_eos")
    for dtype, precision in (("float32", "fp32"), ("bfloat16", "bf16")):
        responses = None
        with rec.item(f"hf_engine_{dtype}_tokens_per_s") as it:
            eng = HFEngine(plan.policy, dtype=dtype, device=plan.device, batch_size=plan.rollout_prompts,
                           max_prompt_tokens=plan.rollout_prompt_len + 1)
            eng.generate(prompts[:2], dataclasses.replace(sp, max_new_tokens=2))  # warm-up
            responses, secs = _timed(lambda eng=eng: eng.generate(prompts, sp), plan.device)
            n = sum(r.num_tokens for r in responses)
            it["status"] = "info"
            it["figures"] = {"tokens": n, "seconds": _sig(secs), "tokens_per_s": _sig(n / secs)}
            expect(it, n == plan.rollout_prompts * plan.rollout_new_tokens, f"{n} tokens generated")
            del eng
            _free()
        with rec.item(f"logprobs_engine_vs_learner_{dtype}") as it:
            if not responses:
                raise Skip("the engine produced no responses")
            ref = _learner_logprobs(plan, precision, responses)
            d = [abs(a - b) for r, s in zip(responses, ref) for a, b in zip(r.logprobs, s)]
            worst, mean = max(d), statistics.fmean(d)
            it["figures"] = {"max_abs_diff": _sig(worst), "mean_abs_diff": _sig(mean), "tokens": len(d)}
            if dtype == "float32":
                it["figures"]["tolerance"] = ROLLOUT_FP32_ATOL
                expect(it, worst <= ROLLOUT_FP32_ATOL, f"engine and learner logprobs differ by {worst:.3g} "
                                                       f"> {ROLLOUT_FP32_ATOL:g} in fp32")
            else:  # the train/inference mismatch of bf16 engines: a figure, no pass/fail
                it["status"] = "info"
                expect(it, math.isfinite(worst), "non-finite logprobs")


# ----------------------------------------------------------------------------- sync


def _ipc_receiver(inbox, outbox, device: str) -> None:
    """The second process of the hand-over: open the sender's tensors (CUDA IPC handles, or
    shared memory on the CPU), copy them into its own buffers, report the time and digest."""
    import torch

    from raydprm.rollout.sync import combine_digests, tensor_digest

    if device == "cuda":
        torch.cuda.init()
    own: list[torch.Tensor] | None = None
    outbox.put(("ready", None, None))
    while True:
        msg = inbox.get()
        if msg is None:
            break
        rep, t_send, tensors = msg  # unpickling opened the handles
        if own is None:
            own = [torch.empty_like(t, device=device) for t in tensors]
        for dst, src in zip(own, tensors):
            dst.copy_(src)
        _sync(device)
        t_done = time.monotonic()  # CLOCK_MONOTONIC: one clock for both processes
        del tensors, msg  # release the sender's memory before answering
        digest = combine_digests({str(i): tensor_digest(t) for i, t in enumerate(own)}) if rep == 0 else None
        outbox.put(("done", t_done - t_send, digest))


def ipc_handover(nbytes: int, device: str, repeats: int, chunk_bytes: int = 64 << 20,
                 timeout_s: float = 120.0) -> dict[str, Any]:
    """Hand ``nbytes`` (float32 chunks) to a second process and time it against a same-process
    copy of the same bytes (the floor). Returns the figures; raises if the digests differ."""
    import torch
    import torch.multiprocessing as mp

    from raydprm.rollout.sync import combine_digests, tensor_digest

    n = max(1, nbytes // 4)
    step = max(1, chunk_bytes // 4)
    g = torch.Generator(device=device).manual_seed(11)  # drawn where they live (GBs: not through the host)
    tensors = [torch.randn(min(step, n - s), generator=g, device=device) for s in range(0, n, step)]
    if device == "cpu":
        for t in tensors:
            t.share_memory_()  # weights that live in shared memory already; the hand-over passes fds
    sent_digest = combine_digests({str(i): tensor_digest(t) for i, t in enumerate(tensors)})
    gb = sum(t.numel() * 4 for t in tensors) / 1e9
    # the floor: a copy of the same bytes in this process (device to device on a GPU)
    dst = [torch.empty_like(t) for t in tensors]

    def copy_all():
        for d, s in zip(dst, tensors):
            d.copy_(s)

    copy_all()
    _, floor_s = _timed(copy_all, device, max(3, repeats))
    dst.clear()
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_ipc_receiver, args=(inbox, outbox, device), daemon=True)
    proc.start()
    try:
        outbox.get(timeout=timeout_s)  # the receiver has imported torch (and initialised CUDA)
        times, digest = [], None
        for rep in range(repeats):
            inbox.put((rep, time.monotonic(), tensors))
            kind, secs, d = outbox.get(timeout=timeout_s)
            times.append(secs)
            digest = digest or d
        inbox.put(None)
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    if digest != sent_digest:
        raise RuntimeError(f"the receiver's digest {str(digest)[:12]} differs from the sender's {sent_digest[:12]}")
    steady = times[1:] or times
    return {"path": "CUDA IPC handles (torch.multiprocessing)" if device == "cuda"
            else "CPU shared memory (torch.multiprocessing, fds)",
            "GB": _sig(gb), "chunks": len(tensors), "first_ms_per_GB": _sig(times[0] * 1e3 / gb),
            "ms_per_GB": _sig(statistics.median(steady) * 1e3 / gb),
            "copy_floor_ms_per_GB": _sig(floor_s * 1e3 / gb),
            "ratio_to_floor": _sig(statistics.median(steady) / floor_s, 3), "digest_verified": True}


def check_sync(plan: Plan, rec: Recorder) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from raydprm.models.tiny import resolve_model
    from raydprm.rollout.hf_engine import HFEngine
    from raydprm.rollout.sync import (
        WeightStager,
        WeightSyncError,
        apply_update,
        build_manifest,
        iter_buckets,
        probe_logprobs,
        probe_sequence,
    )

    dev = plan.device
    rec.figures(policy=plan.policy, bucket_bytes=plan.bucket_bytes)
    sd = manifest = probe = probe_ids = None
    with rec.item("manifest_and_buckets_on_device") as it:
        path = resolve_model(plan.policy)
        model = AutoModelForCausalLM.from_pretrained(path).to(dev).eval()
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():  # a new policy: the engine below still has the old weights
            for p in model.parameters():
                p.add_((torch.randn(p.shape, generator=g) * 0.02).to(dev))
        sd = model.state_dict()
        assert all(t.device.type == dev for t in sd.values())
        manifest, t_man = _timed(lambda: build_manifest(sd, 1), dev)
        buckets, t_bkt = _timed(lambda: list(iter_buckets(sd, plan.bucket_bytes)), dev)
        sizes = [len(b) for b in buckets]
        big = max(t.numel() * t.element_size() for t in sd.values())
        probe_ids = probe_sequence(int(model.get_output_embeddings().weight.shape[0]), 32)
        probe = probe_logprobs(model, probe_ids)
        gb = manifest.nbytes / 1e9
        it["figures"] = {"tensors": len(sd), "GB": _sig(gb), "digest": manifest.digest_algo,
                         "manifest_GB_per_s": _sig(gb / t_man), "buckets": len(buckets),
                         "largest_bucket_MiB": _sig(max(sizes) / 2**20), "encode_GB_per_s": _sig(gb / t_bkt)}
        expect(it, all(s <= max(plan.bucket_bytes, big) + (1 << 20) for s in sizes),
               f"a bucket of {max(sizes)} bytes exceeds the bucket size {plan.bucket_bytes}")
        model = None
    with rec.item("verified_update_into_engine_on_device") as it:
        if manifest is None:
            raise Skip("no manifest (the item above failed)")
        eng = HFEngine(plan.policy, device=dev)
        before = eng.score([probe_ids])[0]
        rep, secs = _timed(lambda: apply_update(eng, manifest, iter_buckets(sd, plan.bucket_bytes), probe_ids,
                                                probe, SYNC_PROBE_TOL), dev)
        moved = max(abs(a - b) for a, b in zip(before, probe))
        it["figures"] = {"seconds": _sig(secs), "GB_per_s": _sig(manifest.nbytes / 1e9 / secs),
                         "probe_max_diff": _sig(rep.probe_max_diff), "probe_tolerance": SYNC_PROBE_TOL,
                         "probe_diff_before_update": _sig(moved)}
        expect(it, eng.weight_version == 1 and moved > 10 * SYNC_PROBE_TOL,
               "the update did not change what the engine computes")
        eng = None
        _free()
    with rec.item("stage_device_buffers_and_refuse_tampered") as it:
        if manifest is None:
            raise Skip("no manifest (the item above failed)")
        stager = WeightStager(manifest)
        bufs = {k: v.detach().clone() for k, v in sd.items()}  # what a broadcast receiver holds
        _, secs = _timed(lambda: [stager.add({k: v}) for k, v in bufs.items()], dev)
        ok = len(stager.complete()) == len(sd) and stager.report().digest == manifest.digest
        name = next(k for k, v in bufs.items() if v.is_floating_point())
        bufs[name].view(-1)[0] += 1.0
        refused = False
        try:
            WeightStager(manifest).add({name: bufs[name]})
        except WeightSyncError as e:
            refused = "checksum mismatch" in str(e)
        it["figures"] = {"seconds": _sig(secs), "GB_per_s": _sig(manifest.nbytes / 1e9 / secs),
                         "tampered_refused": refused}
        expect(it, ok, "staged device tensors do not match the manifest")
        expect(it, refused, "a tampered device tensor was accepted")
        bufs = None
    sd = None
    _free()
    with rec.item("ipc_handover_two_processes") as it:
        it["figures"] = ipc_handover(plan.ipc_bytes, dev, plan.ipc_repeats)


# ----------------------------------------------------------------------------- NCCL


def _allreduce_rank(rank: int, world: int, port: int, backend: str, device: str, nbytes: int, out) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if device == "cuda":
            torch.cuda.set_device(rank)
        x = torch.full((nbytes // 4,), float(rank + 1), device=device)
        dist.all_reduce(x)  # warm-up (communicator set-up)
        x.fill_(float(rank + 1))
        _sync(device)
        t0 = time.perf_counter()
        dist.all_reduce(x)
        _sync(device)
        secs = time.perf_counter() - t0
        ok = bool((x == world * (world + 1) / 2).all())
        if rank == 0:
            out.put((secs, ok))
    finally:
        dist.destroy_process_group()


def allreduce_between_ranks(world: int, backend: str, device: str, nbytes: int,
                            timeout_s: float = 120.0) -> dict[str, Any]:
    """One all-reduce of ``nbytes`` between ``world`` local processes; bus bandwidth."""
    import torch.multiprocessing as mp

    from raydprm.train.ds_engine import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_allreduce_rank, args=(r, world, port, backend, device, nbytes, out), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        secs, ok = out.get(timeout=timeout_s)
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    if not ok:
        raise RuntimeError("the all-reduce sum is wrong")
    bus = 2 * (world - 1) / world * nbytes / secs / 1e9  # the usual all-reduce bus bandwidth
    return {"backend": backend, "ranks": world, "MiB": nbytes >> 20, "seconds": _sig(secs),
            "bus_GB_per_s": _sig(bus), "sum_correct": ok}


def check_nccl(plan: Plan, rec: Recorder) -> None:
    import torch

    with rec.item("nccl_allreduce_between_ranks") as it:
        if plan.device != "cuda":
            raise Skip("no CUDA device (CPU dry run): NCCL needs GPUs")
        n = torch.cuda.device_count()
        if n < 2:
            raise Skip(f"one GPU on this machine ({n} visible): NCCL between ranks needs two GPUs "
                       "(it refuses two ranks on one device)")
        it["figures"] = allreduce_between_ranks(2, "nccl", "cuda", plan.nccl_bytes)


CHECK_FUNCS: dict[str, Callable[[Plan, Recorder], None]] = {
    "kit": check_kit, "ot": check_ot, "learner": check_learner, "rollout": check_rollout, "sync": check_sync,
    "nccl": check_nccl,
}
TITLES = {
    "kit": "policy built from its config",
    "ot": "fused Triton OT kernel vs torch Sinkhorn; exact OT on the device vs the CPU",
    "learner": "PPO learner step (DeepSpeed ZeRO-2, bf16; fp32 vs the CPU learner)",
    "rollout": "transformers rollout engine: tokens/s, logprobs vs the learner",
    "sync": "weight sync on device tensors; two-process hand-over vs a copy floor",
    "nccl": "NCCL all-reduce between ranks",
}


def run_check(name: str, plan: Plan, out: Path) -> dict[str, Any]:
    """Run one check in this process, writing its result to ``out`` as it goes."""
    rec = Recorder(name, out, plan.budgets.get(name, 60.0))
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    try:
        CHECK_FUNCS[name](plan, rec)
    except Exception as e:  # outside any item (an import): the check is an error
        traceback.print_exc()
        rec.result["items"].append({"name": "setup", "status": "error", "figures": {}, "seconds": 0.0,
                                    "reason": _one_line(f"{type(e).__name__}: {e}")})
    res = rec.finish()
    if res["status"] == "error" and not res["reason"]:
        res["reason"] = next(i["reason"] for i in res["items"] if i["status"] == "error")
        rec.flush()
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in CHECK_FUNCS:
        print(f"usage: python -m raydprm.doctor.checks {{{','.join(CHECK_FUNCS)}}} PLAN_JSON OUT_JSON",
              file=sys.stderr)
        return 2
    plan = Plan.from_json(Path(argv[1]).read_text())
    res = run_check(argv[0], plan, Path(argv[2]))
    return 0 if res["status"] in ("pass", "skip") else 1


if __name__ == "__main__":
    sys.exit(main())
