"""The reward service's HTTP routes in-process (FastAPI TestClient; no Ray): a real DPRM
scores, a real SQLite store ingests; every kind of bad request gets a 4xx naming the field."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

from raydprm.config import LabelsConfig
from raydprm.models.dprm import DPRM, label_scale_from_config
from raydprm.serve.http import build_http_app, field_name, token_digest
from raydprm.serve.schemas import make_schemas
from raydprm.store import PreferenceStore

SCALE = label_scale_from_config(LabelsConfig())
NAMES = tuple(SCALE.names)
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def model(tiny_kit):
    torch.manual_seed(0)
    return DPRM.from_backbone("tiny-opt", SCALE, max_length=64)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = PreferenceStore(tmp_path_factory.mktemp("store") / "store.db", labels=NAMES)
    yield s
    s.close()


def _client(model, store, token=TOKEN, with_store=True):
    async def score(items):
        out = model.score([p for p, _ in items], [r for _, r in items])
        return out.to_items(NAMES)

    async def votes(vs):
        recs = [{"vote_id": v.vote_id or f"t-{i}-{v.prompt}", "prompt": v.prompt, "response": v.response,
                 "persona": v.persona, "label": v.label_index} for i, v in enumerate(vs)]
        out = store.add_votes(recs)
        return {"accepted": out["added"], "duplicates": out["duplicates"]}

    app = build_http_app(make_schemas(4, 50, NAMES), NAMES, SCALE.rewards, "expected", "tiny", score,
                         votes if with_store else None, token_digest(token), max_body_bytes=4096)
    return TestClient(app)


@pytest.fixture(scope="module")
def client(model, store):
    return _client(model, store)


def test_serve_http_score_roundtrip_matches_model(client, model):
    items = [{"prompt": "Q: a ?\nA:", "response": " yes ."}, {"prompt": "Q: b ?\nA:", "response": " no"}]
    r = client.post("/score", json={"items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    ref = model.score([i["prompt"] for i in items], [i["response"] for i in items])
    for k, row in enumerate(res):
        assert list(row["distribution"]) == list(NAMES)
        assert sum(row["distribution"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["expected_reward"] == pytest.approx(float(ref.expected[k]), abs=1e-5)
        assert row["reward"] == pytest.approx(row["expected_reward"])
        assert row["entropy"] == pytest.approx(float(ref.entropy[k]), abs=1e-5)


def test_serve_http_healthz_and_labels(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "tiny", "labels": 6}
    lab = client.get("/labels").json()
    assert lab["labels"] == list(NAMES) and lab["rewards"] == list(SCALE.rewards) and lab["scalar"] == "expected"


BAD_SCORE = [
    ("{not json", 400, "body", "malformed JSON"),
    ("", 422, "body", "JSON object body is required"),
    ("[1, 2]", 422, "body", "dictionary"),
    ("{}", 422, "items", "Field required"),
    ('{"items": "x"}', 422, "items", "valid list"),
    ('{"items": []}', 422, "items", "at least 1"),
    ('{"items": [' + ",".join(['{"prompt": "p", "response": "r"}'] * 5) + "]}", 422, "items", "at most 4"),
    ('{"items": [{"prompt": "p"}]}', 422, "items[0].response", "Field required"),
    ('{"items": [{"prompt": 3, "response": "r"}]}', 422, "items[0].prompt", "valid string"),
    ('{"items": [{"prompt": "", "response": "r"}]}', 422, "items[0].prompt", "at least 1"),
    ('{"items": [{"prompt": "' + "x" * 51 + '", "response": "r"}]}', 422, "items[0].prompt", "at most 50"),
    ('{"items": [{"prompt": "p", "response": "r", "extra": 1}]}', 422, "items[0].extra", "Extra inputs"),
    ('{"items": [{"prompt": "p", "response": "' + "y" * 5000 + '"}]}', 413, "body", "larger than"),
]


@pytest.mark.parametrize("body,status,field,msg", BAD_SCORE, ids=[f"{b[2]}-{b[1]}-{i}" for i, b in enumerate(BAD_SCORE)])
def test_serve_http_bad_score_requests_are_4xx_naming_the_field(client, body, status, field, msg):
    r = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert err["errors"][0]["field"] == field
    assert msg in err["errors"][0]["message"] and field in err["error"]
    assert client.get("/healthz").status_code == 200  # still serving


def test_serve_http_votes_need_a_valid_bearer_token(client, store):
    body = {"votes": [{"prompt": "Q: c ?\nA:", "response": " maybe", "label": "neutral_harmless"}]}
    r = client.post("/votes", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/votes", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/votes", json=body, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    # unauthenticated garbage is refused before it is parsed
    assert client.post("/votes", content="{garbage", headers={"content-type": "application/json"}).status_code == 401
    before = store.count_votes()
    ok = client.post("/votes", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"accepted": 1, "duplicates": 0}
    assert store.count_votes() == before + 1
    assert store.counts("Q: c ?\nA:", " maybe")["anonymous"][1] == 1.0


def test_serve_http_bad_votes_are_4xx_and_write_nothing(client, store):
    h = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    before = store.count_votes()
    cases = [
        ('{"votes": [{"prompt": "p", "response": "r", "label": "great"}]}', 422, "votes[0].label", "unknown label"),
        ('{"votes": [{"prompt": "p", "response": "r", "label": 9}]}', 422, "votes[0].label", "out of range"),
        ('{"votes": [{"prompt": "p", "response": "r"}]}', 422, "votes[0].label", "Field required"),
        ('{"votes": [{"prompt": "p", "response": "r", "label": 1.5}]}', 422, "votes[0].label", "got float"),
        ('{"votes": []}', 422, "votes", "at least 1"),
        ("{x", 400, "body", "malformed JSON"),
        # passes the schema, refused by the store (unregistered persona): 400, nothing written
        ('{"votes": [{"prompt": "p", "response": "r", "label": 0, "persona": "martian"}]}', 400, "body", "martian"),
    ]
    for body, status, field, msg in cases:
        r = client.post("/votes", content=body, headers=h)
        assert r.status_code == status, (body, r.text)
        assert r.json()["errors"][0]["field"] == field and msg in r.json()["error"]
    assert store.count_votes() == before


def test_serve_http_votes_off_without_token_or_store(model, store):
    body = {"votes": [{"prompt": "p", "response": "r", "label": 0}]}
    c = _client(model, store, token="")
    r = c.post("/votes", json=body, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 401 and "no token is configured" in r.json()["error"]
    c2 = _client(model, store, with_store=False)
    r2 = c2.post("/votes", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r2.status_code == 503 and "no preference store" in r2.json()["error"]


def test_serve_field_names():
    assert field_name(("body", "items", 0, "prompt")) == "items[0].prompt"
    assert field_name(("body",)) == "body"
    assert field_name(()) == "body"
    assert json.loads(json.dumps({"ok": 1}))  # sanity of the json import used above
