"""Validation of incoming votes: every rule a vote must satisfy, with errors naming the
vote and the rule.

A vote is a dict with

* ``vote_id``  (str, required, <= 256 chars) — idempotency key: re-sending it is a no-op;
* ``prompt``, ``response`` (non-empty str, at most ``max_text_chars`` each);
* ``persona``  (a persona / annotator id known to the store);
* exactly one of ``label`` (label name or index) or ``dist`` (soft label: L finite,
  non-negative numbers summing to 1 within 1e-6);
* optional ``weight`` (finite, >= 0; default 1), ``ts`` (finite seconds; default now),
  ``source`` (str; default "api").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raydprm.errors import RaydprmError

__all__ = ["VoteError", "Vote", "item_id", "validate_votes", "VOTE_KEYS"]

VOTE_KEYS = frozenset({"vote_id", "prompt", "response", "persona", "label", "dist", "weight", "ts", "source"})
MAX_ID_CHARS = 256
SUM_TOL = 1e-6


class VoteError(RaydprmError, ValueError):
    """A vote breaks a rule; nothing of its batch was written."""

    def __init__(self, vote_id: Any, index: int, rule: str, detail: str) -> None:
        self.vote_id, self.index, self.rule = vote_id, index, rule
        super().__init__(f"vote {vote_id!r} (#{index} of the batch) refused by rule '{rule}': {detail}; "
                         "nothing of this batch was written")


@dataclass(frozen=True)
class Vote:
    """A validated vote. ``label`` is the index for a one-hot vote, else None and ``dist`` is set."""

    vote_id: str
    item_id: str
    prompt: str
    response: str
    persona: str
    label: int | None
    dist: tuple[float, ...] | None
    weight: float
    ts: float
    source: str

    def probs(self, num_labels: int) -> list[float]:
        """The vote as a probability row (L,)."""
        if self.dist is not None:
            return list(self.dist)
        row = [0.0] * num_labels
        row[self.label] = 1.0
        return row


def item_id(prompt: str, response: str) -> str:
    """Stable content-hash id of a (prompt, response) item (32 hex chars of SHA-256)."""
    return hashlib.sha256(prompt.encode("utf-8") + b"\x00" + response.encode("utf-8")).hexdigest()[:32]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_votes(votes: Sequence[Mapping[str, Any]], *, labels: Sequence[str], label_index: Mapping[str, int],
                   personas: Mapping[str, Any], max_text_chars: int, now: float) -> list[Vote]:
    """Check every vote of a batch; the first broken rule raises :class:`VoteError`."""
    if isinstance(votes, Mapping) or isinstance(votes, (str, bytes)):
        raise RaydprmError("add_votes takes a list of vote dicts, not a single vote")
    num_labels = len(labels)
    out: list[Vote] = []
    for i, v in enumerate(votes):
        if not isinstance(v, Mapping):
            raise VoteError(None, i, "vote is a mapping", f"got {type(v).__name__}")
        vid = v.get("vote_id")

        def err(rule: str, detail: str, _vid=vid, _i=i) -> VoteError:
            return VoteError(_vid, _i, rule, detail)

        if not isinstance(vid, str) or not vid:
            raise err("vote_id is a non-empty string", f"got {vid!r}")
        if len(vid) > MAX_ID_CHARS:
            raise err("vote_id length", f"{len(vid)} chars > {MAX_ID_CHARS}")
        extra = v.keys() - VOTE_KEYS
        if extra:
            raise err("known fields only", f"unknown fields {sorted(extra)}; allowed: {sorted(VOTE_KEYS)}")
        prompt, response = v.get("prompt"), v.get("response")
        for name, text in (("prompt", prompt), ("response", response)):
            if not isinstance(text, str):
                raise err(f"{name} is a string", f"got {type(text).__name__}")
            if not text.strip():
                raise err(f"{name} is not empty", f"{name} is empty or whitespace")
            if len(text) > max_text_chars:
                raise err(f"{name} length", f"{len(text)} chars > max_text_chars={max_text_chars}")
        persona = v.get("persona")
        if persona not in personas:
            raise err("known persona", f"persona {persona!r} is not registered (known: {', '.join(personas)}; "
                      "register new annotators with add_persona)")
        label, dist = v.get("label"), v.get("dist")
        if (label is None) == (dist is None):
            raise err("exactly one of label or dist", "give a label (name or index) or a soft dist, not both/neither")
        lab: int | None = None
        d: tuple[float, ...] | None = None
        if label is not None:
            if isinstance(label, str):
                if label not in label_index:
                    raise err("known label", f"label {label!r} is unknown; known: {', '.join(labels)}")
                lab = label_index[label]
            elif isinstance(label, int) and not isinstance(label, bool):
                if not 0 <= label < num_labels:
                    raise err("known label", f"label index {label} is outside 0..{num_labels - 1}")
                lab = int(label)
            else:
                raise err("known label", f"label must be a name or an index, got {label!r}")
        else:
            if isinstance(dist, (str, bytes, Mapping)) or not hasattr(dist, "__len__"):
                raise err("dist is a list of numbers", f"got {type(dist).__name__}")
            if len(dist) != num_labels:
                raise err("dist length", f"dist has {len(dist)} entries, the store has {num_labels} labels")
            try:
                d = tuple(float(x) for x in dist)
            except (TypeError, ValueError):
                raise err("dist is a list of numbers", f"got {list(dist)!r}") from None
            if not all(math.isfinite(x) for x in d):
                raise err("dist is finite", f"dist contains NaN or infinity: {list(d)}")
            if any(x < 0 for x in d):
                raise err("dist is non-negative", f"dist has negative entries: {list(d)}")
            if abs(sum(d) - 1.0) > SUM_TOL:
                raise err("dist sums to 1", f"dist sums to {sum(d)!r}")
        weight = v.get("weight", 1.0)
        if not _finite(weight) or weight < 0:
            raise err("weight is finite and >= 0", f"got {weight!r}")
        ts = v.get("ts")
        if ts is None:
            ts = now
        elif not _finite(ts):
            raise err("ts is a finite number of seconds", f"got {ts!r}")
        source = v.get("source", "api")
        if not isinstance(source, str) or len(source) > MAX_ID_CHARS:
            raise err("source is a short string", f"got {source!r}")
        out.append(Vote(vid, item_id(prompt, response), prompt, response, persona, lab, d,
                        float(weight), float(ts), source))
    return out
