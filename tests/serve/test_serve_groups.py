"""/score of a group-conditioned DPRM returns each rater group's distribution and E[r] next to the
population's (their mixture); a population DPRM's answer has no ``groups`` key."""

import pytest
import torch
from fastapi.testclient import TestClient

from raydprm.core.label_scale import LabelScale
from raydprm.models.dprm import DPRM, GroupDPRM
from raydprm.serve.http import build_http_app, token_digest
from raydprm.serve.schemas import make_schemas

SCALE = LabelScale(("safe", "unsure", "unsafe"), (1.0, 0.0, -1.0))
NAMES = tuple(SCALE.names)


def _client(model):
    async def score(items, weights=None):  # what RewardDeployment.score does, in-process
        kw = {"weights": weights} if weights is not None else {}
        out = model.score([p for p, _ in items], [r for _, r in items], **kw)
        return out.to_items(NAMES, with_groups=True)

    return TestClient(build_http_app(make_schemas(4, 50, NAMES), NAMES, SCALE.rewards, "expected", "m", score, None,
                                     token_digest("t"), max_body_bytes=4096))


def test_serve_score_returns_per_group_distributions(tiny_kit):
    torch.manual_seed(0)
    m = GroupDPRM.from_backbone("tiny-opt", SCALE, max_length=64, groups=["Black", "White"], group_weights=[1, 3])
    items = [{"prompt": "Q: a ?\nA:", "response": " yes ."}]
    res = _client(m).post("/score", json={"items": items}).json()["results"][0]
    assert set(res["groups"]) == {"Black", "White"}
    ref = m.score(["Q: a ?\nA:"], [" yes ."])
    for k, g in enumerate(("Black", "White")):
        got = [res["groups"][g]["distribution"][n] for n in NAMES]
        assert got == pytest.approx(ref.group_distribution[0, k].tolist(), abs=1e-6)
        assert res["groups"][g]["expected_reward"] == pytest.approx(float(ref.group_expected[0, k]), abs=1e-6)
    mix = [0.25 * res["groups"]["Black"]["distribution"][n] + 0.75 * res["groups"]["White"]["distribution"][n]
           for n in NAMES]
    assert [res["distribution"][n] for n in NAMES] == pytest.approx(mix, abs=1e-6)
    plain = _client(DPRM.from_backbone("tiny-opt", SCALE, max_length=64)).post("/score", json={"items": items})
    assert "groups" not in plain.json()["results"][0]


def test_serve_score_reweights_groups_per_request(tiny_kit):
    torch.manual_seed(0)
    m = GroupDPRM.from_backbone("tiny-opt", SCALE, max_length=64, groups=["Black", "White"], group_weights=[1, 3])
    c = _client(m)
    items = [{"prompt": "Q: a ?\nA:", "response": " yes ."}]
    res = c.post("/score", json={"items": items, "weights": {"Black": 1.0}}).json()["results"][0]
    assert [res["distribution"][n] for n in NAMES] == pytest.approx(
        [res["groups"]["Black"]["distribution"][n] for n in NAMES], abs=1e-6)  # the population = that group alone
    bad = c.post("/score", json={"items": items, "weights": {"Martian": 1.0}})
    assert bad.status_code == 400 and "unknown groups" in bad.json()["error"]
    neg = c.post("/score", json={"items": items, "weights": {"Black": -1.0}})
    assert neg.status_code == 422 and "weights" in neg.json()["error"]
