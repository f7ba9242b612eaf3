"""How much rater groups disagree: figures over per-group label distributions.

Input: ``dists`` (N, G, L), the label distribution each of ``G`` groups gives each of ``N``
items (a simulated crowd's persona judgements, or a store's per-group posteriors), and the
group weights ``w`` (G,) (population shares; normalised here). The population's
distribution of an item is the mixture ``mu_pop = sum_g w_g mu_g``.

* Jensen-Shannon divergence (Lin 1991), in bits so that it lies in [0, 1]:

      JSD(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),   M = (P + Q) / 2,   0 log 0 = 0,

  averaged over items for every pair of groups (``jsd`` (G, G)) and over the pairs
  g < h (``mean_jsd``, unweighted: each pair of groups counts once).
* Modal disagreement: the share of items whose group-g modal label differs from the
  population's modal label (``modal_differs`` (G,)), and its w-weighted mean
  (``modal_differs_weighted``: the share of raters, in expectation, whose group's verdict
  is not the crowd's). Ties go to the lower label index (argmax).
* Preference reversal (only with ``rewards`` (L,)): the share of item pairs (i, j) that
  group g orders the other way round from the population by expected reward,
  ``sign(E_g[r_i] - E_g[r_j]) * sign(E_pop[r_i] - E_pop[r_j]) < 0`` (``reversal`` (G,),
  ``reversal_weighted``). Groups that differ only in strictness (a shifted or noisier
  judgement of the same quality) rarely reverse an order; groups that want opposite things
  do, so this figure tells direction from strictness, which JSD and the modal figure mix.
  All N (N - 1) / 2 pairs up to ``max_pairs``, else ``max_pairs`` pairs drawn with a fixed seed.

Pure torch; numpy arrays are accepted. Imports nothing else.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["js_divergence", "group_disagreement"]


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD(p, q) in bits over the last dimension (rows are distributions); shape (...,)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:  # KL(a || m), with 0 log 0 = 0 (m > 0 wherever a > 0)
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-300)) - torch.log2(m.clamp_min(1e-300))),
                           torch.zeros_like(a)).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp_min(0.0)


def group_disagreement(dists, weights=None, rewards=None, max_pairs: int = 200_000) -> dict[str, torch.Tensor]:
    """Disagreement figures of ``dists`` (N, G, L) under group weights ``weights`` (G,) (None =
    equal). Returns ``jsd`` (G, G), ``mean_jsd`` (), ``modal_differs`` (G,),
    ``modal_differs_weighted`` () and, given ``rewards`` (L,), ``reversal`` (G,) and
    ``reversal_weighted`` (), as float64 tensors. ValueError on bad shapes or weights."""
    d = torch.as_tensor(np.asarray(dists) if not isinstance(dists, torch.Tensor) else dists).double()
    if d.dim() != 3 or d.shape[0] == 0 or d.shape[1] == 0 or d.shape[2] < 2:
        raise ValueError(f"dists must have shape (N, G, L) with N, G >= 1 and L >= 2, got {tuple(d.shape)}")
    N, G, L = d.shape
    if not bool(torch.isfinite(d).all()) or float(d.min()) < 0:
        raise ValueError("dists must be finite and >= 0")
    d = d / d.sum(-1, keepdim=True).clamp_min(1e-300)  # rows normalised
    w = torch.ones(G, dtype=torch.float64) if weights is None else \
        torch.as_tensor(np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights).double()
    if w.shape != (G,) or not bool(torch.isfinite(w).all()) or float(w.min()) < 0 or float(w.sum()) <= 0:
        raise ValueError(f"weights must be (G,) = ({G},), finite, >= 0 and not all zero, got {w.tolist()}")
    w = w / w.sum()
    jsd = js_divergence(d[:, :, None, :], d[:, None, :, :]).mean(0)  # (N, G, G, L) -> (G, G)
    iu = torch.triu_indices(G, G, offset=1)
    mean_jsd = jsd[iu[0], iu[1]].mean() if G > 1 else torch.zeros((), dtype=torch.float64)
    pop = torch.einsum("g,ngl->nl", w, d)  # (N, L) mu_pop
    differs = (d.argmax(-1) != pop.argmax(-1)[:, None]).double().mean(0)  # (G,)
    out = {"jsd": jsd, "mean_jsd": mean_jsd, "modal_differs": differs, "modal_differs_weighted": (w * differs).sum()}
    if rewards is not None:
        r = torch.as_tensor(np.asarray(rewards) if not isinstance(rewards, torch.Tensor) else rewards).double()
        if r.shape != (L,):
            raise ValueError(f"rewards must have shape (L,) = ({L},), got {tuple(r.shape)}")
        E = d @ r  # (N, G) each group's expected reward of each item
        E_pop = pop @ r  # (N,)
        if N * (N - 1) // 2 <= max_pairs:
            i, j = torch.triu_indices(N, N, offset=1)
        else:
            g = torch.Generator().manual_seed(0)
            i, j = torch.randint(N, (max_pairs,), generator=g), torch.randint(N, (max_pairs,), generator=g)
        rev = (torch.sign(E[i] - E[j]) * torch.sign(E_pop[i] - E_pop[j])[:, None] < 0).double()  # (pairs, G)
        out["reversal"] = rev.mean(0) if len(i) else torch.zeros(G, dtype=torch.float64)
        out["reversal_weighted"] = (w * out["reversal"]).sum()
    return out
