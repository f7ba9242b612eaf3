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

    .venv/bin/python bench/store.py                 # full run (~1 min on 2 cores)
    .venv/bin/python bench/store.py --smoke         # a few seconds, used by the tests

Prints one JSON line per measurement and a summary with the ratio store/raw (median over rounds,
target >= 0.5) of wall-clock rates, and the same ratio of CPU time (robust to other load).
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--votes", type=int, default=20000, help="votes per round and mode")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--votes-per-item", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.votes, args.rounds, args.queries = 2000, 1, 100
    summary: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "sqlite": sqlite3.sqlite_version, "batch": args.batch, "votes": args.votes,
                     "rounds": args.rounds, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
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
