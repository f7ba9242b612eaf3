"""`raydprm store init|stats|import|export|simulate|reconfigure|backup`: the preference store from the shell.

    raydprm store init --db runs/demo/store.db store.half_life_s=86400   # parameters recorded here
    raydprm store simulate --db runs/demo/store.db --n 384          # the simulated crowd votes
    raydprm store import --db store.db --file hh.jsonl               # Anthropic HH pairs as votes
    raydprm store import --db dices.db --file dices_350.csv --preset dices --group rater_gender
    raydprm store import --db s.db --file ratings.parquet --mapping my_mapping.yaml
    raydprm store export --db store.db --out data/ --mixture scientist=2,artist=1
    raydprm store export --db dices.db --out data/ --mixture census.yaml --split train
    raydprm store stats --db store.db                                # groups and how much they disagree
    raydprm store reconfigure --db store.db store.half_life_s=0      # rebuilds from the log
    raydprm store backup --db store.db --out copy.db                 # a consistent copy of a live store

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

from raydprm.cli.common import add_config_args, applies, config_from_args


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
    # a read-only command reads the store's own settings: any other key is refused, not ignored
    applies(action("stats", "Print the store's counts and settings as JSON (read-only).", _stats), *_READ_KEYS)
    action("reconfigure", "Change the store's recorded store.prior and/or store.half_life_s (given as overrides, "
           "e.g. store.half_life_s=3600), rebuilding every posterior from the vote log in one transaction.",
           _reconfigure)
    imp = action("import", "Import a per-rater dataset through a mapping (--mapping FILE.yaml or --preset "
                 "dices|prism|hh), or Anthropic-HH-format pairs (chosen/rejected JSONL) without one; all or "
                 "nothing (docs/data.md).", _import)
    imp.add_argument("--file", required=True, help="Local file: CSV, JSONL, Parquet, a saved Hugging Face dataset "
                     "directory, or HH JSONL.")
    imp.add_argument("--mapping", default=None, help="Mapping YAML: item, rater, group, label columns, value -> "
                     "label map and label scale (docs/data.md).")
    imp.add_argument("--preset", default=None, help="A shipped mapping: dices, prism or hh.")
    imp.add_argument("--group", default=None, help="Group column or template of the mapping, e.g. rater_gender "
                     "or '{rater_gender}/{rater_age}'.")
    imp.add_argument("--join", default=None, help="Rater table file to join (PRISM's survey.jsonl).")
    imp.add_argument("--chunk-rows", type=_positive_int, default=50_000, help="Rows read per chunk.")
    imp.add_argument("--persona", default="hh", help="Annotator id of the imported votes (registered if new).")
    imp.add_argument("--chosen-label", default="helpful_harmless", help="Label (name or index) of chosen responses.")
    imp.add_argument("--rejected-label", default="unhelpful_harmless", help="Label of rejected responses.")
    imp.add_argument("--limit", type=_positive_int, default=None, help="Import at most this many rows (>= 1).")
    exp = action("export", "Export items with their target distributions (a datasets.Dataset; read-only).", _export)
    applies(exp, *_READ_KEYS)
    exp.add_argument("--out", required=True, help="Output: a directory (save_to_disk) or a .jsonl file.")
    exp.add_argument("--mixture", default="", help="Persona/group weights, e.g. scientist=2,artist=1, or a YAML file "
                     "{group: share} of a target population (post-stratification); default: pooled.")
    exp.add_argument("--split", default=None, choices=("train", "heldout"), help="Only one side of the "
                     "deterministic split of items by item id.")
    exp.add_argument("--heldout-fraction", type=float, default=None, help="Held-out share of items for --split "
                     "(default store.heldout_fraction).")
    exp.add_argument("--split-seed", type=_nonnegative_int, default=None, help="Seed of the split by item id "
                     "(default store.split_seed).")
    bak = action("backup", "Write a consistent, self-contained copy of a (possibly live) store with SQLite's online "
                 "backup: the documented way to copy a store.", _backup)
    bak.add_argument("--out", required=True, help="Destination file (replaced).")
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


# what the read-only commands apply: where the store is, and store.* (checked against the store's own)
_READ_KEYS = ("store", "run.output_dir", "run.name")
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
        st = store.stats()
        if len(st["groups"]) >= 2:  # how much the rater groups disagree (raydprm.store.groups)
            st["group_disagreement"] = store.group_disagreement()
        print(json.dumps(st, indent=2))
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
    from pathlib import Path

    from raydprm.errors import RaydprmError
    from raydprm.store.hh import import_hh

    if args.mapping or args.preset:
        return _import_mapped(args)
    if args.group or args.join:
        raise RaydprmError("--group and --join need a mapping (--mapping FILE.yaml or --preset NAME)")
    cfg = config_from_args(args)
    path = Path(args.db or cfg.store.path or cfg.run.run_dir / "store.db")
    # a store created by an import holds the import's groups only (not the simulated crowd's)
    _, store = _open(args, **({} if path.is_file() and path.stat().st_size > 0 else {"default_personas": False}))

    def label(x: str) -> int | str:
        return int(x) if x.isdigit() else x

    with store:
        out = import_hh(store, args.file, persona=args.persona, chosen_label=label(args.chosen_label),
                        rejected_label=label(args.rejected_label), limit=args.limit)
    print(json.dumps(out))
    return 0


def _import_mapped(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raydprm.errors import RaydprmError
    from raydprm.store.importer import import_file
    from raydprm.store.mapping import load_mapping

    if args.mapping and args.preset:
        raise RaydprmError("give --mapping or --preset, not both")
    m = load_mapping(args.mapping, args.preset)
    if args.group:
        m = m.with_group(args.group)
    if args.join:
        m = m.with_join_file(args.join)
    if m.format == "hh":  # the HH options given on the command line win over the mapping's
        import dataclasses

        def label(x: str) -> int | str:
            return int(x) if x.isdigit() else x

        given = {"persona": args.persona, "chosen_label": label(args.chosen_label),
                 "rejected_label": label(args.rejected_label)}
        defaults = {"persona": "hh", "chosen_label": "helpful_harmless", "rejected_label": "unhelpful_harmless"}
        hh = dict(m.hh) | {k: v for k, v in given.items() if v != defaults[k]}
        if args.limit is not None:
            hh["limit"] = args.limit
        m = dataclasses.replace(m, hh=hh)
    elif args.limit is not None or args.persona != "hh":
        raise RaydprmError("--limit and --persona apply to HH imports only (a per-rater mapping names its raters "
                           "and groups)")
    if not Path(args.file).exists():  # before a store is created for nothing
        raise RaydprmError(f"file '{args.file}' does not exist")
    cfg = config_from_args(args)
    path = Path(args.db or cfg.store.path or cfg.run.run_dir / "store.db")
    new = not (path.is_file() and path.stat().st_size > 0)
    over = dict(labels=None, label_scale=m.scale) if new and m.scale is not None else {}
    if new:  # the store's groups are the import's groups (not the simulated crowd's personas)
        over["default_personas"] = False
    _, store = _open(args, **over)
    try:
        with store:
            out = import_file(store, args.file, m, chunk_rows=args.chunk_rows, progress=True)  # bars on a TTY only
    except BaseException:
        if new:  # a store created for this import and refused: leave nothing behind
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        raise
    print(json.dumps(out))
    return 0


def _mixture(text: str) -> dict[str, float]:
    """``--mixture``: ``a=2,b=1``, or a YAML file ``{group: share}`` of a target population."""
    from pathlib import Path

    import yaml

    from raydprm.errors import RaydprmError

    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        try:
            data = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
        except OSError as e:
            raise RaydprmError(f"cannot read the mixture file '{text}': {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise RaydprmError(f"mixture file '{text}' is not valid YAML ({str(e).splitlines()[0]})") from None
        if isinstance(data, dict) and set(data) == {"target"}:
            data = data["target"]
        if not isinstance(data, dict) or not data:
            raise RaydprmError(f"mixture file '{text}' must map groups to population shares, e.g. 'White: 0.6'")
        out = {}
        for g, w in data.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise RaydprmError(f"mixture file '{text}': the share of '{g}' must be a finite number >= 0, got {w!r}")
            out[str(g)] = float(w)
        if sum(out.values()) <= 0:
            raise RaydprmError(f"mixture file '{text}': the shares are all zero")
        return out
    return _parse_mixture(text)


def _backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raydprm.errors import RaydprmError

    cfg = config_from_args(args)
    path = Path(args.db or cfg.store.path or cfg.run.run_dir / "store.db")
    if Path(args.out).exists() and Path(args.out).is_dir():
        raise RaydprmError(f"--out '{args.out}' is a directory; give a file such as {args.out}/store.db")
    _, store = _open(args, readonly=True, check=True)
    with store:
        out = store.backup(args.out)
        votes = store.count_votes()
    print(json.dumps({"out": str(out), "votes": votes, "from": str(path)}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from raydprm.errors import RaydprmError

    cfg, store = _open(args, readonly=True, check=True)
    with store:
        if args.pairs:
            ds = store.export_pairs()
        else:
            smoothing = cfg.store.smoothing if args.smoothing is None else args.smoothing
            mixture = _mixture(args.mixture) if args.mixture else None
            if mixture is not None:
                from raydprm.store.groups import poststratification_weights

                try:  # post-stratification: the target's shares, normalised, over groups the store has
                    mixture = poststratification_weights(mixture, store.personas)
                except ValueError as e:
                    raise RaydprmError(f"--mixture {args.mixture}: {e}") from None
            ds = store.export(mixture, smoothing=smoothing, min_votes=args.min_votes, split=args.split,
                              heldout_fraction=(cfg.store.heldout_fraction if args.heldout_fraction is None
                                                else args.heldout_fraction),
                              split_seed=cfg.store.split_seed if args.split_seed is None else args.split_seed)
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
    pop = Population(load_personas(cfg.crowd.personas_source or None),
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
