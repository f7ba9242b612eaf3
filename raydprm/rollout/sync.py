"""The pure half of weight sync (no ray): buckets, manifests, checksums and the probe.

A learner publishes a new policy as a :class:`WeightManifest` (version, and per tensor:
name, dtype, shape, xxh3-128 of its bytes: :data:`DIGEST_ALGO`, SHA-256 only where xxhash is
missing) plus a stream of *buckets*: safetensors-encoded
groups of tensors of bounded size. A generator stages the buckets with a
:class:`WeightStager`, which checks every received tensor against the manifest as it
arrives and refuses to hand out an incomplete set, so a corrupted or partial sync is
caught before it touches the model. After loading, the generator scores a fixed probe
sequence and :func:`check_probe` compares its logprobs with the learner's: this catches
what checksums cannot (a tensor loaded under the wrong name, a tied output layer left
stale, a dtype cast gone wrong).

Learner side::

    manifest = build_manifest(policy.state_dict(), version)
    buckets = iter_buckets(policy.state_dict(), bucket_bytes=64 << 20)
    probe = probe_logprobs(policy, probe_sequence(vocab_size, 32))

Generator side::

    stager = WeightStager(manifest)
    for payload in buckets: stager.add(payload)
    engine.load_weights(stager.complete())
    check_probe(probe, engine.score([probe_ids])[0], tolerance, manifest.version)

Send the full ``state_dict()``: for models with tied embeddings (GPT-2) it holds both
``transformer.wte.weight`` and ``lm_head.weight``, and engines that keep a separate
packed copy of the output layer (vLLM on CPU) need both.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from raydprm.errors import RaydprmError

PROBE_SEED = 20240601


class WeightSyncError(RaydprmError):
    """A weight sync failed verification (checksum, completeness, probe) or timed out."""


# --------------------------------------------------------------------------- checksums


def _default_digest_algo() -> str:
    try:  # xxh3 runs at several GB/s (~8x SHA-256); xxhash comes with the `datasets` dependency
        import xxhash  # noqa: F401

        return "xxh3_128"
    except ImportError:  # pragma: no cover - a minimal install
        return "sha256"


DIGEST_ALGO = _default_digest_algo()


def _hasher(algo: str):
    if algo == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algo == "sha256":
        return hashlib.sha256()
    raise WeightSyncError(f"unknown weight digest '{algo}' (known: xxh3_128, sha256)")


def bytes_digest(buf: Any, algo: str = DIGEST_ALGO) -> str:
    """Digest of a bytes-like buffer (``bytes``, ``memoryview``, a contiguous numpy array)."""
    h = _hasher(algo)
    h.update(buf)
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> Any:
    """A tensor's raw bytes as a flat uint8 numpy array (a view when already contiguous on CPU)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()


def tensor_digest(t: torch.Tensor, algo: str = DIGEST_ALGO) -> str:
    """Digest of a tensor's raw bytes (any dtype, any device; bit-exact, layout-free).

    Not a cryptographic guarantee: it detects corruption and partial transfers, which is
    what a sync between processes of one cluster needs; ``sha256`` remains available."""
    if t.numel() == 0:
        return bytes_digest(b"", algo)
    return bytes_digest(tensor_bytes(t).data, algo)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    digest: str

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


@dataclass(frozen=True)
class WeightManifest:
    """What a sync must deliver: version + name/dtype/shape/digest of every tensor."""

    version: int
    tensors: tuple[TensorInfo, ...]
    digest_algo: str = "sha256"

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def digest(self) -> str:
        """One checksum of the whole state (digest of the per-tensor digests, by name)."""
        return combine_digests({t.name: t.digest for t in self.tensors})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for RPC layers that only carry builtins)."""
        return {"version": self.version, "tensors": [asdict(t) for t in self.tensors],
                "digest_algo": self.digest_algo}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightManifest:
        return cls(int(d["version"]), tuple(TensorInfo(t["name"], t["dtype"], tuple(t["shape"]), t["digest"])
                                             for t in d["tensors"]), str(d.get("digest_algo", "sha256")))


def combine_digests(digests: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digests[name].encode())
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_manifest(state_dict: Mapping[str, torch.Tensor], version: int, digest_algo: str = DIGEST_ALGO
                   ) -> WeightManifest:
    """Manifest of a state dict (hashes every tensor once: xxh3 ~0.2 s per GB, SHA-256 ~1 s, one core)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise WeightSyncError(f"weight version must be an integer >= 0, got {version!r}")
    if not state_dict:
        raise WeightSyncError("cannot sync an empty state dict")
    infos = []
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise WeightSyncError(f"state dict entry '{name}' is a {type(t).__name__}, not a tensor")
        infos.append(TensorInfo(name, _dtype_name(t.dtype), tuple(t.shape), tensor_digest(t, digest_algo)))
    return WeightManifest(version, tuple(infos), digest_algo)


# --------------------------------------------------------------------------- buckets


def encode_bucket(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a group of tensors (tensors sharing storage are copied)."""
    from safetensors.torch import save

    seen: set[int] = set()
    plain = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous():
            t = t.clone()  # tied weights (GPT-2 wte/lm_head) share storage; safetensors refuses that
        seen.add(ptr)
        plain[name] = t.contiguous()
    return save(plain)


def decode_bucket(payload: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(bytes(payload))
    except Exception as e:  # safetensors raises its own error types
        raise WeightSyncError(f"a weight bucket could not be decoded ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class RawBucket:
    """A bucket as names + flat uint8 numpy arrays of the tensors' bytes (dtype and shape are
    in the manifest). Put into Ray's object store, the arrays travel out of band: one copy
    into shared memory on the sender, zero-copy read-only views on the receiver."""

    names: tuple[str, ...]
    arrays: tuple[Any, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def raw_bucket(tensors: Mapping[str, torch.Tensor]) -> RawBucket:
    return RawBucket(tuple(tensors), tuple(tensor_bytes(t) for t in tensors.values()))


def _groups(state_dict: Mapping[str, torch.Tensor], bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    if bucket_bytes < 1:
        raise WeightSyncError(f"bucket size must be >= 1 byte, got {bucket_bytes}")
    group: dict[str, torch.Tensor] = {}
    size = 0
    for name, t in state_dict.items():
        nb = t.numel() * t.element_size()
        if group and size + nb > bucket_bytes:
            yield group
            group, size = {}, 0
        group[name] = t
        size += nb
    if group:
        yield group


def iter_buckets(state_dict: Mapping[str, torch.Tensor], bucket_bytes: int, raw: bool = False
                 ) -> Iterator[bytes | RawBucket]:
    """Buckets of at most ``bucket_bytes`` each (one bigger tensor goes alone): safetensors
    bytes, or :class:`RawBucket` views with ``raw=True`` (no encoding copy)."""
    for group in _groups(state_dict, bucket_bytes):
        yield raw_bucket(group) if raw else encode_bucket(group)


@dataclass
class StageReport:
    """What the receiving side saw: tensors, bytes, checksum of received tensors, time."""

    version: int
    num_tensors: int
    nbytes: int
    digest: str
    seconds: float = 0.0
    probe_max_diff: float | None = None
    transport: str = ""
    replica: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


class WeightStager:
    """Receives buckets for one manifest; verifies each tensor as it arrives.

    ``add`` raises :class:`WeightSyncError` on an undecodable bucket, an unexpected or
    duplicate name, a dtype/shape mismatch or a checksum mismatch; ``complete`` raises if
    any tensor of the manifest is missing. Nothing is loaded into a model here.
    """

    def __init__(self, manifest: WeightManifest | Mapping[str, Any]) -> None:
        if not isinstance(manifest, WeightManifest):
            manifest = WeightManifest.from_dict(manifest)
        self.manifest = manifest
        self._expected = {t.name: t for t in manifest.tensors}
        self._staged: dict[str, torch.Tensor] = {}
        self._digests: dict[str, str] = {}
        self.nbytes = 0
        self.started = time.perf_counter()

    @property
    def version(self) -> int:
        return self.manifest.version

    def add(self, payload: bytes | RawBucket | Mapping[str, torch.Tensor]) -> list[str]:
        """Stage one bucket (safetensors bytes, a :class:`RawBucket` or a name->tensor mapping);
        returns its names. Raw arrays are checked before they are viewed as tensors."""
        if isinstance(payload, RawBucket):
            return self._add_raw(payload)
        tensors = decode_bucket(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
        for name, t in tensors.items():
            info = self._check_name(name)
            if _dtype_name(t.dtype) != info.dtype or tuple(t.shape) != info.shape:
                raise WeightSyncError(f"weight sync v{self.version}: tensor '{name}' arrived as {_dtype_name(t.dtype)}"
                                      f"{tuple(t.shape)}; the manifest says {info.dtype}{info.shape}")
            self._verify_and_stage(name, t, tensor_digest(t, self.manifest.digest_algo))
        return list(tensors)

    def _check_name(self, name: str) -> TensorInfo:
        info = self._expected.get(name)
        if info is None:
            raise WeightSyncError(f"weight sync v{self.version}: received tensor '{name}' that is not in the manifest")
        if name in self._staged:
            raise WeightSyncError(f"weight sync v{self.version}: tensor '{name}' received twice")
        return info

    def _add_raw(self, bucket: RawBucket) -> list[str]:
        if len(bucket.names) != len(bucket.arrays):
            raise WeightSyncError(f"weight sync v{self.version}: a bucket has {len(bucket.names)} names but "
                                  f"{len(bucket.arrays)} arrays")
        for name, arr in zip(bucket.names, bucket.arrays):
            info = self._check_name(name)
            if arr.nbytes != info.nbytes:
                raise WeightSyncError(f"weight sync v{self.version}: tensor '{name}' arrived with {arr.nbytes} bytes; "
                                      f"the manifest says {info.dtype}{info.shape} = {info.nbytes} bytes")
            d = bytes_digest(arr.data, self.manifest.digest_algo)
            # a read-only view of the received bytes (the object store's memory): no copy here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "non-writable": we never write to it
                t = torch.from_numpy(arr).view(getattr(torch, info.dtype)).reshape(info.shape)
            self._verify_and_stage(name, t, d)
        return list(bucket.names)

    def add_unverified(self, bucket: RawBucket) -> list[tuple[str, torch.Tensor]]:
        """Views of a raw bucket's tensors without checking digests (for forwarding them to a
        place that verifies, e.g. vLLM workers)."""
        out = []
        for name, arr in zip(bucket.names, bucket.arrays):
            info = self._check_name(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out.append((name, torch.from_numpy(arr).view(getattr(torch, info.dtype)).reshape(info.shape)))
        return out

    def _verify_and_stage(self, name: str, t: torch.Tensor, d: str) -> None:
        info, v = self._expected[name], self.version
        if d != info.digest:
            raise WeightSyncError(f"weight sync v{v}: checksum mismatch on tensor '{name}' "
                                  f"(received {d[:12]}, sent {info.digest[:12]}): the weights were corrupted in transit")
        self._staged[name] = t
        self._digests[name] = d
        self.nbytes += t.numel() * t.element_size()

    @property
    def missing(self) -> list[str]:
        return [n for n in self._expected if n not in self._staged]

    def complete(self) -> list[tuple[str, torch.Tensor]]:
        """All staged tensors in manifest order; raises if the sync is partial."""
        missing = self.missing
        if missing:
            raise WeightSyncError(f"partial weight sync v{self.manifest.version}: {len(missing)} of "
                                  f"{len(self._expected)} tensors never arrived (e.g. {', '.join(missing[:3])})")
        return [(n, self._staged[n]) for n in self._expected]

    def report(self) -> StageReport:
        return StageReport(self.manifest.version, len(self._staged), self.nbytes, combine_digests(self._digests),
                           time.perf_counter() - self.started)


# --------------------------------------------------------------------------- the probe


def probe_sequence(vocab_size: int, length: int = 32, seed: int = PROBE_SEED) -> list[int]:
    """The fixed probe: ``length`` token ids drawn uniformly below ``vocab_size`` (seeded).

    Uniform random tokens exercise every row of the embedding and output layers with
    non-trivial probability, unlike natural text on a tiny model.
    """
    if vocab_size < 2 or length < 2:
        raise WeightSyncError(f"probe needs vocab_size >= 2 and length >= 2, got {vocab_size}, {length}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=g).tolist()


def probe_logprobs(model: torch.nn.Module, probe_ids: Sequence[int]) -> list[float]:
    """The learner's side of the probe: teacher-forced raw logprobs of the probe sequence."""
    from raydprm.rollout.hf_engine import teacher_forced_logprobs

    was_training = model.training
    model.eval()
    try:
        return teacher_forced_logprobs(model, [list(probe_ids)])[0]
    finally:
        model.train(was_training)


def check_probe(expected: Sequence[float], got: Sequence[float], tolerance: float, version: int) -> float:
    """Max |expected - got|; raises :class:`WeightSyncError` when it exceeds ``tolerance``."""
    if len(expected) != len(got):
        raise WeightSyncError(f"weight sync v{version}: probe has {len(got)} logprobs, expected {len(expected)} "
                              "(learner and generator used different probe sequences)")
    diffs = [abs(float(a) - float(b)) for a, b in zip(expected, got)]
    worst = max(diffs) if diffs else 0.0
    if not worst <= tolerance:  # also catches NaN
        raise WeightSyncError(f"weight sync v{version}: the generator's probe logprobs differ from the learner's by "
                              f"{worst:.3g} (tolerance {tolerance:g}): the weights arrived but the engine does not "
                              "compute the learner's model (stale tied/packed layer, wrong names or dtype?)")
    return worst


def stage_all(manifest: WeightManifest, payloads: Iterable[bytes]) -> tuple[list[tuple[str, torch.Tensor]], StageReport]:
    """Stage and verify every bucket; the complete verified tensors and the report."""
    stager = WeightStager(manifest)
    for p in payloads:
        stager.add(p)
    return stager.complete(), stager.report()


def _remaining(deadline: float | None, version: int, what: str) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise WeightSyncError(f"weight sync v{version} timed out while {what}")
    return left


def apply_update(engine: Any, manifest: WeightManifest, payloads: Iterable[bytes], probe_ids: Sequence[int],
                 expected_probe: Sequence[float], tolerance: float, via: str = "load_weights",
                 deadline: float | None = None) -> StageReport:
    """Receive, verify and load one weight update into ``engine``, then run the probe.

    ``via="load_weights"`` stages and verifies in this process and calls
    ``engine.load_weights``; ``via="vllm_rpc"`` streams each bucket to the engine's
    workers (``rpc_begin``/``rpc_stage``/``rpc_commit``) which stage and verify there.
    Either way nothing is loaded unless every tensor arrived with the right checksum, so
    a corrupted or partial sync leaves the old weights serving. Between loading and a
    passing probe the engine's ``weight_version`` is -1 (unverified). ``deadline`` is a
    ``time.monotonic()`` value; passing it raises :class:`WeightSyncError`.
    """
    t0 = time.perf_counter()
    v = manifest.version
    if via == "vllm_rpc":
        if not hasattr(engine, "rpc_begin"):
            raise WeightSyncError(f"weight transport vllm_rpc needs the vllm engine, not '{engine.name}'")
        engine.rpc_begin(manifest, timeout=_remaining(deadline, v, "starting"))
        try:
            for p in payloads:
                if isinstance(p, RawBucket):  # the workers take safetensors bytes
                    p = encode_bucket(dict(WeightStager(manifest).add_unverified(p)))
                engine.rpc_stage(p, timeout=_remaining(deadline, v, "sending buckets"))
            engine.rpc_check(timeout=_remaining(deadline, v, "checking"))  # partial -> refused, nothing loaded
            engine.weight_version = -1
            rep = engine.rpc_commit(timeout=_remaining(deadline, v, "loading"))
        except BaseException:
            engine.rpc_abort()
            raise
        if rep.digest != manifest.digest:
            raise WeightSyncError(f"weight sync v{v}: the workers' checksum {rep.digest[:12]} differs from the "
                                  f"learner's {manifest.digest[:12]}")
    elif via == "load_weights":
        stager = WeightStager(manifest)
        for p in payloads:
            _remaining(deadline, v, "receiving buckets")
            stager.add(p)
        tensors = stager.complete()
        rep = stager.report()
        engine.weight_version = -1
        engine.load_weights(tensors)
    else:
        raise WeightSyncError(f"unknown weight receive path '{via}'")
    _remaining(deadline, v, "probing")
    got = engine.score([list(probe_ids)])[0]
    rep.probe_max_diff = check_probe(expected_probe, got, tolerance, v)
    engine.weight_version = v
    rep.seconds = time.perf_counter() - t0
    rep.transport = via
    return rep


# --------------------------------------------------------------------------- broadcast (NCCL)


def send_by_broadcast(state_dict: Mapping[str, torch.Tensor], broadcast: Any, device: Any) -> None:
    """Sender side of a broadcast sync: every tensor, in the manifest's (dict) order.

    ``broadcast(tensor)`` sends from this rank: ``torch.distributed.broadcast(t, src=0)``
    or a PyNccl communicator's ``broadcast(t, src=0, stream=...)`` wrapped in a lambda."""
    for t in state_dict.values():
        broadcast(t.detach().to(device).contiguous())


def receive_by_broadcast(manifest: WeightManifest, broadcast: Any, device: Any) -> WeightStager:
    """Receiver side: one empty buffer per manifest entry, filled by ``broadcast(buf)``
    and checked (dtype, shape, SHA-256) as it lands; ``.complete()`` gives the tensors.

    A bad tensor does not stop the receive loop: the sender is still broadcasting, and a
    receiver that left early would leave the group out of step (the sender blocks or
    fails). The first verification error is raised once every tensor has been received."""
    stager = WeightStager(manifest)
    first_error: WeightSyncError | None = None
    for info in manifest.tensors:
        buf = torch.empty(info.shape, dtype=getattr(torch, info.dtype), device=device)
        broadcast(buf)
        try:
            stager.add({info.name: buf})
        except WeightSyncError as e:
            first_error = first_error or e
    if first_error is not None:
        raise first_error
    return stager
