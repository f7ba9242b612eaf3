"""A run/reward/serve on an existing store takes its label scale from the store; a conflicting
labels.* is refused in one line naming both."""

import pytest

from raydprm.config import load_config
from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.store import PreferenceStore
from raydprm.train.reward_data import config_with_store_labels


def test_store_label_scale_wins_over_the_default_and_conflicts_are_refused(tmp_path):
    path = tmp_path / "s.db"
    scale = LabelScale(("safe", "unsure", "unsafe"), (2.0, 0.0, -2.0))
    PreferenceStore(path, labels=list(scale.names), label_scale=scale).close()
    cfg = load_config(None, [f"store.path={path}"])
    got = config_with_store_labels(cfg)  # the default labels defer to the store's scale
    assert list(got.labels.names) == ["safe", "unsure", "unsafe"] and list(got.labels.rewards) == [2.0, 0.0, -2.0]
    assert config_with_store_labels(got) is got  # the same scale given: unchanged
    given = cfg.override(["labels.names=[safe,unsure,unsafe]", "labels.rewards=[1,0,-1]", "labels.grid=null"])
    with pytest.raises(RaydprmError, match=r"rewards \[1\.0, 0\.0, -1\.0\].*conflict with the label scale of store "
                                           r".*rewards \[2\.0, 0\.0, -2\.0\]"):
        config_with_store_labels(given)
    assert config_with_store_labels(load_config(None, [])) == load_config(None, [])  # no store: unchanged
