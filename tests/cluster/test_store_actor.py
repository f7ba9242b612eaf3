"""PreferenceStoreActor: the store's API through a local Ray actor, batch calls, errors."""

import os

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

from raydprm.config import StoreConfig  # noqa: E402
from raydprm.sim.personas import Population, simulated_items  # noqa: E402
from raydprm.store import PreferenceStore, VoteError  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_store_actor_same_api_and_batch_calls(ray_local, tmp_path):
    from raydprm.cluster.store_actor import StoreClient

    db = str(tmp_path / "s.db")
    client = StoreClient.create(StoreConfig(path=db, synchronous="NORMAL"))
    actor = client.actor
    pop = Population()
    items = simulated_items(10)
    votes = pop.simulate_votes(items, 8, seed=1)
    # several concurrent batch calls from tasks: nothing lost
    refs = [actor.add_votes.remote(votes[i:i + 20]) for i in range(0, len(votes), 20)]
    assert sum(r["added"] for r in ray.get(refs)) == len(votes)
    assert ray.get(actor.count_votes.remote()) == len(votes)
    dists = ray.get(actor.distributions.remote(items, {"scientist": 1.0, "artist": 1.0}))
    local = PreferenceStore(db)
    for (p, r), d in zip(items, dists):
        np.testing.assert_allclose(d, local.distribution(p, r, {"scientist": 1.0, "artist": 1.0}))
    assert ray.get(actor.distribution.remote(*items[0])) == local.distribution(*items[0])
    assert len(ray.get(actor.export.remote())) == len(items)
    assert ray.get(actor.stats.remote())["votes"] == len(votes)
    assert "teenager" in ray.get(actor.personas.remote())
    with pytest.raises(VoteError, match="known persona"):
        ray.get(actor.add_votes.remote([{**votes[0], "vote_id": "new", "persona": "pirate"}]))
    assert ray.get(actor.count_votes.remote()) == len(votes)
    # the driver's typed client says the same, and names the problem the same way
    assert client.count_votes() == len(votes) and client.stats()["votes"] == len(votes)
    np.testing.assert_allclose(client.distributions(items[:2]), local.distributions(items[:2]))
    with pytest.raises(VoteError, match="known persona"):
        client.add_votes([{**votes[0], "vote_id": "new2", "persona": "pirate"}])
    client.shutdown()


def test_concurrent_ray_tasks_writing_one_file_lose_nothing(ray_local, tmp_path):
    db = str(tmp_path / "t.db")
    PreferenceStore(db).close()

    @ray.remote
    def writer(tag: str, n_batches: int) -> int:
        s = PreferenceStore(db, synchronous="NORMAL")
        for b in range(n_batches):
            s.add_votes([{"vote_id": f"{tag}-{b}-{k}", "prompt": "Q: p ?\nA:", "response": f" r{k % 3} .",
                          "persona": "artist", "label": k % 6} for k in range(25)]
                        + [{"vote_id": f"shared-{b}", "prompt": "Q: p ?\nA:", "response": " s .",
                            "persona": "ceo", "label": 1}])
        return s.count_votes()

    ray.get([writer.remote(f"t{i}", 8) for i in range(3)])
    s = PreferenceStore(db)
    assert s.count_votes() == 3 * 8 * 25 + 8
    for k in range(3):
        np.testing.assert_allclose(s.posterior("Q: p ?\nA:", f" r{k} .")["alpha"], s.recount("Q: p ?\nA:", f" r{k} ."))
