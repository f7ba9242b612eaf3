"""Issue 14, finding 4: the HTTP app answers every bad input with a 4xx JSON body naming the
problem (deep JSON, huge integers, NaN, oversized chunked bodies), a bug with a logged JSON
500, an unreachable store with 503; plus Hypothesis fuzzing of both routes: "4xx or
success, never 5xx or a traceback, never a partial write"."""

import asyncio
import json
import logging

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raydprm.config import LabelsConfig
from raydprm.serve.http import Unavailable, build_http_app, json_depth, parse_json, token_digest
from raydprm.serve.schemas import make_schemas
from raydprm.store import PreferenceStore

NAMES = tuple(LabelsConfig().names)
TOKEN = "fuzz-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LIMIT = 64 << 10


async def _score(items):
    if any(p == "BOOM" for p, _ in items):
        raise RuntimeError("a bug in the model")
    return [{"distribution": dict.fromkeys(NAMES, 1 / len(NAMES)), "expected_reward": 0.0, "reward": 0.0,
             "entropy": 1.79} for _ in items]


def _app(store=None, score=_score, votes=None):
    async def add(vs):
        recs = [{"vote_id": v.vote_id or f"t-{i}-{v.prompt}-{v.response}", "prompt": v.prompt,
                 "response": v.response, "persona": v.persona, "label": v.label_index} for i, v in enumerate(vs)]
        out = store.add_votes(recs)
        return {"accepted": out["added"], "duplicates": out["duplicates"]}

    return build_http_app(make_schemas(8, 200, NAMES), NAMES, list(LabelsConfig().rewards), "expected", "fake",
                          score, votes or (add if store is not None else None), token_digest(TOKEN),
                          max_body_bytes=LIMIT)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = PreferenceStore(tmp_path_factory.mktemp("http") / "s.db", labels=NAMES)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(store):
    return TestClient(_app(store), raise_server_exceptions=False)


def _deep(n, open_="[", close="]"):
    return open_ * n + close * n


DEEP_OBJ = '{"a": ' * 1000 + "1" + "}" * 1000
HOSTILE = [
    ("/score", _deep(1000), "nested more than 16"),
    ("/score", DEEP_OBJ, "nested more than 16"),
    ("/score", '{"items": ' + _deep(1000) + "}", "nested more than 16"),
    ("/score", '{"items": [{"prompt": "p", "response": "r", "x": ' + '{"k": ' * 20 + "1" + "}" * 20 + "}]}",
     "nested more than 16"),
    ("/score", '{"items": ' + "9" * 5000 + "}", "5000 digits"),
    ("/score", '{"items": [{"prompt": "p", "response": "r"}], "n": -' + "1" * 4400 + "}", "4400 digits"),
    ("/score", '{"items": NaN}', "'NaN' is not a JSON number"),
    ("/score", '{"items": [{"prompt": "p", "response": "r", "w": Infinity}]}', "'Infinity' is not a JSON number"),
    ("/votes", '{"votes": [{"prompt": "p", "response": "r", "label": ' + "7" * 5000 + "}]}", "5000 digits"),
    ("/votes", '{"votes": ' + _deep(1000) + "}", "nested more than 16"),
]


@pytest.mark.parametrize("path,body,msg", HOSTILE, ids=[f"{p}-{m[:12]}-{i}" for i, (p, _, m) in enumerate(HOSTILE)])
def test_finding4_hostile_json_is_400_json_naming_the_problem(client, path, body, msg):
    r = client.post(path, content=body, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 400, r.text  # old code: 500 text/plain (RecursionError / ValueError)
    assert r.headers["content-type"] == "application/json"
    assert msg in r.json()["error"] and r.json()["errors"][0]["field"] == "body"
    assert client.get("/healthz").status_code == 200


def test_json_depth_ignores_brackets_in_strings_and_is_exact():
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 3) == 1
    assert json_depth(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[["}', 3) == 1  # an escaped quote inside the string
    assert json_depth(b"[[[]],[[[[]]]]]" * 3, 100) == 5
    assert json_depth(b"[" * 40 + b"]" * 40, 16) > 16
    assert parse_json(b'{"items": [1, 2, {"x": "]]]"}]}') == {"items": [1, 2, {"x": "]]]"}]}


def _asgi_post(app, path, chunks, headers=()):
    """POST ``chunks`` (an iterator) to ``app`` as a chunked body without Content-Length;
    returns (status, body, how many chunks the app pulled)."""
    pulled = 0
    it = iter(chunks)

    async def receive():
        nonlocal pulled
        for chunk in it:
            pulled += 1
            return {"type": "http.request", "body": chunk, "more_body": True}
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked"), *headers],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


@pytest.mark.parametrize("path", ["/score", "/votes"])
def test_finding4_chunked_body_is_not_read_past_the_limit(store, path):
    chunk = b" " * 1024
    n_total = 20 * LIMIT // 1024  # 20x the limit on offer
    status, body, pulled = _asgi_post(_app(store), path, (chunk for _ in range(n_total)),
                                      headers=[(b"authorization", AUTH["authorization"].encode())])
    assert status == 413 and "larger than" in body["error"]
    assert pulled <= LIMIT // 1024 + 1  # old code: read all 20x (a 300 MB body was buffered whole)


def test_a_bug_is_a_logged_json_500_not_plain_text(client, caplog):
    with caplog.at_level(logging.ERROR, logger="raydprm.serve"):
        r = client.post("/score", json={"items": [{"prompt": "BOOM", "response": "r"}]})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    eid = r.json()["error"].split("internal error ")[1].split()[0]
    assert any(eid in rec.getMessage() and rec.exc_info for rec in caplog.records)
    assert "a bug in the model" not in r.text  # internals stay in the log
    assert client.get("/healthz").status_code == 200


def test_unreachable_store_is_503():
    async def votes(vs):
        raise Unavailable("the preference store actor 'x' is not running")

    c = TestClient(_app(votes=votes), raise_server_exceptions=False)
    r = c.post("/votes", json={"votes": [{"prompt": "p", "response": "r", "label": 0}]}, headers=AUTH)
    assert r.status_code == 503 and "not running" in r.json()["error"]


# --------------------------------------------------------------------------- fuzzing

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(10 ** 40), 10 ** 40) | st.floats(allow_nan=False) | st.text(max_size=30)
JSON = st.recursive(JSON_SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                              max_size=4), max_leaves=20)
TEXT = st.text(max_size=12) | st.sampled_from(["p", "Q: hi ?\nA:", " ", ""]) | st.integers() | st.none()
VOTE = st.fixed_dictionaries({"prompt": TEXT, "response": TEXT},
                             optional={"label": st.sampled_from(NAMES) | st.integers(-3, 9) | JSON_SCALARS,
                                       "persona": st.sampled_from(["anonymous", "ceo", "pirate", ""]) | TEXT,
                                       "vote_id": st.text(min_size=1, max_size=10) | st.integers(),
                                       "extra": JSON_SCALARS})
ITEM = st.fixed_dictionaries({"prompt": TEXT, "response": TEXT}, optional={"x": JSON_SCALARS})
BODY = (st.fixed_dictionaries({"items": st.lists(ITEM, max_size=10) | JSON}).map(json.dumps)
        | st.fixed_dictionaries({"votes": st.lists(VOTE, max_size=10) | JSON}).map(json.dumps)
        | JSON.map(json.dumps) | st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(body=BODY, path=st.sampled_from(["/score", "/votes"]), auth=st.booleans())
def test_fuzz_http_is_4xx_or_success_never_5xx_nor_a_partial_write(client, store, body, path, auth):
    before = store.count_votes()
    r = client.post(path, content=body.encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json", **(AUTH if auth else {})})
    assert r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/json"
    assert "error" in r.json() or r.status_code == 200
    after = store.count_votes()
    if path == "/votes" and r.status_code == 200:
        assert after == before + r.json()["accepted"]
    else:
        assert after == before  # a refused batch writes nothing


def test_proxy_body_limit_answers_413_and_stops_reading(monkeypatch):
    """The middleware for Serve's proxy (which otherwise reads every body whole)."""
    from raydprm.serve.http import BodyLimit, proxy_middlewares

    seen = []

    async def inner(scope, receive, send):  # like Serve's proxy: reads everything it is given
        while True:
            m = await receive()
            seen.append(m["type"])
            if m["type"] == "http.disconnect" or not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    status, body, pulled = _asgi_post(BodyLimit(inner, LIMIT), "/score", (b" " * 1024 for _ in range(20 * 64)))
    assert status == 413 and "larger than" in body["error"]
    assert pulled == LIMIT // 1024 + 1 and seen[-1] == "http.disconnect"
    status, body, pulled = _asgi_post(BodyLimit(inner, LIMIT), "/score", iter([b"{}"]))
    assert status == 200 and pulled == 1
    monkeypatch.delenv("RAYDPRM_SERVE_MAX_BODY_BYTES", raising=False)
    assert proxy_middlewares() == []
    monkeypatch.setenv("RAYDPRM_SERVE_MAX_BODY_BYTES", "123")
    (mw,) = proxy_middlewares()
    assert mw.cls is BodyLimit and mw.kwargs == {"max_body_bytes": 123}
