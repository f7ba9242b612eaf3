"""`raydprm store init|stats|import|export|simulate|reconfigure`: the preference store from the shell.

    raydprm store init --db runs/demo/store.db store.half_life_s=86400   # parameters recorded here
    raydprm store simulate --db runs/demo/store.db --n 384          # the simulated crowd votes
    raydprm store import --db store.db --file hh.jsonl               # Anthropic HH pairs as votes
    raydprm store export --db store.db --out data/ --mixture scientist=2,artist=1
    raydprm store stats --db store.db
    raydprm store reconfigure --db store.db store.half_life_s=0      # rebuilds from the log

``--db`` defaults to ``store.path`` of the config, else ``<run_dir>/store.db``; config
files and ``key=value`` overrides work as in every subcommand (``crowd.*``, ``store.*``).
``stats`` and ``export`` open the store read-only: they never create a file or a
directory, and work on read-only files. A store keeps the prior and half-life it was
created with; ``store.prior`` / ``store.half_life_s`` given to another command must agree
with them (else a one-line error), and only ``reconfigure`` changes them.
"""

from __future__ import annotations

import argparse
import json
import math

from raydprm.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="Create, fill, inspect and export the preference store.",
                       description="The durable Bayesian preference store (SQLite, WAL).")
    ssub = p.add_subparsers(dest="store_cmd", metavar="ACTION", required=True)

    def action(name: str, help: str, handler) -> argparse.ArgumentParser:
        a = ssub.add_parser(name, help=help, description=help)
        a.add_argument("--db", default=None, help="Store file (default: store.path or <run_dir>/store.db).")
        add_config_args(a)
        a.set_defaults(handler=handler)
        return a

    action("init", "Create an empty store (idempotent) and print its stats; store.prior, store.half_life_s and "
           "labels.names are recorded in it.", _init)
    action("stats", "Print the store's counts and settings as JSON (read-only).", _stats)
    action("reconfigure", "Change the store's recorded store.prior and/or store.half_life_s (given as overrides, "
           "e.g. store.half_life_s=3600), rebuilding every posterior from the vote log in one transaction.",
           _reconfigure)
    imp = action("import", "Import Anthropic-HH-format pairs (chosen/rejected JSONL) as votes.", _import)
    imp.add_argument("--file", required=True, help="Local JSONL file with 'chosen' and 'rejected' transcripts.")
    imp.add_argument("--persona", default="hh", help="Annotator id of the imported votes (registered if new).")
    imp.add_argument("--chosen-label", default="helpful_harmless", help="Label (name or index) of chosen responses.")
    imp.add_argument("--rejected-label", default="unhelpful_harmless", help="Label of rejected responses.")
    imp.add_argument("--limit", type=_positive_int, default=None, help="Import at most this many rows (>= 1).")
    exp = action("export", "Export items with their target distributions (a datasets.Dataset; read-only).", _export)
    exp.add_argument("--out", required=True, help="Output: a directory (save_to_disk) or a .jsonl file.")
    exp.add_argument("--mixture", default="", help="Persona weights, e.g. scientist=2,artist=1 (default: pooled).")
    exp.add_argument("--smoothing", type=float, default=None, help="Targeted label smoothing (default store.smoothing).")
    exp.add_argument("--min-votes", type=_nonnegative_int, default=1, help="Skip items with fewer votes.")
    exp.add_argument("--pairs", action="store_true", help="Export the recorded pairs instead of items.")
    sim = action("simulate", "Let the simulated crowd (a persona mixture) vote on N generated items.", _simulate)
    sim.add_argument("--n", type=_positive_int, default=None, help="Items to generate (default crowd.n_items).")
    sim.add_argument("--votes-per-item", type=_positive_int, default=None,
                     help="Votes per item (default crowd.votes_per_item).")
    sim.add_argument("--mixture", default="", help="Persona weights, e.g. teenager=3,ceo=1 (default crowd.mixture).")
    sim.add_argument("--seed", type=_nonnegative_int, default=None, help="Seed (default run.seed).")
    sim.add_argument("--batch-size", type=_positive_int, default=1000, help="Votes per durable batch.")


_MAX_INT = (1 << 31) - 1


def _bounded_int(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if not low <= v <= _MAX_INT:
        raise argparse.ArgumentTypeError(f"{text} is out of range; expected {low}..{_MAX_INT}")
    return v


def _positive_int(text: str) -> int:
    return _bounded_int(text, 1)


def _nonnegative_int(text: str) -> int:
    return _bounded_int(text, 0)


def _parse_mixture(text: str) -> dict[str, float]:
    from raydprm.errors import RaydprmError

    out: dict[str, float] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, sep, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if sep else 1.0
        except ValueError:
            raise RaydprmError(f"--mixture entry '{part}' must look like persona=weight") from None
        if not name.strip() or not math.isfinite(out[name.strip()]) or out[name.strip()] < 0:
            raise RaydprmError(f"--mixture entry '{part}' needs a persona name and a finite weight >= 0")
    return out


def _open(args: argparse.Namespace, readonly: bool = False, **overrides):
    from pathlib import Path

    from raydprm.store import PreferenceStore

    cfg = config_from_args(args)
    path = Path(args.db or cfg.store.path or cfg.run.run_dir / "store.db")
    # labels.names only shapes a new store; an existing one keeps its own
    labels = None if path.is_file() or readonly else cfg.labels
    return cfg, PreferenceStore.from_config(cfg.store, labels, path=str(path), readonly=readonly, **overrides)


def _init(args: argparse.Namespace) -> int:
    _, store = _open(args)
    with store:
        print(json.dumps(store.stats(), indent=2))
    return 0


def _stats(args: argparse.Namespace) -> int:
    _, store = _open(args, readonly=True, check=True)
    with store:
        print(json.dumps(store.stats(), indent=2))
    return 0


def _reconfigure(args: argparse.Namespace) -> int:
    import dataclasses

    from raydprm.errors import RaydprmError

    cfg = config_from_args(args)
    if cfg.store.prior is None and cfg.store.half_life_s is None:
        raise RaydprmError("nothing to reconfigure: give store.prior=... and/or store.half_life_s=...")
    _, store = _open(args, create=False, prior=None, half_life_s=None)  # the store's own, then changed below
    with store:
        out = store.reconfigure(**{k: v for k, v in dataclasses.asdict(cfg.store).items()
                                   if k in ("prior", "half_life_s")})
    print(json.dumps(out))
    return 0


def _import(args: argparse.Namespace) -> int:
    from raydprm.store.hh import import_hh

    _, store = _open(args)

    def label(x: str) -> int | str:
        return int(x) if x.isdigit() else x

    with store:
        out = import_hh(store, args.file, persona=args.persona, chosen_label=label(args.chosen_label),
                        rejected_label=label(args.rejected_label), limit=args.limit)
    print(json.dumps(out))
    return 0


def _export(args: argparse.Namespace) -> int:
    from raydprm.errors import RaydprmError

    cfg, store = _open(args, readonly=True, check=True)
    with store:
        if args.pairs:
            ds = store.export_pairs()
        else:
            smoothing = cfg.store.smoothing if args.smoothing is None else args.smoothing
            ds = store.export(_parse_mixture(args.mixture) or None, smoothing=smoothing, min_votes=args.min_votes)
    from raydprm.errors import writing

    try:
        with writing(args.out, "the store export") as tmp:  # whole or not at all (a full disk: no 0-byte .arrow)
            if args.out.endswith(".jsonl"):
                ds.to_json(str(tmp), lines=True)
            else:
                ds.save_to_disk(str(tmp))
    except OSError as e:
        raise RaydprmError(f"cannot write the export to '{args.out}': {e.strerror or e}") from None
    print(json.dumps({"rows": len(ds), "out": args.out}))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from raydprm.errors import RaydprmError
    from raydprm.sim.personas import Population, load_personas, simulated_items

    cfg = config_from_args(args)
    n = cfg.crowd.n_items if args.n is None else args.n
    k = cfg.crowd.votes_per_item if args.votes_per_item is None else args.votes_per_item
    if n < 1 or k < 1 or args.batch_size < 1:
        raise RaydprmError("--n, --votes-per-item and --batch-size must be >= 1")
    seed = cfg.run.seed if args.seed is None else args.seed
    pop = Population(load_personas(cfg.crowd.personas_file or None),
                     _parse_mixture(args.mixture) or cfg.crowd.mixture or None)  # checked before the store opens
    _, store = _open(args)
    with store:
        for name in pop.names:
            if name not in store.personas:
                store.add_persona(name, pop.personas[name].description)
        items = simulated_items(n, seed=seed)
        votes = pop.simulate_votes(items, k, seed=seed)
        added = dup = 0
        with tqdm(total=len(votes), desc="crowd votes", unit="vote", disable=None) as bar:  # bars on a TTY only
            for i in range(0, len(votes), args.batch_size):
                r = store.add_votes(votes[i:i + args.batch_size])
                added, dup = added + r["added"], dup + r["duplicates"]
                bar.update(min(args.batch_size, len(votes) - i))
        total = store.count_votes()
    print(json.dumps({"items": len(items), "votes_added": added, "duplicates": dup,
                      "mixture": pop.mixture(), "total_votes": total}))
    return 0
