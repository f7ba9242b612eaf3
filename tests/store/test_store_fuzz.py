"""Hypothesis fuzzing of the vote validator and the HH importer: every input is either
accepted (and the log grows by exactly what was reported) or refused with one
RaydprmError line and nothing written; never another exception, never a partial write."""

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raydprm.errors import RaydprmError
from raydprm.store import PreferenceStore
from raydprm.store.hh import import_hh

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ANY = st.none() | st.booleans() | st.integers(-(10 ** 30), 10 ** 30) | st.floats() | st.text(max_size=8) | st.binary(
    max_size=4)
TEXT = st.sampled_from(["Q: a ?\nA:", " yes .", " no .", "", "  ", "x" * 70]) | ANY
VOTE = st.fixed_dictionaries(
    {"vote_id": st.sampled_from(["a", "b", "c"]) | ANY, "prompt": TEXT, "response": TEXT},
    optional={"persona": st.sampled_from(["ceo", "teacher", "pirate", ""]) | ANY,
              "label": st.integers(-2, 7) | st.sampled_from(["helpful_harmless", "nope"]) | ANY,
              "dist": st.lists(st.floats(-1, 2) | ANY, max_size=7) | ANY,
              "weight": st.floats() | ANY, "ts": st.floats() | ANY, "source": st.text(max_size=4) | ANY,
              "other": ANY})
VALID = st.fixed_dictionaries(
    {"vote_id": st.text("abcd", min_size=1, max_size=2), "prompt": st.sampled_from(["Q: a ?\nA:", "Q: b ?\nA:"]),
     "response": st.sampled_from([" yes .", " no ."]), "persona": st.sampled_from(["ceo", "teacher"]),
     "label": st.integers(0, 5)}, optional={"weight": st.floats(0, 5), "ts": st.floats(0, 1e4)})
BATCH = st.lists(st.one_of(VALID, VALID, VALID, VOTE, ANY), max_size=6) | ANY  # mostly valid votes, some not


def _state(s):
    return s.count_votes(), s.count_items(), s.stats()["items_with_votes"]


@FUZZ
@given(batch=BATCH)
def test_fuzz_vote_batches_are_all_or_nothing(tmp_path_factory, batch):
    s = _store(tmp_path_factory)
    before = _state(s)
    try:
        out = s.add_votes(batch)
    except RaydprmError as e:
        assert "\n" not in str(e)
        assert _state(s) == before  # nothing of a refused batch was written
        return
    assert s.count_votes() == before[0] + out["added"]
    # what was accepted is what a rebuild from the log gives
    items = [(v["prompt"], v["response"]) for v in batch if isinstance(v, dict)]
    if items:
        live = s.distributions(items, at=0.0)
        s.rebuild_posteriors()
        np.testing.assert_allclose(s.distributions(items, at=0.0), live, rtol=1e-9, atol=1e-12)


_STORES = {}


def _store(factory):
    if "s" not in _STORES:  # one store across examples: duplicates and id clashes get exercised
        _STORES["s"] = PreferenceStore(factory.mktemp("fuzz") / "votes.db", max_text_chars=64, synchronous="NORMAL")
    return _STORES["s"]


GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
LINE = (st.just(GOOD).map(json.dumps)
        | st.fixed_dictionaries({}, optional={"chosen": TEXT.map(lambda t: t if not isinstance(t, str) else
                                                                 "\n\nHuman: q\n\nAssistant:" + t),
                                              "rejected": TEXT, "x": ANY}).map(lambda d: json.dumps(d, default=repr))
        | st.text(max_size=30) | st.binary(max_size=30).map(lambda b: b.decode("latin-1")))


@settings(FUZZ, max_examples=100)
@given(lines=st.lists(LINE | st.binary(max_size=12), min_size=1, max_size=6), limit=st.none() | st.integers(-2, 4))
def test_fuzz_hh_import_is_all_or_nothing(tmp_path_factory, lines, limit):
    s = _store(tmp_path_factory)
    f = tmp_path_factory.mktemp("hh") / "hh.jsonl"
    f.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in lines))
    before = (*_state(s), s.stats()["pairs"], tuple(s.personas))
    try:
        out = import_hh(s, f, limit=limit, progress=False, batch_size=2)
    except RaydprmError as e:
        assert "\n" not in str(e)
        assert "line " in str(e) or "limit" in str(e) or "HH file" in str(e)
        assert (*_state(s), s.stats()["pairs"], tuple(s.personas)) == before
        return
    assert s.count_votes() == before[0] + out["votes"]
    assert out["votes"] + out["duplicates"] == 2 * out["rows"]
