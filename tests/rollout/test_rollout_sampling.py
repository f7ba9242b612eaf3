"""Sampling parameters and rollout config: bad values fail before any engine starts."""

import pytest

from raydprm.config import ConfigError, load_config
from raydprm.rollout.engine import RolloutError, find_stop, make_engine
from raydprm.rollout.sampling import SamplingError, SamplingParams, request_seed


@pytest.mark.parametrize("kw, msg", [
    (dict(max_new_tokens=0), "max_new_tokens = 0 must be >= 1"),
    (dict(max_new_tokens=2.5), "max_new_tokens = 2.5 must be an integer"),
    (dict(temperature=-0.1), "temperature = -0.1 must be >= 0"),
    (dict(temperature=float("nan")), "temperature = nan must be finite"),
    (dict(top_p=0.0), "top_p = 0.0 must be > 0"),
    (dict(top_p=1.5), "top_p = 1.5 must be <= 1"),
    (dict(top_k=-1), "top_k = -1 must be >= 0"),
    (dict(n=0), "n = 0 must be >= 1"),
    (dict(n=True), "n = True must be an integer"),
    (dict(seed=-3), "seed = -3 must be >= 0"),
    (dict(stop=("ok", "")), "empty string"),
    (dict(stop=(1, 2)), "must be a list of strings"),
    (dict(temperature="hot"), "temperature = 'hot' must be a number"),
])
def test_rollout_sampling_rejects_bad_values_with_the_field_name(kw, msg):
    with pytest.raises(SamplingError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        SamplingParams(**kw)


def test_rollout_sampling_defaults_and_normalisation():
    sp = SamplingParams(stop="END", temperature=0)
    assert sp.stop == ("END",)  # one string is one stop string
    assert sp.greedy and not SamplingParams().greedy
    assert sp.with_(n=3).n == 3
    with pytest.raises(SamplingError):
        sp.with_(n=-1)
    # a SamplingError is a user error (one-line CLI message) and a ValueError
    assert issubclass(SamplingError, ValueError)


def test_rollout_sampling_from_config_and_overrides():
    cfg = load_config(None, ["rollout.temperature=0", "rollout.seed=7", 'rollout.stop=["\\n"]', "rollout.n=2"]).rollout
    sp = SamplingParams.from_config(cfg)
    assert (sp.temperature, sp.seed, sp.stop, sp.n) == (0.0, 7, ("\n",), 2)
    assert SamplingParams.from_config(load_config().rollout).seed is None  # -1 = unseeded
    assert SamplingParams.from_config(cfg, max_new_tokens=5).max_new_tokens == 5


@pytest.mark.parametrize("override, key", [
    ("rollout.engine=tgi", "rollout.engine"), ("rollout.seed=-2", "rollout.seed"),
    ("rollout.probe_length=1", "rollout.probe_length"), ("rollout.weight_sync=ipc", "rollout.weight_sync"),
    ("rollout.kv_cache_memory_mb=0", "rollout.kv_cache_memory_mb"),
])
def test_rollout_config_rejects_bad_values(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_rollout_request_seeds_are_distinct_and_stable():
    seeds = {request_seed(1, i, j) for i in range(50) for j in range(4)}
    assert len(seeds) == 200
    assert request_seed(1, 3, 2) == request_seed(1, 3, 2)
    assert request_seed(None, 3, 2) is None


def test_rollout_find_stop_returns_earliest():
    assert find_stop("abc STOP x END", ("END", "STOP")) == (4, "STOP")
    assert find_stop("nothing", ("END",)) is None


def test_rollout_unknown_engine_is_a_clear_error():
    with pytest.raises(RolloutError, match="unknown rollout engine 'tgi'; known: transformers, vllm"):
        make_engine("tgi", "tiny-gpt2")
