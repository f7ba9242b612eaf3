"""Import of per-rater datasets (CSV, JSONL, Parquet, a saved Hugging Face dataset) through a mapping.

The file is read in chunks of ``chunk_rows`` rows by pandas (CSV, JSON lines), pyarrow (Parquet)
or ``datasets`` (a ``save_to_disk`` directory), so memory stays bounded whatever the file's size.
Each row is one rater's label of one item: it becomes one vote of the rater's *group* (a persona
of the store), with vote id ``<source>:<item id>:<rater>``, so re-importing a file adds nothing
and a rater who labels the same item twice with different labels is refused. The rater's group
is recorded (table ``raters``); a rater whose group changes between rows is refused.

All or nothing: the whole import is one write transaction (:meth:`PreferenceStore.atomic`),
committed after the last row. Any bad row refuses the import with one line naming the file, the
row (1-based, header excluded), the column and the value, and the store is left as it was; a
process killed mid-import (SIGKILL) leaves the store as before too, since an uncommitted
transaction never reaches the database under WAL.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from raydprm.store import schema, vote_log
from raydprm.store.mapping import Mapping, MappingError, _value_key
from raydprm.store.preference_store import PreferenceStore, StoreError
from raydprm.store.reads import chunks as _chunks
from raydprm.store.votes import MAX_ID_CHARS, item_id

__all__ = ["import_file", "ImportRowError", "read_chunks", "detect_format", "CHUNK_ROWS"]

CHUNK_ROWS = 50_000
IMPORT_CACHE_KIB = 262_144  # SQLite page cache while an import's one transaction runs (256 MiB)


class ImportRowError(StoreError):
    """A row (or the file) cannot be imported; nothing of the file was imported."""


def _bad(path: Path, problem: str, row: int | None = None, column: str | None = None, value: Any = None,
         has_value: bool = False) -> ImportRowError:
    where = f"'{path}'" + (f", row {row}" if row is not None else "") + (f", column '{column}'" if column else "")
    val = f", value {str(value)[:80]!r}" if has_value else ""
    return ImportRowError(f"import of {where}{val}: {problem}; nothing was imported")


def detect_format(path: Path, fmt: str | None) -> str:
    """The reader of ``path``: the mapping's ``format``, else by the extension (a directory: hf)."""
    if fmt:
        return fmt
    if path.is_dir():
        return "hf"
    name = path.name.lower()
    for ext, f in ((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                   (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(ext):
            return f
    raise _bad(path, "cannot tell its format from the name; set 'format' in the mapping "
               "(csv, jsonl, parquet, hf)")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8192)


def _check_text(path: Path, what: str) -> None:
    head = _head(path)
    if head.startswith(b"PAR1") or b"\x00" in head:
        raise _bad(path, f"not a {what} text file (binary content; is it another format than its extension says?)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not a multi-byte character cut at the end of the sample
            raise _bad(path, f"not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start})") from None


def _flatten(df):
    """Expand columns holding JSON objects into ``col.key`` columns (nested survey answers)."""
    import pandas as pd

    for c in list(df.columns):
        col = df[c]
        if col.dtype == object and len(col):
            first = next((x for x in col if x is not None), None)
            if isinstance(first, dict):
                flat = pd.json_normalize([x if isinstance(x, dict) else {} for x in col]).add_prefix(f"{c}.")
                flat.index = df.index
                df = pd.concat([df.drop(columns=[c]), flat], axis=1)
    return df


def read_chunks(path: Path, fmt: str, columns: list[str] | None, chunk_rows: int, split: str = "train"
                ) -> Iterator[Any]:
    """DataFrames of at most ``chunk_rows`` rows with (at least) ``columns`` (None: all) of the file."""
    import pandas as pd

    if fmt == "csv":
        _check_text(path, "CSV")
        sep = "\t" if path.name.lower().endswith(".tsv") else ","
        try:
            found = list(pd.read_csv(path, nrows=0, sep=sep).columns)
            _require(path, columns, found)
            reader = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                                 usecols=columns, chunksize=chunk_rows)
            yield from reader
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise _bad(path, f"not a readable CSV file ({str(e).splitlines()[0][:160]})") from None
    elif fmt == "jsonl":
        _check_text(path, "JSON lines")
        _check_surrogates(path)
        first = True
        try:
            for df in pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False, convert_dates=False):
                df = _flatten(df)
                if first:
                    _require(path, columns, list(df.columns))
                    first = False
                yield df
        except ValueError as e:
            if isinstance(e, ImportRowError):
                raise
            raise _json_error(path, e) from None
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise _bad(path, f"not a Parquet file ({str(e).splitlines()[0][:160]})") from None
        _require(path, columns, pf.schema_arrow.names)
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            yield _flatten(batch.to_pandas())
    elif fmt == "hf":
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise _bad(path, f"not a saved Hugging Face dataset ({str(e).splitlines()[0][:160]})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise _bad(path, f"the dataset has no split '{split}' (splits: {', '.join(ds)}); set 'split' in "
                           "the mapping")
            ds = ds[split]
        _require(path, columns, list(ds.column_names))
        if columns is not None:
            ds = ds.select_columns(columns)
        for batch in ds.iter(batch_size=chunk_rows):
            yield _flatten(pd.DataFrame(batch))
    else:
        raise MappingError(f"format '{fmt}' cannot be read in chunks")


def _json_error(path: Path, e: Exception) -> ImportRowError:
    """Find the first line that JSON cannot read (only on the error path) and name it."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as je:
                    return _bad(path, f"not valid JSON ({str(je)[:120]})", row=n)
                if not isinstance(row, dict):
                    return _bad(path, f"expected a JSON object per line, got {type(row).__name__}", row=n)
    except UnicodeDecodeError as ue:
        return _bad(path, f"not UTF-8 text (at byte {ue.start})")
    return _bad(path, f"not readable as JSON lines ({str(e).splitlines()[0][:160]})")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(x: Any, key: str = "") -> str | None:
    """The key (``a.b`` when nested) of the first string in ``x`` holding a lone surrogate, else None."""
    if isinstance(x, str):
        return key if any("\ud800" <= ch <= "\udfff" for ch in x) else None
    if isinstance(x, dict):
        for k, v in x.items():
            if _lone_surrogate(str(k)) is not None:
                return f"{key}.{k}" if key else str(k)
            found = _lone_surrogate(v, f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
    elif isinstance(x, list):
        for v in x:
            found = _lone_surrogate(v, key)
            if found is not None:
                return found
    return None


def _check_surrogates(path: Path) -> None:
    """Refuse a JSON-lines file with a lone surrogate escape such as ``"\\ud800"`` (not a character;
    pandas' reader silently drops it). Only lines with a ``\\uD8xx``-``\\uDFxx`` escape are parsed
    again, with :mod:`json` (a valid surrogate pair decodes to one character and passes)."""
    import json
    import mmap

    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return
        with mm:
            if _SURROGATE_ESCAPE.search(mm) is None:
                return
    row = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row += 1
            if _SURROGATE_ESCAPE.search(line.encode("utf-8", "surrogatepass")) is None:
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue  # pandas names a line that is not JSON
            col = _lone_surrogate(obj)
            if col is not None:
                raise _bad(path, "a lone surrogate escape (\\uD800-\\uDFFF without its pair) is not a character; "
                           "fix the text", row=row, column=col or None)


def _require(path: Path, columns: list[str] | None, found: list[str]) -> None:
    for c in columns or ():
        if c not in found:
            shown = ", ".join(map(str, found[:60])) + (" ..." if len(found) > 60 else "")
            raise _bad(path, f"the column is missing (columns found: {shown})", column=c)


def _as_text(col) -> Any:
    """A column as strings: missing values -> '', integral floats without '.0'."""
    import pandas as pd

    if col.dtype != object and pd.api.types.is_string_dtype(col.dtype):  # pandas' own string dtype
        return col.fillna("") if col.isna().any() else col
    if col.dtype == object and all(type(x) is str for x in col.head(64)):
        out = col.where(col.notna(), "") if col.isna().any() else col
        return out.astype(str) if not all(type(x) is str for x in out) else out
    return pd.Series([_value_key(None if (x is None or (isinstance(x, float) and x != x)) else x) for x in col],
                     index=col.index, dtype=object)


class _Importer:
    def __init__(self, store: PreferenceStore, path: Path, m: Mapping, chunk_rows: int) -> None:
        self.store, self.path, self.m, self.chunk_rows = store, path, m, chunk_rows
        self.scale_names = store.labels
        self.label_index = {n: i for i, n in enumerate(store.labels)}
        self.rater_group: dict[str, tuple[str, int]] = {}  # rater -> (group, first row), this import
        self.counts = {"rows": 0, "votes": 0, "duplicates": 0, "skipped": 0}
        self.ts = time.time()
        self.join = None

    # --- the rater table (PRISM's survey) -------------------------------------------------
    def load_join(self) -> tuple[str, ...]:
        m = self.m
        if m.join_on is None:
            return ()
        if not m.join_file:
            raise MappingError(f"mapping {m.where} joins a rater table on '{m.join_on}' but names no file; give "
                               "join.file in the mapping or --join FILE")
        jp = Path(m.join_file)
        if not jp.is_absolute() and not jp.exists():
            jp = self.path.parent / jp
        if not jp.exists():
            raise _bad(jp, "the rater table to join does not exist")
        fmt = detect_format(jp, m.join_format)
        import pandas as pd

        parts = list(read_chunks(jp, fmt, None, 100_000))
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        _require(jp, [m.join_on], list(table.columns))
        key = _as_text(table[m.join_on])
        dup = key.duplicated()
        if dup.any():
            r = int(np.flatnonzero(dup.to_numpy())[0])
            raise _bad(jp, "a rater appears twice in the rater table", row=r + 1, column=m.join_on,
                       value=key.iloc[r], has_value=True)
        cols = [c for c in m.group_columns if c in table.columns]
        self.join = (jp, {c: dict(zip(key, _as_text(table[c]))) for c in cols})
        return tuple(cols)

    # --- one chunk ---------------------------------------------------------------------------
    def chunk(self, df, r0: int) -> None:
        import pandas as pd

        m, p = self.m, self.path
        n = len(df)
        rows = np.arange(r0 + 1, r0 + n + 1)  # 1-based data rows
        text = {c: _as_text(df[c]) for c in m.columns(tuple(self.join[1]) if self.join else ())}
        if self.join is not None:
            jp, table = self.join
            key = text[m.join_on]
            for c, lookup in table.items():
                col = key.map(lookup)
                miss = col.isna().to_numpy()
                if miss.any():
                    k = int(np.flatnonzero(miss)[0])
                    raise _bad(p, f"the rater is not in the rater table '{jp}'", row=int(rows[k]), column=m.join_on,
                               value=key.iloc[k], has_value=True)
                text[c] = col
        # labels: skipped values, then the value -> label map (or bins)
        raw = text[m.label_column]
        keep = ~raw.isin(m.skip).to_numpy() if m.skip else np.ones(n, dtype=bool)
        self.counts["skipped"] += int(n - keep.sum())
        if not keep.all():
            rows = rows[keep]
            text = {c: v[keep] for c, v in text.items()}
            raw = text[m.label_column]
        if m.values:
            lab = raw.map({k: self.label_index[v] for k, v in m.values.items()})
            bad = lab.isna().to_numpy()
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise _bad(p, f"the value is not in the mapping's label.values ({', '.join(map(repr, m.values))}"
                           + (f"; skipped: {', '.join(map(repr, m.skip))}" if m.skip else "") + ")",
                           row=int(rows[k]), column=m.label_column, value=raw.iloc[k], has_value=True)
            labels = lab.to_numpy(dtype=np.int64)
        else:
            num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
            labels = np.full(len(num), -1, dtype=np.int64)
            for b in reversed(m.bins):  # the first bin that holds a value wins
                labels[(num >= b.lo) & (num <= b.hi)] = self.label_index[b.label]
            bad = labels < 0
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise _bad(p, "the value is not a number in any of label.bins ("
                           + ", ".join(f"{b.lo:g}..{b.hi:g}" for b in m.bins) + ")",
                           row=int(rows[k]), column=m.label_column, value=raw.iloc[k], has_value=True)
        # texts and ids
        for c in (m.prompt, m.response, m.rater):
            s = text[c]
            empty = (s.str.strip() == "").to_numpy()
            if empty.any():
                k = int(np.flatnonzero(empty)[0])
                raise _bad(p, "empty " + ("rater id" if c == m.rater else "item text"), row=int(rows[k]),
                           column=c, value=s.iloc[k], has_value=True)
            if c != m.rater:
                long = (s.str.len() > self.store.max_text_chars).to_numpy()
                if long.any():
                    k = int(np.flatnonzero(long)[0])
                    raise _bad(p, f"the text is longer than store.max_text_chars={self.store.max_text_chars}",
                               row=int(rows[k]), column=c)
        # the group of each row's rater
        if m.is_template:
            group = None
            for lit, f, _, _ in string.Formatter().parse(m.group):
                part = lit if f is None else lit + text[f]
                group = part if group is None else group + part
            gcol = m.group
        else:
            group, gcol = text[m.group], m.group
        empty = (group.str.strip() == "").to_numpy()
        if empty.any():
            k = int(np.flatnonzero(empty)[0])
            raise _bad(p, "empty rater group", row=int(rows[k]), column=gcol, value=group.iloc[k], has_value=True)
        rater = text[m.rater]
        self._check_groups(rater, group, rows, gcol)
        # items and votes
        prompt, response = text[m.prompt], text[m.response]
        pc, pu = pd.factorize(prompt)
        rc, ru = pd.factorize(response)
        codes, pairs = pd.factorize(pc.astype(np.int64) * len(ru) + rc)  # (N,) distinct (prompt, response)
        texts = [(pu[k // len(ru)], ru[k % len(ru)]) for k in pairs.tolist()]  # of each distinct item
        iids = np.array([item_id(a, b) for a, b in texts], dtype=object)
        vote_items = iids[codes]
        items = [(i, a, b) for i, (a, b) in zip(iids.tolist(), texts)]
        # item id first: the votes of an item sit together in the vote-id index (fewer pages touched)
        vid = np.array([f"{m.source}:{i}:{r}" for i, r in zip(vote_items.tolist(), rater.tolist())], dtype=object)
        long = np.array([len(v) > MAX_ID_CHARS for v in vid]) if len(vid) else np.zeros(0, bool)
        if long.any():
            k = int(np.flatnonzero(long)[0])
            raise _bad(p, "the rater id is too long", row=int(rows[k]), column=m.rater, value=rater.iloc[k],
                       has_value=True)
        ts = self._times(text, rows) if m.ts else np.full(len(vid), self.ts)
        self._write(vid, vote_items, items, group.to_numpy(dtype=object), labels, ts, rows, raw,
                    rater.to_numpy(dtype=object))
        self.counts["rows"] += n

    def _times(self, text, rows) -> np.ndarray:
        import pandas as pd

        s = text[self.m.ts]
        t = np.array(pd.to_numeric(s, errors="coerce"), dtype=np.float64)  # epoch seconds (or ms), a copy
        dates = np.isnan(t)
        if dates.any():  # the others: dates
            dt = pd.to_datetime(s[dates], errors="coerce", utc=True, format="mixed")
            bad = dt.isna().to_numpy()
            if bad.any():
                k = int(np.flatnonzero(dates)[np.flatnonzero(bad)[0]])
                raise _bad(self.path, "not a time (seconds or a date)", row=int(rows[k]), column=self.m.ts,
                           value=s.iloc[k], has_value=True)
            t[dates] = (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
        if len(t) and np.nanmax(t) > 1e11:  # epoch milliseconds (seconds reach 1e11 only in the year 5138)
            t = t / 1e3
        return t

    def _check_groups(self, rater, group, rows, gcol: str) -> None:
        import pandas as pd

        pairs = pd.DataFrame({"r": rater.to_numpy(), "g": group.to_numpy(), "row": rows})
        first = pairs.drop_duplicates(["r", "g"])
        if first["r"].duplicated().any():  # a rater with two groups inside the chunk
            dup = first[first["r"].duplicated(keep="first")].iloc[0]
            g0 = first[first["r"] == dup["r"]].iloc[0]
            raise _bad(self.path, f"rater '{dup['r']}' is in group '{g0['g']}' at row {g0['row']} but in another "
                       "group here (a rater keeps one group)", row=int(dup["row"]), column=gcol, value=dup["g"],
                       has_value=True)
        for r, g, row in zip(first["r"].tolist(), first["g"].tolist(), first["row"].tolist()):
            old = self.rater_group.get(r)
            if old is None:
                self.rater_group[r] = (g, row)
            elif old[0] != g:
                raise _bad(self.path, f"rater '{r}' is in group '{old[0]}' at row {old[1]} but in another group here "
                           "(a rater keeps one group)", row=int(row), column=gcol, value=g, has_value=True)

    def _write(self, vid, vote_items, items, group, labels, ts, rows, raw, rater) -> None:
        import pandas as pd

        s, p, m = self.store, self.path, self.m
        n = len(vid)
        if not n:
            return
        # the same (rater, item) twice in this chunk: the same label is a duplicate, another is refused
        vs = pd.Series(vid)
        dmask = vs.duplicated(keep="first").to_numpy()
        if dmask.any():
            first_label = dict(zip(vid[~dmask].tolist(), labels[~dmask].tolist()))
            clash = np.array([first_label[v] != lab for v, lab in zip(vid[dmask], labels[dmask])])
            if clash.any():
                k = int(np.flatnonzero(dmask)[np.flatnonzero(clash)[0]])
                raise _bad(p, f"rater '{rater[k]}' labels this item twice with different labels", row=int(rows[k]),
                           column=m.label_column, value=raw.iloc[k], has_value=True)
            self.counts["duplicates"] += int(dmask.sum())
            keep = ~dmask
            vid, vote_items, group, labels, ts, rows = (vid[keep], vote_items[keep], group[keep], labels[keep],
                                                        ts[keep], rows[keep])
            rater = rater[keep]
            raw = raw[keep]
        with s._write() as cur:
            # groups are personas; raters keep their group (also against earlier imports)
            new_groups = sorted(set(group.tolist()) - set(s._personas))
            for g in new_groups:
                schema.check_persona_name(g)
            cur.executemany("INSERT OR IGNORE INTO personas(name, description) VALUES (?, ?)",
                            [(g, f"rater group of {m.source}") for g in new_groups])
            if new_groups:
                s._set_personas(schema.read_personas(cur))
            rk = pd.unique(pd.Series(rater))
            gk = dict(zip(rater.tolist(), group.tolist()))
            cur.executemany("INSERT OR IGNORE INTO raters(rater, grp, source) VALUES (?, ?, ?)",
                            [(f"{m.source}:{r}", gk[r], m.source) for r in rk])
            for chunk in _chunks([f"{m.source}:{r}" for r in rk]):
                q = f"SELECT rater, grp FROM raters WHERE rater IN ({','.join('?' * len(chunk))})"
                for key, g in cur.execute(q, chunk):
                    r = key.split(":", 1)[1]
                    if g != gk[r]:
                        k = int(np.flatnonzero(rater == r)[0])
                        raise _bad(p, f"rater '{r}' is in group '{g}' in the store (an earlier import) but in another "
                                   "group here (a rater keeps one group)", row=int(rows[k]), column=m.group,
                                   value=gk[r], has_value=True)
            now = time.time()
            cur.executemany("INSERT OR IGNORE INTO items(item_id, prompt, response, created) VALUES (?, ?, ?, ?)",
                            [(i, a, b, now) for i, a, b in items])
            last = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM votes").fetchone()[0]
            before = s._db.total_changes
            cur.executemany("INSERT OR IGNORE INTO votes(vote_id, item_id, persona, label, dist, weight, ts, source) "
                            "VALUES (?,?,?,?,NULL,1.0,?,?)",
                            zip(vid.tolist(), vote_items.tolist(), group.tolist(), labels.tolist(), ts.tolist(),
                                [m.source] * len(vid)))
            if s._db.total_changes - before != len(vid):  # some votes already in the store
                inserted = {r[0] for r in cur.execute("SELECT vote_id FROM votes WHERE seq > ?", (last,))}
                new = np.array([v in inserted for v in vid.tolist()])
                pos = {v: i for i, v in enumerate(vid.tolist())}
                old_ids = vid[~new].tolist()
                for chunk in _chunks(old_ids):
                    q = f"SELECT vote_id, label, persona FROM votes WHERE vote_id IN ({','.join('?' * len(chunk))})"
                    for v, lab, g in cur.execute(q, chunk):
                        k = pos[v]
                        if lab != labels[k] or g != group[k]:
                            raise _bad(p, f"rater '{rater[k]}' labels this item twice with different labels (the other one in an "
                                       "earlier row or an earlier import)",
                                       row=int(rows[k]), column=m.label_column, value=raw.iloc[k], has_value=True)
                self.counts["duplicates"] += len(old_ids)
                vote_items, group, labels, ts = vote_items[new], group[new], labels[new], ts[new]
            if len(labels):
                L = s.num_labels
                probs = np.zeros((len(labels), L))  # (N, L) one-hot votes
                probs[np.arange(len(labels)), labels] = 1.0
                vp = np.array([s._personas[g] for g in group.tolist()], dtype=np.int64)
                vote_log.fold(s, cur, vote_items.tolist(), vp, probs, np.ones(len(labels)), ts.astype(np.float64))
            self.counts["votes"] += int(len(labels))


def import_file(store: PreferenceStore, path: str | os.PathLike[str], mapping: Mapping, *,
                chunk_rows: int = CHUNK_ROWS, progress: bool = False) -> dict[str, Any]:
    """Import a per-rater file through ``mapping`` in one transaction; returns the counts of rows,
    votes added, duplicates (the same vote again), skipped rows (``label.skip``), groups and raters.

    The mapping's ``scale`` must equal the store's label scale (a new store is created with it by
    the CLI). Any bad row raises :class:`ImportRowError` naming file, row, column and value;
    nothing is written then."""
    p = Path(path)
    m = mapping
    if not p.exists():
        raise StoreError(f"file '{p}' does not exist")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise StoreError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    if m.format == "hh":
        from raydprm.store.hh import import_hh

        return import_hh(store, p, progress=progress, **m.hh)
    if m.scale is not None and not m.scale.same_labels(store.label_scale()):
        sc = store.label_scale()
        raise StoreError(f"mapping {m.where} has the label scale names {list(m.scale.names)} rewards "
                         f"{list(m.scale.rewards)}, the store '{store.path}' names {list(sc.names)} rewards "
                         f"{list(sc.rewards)}; import into a new store (--db NEW.db) or change the mapping")
    unknown = sorted((set(m.values.values()) | {b.label for b in m.bins}) - set(store.labels))
    if unknown:
        raise StoreError(f"mapping {m.where} maps to label '{unknown[0]}', which the store '{store.path}' does not "
                         f"have (labels: {', '.join(store.labels)})")
    fmt = detect_format(p, m.format)
    if fmt == "hh":
        raise MappingError(f"mapping {m.where} is not an HH mapping but the file is read as 'hh'")
    imp = _Importer(store, p, m, chunk_rows)
    from tqdm.auto import tqdm

    # a bigger page cache while the one transaction runs: fewer pages spilled to the WAL twice
    store._db.execute(f"PRAGMA cache_size=-{int(IMPORT_CACHE_KIB)}")
    try:
        with store.atomic(f"the import of '{p}'"):
            join_cols = imp.load_join()
            r0 = 0
            bar = tqdm(desc=f"import {p.name}", unit="row", disable=None if progress else True)
            for df in read_chunks(p, fmt, m.columns(join_cols), chunk_rows, m.split):
                imp.chunk(df, r0)
                r0 += len(df)
                bar.update(len(df))
            bar.close()
    finally:
        with contextlib.suppress(sqlite3.Error):
            store._db.execute("PRAGMA cache_size=-65536")
    out = dict(imp.counts)
    out.update(groups=len({g for g, _ in imp.rater_group.values()}), raters=len(imp.rater_group))
    return out
