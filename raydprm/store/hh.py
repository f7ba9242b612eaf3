"""Import of pairwise preference data in the Anthropic HH format as votes.

Each JSONL line holds an object with ``chosen`` and ``rejected`` transcripts that share a
prefix ending in the last ``"\\n\\nAssistant:"``; the prefix is the prompt, the rest the
response. Blank lines are skipped. The file is read line by line from a local path (no
download), so every error names the file's 1-based line and the field.

A pair becomes two votes by the annotator ``persona`` (default ``"hh"``, registered on
import): the chosen response gets ``chosen_label`` and the rejected one
``rejected_label`` (defaults: ``helpful_harmless`` and ``unhelpful_harmless``; HH says
only which of two responses was preferred, so this mapping is a choice the user can
change) — and the pair itself is recorded for Bradley-Terry / DPO baselines
(:meth:`PreferenceStore.export_pairs`). Vote and pair ids are derived from the row
content, so re-importing a file adds nothing.

An import is all or nothing: the whole file is written in one transaction
(:meth:`PreferenceStore.atomic`), so an error on any line leaves the store exactly as it
was (the persona is not even registered).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from raydprm.store.preference_store import PreferenceStore, StoreError
from raydprm.store.votes import VoteError

__all__ = ["split_transcript", "import_hh", "read_hh_lines", "HHLineError"]

ASSISTANT = "\n\nAssistant:"


class HHLineError(StoreError):
    """A line of an HH file is not a valid pair; nothing of the file was imported."""


def split_transcript(text: str) -> tuple[str, str]:
    """(prompt up to and including the last ``"\\n\\nAssistant:"``, response after it)."""
    k = text.rfind(ASSISTANT)
    if k < 0:
        raise ValueError("transcript has no '\\n\\nAssistant:' turn")
    return text[: k + len(ASSISTANT)], text[k + len(ASSISTANT):]


class _LongInt(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > 64:  # no field of an HH row is a number; refuse before int() would
        raise _LongInt(f"a JSON integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _bad(path: Path, line: int, field: str | None, problem: str) -> HHLineError:
    where = f"line {line}" + (f", field '{field}'" if field else "")
    return HHLineError(f"HH file '{path}', {where}: {problem}; nothing was imported")


def read_hh_lines(path: str | os.PathLike[str], limit: int | None = None
                  ) -> Iterator[tuple[int, str, str, str]]:
    """(1-based line, prompt, chosen response, rejected response) of each pair of the file,
    checking each line as it is read; the first bad line raises :class:`HHLineError`."""
    p = Path(path)
    n = 0
    try:
        f = open(p, "rb")
    except OSError as e:
        raise StoreError(f"cannot read HH file '{p}': {e.strerror or e}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if limit is not None and n >= limit:
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _bad(p, lineno, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text, parse_int=_parse_int)
            except _LongInt as e:
                raise _bad(p, lineno, None, str(e)) from None
            except json.JSONDecodeError as e:
                raise _bad(p, lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
                raise _bad(p, lineno, None, f"unreadable JSON ({type(e).__name__}: {str(e)[:80]})") from None
            if not isinstance(row, dict):
                raise _bad(p, lineno, None, f"expected a JSON object with 'chosen' and 'rejected', got "
                           f"{type(row).__name__}")
            parts = {}
            for field in ("chosen", "rejected"):
                if field not in row:
                    raise _bad(p, lineno, field, f"missing (the line has {', '.join(map(repr, row)) or 'no fields'})")
                value = row[field]
                if not isinstance(value, str):
                    raise _bad(p, lineno, field, f"must be a string, got {type(value).__name__}")
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:  # JSON's "\ud800" escape: a lone surrogate, not text
                    raise _bad(p, lineno, field, f"contains a lone surrogate (U+{ord(value[e.start]):04X} at "
                               f"character {e.start + 1}), which is not valid Unicode text") from None
                try:
                    parts[field] = split_transcript(value)
                except ValueError as e:
                    raise _bad(p, lineno, field, str(e)) from None
            (prompt, chosen), (prompt_r, rejected) = parts["chosen"], parts["rejected"]
            if prompt_r != prompt:
                raise _bad(p, lineno, "rejected", "its prompt (the text up to the last Assistant turn) differs "
                           "from the chosen transcript's")
            n += 1
            yield lineno, prompt, chosen, rejected


def import_hh(store: PreferenceStore, path: str | os.PathLike[str], *, persona: str = "hh",
              chosen_label: int | str = "helpful_harmless", rejected_label: int | str = "unhelpful_harmless",
              limit: int | None = None, batch_size: int = 1000, ts: float | None = None,
              progress: bool = True) -> dict[str, int]:
    """Import an HH-format JSONL file into ``store`` in one transaction; returns counts of
    rows, votes and pairs added. Any error (a bad line, a refused vote) raises a
    :class:`StoreError` naming the line and the field, and nothing is written."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"HH file '{p}' does not exist")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise StoreError(f"limit must be an integer >= 1, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise StoreError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for name, label in (("chosen_label", chosen_label), ("rejected_label", rejected_label)):
        ok = (label in store.labels if isinstance(label, str) else
              isinstance(label, int) and not isinstance(label, bool) and 0 <= label < store.num_labels)
        if not ok:
            raise StoreError(f"{name} {label!r} is not a label of the store (names: {', '.join(store.labels)}; "
                             f"or an index 0..{store.num_labels - 1})")
    added = {"rows": 0, "votes": 0, "duplicates": 0, "pairs": 0}
    votes: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    lines: list[int] = []  # the file line of each pair of the current batch

    def flush() -> None:
        try:
            r = store.add_votes(votes)
        except VoteError as e:  # two votes per line: chosen first
            field = "chosen" if e.index % 2 == 0 else "rejected"
            raise _bad(p, lines[e.index // 2], field, f"refused by rule '{e.rule}': {e.detail}") from None
        added["votes"] += r["added"]
        added["duplicates"] += r["duplicates"]
        added["pairs"] += store.add_pairs(pairs)
        votes.clear()
        pairs.clear()
        lines.clear()

    with store.atomic(f"the import of HH file '{p}'"):
        store.add_persona(persona, "pairwise annotator of an imported HH-format file")
        for lineno, prompt, chosen, rejected in tqdm(read_hh_lines(p, limit), desc="import HH", unit="pair",
                                                      disable=None if progress else True):  # None: TTY only
            key = hashlib.sha256(f"{prompt}\0{chosen}\0{rejected}".encode()).hexdigest()[:24]
            extra = {} if ts is None else {"ts": ts}
            votes.append({"vote_id": f"hh-{key}-c", "prompt": prompt, "response": chosen, "persona": persona,
                          "label": chosen_label, "source": "hh", **extra})
            votes.append({"vote_id": f"hh-{key}-r", "prompt": prompt, "response": rejected, "persona": persona,
                          "label": rejected_label, "source": "hh", **extra})
            pairs.append({"pair_id": f"hh-{key}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
                          "annotator": persona, "source": "hh", **extra})
            lines.append(lineno)
            added["rows"] += 1
            if len(votes) >= batch_size:
                flush()
        if votes:
            flush()
    return added
