"""A store created by `raydprm store import` holds only its imported rater groups (no `anonymous`,
the default persona of a vote): a client that posts a vote without a persona, or with one the store
does not have, gets one 400 line naming the request's field and the store's groups (before: the
store's message about a vote id the server made up, pointing at `add_persona`, field `body`). The
votes go through the deployment's own `add_votes` (its Ray call to the store actor stood in for)."""

import functools
import types

import pytest
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError

from raydprm.cli import main
from raydprm.serve.app import RewardDeployment
from raydprm.serve.http import build_http_app, token_digest
from raydprm.serve.schemas import make_schemas
from raydprm.store import PreferenceStore
from tests.store.test_store_import import RACES, dices_rows, write_dices

TOKEN = "t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("imported")
    f = write_dices(d / "dices.csv", dices_rows())
    db = d / "dices.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices"]) == 0
    s = PreferenceStore(db)
    yield s
    s.close()


def _client(store):
    class Actor:  # the store actor's handle: a refused batch comes back as Ray's RayTaskError
        class add_votes:  # noqa: N801 - the shape of a Ray method handle
            @staticmethod
            async def remote(records):
                try:
                    return store.add_votes(records)
                except Exception as e:
                    raise RayTaskError("PreferenceStoreActor.add_votes", "Traceback ...", e) from None

    me = types.SimpleNamespace(_store_handle=lambda: Actor, _store_name="preference_store")
    votes = functools.partial(RewardDeployment.func_or_class.add_votes, me)
    names = store.labels

    async def score(items, weights=None):
        return []

    return TestClient(build_http_app(make_schemas(4, 500, tuple(names)), names, [1.0, 0.0, -1.0][:len(names)],
                                     "expected", "m", score, votes, token_digest(TOKEN)),
                      raise_server_exceptions=False)


def test_a_vote_without_a_group_or_with_an_unknown_one_is_one_400_naming_the_stores_groups(imported):
    client = _client(imported)
    before = imported.stats()["votes"]
    label = imported.labels[0]
    groups = ", ".join(imported.personas)
    assert sorted(imported.personas) == sorted(RACES)
    cases = {None: "'anonymous' (the default of a vote without 'persona')", "Martian": "'Martian'"}
    for persona, said in cases.items():
        vote = {"prompt": "p", "response": "r", "label": label} | ({"persona": persona} if persona else {})
        r = client.post("/votes", json={"votes": [{"prompt": "p", "response": "ok", "label": label,
                                                    "persona": RACES[0]}, vote]}, headers=AUTH)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["errors"] == [{"field": "votes[1].persona", "message": (
            f"persona {said} is not a rater group of the preference store; its groups: {groups}; name one of them "
            "in 'persona'; nothing of this batch was written")}]
        assert body["error"] == f"votes[1].persona: {body['errors'][0]['message']}" and "\n" not in body["error"]
    assert imported.stats()["votes"] == before  # the good vote of the batch was not written either
    r = client.post("/votes", json={"votes": [{"prompt": "p", "response": "ok", "label": label, "persona": RACES[1]}]},
                    headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 1  # a named group is accepted
