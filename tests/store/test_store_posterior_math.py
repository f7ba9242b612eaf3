"""The store's posterior math without SQLite: the vectorised fold equals the vote-by-vote twin and
the torch Dirichlet update, in any order and split into any batches."""

import numpy as np
import pytest

from raydprm.core.dirichlet import dirichlet_update
from raydprm.store.posterior import decode_state, fold_votes, naive_alpha, scatter_votes


def _votes(rng, n, n_items=4, n_groups=3, L=3):
    vi = rng.integers(0, n_items, n)
    vp = rng.integers(1, n_groups + 1, n)
    probs = np.eye(L)[rng.integers(0, L, n)]
    probs[::5] = rng.dirichlet(np.ones(L), len(probs[::5]))  # some soft votes
    w = rng.uniform(0.5, 2.0, n)
    ts = 1000.0 + rng.uniform(0, 500, n)
    return vi, vp, probs, w, ts


def test_scatter_equals_the_torch_dirichlet_update():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 7, 300)
    probs = rng.dirichlet(np.ones(4), 300)
    w = rng.uniform(0, 3, 300)
    acc = rng.uniform(0, 2, (7, 4))
    np.testing.assert_allclose(scatter_votes(acc, probs, w, g), dirichlet_update(acc, probs, w, index=g), atol=1e-12)


@pytest.mark.parametrize("half_life", [None, 120.0])
def test_fold_in_batches_equals_the_naive_twin(half_life):
    rng = np.random.default_rng(1)
    L, n_items = 3, 4
    vi, vp, probs, w, ts = _votes(rng, 400, n_items, L=L)
    states: dict[int, tuple[bytes, float]] = {}
    order = rng.permutation(400)  # arrival order does not matter
    for part in np.array_split(order, 7):
        old = [(j, *states[j]) for j in range(n_items) if j in states]
        new = fold_votes(old, n_items, vi[part], vp[part], probs[part], w[part], ts[part], half_life)
        for j in range(n_items):
            if (vi[part] == j).any() or j in states:
                states[j] = (new.blobs[j], float(new.t_ref[j]))
    for j in range(n_items):
        blob, t_ref = states[j]
        pids, nv, ev, cnt = decode_state(blob, L, half_life is not None)
        for k, pid in enumerate(pids.tolist()):
            sel = (vi == j) & (vp == pid)
            assert nv[k] == sel.sum() and t_ref == ts[vi == j].max()
            np.testing.assert_allclose(cnt[k], (w[sel, None] * probs[sel]).sum(0), atol=1e-9)
            # the evidence at t_ref, plus the prior, is the naive recount at t_ref
            np.testing.assert_allclose(0.5 + ev[k], naive_alpha(0.5, probs[sel], w[sel], ts[sel], t_ref, half_life),
                                       atol=1e-9)


def test_a_corrupt_state_is_refused():
    with pytest.raises(ValueError, match="no multiple"):
        decode_state(b"\x00" * 12, 3, False)
