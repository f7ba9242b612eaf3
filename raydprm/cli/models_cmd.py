"""`raydprm models list|build`: the tiny offline model kit."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="List or build the tiny offline models.",
                       description="Tiny GPT-2/OPT models and a byte-level BPE tokenizer trained on the "
                       "simulated world, saved as ordinary Hugging Face directories.")
    msub = p.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="List the kit's models and where they are built.")
    ls.add_argument("--cache-dir", default=None, help="Kit cache (default $RAYDPRM_CACHE or ~/.cache/raydprm).")
    ls.set_defaults(handler=_list)
    b = msub.add_parser("build", help="Build kit models (once; later calls reuse them) and print their directories.")
    b.add_argument("names", nargs="*", default=["tiny-gpt2", "tiny-opt"], help="Kit names (default: tiny-gpt2 tiny-opt).")
    b.add_argument("--cache-dir", default=None, help="Kit cache (default $RAYDPRM_CACHE or ~/.cache/raydprm).")
    b.set_defaults(handler=_build)


def _list(args: argparse.Namespace) -> int:
    from raydprm.models.tiny import TINY_MODELS, cache_root

    root = cache_root(args.cache_dir)
    for name, spec in TINY_MODELS.items():
        built = (root / name / "config.json").is_file()
        print(f"{name:<11} {spec.doc}  [{'built: ' + str(root / name) if built else 'not built'}]")
    return 0


def _build(args: argparse.Namespace) -> int:
    from raydprm.errors import RaydprmError
    from raydprm.models.tiny import TINY_MODELS, ensure_tiny_models

    unknown = [n for n in args.names if n not in TINY_MODELS]
    if unknown:
        raise RaydprmError(f"unknown kit model(s) {', '.join(unknown)}; known: {', '.join(TINY_MODELS)}")
    for name, path in ensure_tiny_models(args.cache_dir, names=args.names).items():
        print(f"{name}\t{path}")
    return 0
