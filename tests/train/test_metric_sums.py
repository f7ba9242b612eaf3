"""Named metric sums: added by name, reduced as one tensor (as the learner's all-reduce
does), read back by name."""

import pytest
import torch

from raydprm.train.metric_sums import MetricSums


def test_sums_add_by_name_and_reduce_once():
    s = MetricSums("loss", "tokens")
    s.add(loss=torch.tensor(1.5, dtype=torch.float64), tokens=3)
    s.add(loss=0.25)
    assert s["loss"] == 1.75 and s["tokens"] == 3.0
    seen = []

    def twice(t):  # what an all-reduce over two identical ranks returns
        seen.append(t.clone())
        return t * 2

    s.reduce(twice)
    assert len(seen) == 1 and seen[0].tolist() == [1.75, 3.0]  # one call carries every sum
    assert s.to_dict() == {"loss": 3.5, "tokens": 6.0}
    with pytest.raises(KeyError):
        s.add(unknown=1.0)
    with pytest.raises(ValueError):
        MetricSums("a", "a")
