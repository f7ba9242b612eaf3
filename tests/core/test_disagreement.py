"""Disagreement figures (raydprm.core.disagreement): JSD facts and hand-counted modal/reversal shares."""

import math

import pytest
import torch

from raydprm.core.disagreement import group_disagreement, js_divergence


def test_jsd_facts():
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    q = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-15)
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)), abs=1e-15)
    one, other = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(js_divergence(one.double(), other.double())) == pytest.approx(1.0)  # disjoint supports: 1 bit
    m = 0.5 * (p + q)
    kl = lambda a, b: sum(float(x) * math.log2(float(x) / float(y)) for x, y in zip(a, b))  # noqa: E731
    assert float(js_divergence(p, q)) == pytest.approx(0.5 * kl(p, m) + 0.5 * kl(q, m), abs=1e-12)


def test_identical_groups_do_not_disagree():
    d = torch.softmax(torch.randn(10, 1, 4, generator=torch.Generator().manual_seed(0)), -1).expand(10, 3, 4)
    s = group_disagreement(d, rewards=[1.0, 0.0, -1.0, -2.0])
    assert float(s["mean_jsd"]) == pytest.approx(0.0, abs=1e-12)
    assert s["modal_differs"].tolist() == [0.0, 0.0, 0.0] and float(s["reversal_weighted"]) == 0.0


def test_hand_counted_modal_and_reversal_shares():
    # 2 labels (reward 1, 0), 3 items, groups A (weight 3) and B (weight 1)
    A = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]
    B = [[0.1, 0.9], [0.7, 0.3], [0.3, 0.7]]
    d = torch.tensor([[a, b] for a, b in zip(A, B)], dtype=torch.float64)  # (3, 2, 2)
    s = group_disagreement(d, [3.0, 1.0], rewards=[1.0, 0.0])
    # population = 0.75 A + 0.25 B: P(label 0) = 0.7, 0.625, 0.225 -> modes 0, 0, 1
    assert s["modal_differs"].tolist() == pytest.approx([0.0, 1 / 3])  # B's mode differs on item 0 only
    assert float(s["modal_differs_weighted"]) == pytest.approx(0.25 / 3)
    # E[r] = P(label 0): pop 0.7 > 0.625 > 0.225; A orders 0.9 > 0.6 > 0.2 (same); B 0.1 < 0.7 > 0.3:
    # pairs (0,1) reversed, (0,2) reversed, (1,2) same -> 2/3
    assert s["reversal"].tolist() == pytest.approx([0.0, 2 / 3])


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"shape \(N, G, L\)"):
        group_disagreement(torch.ones(3, 4))
    with pytest.raises(ValueError, match="weights must be"):
        group_disagreement(torch.ones(3, 2, 4), [1.0, -1.0])
    with pytest.raises(ValueError, match="rewards must have shape"):
        group_disagreement(torch.ones(3, 2, 4), rewards=[1.0, 2.0])
