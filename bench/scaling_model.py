"""A scaling model on paper: one PPO step of a 7B policy on 8 and 16 GPUs and a 70B one on
64, split and colocated layouts. It measures nothing; it evaluates the formulas of
docs/scaling.md (equation numbers (G1)..(M4) there) so that anyone can check the tables.

    python bench/scaling_model.py              # the tables of docs/scaling.md
    python bench/scaling_model.py --json PATH  # the same figures, machine-readable

Inputs are the hardware figures and efficiencies below (each with its source or the
reason for its value, in docs/scaling.md) and the workload of OpenRLHF's published PPO
benchmark (1024 prompts, prompt and answer up to 1024 tokens each), so that the 7B rows
can be set against OpenRLHF's measured step time.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace

GB = 1e9


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float  # dense bf16 tensor FLOP/s per GPU
    hbm_bw: float  # bytes/s
    hbm: float  # bytes per GPU
    nvlink: float  # achievable NCCL bus bandwidth inside a node, bytes/s per GPU
    net: float  # achievable bandwidth per GPU between nodes (one 400 Gb/s NIC per GPU), bytes/s
    pcie: float  # achievable host <-> device bandwidth, pinned memory, bytes/s
    gpus_per_node: int = 8


# Datasheet peaks (docs/scaling.md, "Hardware"); links at ~80% of their peak per direction.
H100 = Hardware("H100 SXM 80GB", 989e12, 3.35e12, 80 * GB, 360 * GB, 40 * GB, 50 * GB)
H200 = Hardware("H200 SXM 141GB", 989e12, 4.8e12, 141 * GB, 360 * GB, 40 * GB, 50 * GB)
A800 = Hardware("A800 SXM 80GB", 312e12, 2.039e12, 80 * GB, 160 * GB, 20 * GB, 25 * GB)


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # N
    layers: int
    d_model: int
    kv_bytes: float  # KV cache bytes per token, bf16: 2 (K, V) x layers x kv_heads x head_dim x 2 B
    vocab: int


LLAMA_7B = Model("7B (Llama-2-7B shape)", 6.74e9, 32, 4096, 2 * 32 * 32 * 128 * 2, 32000)
LLAMA_70B = Model("70B (Llama-2-70B shape, GQA 8)", 68.98e9, 80, 8192, 2 * 80 * 8 * 128 * 2, 32000)


@dataclass(frozen=True)
class Workload:
    prompts: int = 1024  # P, rollouts per PPO step (OpenRLHF benchmark: rollout_batch_size)
    prompt_len: int = 1024  # S_p (the benchmark's maximum; we take the maximum)
    resp_len: int = 1024  # S_r
    epochs: int = 1
    train_batch: int = 128  # sequences per optimizer step
    micro_batch: int = 4  # sequences per GPU per micro-step


@dataclass(frozen=True)
class Efficiency:
    train: float = 0.30  # MFU of learner fwd/bwd (OpenRLHF measured 0.24 on A800, 2024)
    fwd: float = 0.40  # MFU of forward-only scoring passes
    decode_mem: float = 0.40  # fraction of HBM bandwidth a decode step achieves (calibrated, see below)
    prefill: float = 0.40  # MFU of prefill
    overlap: float = 0.5  # fraction of ZeRO communication hidden behind compute
    assembly_s_per_gb: float = 0.16  # verl's measured NCCL-sync assembly/bucketing cost (72B: 23.5 s / 145 GB)


@dataclass(frozen=True)
class Layout:
    """GPUs per role. critic = 0: the value is a head on the policy (raydprm's default,
    ppo.critic=value_head), else a separate critic model (OpenRLHF's PPO). colocated: every
    role time-shares all `total` GPUs (critic then only says whether there is one)."""

    name: str
    total: int
    gen: int
    actor: int
    critic: int
    ref: int
    rm: int
    tp: int  # tensor-parallel degree of a generation engine
    zero: int  # ZeRO stage of actor and critic
    colocated: bool = False

    def __post_init__(self):
        if not self.colocated and self.gen + self.actor + self.critic + self.ref + self.rm != self.total:
            raise ValueError(f"layout {self.name!r}: roles use {self.gen + self.actor + self.critic + self.ref + self.rm}"
                             f" GPUs, not {self.total}")


def gen_time(m: Model, hw: Hardware, gpus: int, tp: int, w: Workload, e: Efficiency,
             mem_util: float = 0.9, reserve: float = 4 * GB):
    """(G1)-(G4): continuous-batching decode, memory-bound, plus compute-bound prefill."""
    engines = gpus // tp
    n_e = math.ceil(w.prompts / engines)  # sequences per engine
    w_g = 2 * m.params / tp  # bf16 weights per GPU
    kv_cap = mem_util * hw.hbm - w_g - reserve  # (G1) KV bytes per GPU
    s_bar = w.prompt_len + w.resp_len / 2  # mean context while decoding
    k_g = m.kv_bytes / tp
    batch = max(1, min(n_e, int(kv_cap / (k_g * s_bar))))  # (G2) concurrent sequences
    waves = math.ceil(n_e / batch)
    step_bytes = w_g + batch * k_g * s_bar
    t_step = max(step_bytes / (e.decode_mem * hw.hbm_bw), 2 * m.params * batch / (tp * e.prefill * hw.flops))  # (G3)
    prefill = 2 * m.params * w.prompt_len * n_e / (tp * e.prefill * hw.flops)
    return waves * w.resp_len * t_step + prefill, {"batch": batch, "waves": waves, "t_step_ms": 1e3 * t_step,
                                                   "kv_gb_per_gpu": kv_cap / GB}  # (G4)


def fwd_time(m: Model, hw: Hardware, gpus: int, w: Workload, e: Efficiency) -> float:
    """(F1): one forward pass over every token of the step."""
    return 2 * m.params * w.prompts * (w.prompt_len + w.resp_len) / (gpus * e.fwd * hw.flops)


def ring_bw(hw: Hardware, gpus: int) -> float:
    return hw.nvlink if gpus <= hw.gpus_per_node else hw.net


def train_time(m: Model, hw: Hardware, gpus: int, zero: int, w: Workload, e: Efficiency):
    """(T1)-(T3): fwd/bwd with activation recomputation, plus ZeRO traffic partly overlapped."""
    tokens = w.prompts * (w.prompt_len + w.resp_len) * w.epochs
    compute = 8 * m.params * tokens / (gpus * e.train * hw.flops)  # (T1) 2 fwd + 4 bwd + 2 recompute
    micro = math.ceil(w.prompts * w.epochs / (gpus * w.micro_batch))  # micro-steps per GPU
    steps = math.ceil(w.prompts * w.epochs / w.train_batch)  # optimizer steps
    frac = (gpus - 1) / gpus
    if gpus == 1:
        comm_bytes = 0.0
    elif zero == 3:  # (T2) per micro-step: all-gather params (fwd, bwd) + reduce-scatter grads
        comm_bytes = micro * 3 * 2 * m.params * frac
    else:  # (T2) ZeRO-2: reduce-scatter grads per micro-step, all-gather params per optimizer step
        comm_bytes = (micro + steps) * 2 * m.params * frac
    comm = comm_bytes / ring_bw(hw, gpus)
    return compute + (1 - e.overlap) * comm, {"compute_s": compute, "comm_s": comm}  # (T3)


def sync_time(m: Model, hw: Hardware, lay: Layout, e: Efficiency):
    """(S1)-(S3): weights from the learner to the generation engines."""
    nbytes = 2 * m.params
    if lay.colocated:  # (S3) reshard in place: gather the ZeRO shards over NVLink, no network
        gather = nbytes * (min(lay.total, hw.gpus_per_node) - 1) / min(lay.total, hw.gpus_per_node) / hw.nvlink
        return gather, gather
    gather = nbytes * (lay.actor - 1) / lay.actor / ring_bw(hw, lay.actor) if lay.zero == 3 else 0.0
    same_node = lay.actor + lay.gen <= hw.gpus_per_node
    wire = nbytes / (hw.nvlink if same_node else hw.net)  # (S1) NCCL broadcast: pipelined, ~ independent of engines
    return gather + wire, gather + wire + e.assembly_s_per_gb * nbytes / GB  # (S2) with verl's assembly cost


def memory(m: Model, hw: Hardware, lay: Layout, w: Workload):
    """(M1)-(M4): GB per GPU per role."""
    n = m.params
    seq = w.prompt_len + w.resp_len
    act = (m.layers * w.micro_batch * seq * m.d_model * 2  # (M3) checkpointed layer inputs, bf16
           + 34 * w.micro_batch * seq * m.d_model  # one layer's working set (Korthikanti et al. 2022, FlashAttention)
           + 4 * w.micro_batch * seq * m.vocab)  # fp32 logits for the token logprobs
    g_learn = lay.total if lay.colocated else lay.actor
    if lay.zero == 3:
        learner = 16 * n / g_learn + act  # (M1) bf16 params + grads + fp32 master, m, v, all sharded
    else:
        learner = 2 * n + 14 * n / g_learn + act  # (M2) params replicated, the rest sharded
    infer = 2 * n / (lay.total if lay.colocated else min(lay.ref, lay.rm))  # ref / rm weights, ZeRO-3 inference
    gen_w = 2 * n / lay.tp
    # colocated: the learner state is offloaded while generating, so the peak is the larger phase
    fits = learner <= 0.95 * hw.hbm and infer + 2 * GB <= 0.95 * hw.hbm and gen_w + 4 * GB < 0.9 * hw.hbm
    return {"learner": learner / GB, "ref_or_rm": infer / GB + 2, "gen_weights": gen_w / GB,
            "gen_kv": max(0.0, 0.9 * hw.hbm - gen_w - 4 * GB) / GB, "hbm": hw.hbm / GB, "fits": fits}  # (M4)


def step(m: Model, hw: Hardware, lay: Layout, w: Workload, e: Efficiency) -> dict:
    """(P1) split, synchronous; (P2) split, one step off-policy; (P3) colocated."""
    critic = lay.critic > 0
    if lay.colocated:
        g = lay.total
        t_gen, gen_info = gen_time(m, hw, g, lay.tp, w, e)
        n_fwd = 3 + (1 if critic else 0)  # old logprobs (+ value head), reference, reward model (+ critic)
        t_score = n_fwd * fwd_time(m, hw, g, w, e)
        t_train, _ = train_time(m, hw, g, lay.zero, w, e)
        if critic:
            t_train *= 2  # actor, then critic, on the same GPUs
        t_sync, t_sync_asm = sync_time(m, hw, lay, e)
        # offload/onload of optimizer state and grads to make room for the KV cache (both ways)
        t_swap = 2 * (14 * m.params / g) / hw.pcie
        total = t_gen + t_score + t_train + t_sync + t_swap  # (P3)
        return {"gen_s": t_gen, "score_s": t_score, "train_s": t_train, "sync_s": t_sync + t_swap,
                "step_s": total, "step_async_s": None, **gen_info}
    t_gen, gen_info = gen_time(m, hw, lay.gen, lay.tp, w, e)
    parts = [fwd_time(m, hw, lay.ref, w, e), fwd_time(m, hw, lay.rm, w, e), fwd_time(m, hw, lay.actor, w, e)]
    if critic:
        parts.append(fwd_time(m, hw, lay.critic, w, e))
    t_score = max(parts)  # the roles score the same rollouts at the same time on their own GPUs
    t_train, _ = train_time(m, hw, lay.actor, lay.zero, w, e)
    if critic:
        t_train = max(t_train, train_time(m, hw, lay.critic, lay.zero, w, e)[0])
    _, t_sync = sync_time(m, hw, lay, e)
    total = t_gen + t_score + t_train + t_sync  # (P1)
    overlap = max(t_gen + t_score, t_train) + t_sync  # (P2)
    return {"gen_s": t_gen, "score_s": t_score, "train_s": t_train, "sync_s": t_sync, "step_s": total,
            "step_async_s": overlap, **gen_info}


LAYOUTS = {
    "7B": (LLAMA_7B, [
        Layout("8, split, critic", 8, gen=2, actor=2, critic=2, ref=1, rm=1, tp=1, zero=3),
        Layout("8, split, value head", 8, gen=4, actor=2, critic=0, ref=1, rm=1, tp=1, zero=3),
        Layout("8, colocated, critic", 8, gen=8, actor=8, critic=8, ref=8, rm=8, tp=1, zero=3, colocated=True),
        Layout("8, colocated, value head", 8, gen=8, actor=8, critic=0, ref=8, rm=8, tp=1, zero=3, colocated=True),
        Layout("16, split, critic (OpenRLHF)", 16, gen=4, actor=4, critic=4, ref=2, rm=2, tp=1, zero=3),
        Layout("16, split, value head", 16, gen=8, actor=4, critic=0, ref=2, rm=2, tp=1, zero=3),
        Layout("16, colocated, critic", 16, gen=16, actor=16, critic=16, ref=16, rm=16, tp=1, zero=3,
               colocated=True),
        Layout("16, colocated, value head", 16, gen=16, actor=16, critic=0, ref=16, rm=16, tp=1, zero=3,
               colocated=True),
    ]),
    "70B": (LLAMA_70B, [
        Layout("64, split, critic", 64, gen=8, actor=24, critic=24, ref=4, rm=4, tp=4, zero=3),
        Layout("64, split, value head", 64, gen=24, actor=24, critic=0, ref=8, rm=8, tp=4, zero=3),
        Layout("64, colocated, critic", 64, gen=64, actor=64, critic=64, ref=64, rm=64, tp=4, zero=3,
               colocated=True),
        Layout("64, colocated, value head", 64, gen=64, actor=64, critic=0, ref=64, rm=64, tp=4, zero=3,
               colocated=True),
    ]),
}


def calibration():
    """OpenRLHF's 2024 benchmark (A800, 7B, 16 GPUs as ref 2 : rm 2 : actor 4 : critic 4 : vLLM 4)."""
    w = Workload(micro_batch=8)
    lay = Layout("OpenRLHF 7B, 16 x A800", 16, gen=4, actor=4, critic=4, ref=2, rm=2, tp=1, zero=3)
    # their ZeRO-3 learner with Adam offload; the (M1) memory check does not apply to it
    e = Efficiency(train=0.24)  # their table: 75 TFLOP/s per GPU in training = 0.24 of 312
    return lay, w, e


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write the figures to this path")
    args = ap.parse_args(argv)
    out = {}
    e = Efficiency()
    w = Workload()
    print(f"workload: {asdict(w)}; efficiencies: {asdict(e)}")
    for label, (m, lays) in LAYOUTS.items():
        for hw in (H100, H200):
            print(f"\n# {m.name} on {hw.name}: seconds per PPO step and GB per GPU")
            print(f"{'GPUs, layout':>30} {'gen':>5} {'score':>5} {'train':>5} {'sync':>5} {'step':>5} "
                  f"{'1-off':>5} {'batch':>5} {'waves':>5} {'learner':>7} {'ref/rm':>6} {'gen KV':>6} fits")
            for lay in lays:
                r = step(m, hw, lay, w, e)
                mem = memory(m, hw, lay, w)
                one_off = "-" if r["step_async_s"] is None else f"{r['step_async_s']:.0f}"
                print(f"{lay.name:>30} {r['gen_s']:>5.0f} {r['score_s']:>5.0f} {r['train_s']:>5.0f} "
                      f"{r['sync_s']:>5.1f} {r['step_s']:>5.0f} {one_off:>5} {r['batch']:>5} {r['waves']:>5} "
                      f"{mem['learner']:>7.1f} {mem['ref_or_rm']:>6.1f} {mem['gen_kv']:>6.1f} "
                      f"{'yes' if mem['fits'] else 'NO (offload)'}")
                out[f"{label}|{hw.name}|{lay.name}"] = {**r, "memory_gb": mem}
    lay, w, ec = calibration()
    print("\n# calibration: OpenRLHF's published 7B PPO benchmark on 16 A800 (1024 prompts, 1024 + 1024 tokens)")
    for dm in (0.3, 0.4, 0.5):  # the decode efficiency is the one free parameter
        r = step(LLAMA_7B, A800, lay, w, replace(ec, decode_mem=dm))
        print(f"decode at {dm:.0%} of HBM bandwidth: generation + scoring {r['gen_s'] + r['score_s']:.0f} s "
              f"(published 481.9), training {r['train_s']:.0f} s (published 403.3), step {r['step_s']:.0f} s "
              f"(published 885.2 in the benchmark table, 471.1 in the later README)")
        out[f"calibration|decode_mem={dm}"] = r
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
