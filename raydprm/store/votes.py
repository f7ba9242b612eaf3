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
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from raydprm.errors import RaydprmError

__all__ = ["VoteError", "Vote", "item_id", "validate_votes", "VOTE_KEYS", "dedupe", "same_or_raise"]

VOTE_KEYS = frozenset({"vote_id", "prompt", "response", "persona", "label", "dist", "weight", "ts", "source"})
MAX_ID_CHARS = 256
SUM_TOL = 1e-6


class VoteError(RaydprmError, ValueError):
    """A vote breaks a rule; nothing of its batch was written."""

    def __init__(self, vote_id: Any, index: int, rule: str, detail: str, field: str = "",
                 known: tuple[str, ...] = ()) -> None:
        self.vote_id, self.index, self.rule, self.detail = vote_id, index, rule, detail
        self.field, self.known = field, tuple(known)  # the vote's field at fault; what the store has instead
        super().__init__(f"vote {vote_id!r} (#{index} of the batch) refused by rule '{rule}': {detail}; "
                         "nothing of this batch was written")

    def __reduce__(self):  # picklable (Ray sends it back to the caller)
        return (type(self), (self.vote_id, self.index, self.rule, self.detail, self.field, self.known))


def name_list(names: Sequence[str], most: int = 20) -> str:
    """``a, b, c`` (at most ``most`` names, then how many in all)."""
    names = list(names)
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "") if names else "none"


class Vote(NamedTuple):
    """A validated vote. ``label`` is the index for a one-hot vote, else None and ``dist`` is set.

    The first eight fields are the columns of a row of the vote log (``dist_json`` is
    ``dist`` as JSON text); :attr:`log_row` is that row.
    """

    vote_id: str
    item_id: str
    persona: str
    label: int | None
    dist_json: str | None
    weight: float
    ts: float
    source: str
    prompt: str
    response: str
    dist: tuple[float, ...] | None

    @property
    def log_row(self) -> tuple[str, str, str, int | None, str | None, float, float, str]:
        """(vote_id, item_id, persona, label, dist_json, weight, ts, source): the vote log's columns."""
        return (self.vote_id, self.item_id, self.persona, self.label, self.dist_json, self.weight, self.ts,
                self.source)


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
    append = out.append
    ids: dict[tuple[str, str], str] = {}  # item ids of this batch (items repeat across votes)
    for i, v in enumerate(votes):
        if type(v) is not dict and not isinstance(v, Mapping):
            raise VoteError(None, i, "vote is a mapping", f"got {type(v).__name__}")
        vid = v.get("vote_id")
        if type(vid) is not str or not vid:
            raise VoteError(vid, i, "vote_id is a non-empty string", f"got {vid!r}")
        if len(vid) > MAX_ID_CHARS:
            raise VoteError(vid, i, "vote_id length", f"{len(vid)} chars > {MAX_ID_CHARS}")
        if not VOTE_KEYS.issuperset(v):
            extra = sorted(set(v) - VOTE_KEYS)
            raise VoteError(vid, i, "known fields only", f"unknown fields {extra}; allowed: {sorted(VOTE_KEYS)}")
        prompt, response = v.get("prompt"), v.get("response")
        if type(prompt) is not str or type(response) is not str:
            _text_error(vid, i, prompt, response, max_text_chars)
        iid = ids.get((prompt, response))
        if iid is None:  # first vote of the batch on this item: check its texts once
            if (not prompt or not response or prompt.isspace() or response.isspace()
                    or len(prompt) > max_text_chars or len(response) > max_text_chars):
                _text_error(vid, i, prompt, response, max_text_chars)
            iid = ids[(prompt, response)] = item_id(prompt, response)
        persona = v.get("persona")
        if persona not in personas:
            raise VoteError(vid, i, "known persona", f"persona {persona!r} is not registered in this store; its "
                            f"personas (rater groups): {name_list(personas)}; name one of them, or register a new "
                            "annotator first (add_persona)", field="persona", known=tuple(personas))
        label, dist = v.get("label"), v.get("dist")
        lab: int | None = None
        d: tuple[float, ...] | None = None
        if type(label) is int and dist is None and 0 <= label < num_labels:
            lab = label  # the common case, checked in one line
        elif (label is None) == (dist is None):
            raise VoteError(vid, i, "exactly one of label or dist",
                            "give a label (name or index) or a soft dist, not both/neither")
        elif label is not None:
            lab = _label(vid, i, label, labels, label_index)
        else:
            d = _dist(vid, i, dist, num_labels)
        weight = v.get("weight", 1.0)
        if type(weight) is not float or not (0.0 <= weight < math.inf):
            if not _finite(weight) or weight < 0:
                raise VoteError(vid, i, "weight is finite and >= 0", f"got {weight!r}")
            weight = float(weight)
        ts = v.get("ts")
        if ts is None:
            ts = now
        elif type(ts) is not float or ts - ts != 0.0:  # (x - x != 0 catches NaN and infinities)
            if not _finite(ts):
                raise VoteError(vid, i, "ts is a finite number of seconds", f"got {ts!r}")
            ts = float(ts)
        source = v.get("source", "api")
        if type(source) is not str or len(source) > MAX_ID_CHARS:
            raise VoteError(vid, i, "source is a short string", f"got {source!r}")
        append(Vote(vid, iid, persona, lab, None if d is None else json.dumps(d), weight, ts, source, prompt,
                    response, d))
    return out


def _text_error(vid: Any, i: int, prompt: Any, response: Any, max_text_chars: int) -> None:
    for name, text in (("prompt", prompt), ("response", response)):
        if not isinstance(text, str):
            raise VoteError(vid, i, f"{name} is a string", f"got {type(text).__name__}")
        if not text.strip():
            raise VoteError(vid, i, f"{name} is not empty", f"{name} is empty or whitespace")
        if len(text) > max_text_chars:
            raise VoteError(vid, i, f"{name} length", f"{len(text)} chars > max_text_chars={max_text_chars}")


def _label(vid: Any, i: int, label: Any, labels: Sequence[str], label_index: Mapping[str, int]) -> int:
    if isinstance(label, str):
        if label not in label_index:
            raise VoteError(vid, i, "known label", f"label {label!r} is unknown; known: {', '.join(labels)}")
        return label_index[label]
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(labels):
            raise VoteError(vid, i, "known label", f"label index {label} is outside 0..{len(labels) - 1}")
        return int(label)
    raise VoteError(vid, i, "known label", f"label must be a name or an index, got {label!r}")


def _dist(vid: Any, i: int, dist: Any, num_labels: int) -> tuple[float, ...]:
    if isinstance(dist, (str, bytes, Mapping)) or not hasattr(dist, "__len__"):
        raise VoteError(vid, i, "dist is a list of numbers", f"got {type(dist).__name__}")
    if len(dist) != num_labels:
        raise VoteError(vid, i, "dist length", f"dist has {len(dist)} entries, the store has {num_labels} labels")
    try:
        d = tuple(float(x) for x in dist)
    except (TypeError, ValueError):
        raise VoteError(vid, i, "dist is a list of numbers", f"got {list(dist)!r}") from None
    if not all(math.isfinite(x) for x in d):
        raise VoteError(vid, i, "dist is finite", f"dist contains NaN or infinity: {list(d)}")
    if any(x < 0 for x in d):
        raise VoteError(vid, i, "dist is non-negative", f"dist has negative entries: {list(d)}")
    if abs(sum(d) - 1.0) > SUM_TOL:
        raise VoteError(vid, i, "dist sums to 1", f"dist sums to {sum(d)!r}")
    return d


def same_or_raise(index: int, v: Vote, old: tuple) -> None:
    """Vote ids are immutable: ``old`` = (item_id, persona, label, dist, weight) of the id's vote."""
    if (v.item_id, v.persona, v.label, v.dist, v.weight) != tuple(old):
        raise VoteError(v.vote_id, index, "vote ids are immutable",
                        "this vote id is already used by a vote with different content")


def dedupe(vs: Sequence[Vote]) -> tuple[dict[str, Vote], int]:
    """{vote id: vote} of a validated batch, keeping the first of an id repeated in it (the others
    must be identical), and the number of repeats."""
    batch: dict[str, Vote] = {v.vote_id: v for v in vs}
    dup = len(vs) - len(batch)
    if dup:
        batch = {}
        for i, v in enumerate(vs):
            first = batch.setdefault(v.vote_id, v)
            if first is not v:
                same_or_raise(i, v, (first.item_id, first.persona, first.label, first.dist, first.weight))
    return batch, dup
