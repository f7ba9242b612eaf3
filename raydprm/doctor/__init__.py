"""`raydprm doctor`: acceptance checks of a machine before a run spends hours on it.

:mod:`raydprm.doctor.checks` holds the GPU acceptance check (issue 23): every GPU path of
raydprm that needs neither Ray nor vLLM (the fused Triton OT kernel, the exact OT solvers,
a DeepSpeed ZeRO-2 PPO learner step, the transformers rollout engine, the GPU side of weight
sync and a CUDA-IPC hand-over), each run in its own subprocess under a time budget.
:mod:`raydprm.doctor.report` runs them and writes ``gpu_check.json`` and ``gpu_check.md``.

Entry points: ``python bench/gpu_check.py`` (works from a plain checkout, raydprm not
installed) and ``raydprm doctor --gpu``; ``--cpu-dry-run`` runs the same checks at tiny sizes
on the CPU (CI runs it). Nothing here imports ray or vllm.
"""

from __future__ import annotations

__all__: list[str] = []
