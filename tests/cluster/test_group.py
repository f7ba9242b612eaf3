"""ActorGroup keeps its private errors private and calls only its own class's methods (issue 25, part 2)."""

import os

import pytest
from helpers import kill_actor

from raydprm.cluster.group import ActorGroup, ActorGroupError, RankDied


class Scorer:
    def __init__(self, bias: float = 0.0) -> None:
        self.bias = bias

    def score(self, x: float) -> float:
        return x + self.bias

    def pid(self) -> int:
        return os.getpid()


class OtherScorer:  # another actor class with a method of the same name (as reward, learner, rollout have)
    def score(self, x: float) -> float:
        return -x


class SubScorer(Scorer):
    pass


def test_a_method_of_another_class_with_the_same_name_is_refused_before_any_call():
    g = ActorGroup(Scorer, 2, role="reward")
    with pytest.raises(ActorGroupError, match=r"reward: 'OtherScorer.score' is not a method of Scorer"):
        g.submit(OtherScorer.score, [((1.0,), {})] * 2)
    with pytest.raises(ActorGroupError, match="is not a method of Scorer"):
        g.submit(lambda self: 0, [((), {})])  # a name the class does not have at all
    assert g._method_name(Scorer.score) == "score" and ActorGroup(SubScorer, 1, role="r")._method_name(Scorer.score) == "score"


@pytest.fixture(scope="module")
def local_ray():
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    ray.init(num_cpus=2, resources={"slot": 1}, include_dashboard=False, log_to_driver=False, namespace="test_group")
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_a_dead_rank_reaches_callers_of_wait_as_the_public_rank_died_and_recover_restarts_it(local_ray):
    g = ActorGroup(Scorer, 2, role="reward", init=lambda rank: ((float(rank),), {}), max_restarts=1,
                   resources={"num_cpus": 0.5})
    g.start(timeout_s=120)
    try:
        assert g.all(Scorer.score, 1.0) == [1.0, 2.0]
        before = g.rank0(Scorer.pid)
        kill_actor(g.actors[1])
        refs = g.submit(Scorer.score, [((1.0,), {})] * 2)  # the asynchronous caller's way
        with pytest.raises(RankDied) as e:
            g.wait(refs, "score")
        assert isinstance(e.value, ActorGroupError) and type(e.value).__name__ == "RankDied"
        assert str(e.value).startswith("reward: rank 1 died during 'score'") and e.value.rank == 1
        g.recover(e.value)  # the dead rank comes back with its own constructor arguments
        assert g.restarts == 1 and g.wait(g.submit(Scorer.score, [((1.0,), {})] * 2), "score") == [1.0, 2.0]
        assert g.rank0(Scorer.pid) == before  # the live rank was left alone
        kill_actor(g.actors[0])
        with pytest.raises(ActorGroupError, match=r"reward: rank 0 died during 'score' and the restart budget \(1\)"):
            g.all(Scorer.score, 1.0)  # each() recovers by itself, until the budget is spent
    finally:
        g.shutdown()


@pytest.mark.ray
def test_a_restart_that_finds_no_room_waits_a_bounded_time_and_names_what_is_missing(local_ray):
    import ray

    g = ActorGroup(Scorer, 1, role="rollout", resources={"num_cpus": 0.1, "resources": {"slot": 1}}, max_restarts=2,
                   restart_timeout_s=3)
    g.start(timeout_s=120)
    blocker = None
    try:
        kill_actor(g.actors[0])
        # the lost rank's room is taken (as a node lost with nothing to replace it)
        blocker = ray.remote(Scorer).options(num_cpus=0.1, resources={"slot": 1}).remote()
        ray.get(blocker.pid.remote(), timeout=120)
        with pytest.raises(RankDied) as died:
            g.wait(g.submit(Scorer.score, [((1.0,), {})]), "generate")
        with pytest.raises(ActorGroupError) as e:
            g.recover(died.value)
        msg = str(e.value)
        assert msg.startswith("rollout: rank(s) [0] could not be restarted within 3 s: each needs "
                              "{'num_cpus': 0.1, 'resources': {'slot': 1}} on any node, and the cluster (1 node(s) "
                              "alive) has {"), msg
        assert "'slot'" not in msg.split("has {")[1] and "`raydprm run --resume RUN_DIR`" in msg
    finally:
        if blocker is not None:
            ray.kill(blocker)
        g.shutdown()
