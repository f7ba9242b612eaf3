"""The tiny offline model kit: a byte-level BPE tokenizer trained in code on text the
project generates, and tiny GPT-2 / OPT configs, saved as ordinary Hugging Face
directories.

Every loader in raydprm goes through :func:`resolve_model`: a kit name such as
``"tiny-gpt2"`` resolves to a directory built here (once, then cached); anything else (a
local directory or a hub name like ``"facebook/opt-1.3b"``) is passed through unchanged
to ``from_pretrained``. So the same code path serves a laptop with no network and a GPU
cluster with the hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIT_VERSION = "2"
SPECIAL_TOKENS = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
DEFAULT_VOCAB = 1024


@dataclass(frozen=True)
class TinySpec:
    """A model of the kit: HF architecture + constructor kwargs (vocab and special ids are added)."""

    arch: str  # "gpt2" | "opt"
    kwargs: dict[str, Any]
    doc: str


# Attention heads are 32 wide: vLLM's CPU attention accepts head sizes 32, 64, 80 and up,
# so the kit's models run on the vLLM engine too.
TINY_MODELS: dict[str, TinySpec] = {
    "tiny-gpt2": TinySpec("gpt2", dict(n_embd=64, n_layer=2, n_head=2, n_positions=256),
                          "policy: GPT-2 style, 2 layers x 64 wide (~0.2M params)"),
    "tiny-opt": TinySpec("opt", dict(hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=2,
                                     max_position_embeddings=256, word_embed_proj_dim=64),
                         "reward backbone: OPT style, 2 layers x 64 wide (~0.2M params)"),
    "small-gpt2": TinySpec("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
                           "benchmarks: GPT-2-small-sized (124M), random init"),
}


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    base = cache_dir or os.environ.get("RAYDPRM_CACHE") or Path.home() / ".cache" / "raydprm"
    return Path(base) / f"tiny-v{KIT_VERSION}"


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB):
    """Train a byte-level BPE tokenizer on ``texts``; returns a ``PreTrainedTokenizerFast``.

    Byte-level means every string is encodable (no unknown token); training is
    deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(SPECIAL_TOKENS.values()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    # decoder-only generation pads on the left; saved in tokenizer_config.json
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)
    return fast


def default_corpus() -> list[str]:
    """Text of the simulated world (prompts and responses of every quality)."""
    from raydprm.sim.world import tokenizer_corpus

    return tokenizer_corpus()


# --------------------------------------------------------------------------- models


def build_model(name: str, tokenizer, seed: int = 0):
    """A randomly initialised (seeded) HF causal LM of the kit, sized for ``tokenizer``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    spec = TINY_MODELS[name]
    kw = dict(spec.kwargs)
    kw.setdefault("vocab_size", len(tokenizer))
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if spec.arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**kw, **ids))
    if spec.arch == "opt":
        return OPTForCausalLM(OPTConfig(**kw, **ids, do_layer_norm_before=True))
    raise ValueError(f"unknown arch {spec.arch}")


def _fingerprint(texts: list[str], vocab_size: int) -> str:
    h = hashlib.sha256(f"{KIT_VERSION}|{vocab_size}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    h.update(json.dumps({k: [v.arch, v.kwargs] for k, v in TINY_MODELS.items()}, sort_keys=True).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save_kit(out_dir: str | os.PathLike[str], texts: list[str] | None = None, names: Iterable[str] | None = None,
             vocab_size: int = DEFAULT_VOCAB, seed: int = 0) -> dict[str, Path]:
    """Build tokenizer + models into ``out_dir/<name>`` (each an ordinary HF directory)."""
    out = Path(out_dir)
    texts = default_corpus() if texts is None else list(texts)
    tok = train_tokenizer(texts, vocab_size)
    paths = {}
    for name in names or TINY_MODELS:
        if name not in TINY_MODELS:
            raise KeyError(f"unknown tiny model '{name}'; known: {', '.join(TINY_MODELS)}")
        d = out / name
        build_model(name, tok, seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        paths[name] = d
    return paths


def ensure_tiny_models(cache_dir: str | os.PathLike[str] | None = None,
                       names: Iterable[str] = ("tiny-gpt2", "tiny-opt"),
                       corpus: Callable[[], list[str]] = default_corpus) -> dict[str, Path]:
    """Build the kit once under the cache (atomic, safe across processes); return the dirs."""
    root = cache_root(cache_dir)
    names = list(names)
    with _locked(root / ".lock"):
        texts = corpus()
        fp = _fingerprint(texts, DEFAULT_VOCAB)
        stamp = root / "corpus.sha"
        stale = not stamp.is_file() or stamp.read_text() != fp
        missing = list(TINY_MODELS) if stale else [n for n in names if not (root / n / "config.json").is_file()]
        missing = [n for n in missing if n in names or (root / n).exists()]
        if missing:
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
            try:
                built = save_kit(tmp, texts, missing)
                for n, d in built.items():
                    target = root / n
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(d, target)
                stamp.write_text(fp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return {n: root / n for n in names}


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Kit name -> built local directory; a directory or hub name -> itself."""
    if name_or_path in TINY_MODELS:
        return str(ensure_tiny_models(cache_dir, names=[name_or_path])[name_or_path])
    if not name_or_path:
        raise ValueError("empty model name")
    # A local path (not a hub name such as 'org/model') must exist: say so now, not after the
    # loader has tried the hub and failed with a page of traceback.
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().exists():
        from raydprm.errors import RaydprmError

        raise RaydprmError(f"model '{name_or_path}' does not exist (not a kit name: {', '.join(TINY_MODELS)}; "
                           "not a local directory)")
    return name_or_path
