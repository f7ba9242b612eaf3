"""/healthz reports a dead preference store actor (issue 25, part 4): 503 naming it, not "ok"."""

import asyncio
import sys
import time
import types

import pytest
from fastapi.testclient import TestClient

from raydprm.serve.http import build_http_app, token_digest
from raydprm.serve.schemas import make_schemas

NAMES = ("bad", "good")


def _app(health):
    async def score(items):
        return [{} for _ in items]

    async def votes(vs):
        return {"accepted": 0, "duplicates": 0}

    return TestClient(build_http_app(make_schemas(4, 50, NAMES), NAMES, [0.0, 1.0], "expected", "tiny", score, votes,
                                     token_digest("t"), health_fn=health))


def test_healthz_is_503_naming_what_is_down_and_ok_otherwise():
    state = {"problem": None}

    async def health():
        return state["problem"]

    client = _app(health)
    assert client.get("/healthz").json() == {"status": "ok", "model": "tiny", "labels": 2}
    state["problem"] = "the preference store actor 'store' is not reachable"
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "unavailable", "model": "tiny", "labels": 2,
                                                 "error": "the preference store actor 'store' is not reachable"}


class Store:
    def ping(self) -> int:
        return 1


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="test_serve_health")
    yield
    ray.shutdown()


@pytest.mark.ray
def test_store_health_sees_the_store_actor_die(local_ray):
    import ray

    from raydprm.serve.app import RewardDeployment

    cls = RewardDeployment.func_or_class
    actor = ray.remote(Store).options(name="store", namespace="test_serve_health").remote()
    ray.get(actor.ping.remote())
    dep = types.SimpleNamespace(_store_name="store", _store_ns="test_serve_health", _store=None)
    dep._store_handle = types.MethodType(cls._store_handle, dep)
    health = types.MethodType(cls.store_health, dep)
    assert asyncio.run(health()) is None
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    problem = None
    while problem is None and time.monotonic() < deadline:
        problem = asyncio.run(health())
    assert problem in ("the preference store actor 'store' is not reachable",
                       "the preference store actor 'store' is not running")
    assert asyncio.run(types.MethodType(cls.store_health, types.SimpleNamespace(_store_name=None))()) is None
