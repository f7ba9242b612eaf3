"""Benchmark: durable ingest rate of the preference store vs raw SQLite inserts.

For each SQLite ``synchronous`` mode (NORMAL, FULL; journal_mode=WAL in both) this
measures, in the same run and interleaved batch by batch (alternating which goes first,
so that machine noise hits both alike):

* ``store``: ``PreferenceStore.add_votes`` in batches of ``--batch`` votes (validation,
  idempotency check, item upsert, vote log append, Dirichlet posterior upkeep, COMMIT);
* ``raw``:   ``executemany`` INSERT of the same vote rows (same columns, same unique
  vote-id index) into a bare ``votes`` table, one transaction per batch, no posterior
  upkeep and no validation.

and then the query rate of ``distribution`` (pooled and with a 3-persona mixture), one item
per call and 100 items per ``distributions`` call.
Votes come from the simulated crowd (``--votes-per-item`` votes on each item).

Then the per-rater import (issue 20): a DICES-like CSV of ``--import-rows`` rows (one per
(rater, item): rater_id, rater_race, item_id, context, response, Q_overall; 1,000,000 by
default) is written, and two child processes read it, alternating which goes first per round:

* ``importer``: ``raydprm store import --preset dices`` into a new store (pandas chunks, checks,
  item upsert, vote log, raters, per-group posterior upkeep, one transaction);
* ``baseline``: pandas ``read_csv`` in chunks of the same size + raw SQLite ``executemany`` of the
  same rows (their six columns) into a bare table, one transaction, no posterior upkeep.

Each child reports its wall and CPU seconds and its peak RSS (``ru_maxrss``); the target is
importer rate >= 0.5x the baseline's and importer peak RSS < 1 GiB.

    .venv/bin/python bench/store.py                 # full run (~3 min on 2 cores)
    .venv/bin/python bench/store.py --import-only   # only the 1,000,000-row import
    .venv/bin/python bench/store.py --smoke         # a few seconds, used by the tests (no import part)

Prints one JSON line per measurement and a summary with the ratio store/raw (median over rounds,
target >= 0.5) of wall-clock rates, and the same ratio of CPU time (robust to other load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raydprm.sim.personas import Population, simulated_items
from raydprm.store import PreferenceStore
from raydprm.store.votes import item_id

RAW_SCHEMA = ("CREATE TABLE votes(seq INTEGER PRIMARY KEY AUTOINCREMENT, vote_id TEXT NOT NULL UNIQUE, "
              "item_id TEXT NOT NULL, persona TEXT NOT NULL, label INTEGER, dist TEXT, weight REAL NOT NULL, "
              "ts REAL NOT NULL, source TEXT NOT NULL)")


def make_votes(n_votes: int, votes_per_item: int, seed: int) -> list[dict]:
    pop = Population()
    items = simulated_items(max(1, n_votes // votes_per_item + 1), seed=seed)
    votes = pop.simulate_votes(items, votes_per_item, seed=seed, source=f"bench{seed}")[:n_votes]
    t0 = 1.7e9
    for k, v in enumerate(votes):
        v["ts"] = t0 + k * 1e-3
    return votes


class RawWriter:
    """Plain executemany of the votes' rows into a bare votes table, one transaction per batch."""

    def __init__(self, path: Path, sync: str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={sync}")
        self.db.execute(RAW_SCHEMA)

    def write(self, rows: list[tuple]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO votes(vote_id, item_id, persona, label, dist, weight, ts, source) "
                            "VALUES (?,?,?,?,?,?,?,?)", rows)
        self.db.execute("COMMIT")


def ingest_round(tmp: Path, votes: list[dict], batch: int, sync: str, tag: str) -> dict[str, float]:
    """Wall and CPU seconds of raw and store ingest of the same votes, interleaved batch by batch
    (alternating which goes first) so that both see the same machine noise. CPU time (this
    process) is robust to other load on the machine; wall time includes waiting for the disk."""
    raw = RawWriter(tmp / f"raw-{tag}.db", sync)
    store = PreferenceStore(tmp / f"store-{tag}.db", synchronous=sync)
    rows = [(v["vote_id"], item_id(v["prompt"], v["response"]), v["persona"], v["label"], None, 1.0, v["ts"],
             v["source"]) for v in votes]
    t = {"raw": 0.0, "store": 0.0, "raw_cpu": 0.0, "store_cpu": 0.0}
    for k, i in enumerate(range(0, len(votes), batch)):
        for kind in (("raw", "store") if k % 2 == 0 else ("store", "raw")):
            w0, c0 = time.perf_counter(), time.process_time()
            if kind == "raw":
                raw.write(rows[i:i + batch])
            else:
                store.add_votes(votes[i:i + batch])
            t[kind] += time.perf_counter() - w0
            t[kind + "_cpu"] += time.process_time() - c0
    assert store.count_votes() == len(votes)
    raw.db.close()
    store.close()
    return t


def query_rate(path: Path, votes: list[dict], n: int) -> dict[str, float]:
    store = PreferenceStore(path)
    items = list({(v["prompt"], v["response"]) for v in votes})[:n]
    mix = {"scientist": 1.0, "teenager": 2.0, "artist": 1.0}
    out = {}
    for name, kw in (("pooled", {}), ("mixture3", {"persona_weights": mix})):
        t = time.perf_counter()
        for p, r in items:
            store.distribution(p, r, **kw)
        out[name] = len(items) / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, len(items), 100):
            store.distributions(items[i:i + 100], **kw)
        out[name + "_batched100"] = len(items) / (time.perf_counter() - t)
    store.close()
    return out


IMPORT_COLUMNS = ["rater_id", "rater_race", "item_id", "context", "response", "Q_overall"]
RACES = np.array(["White", "Black", "Latine", "Asian", "Multiracial"])


def write_rater_csv(path: Path, n_rows: int, seed: int = 0) -> None:
    """A DICES-like per-rater CSV: ~n_rows / 1000 items, each rated by up to 1000 raters."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_raters = min(1000, n_rows)
    k = np.arange(n_rows)
    rater, item = k % n_raters, k // n_raters
    n_items = int(item.max()) + 1
    ctx = np.array([f"USER: a question about topic {i} that goes on for a while, as chats do\nBOT: well"
                    for i in range(n_items)], dtype=object)
    resp = np.array([f"BOT: an answer to topic {i}, long enough to look like a real response" for i in range(n_items)],
                    dtype=object)
    df = pd.DataFrame({"rater_id": rater + 10_000, "rater_race": RACES[rater % 5], "item_id": item,
                       "context": ctx[item], "response": resp[item],
                       "Q_overall": np.array(["No", "Unsure", "Yes"])[rng.integers(0, 3, n_rows)]})
    df.to_csv(path, index=False, chunksize=100_000)


def _child(kind: str, csv: Path, db: Path, chunk: int) -> None:
    """One measured side of the import benchmark (run in its own process for a clean peak RSS)."""
    import pandas as pd

    w0, c0 = time.perf_counter(), time.process_time()
    if kind == "importer":
        from raydprm.store.importer import import_file
        from raydprm.store.mapping import load_mapping

        m = load_mapping(preset="dices")
        with PreferenceStore(db, label_scale=m.scale, synchronous="NORMAL") as s:
            out = import_file(s, csv, m, chunk_rows=chunk)
        n = out["votes"]
    else:
        con = sqlite3.connect(str(db), isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(f"CREATE TABLE ratings({', '.join(IMPORT_COLUMNS)})")
        con.execute("BEGIN IMMEDIATE")
        n = 0
        for df in pd.read_csv(csv, dtype=str, keep_default_na=False, na_filter=False, usecols=IMPORT_COLUMNS,
                              chunksize=chunk):
            con.executemany(f"INSERT INTO ratings VALUES ({','.join('?' * len(IMPORT_COLUMNS))})",
                            df[IMPORT_COLUMNS].itertuples(index=False, name=None))
            n += len(df)
        con.execute("COMMIT")
        con.close()
    print(json.dumps({"kind": kind, "rows": n, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                      "peak_rss_mib": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def import_bench(tmp: Path, n_rows: int, rounds: int, chunk: int) -> dict:
    csv = tmp / "ratings.csv"
    t = time.perf_counter()
    write_rater_csv(csv, n_rows)
    print(json.dumps({"wrote_csv_rows": n_rows, "mib": round(csv.stat().st_size / 2**20, 1),
                      "seconds": round(time.perf_counter() - t, 1)}))
    res: dict[str, list] = {"importer": [], "baseline": []}
    for r in range(rounds):
        for kind in (("baseline", "importer") if r % 2 == 0 else ("importer", "baseline")):
            db = tmp / f"{kind}-{r}.db"
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--csv", str(csv), "--db", str(db),
                                  "--chunk", str(chunk)], capture_output=True, text=True, env=os.environ.copy())
            if out.returncode:
                raise SystemExit(f"bench child {kind} failed: {out.stderr.strip().splitlines()[-1:]}")
            m = json.loads(out.stdout.strip().splitlines()[-1])
            m["rows_per_s"] = n_rows / m["wall_s"]
            m["load_avg_1m"] = os.getloadavg()[0]
            print(json.dumps({"round": r, **{k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}}))
            res[kind].append(m)
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
    ratios = [a["rows_per_s"] / b["rows_per_s"] for a, b in zip(res["importer"], res["baseline"])]
    cpu = [b["cpu_s"] / a["cpu_s"] for a, b in zip(res["importer"], res["baseline"])]
    return {"rows": n_rows, "chunk_rows": chunk, "rounds": rounds,
            "importer_rows_per_s": round(statistics.median(a["rows_per_s"] for a in res["importer"])),
            "baseline_rows_per_s": round(statistics.median(b["rows_per_s"] for b in res["baseline"])),
            "ratio": round(statistics.median(ratios), 3), "cpu_ratio": round(statistics.median(cpu), 3),
            "importer_peak_rss_mib": round(max(a["peak_rss_mib"] for a in res["importer"])),
            "baseline_peak_rss_mib": round(max(b["peak_rss_mib"] for b in res["baseline"])),
            "load_avg_1m": [round(m["load_avg_1m"], 1) for m in res["importer"] + res["baseline"]]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--votes", type=int, default=20000, help="votes per round and mode")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--votes-per-item", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--import-rows", type=int, default=1_000_000, help="rows of the per-rater CSV import benchmark")
    ap.add_argument("--import-rounds", type=int, default=1, help="rounds of the import benchmark")
    ap.add_argument("--import-only", action="store_true", help="only the per-rater import benchmark")
    ap.add_argument("--chunk", type=int, default=50_000, help="rows per chunk (importer and baseline)")
    ap.add_argument("--child", choices=("importer", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, Path(args.csv), Path(args.db), args.chunk)
        return {}
    if args.smoke:
        args.votes, args.rounds, args.queries, args.import_rows, args.chunk = 2000, 1, 100, 20_000, 5000
    summary: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "sqlite": sqlite3.sqlite_version, "batch": args.batch, "votes": args.votes,
                     "rounds": args.rounds, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        im = None
        if not args.smoke or args.import_only:  # the tests run the import part on its own (smaller, one call)
            summary["import"] = im = import_bench(tmp, args.import_rows, args.import_rounds, args.chunk)
        if im is not None:
                print(f"store/import_rows_per_s: {im['importer_rows_per_s']:,} vs baseline (pandas chunks + raw "
                  f"executemany) {im['baseline_rows_per_s']:,} -> ratio {im['ratio']:.2f} (target >= 0.50; CPU-time "
                  f"ratio {im['cpu_ratio']:.2f}); importer peak RSS {im['importer_peak_rss_mib']} MiB (target < 1024), "
                  f"baseline {im['baseline_peak_rss_mib']} MiB; load average {im['load_avg_1m']}")
        if args.import_only:
            return summary
        for sync in ("NORMAL", "FULL"):
            raw_rates, store_rates, ratios, cpu_ratios = [], [], [], []
            for r in range(args.rounds):
                votes = make_votes(args.votes, args.votes_per_item, seed=r)
                t = ingest_round(tmp, votes, args.batch, sync, f"{sync}-{r}")
                res = {"raw": len(votes) / t["raw"], "store": len(votes) / t["store"]}
                cpu_ratios.append(t["raw_cpu"] / max(t["store_cpu"], 1e-9))
                raw_rates.append(res["raw"])
                store_rates.append(res["store"])
                ratios.append(res["store"] / res["raw"])
                print(json.dumps({"sync": sync, "round": r, "raw_votes_per_s": round(res["raw"]),
                                  "store_votes_per_s": round(res["store"]), "ratio": round(ratios[-1], 3),
                                  "cpu_ratio": round(cpu_ratios[-1], 3)}))
            summary["modes"][sync] = {"raw_votes_per_s": round(statistics.median(raw_rates)),
                                      "store_votes_per_s": round(statistics.median(store_rates)),
                                      "ratio": round(statistics.median(ratios), 3),
                                      "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                                      "cpu_ratio": round(statistics.median(cpu_ratios), 3)}
        q = query_rate(tmp / f"store-FULL-{args.rounds - 1}.db", make_votes(args.votes, args.votes_per_item,
                                                                          seed=args.rounds - 1), args.queries)
        summary["distribution_queries_per_s"] = {k: round(v) for k, v in q.items()}
    print(json.dumps({"summary": summary}))
    for sync, m in summary["modes"].items():
        print(f"store/votes_per_s [{sync}]: {m['store_votes_per_s']:,} vs raw {m['raw_votes_per_s']:,} "
              f"-> ratio {m['ratio']:.2f} (rounds {m['ratio_min']:.2f}..{m['ratio_max']:.2f}; CPU-time ratio "
              f"{m['cpu_ratio']:.2f}; target >= 0.50)")
    q = summary["distribution_queries_per_s"]
    print(f"store/distribution_qps: pooled {q['pooled']:,}, 3-persona mixture {q['mixture3']:,} (one item per "
          f"call); batched 100 per call: pooled {q['pooled_batched100']:,}, mixture {q['mixture3_batched100']:,}")
    return summary


if __name__ == "__main__":
    main()
