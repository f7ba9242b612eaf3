"""Ray layer of the reward model: RewardActor pool == in-process scores, weight reload,
Ray Train (2 gloo workers), and the Ray Serve app end to end over loopback HTTP with
vote ingestion through the store actor. One Ray instance and one Serve app per module."""

import asyncio
import socket

import numpy as np
import pytest
import torch
from helpers import kill_actor

from raydprm.config import Config
from raydprm.core.label_scale import LabelScale
from raydprm.models.dprm import DPRM, label_scale_from_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CFG = Config()
SCALE = label_scale_from_config(CFG.labels)
PROMPTS = [f"Q: question {i} ?\nA:" for i in range(7)]
RESPONSES = [" yes ." * (1 + i % 3) for i in range(7)]
TOKEN = "ray-test-token"


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="raydprm-test")
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dirs(tiny_kit, tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    a = DPRM.from_backbone("tiny-opt", SCALE, max_length=64, seed=1)
    b = DPRM.from_backbone("tiny-opt", SCALE, max_length=64, seed=2)
    with torch.no_grad():
        b.head.bias.copy_(torch.tensor([2.0, 0, 0, 0, 0, -2.0]))
    return a.save(d / "a"), b.save(d / "b"), a, b


def test_reward_actor_pool_matches_in_process_and_reloads(ray_session, model_dirs):
    from raydprm.cluster.reward_actor import RewardPool

    dir_a, dir_b, a, b = model_dirs
    cfg = CFG.reward
    pool = RewardPool.create(str(dir_a), SCALE, cfg, num_replicas=2, num_cpus=0.5, max_restarts=1)
    cvar_cfg = CFG.override(["reward.scalar=cvar", "reward.cvar_alpha=0.3"]).reward
    cvar_pool = RewardPool.create(str(dir_a), SCALE, cvar_cfg, num_replicas=1, num_cpus=0.5)  # starts alongside
    try:
        out = pool.score(PROMPTS, RESPONSES)
        ref = a.score(PROMPTS, RESPONSES)
        assert out["distribution"].shape == (7, 6)
        np.testing.assert_allclose(out["distribution"], ref.distribution.numpy(), atol=1e-5)
        np.testing.assert_allclose(out["reward"], ref.expected.numpy(), atol=1e-5)  # reward.scalar = expected
        np.testing.assert_allclose(out["entropy"], ref.entropy.numpy(), atol=1e-5)
        assert out["version"] == 0
        # new weights on request: every replica, scores change to model b's
        assert pool.load_weights(str(dir_b)) == [1, 1]
        out_b = pool.score(PROMPTS, RESPONSES)
        np.testing.assert_allclose(out_b["reward"], b.score(PROMPTS, RESPONSES).expected.numpy(), atol=1e-5)
        assert out_b["version"] == 1
        # a replica that dies is replaced and loads what the pool last loaded (model b)

        kill_actor(pool.group.actors[1])
        np.testing.assert_allclose(pool.score(PROMPTS, RESPONSES)["reward"], out_b["reward"], atol=1e-5)
        assert pool.restarts == 1
        # or a state dict through the object store
        assert pool.load_state_dict(a.state_dict())[0] == 2
        np.testing.assert_allclose(pool.score(PROMPTS, RESPONSES)["reward"], ref.expected.numpy(), atol=1e-5)
        # a checkpoint with another label scale is refused, naming the problem
        bad = DPRM.from_backbone("tiny-opt", LabelScale.ordinal(6)).save(dir_a.parent / "ordinal")
        with pytest.raises(Exception, match="differs from the configured one"):
            pool.load_weights(str(bad))
        # the configured scalar readout: CVaR at alpha = 0.3
        cv = cvar_pool.score(PROMPTS[:3], RESPONSES[:3])
        ref_cv = a.score(PROMPTS[:3], RESPONSES[:3], scalar="cvar", cvar_alpha=0.3)
        np.testing.assert_allclose(cv["reward"], ref_cv.scalar.numpy(), atol=1e-5)
        assert np.all(cv["reward"] <= cv["expected"] + 1e-6)
    finally:
        pool.shutdown()
        cvar_pool.shutdown()


def test_reward_ray_train_two_gloo_workers(ray_session, tmp_path):
    """Ray Train (TorchTrainer, 2 gloo workers) fits the separable toy crowd and rank 0
    writes a loadable checkpoint. (A crowd-realistic 40-item set is too small for a
    held-out improvement to be a fact after a few steps; the separable set is.)"""
    from helpers import toy_records as _toy_records

    from raydprm.cluster.reward_train import train_reward_distributed
    from raydprm.train.reward_data import examples_from_records

    ex = examples_from_records(_toy_records(96), 6)
    cfg = CFG.override(["reward.num_workers=2", "reward.epochs=6", "reward.batch_size=16", "reward.lr=0.01",
                        "reward.patience=0", "reward.eval_fraction=0.25"]).reward
    res = train_reward_distributed(ex, scale=SCALE, reward_cfg=cfg, backbone="tiny-opt", out_dir=tmp_path,
                                   progress=False, cpus_per_worker=0.5)
    assert res.steps == 6 * 5 and len(res.history) == 6  # 72 training items / global batch 16 -> 5 steps
    assert res.best_metrics["ot_distance"] < 0.5 * res.history[0]["eval"]["ot_distance"]
    m = DPRM.load(res.best_dir, SCALE)  # rank 0 wrote a loadable checkpoint
    assert m.score(PROMPTS[:2], RESPONSES[:2]).distribution.shape == (2, 6)


# ----------------------------------------------------------------------------- Serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session, model_dirs, tmp_path_factory):
    import httpx

    from raydprm.cli.serve import STORE_ACTOR_NAME, start_store_actor
    from raydprm.serve.app import build_app, serve_app

    dir_a, _, a, _ = model_dirs
    store_path = tmp_path_factory.mktemp("serve") / "store.db"
    cfg = CFG.override([f"serve.port={_free_port()}", "serve.num_cpus=0.5", "serve.max_items=8",
                        "serve.max_text_chars=200", f"store.path={store_path}", "ray.namespace=raydprm-test"])
    store = start_store_actor(cfg).actor
    app = build_app(str(dir_a), SCALE, cfg.reward, cfg.serve, store_actor=STORE_ACTOR_NAME,
                    store_namespace="raydprm-test", token=TOKEN)
    serve_app(app, cfg.serve)
    with httpx.Client(base_url=f"http://127.0.0.1:{cfg.serve.port}", timeout=60) as c:
        yield c, a, store, cfg


def test_serve_app_roundtrip_matches_model(served):
    c, a, _, _ = served
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.get("/labels").json()["labels"] == list(SCALE.names)
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]
    r = c.post("/score", json={"items": items})
    assert r.status_code == 200, r.text
    ref = a.score(PROMPTS, RESPONSES)
    got = np.array([[row["distribution"][n] for n in SCALE.names] for row in r.json()["results"]])
    np.testing.assert_allclose(got, ref.distribution.numpy(), atol=1e-5)
    np.testing.assert_allclose([row["expected_reward"] for row in r.json()["results"]], ref.expected.numpy(),
                               atol=1e-5)


def test_serve_app_concurrent_requests_are_batched_and_all_succeed(served):
    import httpx

    c, a, _, _ = served

    async def run():
        async with httpx.AsyncClient(base_url=str(c.base_url), timeout=60) as ac:
            reqs = [ac.post("/score", json={"items": [{"prompt": PROMPTS[i % 7], "response": RESPONSES[i % 7]}]})
                    for i in range(32)]
            return await asyncio.gather(*reqs)

    rs = asyncio.run(run())
    assert [r.status_code for r in rs] == [200] * 32
    ref = a.score(PROMPTS, RESPONSES).expected.numpy()
    for i, r in enumerate(rs):  # batched with other requests, still this item's own score
        assert r.json()["results"][0]["expected_reward"] == pytest.approx(float(ref[i % 7]), abs=1e-5)


def test_serve_app_votes_auth_and_ingestion_through_the_store_actor(served):
    import ray

    c, _, store, _ = served
    body = {"votes": [{"prompt": "Q: tea ?\nA:", "response": " green tea is nice .", "label": "helpful_harmless",
                       "persona": "scientist", "vote_id": "v-1"},
                      {"prompt": "Q: tea ?\nA:", "response": " green tea is nice .", "label": 1}]}
    assert c.post("/votes", json=body).status_code == 401
    assert c.post("/votes", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    before = ray.get(store.count_votes.remote())
    r = c.post("/votes", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicates": 0}
    again = c.post("/votes", json={"votes": body["votes"][:1]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.json() == {"accepted": 0, "duplicates": 1}  # vote ids are idempotent
    assert ray.get(store.count_votes.remote()) == before + 2
    mu = ray.get(store.distribution.remote("Q: tea ?\nA:", " green tea is nice ."))
    assert mu[0] > mu[2] and mu[1] > mu[2]


@pytest.mark.parametrize("body,status,field", [
    ("{oops", 400, "body"),
    ('{"items": []}', 422, "items"),
    ('{"items": [{"prompt": "p"}]}', 422, "items[0].response"),
    ('{"items": [{"prompt": ["p"], "response": "r"}]}', 422, "items[0].prompt"),
    ('{"items": [{"prompt": "' + "x" * 201 + '", "response": "r"}]}', 422, "items[0].prompt"),
    ('{"items": [' + ",".join(['{"prompt": "p", "response": "r"}'] * 9) + "]}", 422, "items"),
])
def test_serve_app_bad_requests_are_4xx_and_server_keeps_serving(served, body, status, field):
    c, _, _, _ = served
    r = c.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["errors"][0]["field"] == field
    ok = c.post("/score", json={"items": [{"prompt": "p", "response": "r"}]})
    assert ok.status_code == 200


def test_serve_deployment_options_from_config():
    from raydprm.errors import RaydprmError
    from raydprm.serve.app import deployment_options

    o = deployment_options(CFG.override(["serve.num_cpus=0.25", "serve.max_replicas=3"]).serve)
    assert o["ray_actor_options"] == {"num_cpus": 0.25}
    assert o["autoscaling_config"]["max_replicas"] == 3 and o["autoscaling_config"]["min_replicas"] == 1
    with pytest.raises(RaydprmError, match="min_replicas"):
        deployment_options(CFG.override(["serve.min_replicas=3", "serve.max_replicas=2"]).serve)


def test_serve_cli_smoke_on_the_running_session(served, model_dirs, capsys):
    """`raydprm serve --smoke` (last in this module: it shuts Serve down when done)."""
    import json

    from raydprm.cli import main

    _, _, _, cfg = served
    dir_a = model_dirs[0]
    rc = main(["serve", "--smoke", "--model", str(dir_a), f"serve.port={cfg.serve.port}",
               f"store.path={cfg.store.path}", "ray.namespace=raydprm-test"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"http://127.0.0.1:{cfg.serve.port}" in out
    body, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    assert body["healthz"]["status"] == "ok" and len(body["score"]["results"]) == 1
