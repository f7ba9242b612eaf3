"""`raydprm doctor --gpu`: the GPU acceptance check (same as `python bench/gpu_check.py`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from raydprm.doctor.report import add_arguments

    p = sub.add_parser("doctor", help="Check this machine before a run (--gpu: the GPU acceptance check).",
                       description="Check this machine before a run. --gpu runs every GPU path of raydprm that "
                                   "needs neither Ray nor vLLM (Triton OT kernel, DeepSpeed ZeRO-2 learner step, "
                                   "transformers engine, weight sync, CUDA IPC) and writes gpu_check.json/.md.")
    p.add_argument("--gpu", action="store_true", help="Run the GPU acceptance check.")
    add_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from raydprm.doctor.report import command_line
    from raydprm.doctor.report import run as run_check
    from raydprm.errors import RaydprmError

    if not args.gpu:
        raise RaydprmError("raydprm doctor: say what to check: --gpu (the GPU acceptance check)")
    return run_check(args, command_line(["raydprm", "doctor", "--gpu"], args))
