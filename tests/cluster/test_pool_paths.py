"""The learner, aligner, rollout and reward pools take a model directory as ``str`` or ``os.PathLike``
(``ensure_tiny_models`` returns ``pathlib.Path``s): each rank gets the path as a ``str``, which the
model loader resolves (a ``Path`` reached ``resolve_model``'s ``str.startswith`` and failed there, in
the actor). No actor is started: what a rank would be built with is captured."""

import pytest

import raydprm.cluster.learner_group as lg
import raydprm.cluster.reward_actor as ra
import raydprm.cluster.rollout_actor as ro
from raydprm.config import load_config
from raydprm.models.tiny import resolve_model


class _Captured(Exception):
    pass


class _Group:
    """Stands in for ActorGroup: records what rank 0 would be started with, and stops there."""

    seen: list = []

    def __init__(self, cls, n, *, init, **kw):
        _Group.seen.append(init(0))
        raise _Captured


def test_every_pool_takes_a_pathlike_model_dir_and_hands_its_ranks_a_str(tmp_path, monkeypatch):
    model = tmp_path / "tiny-gpt2"
    model.mkdir()
    with pytest.raises(AttributeError):  # why a Path must not reach the rank
        resolve_model(model)
    assert resolve_model(str(model)) == str(model)

    cfg = load_config(None, [])
    kws = []
    monkeypatch.setattr(lg.LearnerGroup, "_start", classmethod(lambda cls, build, kw, *a, **k: kws.append(kw)))
    lg.LearnerGroup.create(cfg.ppo, model)
    lg.LearnerGroup.create_aligner(cfg.align, model)
    assert [kw["policy"] for kw in kws] == [str(model), str(model)]
    assert all(type(kw["policy"]) is str for kw in kws)

    _Group.seen = []
    monkeypatch.setattr(ro, "ActorGroup", _Group)
    monkeypatch.setattr(ra, "ActorGroup", _Group)
    with pytest.raises(_Captured):
        ro.RolloutPool.create(cfg.rollout, model)
    with pytest.raises(_Captured):
        ra.RewardPool.create(model, None, cfg.reward)
    (engine, rollout_model, *_), _ = _Group.seen[0]
    (reward_model, *_), _ = _Group.seen[1]
    assert rollout_model == reward_model == str(model) and type(rollout_model) is type(reward_model) is str
