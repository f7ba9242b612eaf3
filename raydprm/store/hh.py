"""Import of pairwise preference data in the Anthropic HH format as votes.

Each JSONL row has ``chosen`` and ``rejected`` transcripts that share a prefix ending in
the last ``"\\n\\nAssistant:"``; the prefix is the prompt, the rest the response. The
file is read with ``datasets`` (``load_dataset("json", data_files=...)``) from a local
path — no download.

A pair becomes two votes by the annotator ``persona`` (default ``"hh"``, registered on
import): the chosen response gets ``chosen_label`` and the rejected one
``rejected_label`` (defaults: ``helpful_harmless`` and ``unhelpful_harmless``; HH says
only which of two responses was preferred, so this mapping is a choice the user can
change) — and the pair itself is recorded for Bradley-Terry / DPO baselines
(:meth:`PreferenceStore.export_pairs`). Vote and pair ids are derived from the row
content, so re-importing a file adds nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from raydprm.store.preference_store import PreferenceStore, StoreError

__all__ = ["split_transcript", "import_hh"]

ASSISTANT = "\n\nAssistant:"


def split_transcript(text: str) -> tuple[str, str]:
    """(prompt up to and including the last ``"\\n\\nAssistant:"``, response after it)."""
    k = text.rfind(ASSISTANT)
    if k < 0:
        raise ValueError("transcript has no '\\n\\nAssistant:' turn")
    return text[: k + len(ASSISTANT)], text[k + len(ASSISTANT):]


def import_hh(store: PreferenceStore, path: str | os.PathLike[str], *, persona: str = "hh",
              chosen_label: int | str = "helpful_harmless", rejected_label: int | str = "unhelpful_harmless",
              limit: int | None = None, batch_size: int = 1000, ts: float | None = None,
              progress: bool = True) -> dict[str, int]:
    """Import an HH-format JSONL file into ``store``; returns counts of rows, votes and pairs added."""
    import datasets

    p = Path(path)
    if not p.is_file():
        raise StoreError(f"HH file '{p}' does not exist")
    try:
        ds = datasets.load_dataset("json", data_files=str(p), split="train", keep_in_memory=True)
    except Exception as e:  # datasets raises several types for malformed JSON
        raise StoreError(f"cannot read HH file '{p}' as JSON lines: {e}") from None
    for col in ("chosen", "rejected"):
        if col not in ds.column_names:
            raise StoreError(f"HH file '{p}' has no '{col}' column (columns: {', '.join(ds.column_names)})")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    store.add_persona(persona, "pairwise annotator of an imported HH-format file")
    added = {"rows": 0, "votes": 0, "duplicates": 0, "pairs": 0}
    votes: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []

    def flush() -> None:
        r = store.add_votes(votes)
        added["votes"] += r["added"]
        added["duplicates"] += r["duplicates"]
        added["pairs"] += store.add_pairs(pairs)
        votes.clear()
        pairs.clear()

    for i, row in enumerate(tqdm(ds, desc="import HH", unit="pair", disable=not progress)):
        try:
            prompt, chosen = split_transcript(row["chosen"])
            prompt_r, rejected = split_transcript(row["rejected"])
        except (ValueError, TypeError, AttributeError) as e:
            raise StoreError(f"HH file '{p}', row {i}: {e}") from None
        if prompt_r != prompt:
            raise StoreError(f"HH file '{p}', row {i}: chosen and rejected transcripts have different prompts")
        key = hashlib.sha256(f"{prompt}\0{chosen}\0{rejected}".encode()).hexdigest()[:24]
        extra = {} if ts is None else {"ts": ts}
        votes.append({"vote_id": f"hh-{key}-c", "prompt": prompt, "response": chosen, "persona": persona,
                      "label": chosen_label, "source": "hh", **extra})
        votes.append({"vote_id": f"hh-{key}-r", "prompt": prompt, "response": rejected, "persona": persona,
                      "label": rejected_label, "source": "hh", **extra})
        pairs.append({"pair_id": f"hh-{key}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
                      "annotator": persona, "source": "hh", **extra})
        added["rows"] += 1
        if len(votes) >= batch_size:
            flush()
    if votes:
        flush()
    return added
