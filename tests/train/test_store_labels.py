"""A run/reward/serve on an existing store takes its label scale from the store; a conflicting
labels.* is refused in one line naming both."""

import pytest

from raydprm.config import load_config
from raydprm.errors import ConfigError
from raydprm.store import PreferenceStore
from raydprm.train.reward_data import config_with_store_labels


class _Scale:
    def __init__(self, names, rewards):
        self.names, self.rewards, self.grid = names, rewards, None


def test_store_label_scale_wins_over_the_default_and_conflicts_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "s.db"
    PreferenceStore(path, labels=["safe", "unsure", "unsafe"]).close()
    cfg = load_config(None, [f"store.path={path}"])
    # a store that records only names: the default (HH) labels cannot be its scale
    with pytest.raises(ConfigError, match=r"has labels \['safe', 'unsure', 'unsafe'\] but records no rewards"):
        config_with_store_labels(cfg)
    given = cfg.override(["labels.names=[safe,unsure,unsafe]", "labels.rewards=[1,0,-1]", "labels.grid=null"])
    assert config_with_store_labels(given) is given
    # a store that records its scale (rewards too): it replaces the default labels ...
    monkeypatch.setattr(PreferenceStore, "label_scale", property(lambda s: _Scale(s.labels, [2.0, 0.0, -2.0])),
                        raising=False)
    got = config_with_store_labels(cfg)
    assert list(got.labels.names) == ["safe", "unsure", "unsafe"] and list(got.labels.rewards) == [2.0, 0.0, -2.0]
    # ... and labels.* that differ are refused, naming both
    with pytest.raises(ConfigError, match=r"labels .*\[1\.0, 0\.0, -1\.0\].* conflict with the label scale of store "
                                          r".*\[2\.0, 0\.0, -2\.0\]"):
        config_with_store_labels(given)
    assert config_with_store_labels(load_config(None, [])) == load_config(None, [])  # no store: unchanged
