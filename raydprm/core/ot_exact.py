"""Exact discrete optimal transport between label distributions, batched, with duals.

The problem (Kantorovich; Peyre & Cuturi, "Computational Optimal Transport", 2019,
Eq. 2.11 primal, Eq. 2.20 dual), for a (B, L), b (B, L) on the simplex and cost M (L, L):

    OT(a, b) = min_{P >= 0, P 1 = a, P^T 1 = b} <P, M>
             = max_{f_i + g_j <= M_ij} <f, a> + <g, b>.                                (O1)

By the envelope theorem an optimal dual f is a (sub)gradient of OT in a, g in b
(Peyre & Cuturi, Prop. 9.2); we centre them (sum zero), as POT's `emd2` does, since
the simplex only sees differences.

Two exact solvers, both vectorised over the batch:

* `ot_line`: cost |x_i - x_j|^p with p >= 1 (a 1-D ground metric; cost.line_embedding).
  p = 1 has the CDF closed form (Peyre & Cuturi, Remark 2.30)

      W1(a, b) = sum_k |A_k - B_k| (x_(k+1) - x_(k)),  A, B cumulative sums in x order, (O2)

  with dual f_(k) = sum_{m >= k} sign(A_m - B_m) (x_(m+1) - x_(m)), g = -f.
  p > 1: the monotone (north-west corner) coupling is optimal for this Monge cost
  (Peyre & Cuturi, Remark 2.28; Hoffman 1963); its staircase tree gives the duals.

* `ot_dual_vertices`: any cost, small L. The dual feasible set of (O1) does not depend
  on (a, b), and the optimum is attained at one of its vertices, so

      OT(a, b) = max_k <F_k, a> + <G_k, b>                                              (O3)

  over the vertices (F_k, G_k) of {f_i + g_j <= M_ij} (modulo f + c, g - c). For a
  generic M there are binom(2L - 2, L - 1) of them (252 for L = 6; the regular
  triangulations of Delta_{L-1} x Delta_{L-1}, De Loera, Rambau & Santos,
  "Triangulations", 2010, Sec. 6.2), enumerated once per cost matrix by dual simplex
  pivots over spanning trees and cached. A solve is then one (B, 2L) x (2L, K) matmul
  and an argmax, and the argmax vertex is the dual. Degenerate costs (ties, e.g. the
  reward gap with equal rewards or grid L1) are enumerated on a tiny random
  perturbation of M, whose trees are re-solved on M itself and checked dual-feasible.

Naive twin (the test oracle): `ot.emd2(a_row, b_row, M)` per row.
"""

from __future__ import annotations

import functools
import math
from collections import deque

import numpy as np
import torch

__all__ = ["ot_line", "ot_dual_vertices", "dual_vertices", "MAX_VERTEX_LABELS"]

# Above this L the vertex table gets large (binom(2L-2, L-1): 48620 at L = 10) and
# enumerating it takes seconds; ot_loss falls back to another exact solver.
MAX_VERTEX_LABELS = 10


def _centre(f: torch.Tensor) -> torch.Tensor:
    return f - f.mean(-1, keepdim=True)


# --------------------------------------------------------------------------------------
# 1-D ground metric: closed form (p = 1) and monotone coupling (p > 1)
# --------------------------------------------------------------------------------------
def ot_line(a: torch.Tensor, b: torch.Tensor, x, p: float = 1.0, *, need=(True, True)):
    """Exact OT for the cost |x_i - x_j|^p, p >= 1. a, b (B, L); x (L,).

    Returns (value (B,), f (B, L), g (B, L)) with f, g centred optimal duals. need =
    (need_f, need_g): p = 1 skips the duals that are not needed (returned as None), so a
    forward without gradients costs one pass over a and b.
    """
    if p < 1:
        raise ValueError("ot_line needs p >= 1 (a convex 1-D cost); use ot_dual_vertices")
    x = torch.as_tensor(x, dtype=a.dtype, device=a.device)
    if p == 1:
        perm, inv, gaps = _w1_layout_cached(tuple(x.tolist()), a.dtype, str(a.device))
        need_f, need_g = need
        value, f = _w1_blocks(a, b, perm, inv, gaps, need_f or need_g)
        g = -f if need_g else None  # (Eq. O2) dual: g = -f
        return value, (f if need_f else None), g
    order = torch.argsort(x)
    x_s = x[order]  # (L,)
    a_s, b_s = a[:, order], b[:, order]  # (B, L)
    inv = torch.argsort(order)
    return _north_west(a_s, b_s, x_s, p, inv)


# Bytes of one (rows, L) block in the W1 closed form: its handful of temporaries then stay
# in a core's L2 (512 KiB here), so only a, b, value and f cross main memory. Without the
# blocks every step below is a full pass over (B, L) in memory (5x slower at B = 1e6).
_W1_BLOCK_BYTES = 1 << 19


@functools.lru_cache(maxsize=64)
def _w1_layout_cached(xs: tuple, dtype, device: str):
    """(perm, inv, gaps) for Eq. (O2) on positions xs: perm (L,) puts the labels in x order,
    or None when xs is already monotone (increasing or decreasing: the cumulative sums
    may run from either end, since |A_k - B_k| = |(1 - A_k) - (1 - B_k)|); inv undoes
    perm; gaps (L,) = |x_(k+1) - x_(k)| with a trailing 0 (the last CDF difference is 0)."""
    x = torch.tensor(xs, dtype=torch.float64)
    d = x[1:] - x[:-1]
    if bool((d >= 0).all()) or bool((d <= 0).all()):
        perm = inv = None
        xo = x
    else:
        perm = torch.argsort(x)
        inv = torch.argsort(perm).to(device)
        xo = x[perm]
        perm = perm.to(device)
    gaps = torch.cat([(xo[1:] - xo[:-1]).abs(), xo.new_zeros(1)]).to(dtype=dtype, device=device)
    return perm, inv, gaps


def _w1_blocks(a, b, perm, inv, gaps, duals: bool):
    """Eq. (O2) in row blocks. In x order, with c = cumsum(a - b) (c_k = A_k - B_k):

        value = sum_k |c_k| gap_k,   f_i = sum_{k >= i} h_k,  h_k = sign(c_k) gap_k.

    Centred, f_i = h_i - cumsum(h)_i - m with the row constant m = sum_k h_k (k + 1 - L) / L;
    m is added to h_0 before the cumsum, which shifts every cumsum(h)_i by m, so no pass
    over (rows, L) is spent on the centring (a per-row broadcast is slow on CPU).
    Returns (value (B,), f (B, L) centred, in the caller's label order, or None)."""
    B, L = a.shape
    value = a.new_empty(B)
    f = a.new_empty(B, L) if duals else None
    rows = max(B, 1) if a.device.type != "cpu" else max(1, _W1_BLOCK_BYTES // (L * a.element_size()))
    rows = min(rows, max(B, 1))
    if duals:
        # gaps laid out over a whole block: a product with a contiguous operand vectorises,
        # one broadcast along a 6-long last dim does not (3x slower on CPU)
        gaps_rows = gaps.expand(rows, L).contiguous()
        w = (torch.arange(L, dtype=a.dtype, device=a.device) + 1 - L) / L  # m = h @ w
        h_buf = a.new_empty(rows, L)
    for s in range(0, B, rows):
        e = min(s + rows, B)
        n = e - s
        c = a[s:e] - b[s:e]  # (rows, L)
        if perm is not None:
            c = c[:, perm]  # x order
        c.cumsum_(1)  # c_k = A_k - B_k
        if duals:
            h = torch.mul(torch.sign(c), gaps_rows[:n], out=h_buf[:n])  # h_k = sign(c_k) gap_k
            m = torch.mv(h, w)  # (rows,)
            h0 = h[:, 0].clone()
            h[:, 0] += m
            fb = torch.cumsum(h, 1, out=f[s:e] if inv is None else None)  # cumsum(h)_i + m
            h[:, 0] = h0
            fb = torch.sub(h, fb, out=fb)  # f_i = h_i - cumsum(h)_i - m, centred
            if inv is not None:
                f[s:e] = fb[:, inv]  # back to the caller's label order
        torch.mv(c.abs_(), gaps, out=value[s:e])  # (Eq. O2)
    return value, f


def _north_west(a_s, b_s, x_s, p, inv):
    """Monotone coupling on sorted positions: the staircase tree, its cost and duals."""
    B, L = a_s.shape
    Ms = (x_s[:, None] - x_s[None, :]).abs() ** p  # (L, L)
    Mflat = Ms.reshape(-1)
    rows = torch.arange(B, device=a_s.device)
    i = torch.zeros(B, dtype=torch.long, device=a_s.device)
    j = torch.zeros_like(i)
    ra, rb = a_s[:, 0].clone(), b_s[:, 0].clone()  # remaining mass of row i / column j
    f = torch.zeros_like(a_s)
    g = torch.zeros_like(b_s)
    g[:, 0] = Ms[0, 0]  # f_0 = 0 and (0, 0) is on the staircase
    value = torch.zeros(B, dtype=a_s.dtype, device=a_s.device)
    for _ in range(2 * L - 2):
        t = torch.minimum(ra, rb)
        value += t * Mflat[i * L + j]
        ra, rb = ra - t, rb - t
        move_i = ((ra <= rb) & (i < L - 1)) | (j == L - 1)  # row exhausted first
        i = i + move_i.long()
        j = j + (~move_i).long()
        ra = torch.where(move_i, a_s[rows, i], ra)
        rb = torch.where(move_i, rb, b_s[rows, j])
        cell = Mflat[i * L + j]
        # new tree edge (i, j): solve f_i + g_j = M_ij for the new endpoint
        f[rows, i] = torch.where(move_i, cell - g[rows, j], f[rows, i])
        g[rows, j] = torch.where(move_i, g[rows, j], cell - f[rows, i])
    value += torch.minimum(ra, rb) * Mflat[i * L + j]
    return value, _centre(f)[:, inv], _centre(g)[:, inv]


# --------------------------------------------------------------------------------------
# General cost, small L: enumerate the dual vertices once, then a matmul per batch
# --------------------------------------------------------------------------------------
def _tree_potentials(edges, M):
    """Solve f_i + g_j = M_ij on a spanning tree of K_{L,L} (edges as (i, j)); f_0 = 0."""
    L = M.shape[0]
    adj = [[] for _ in range(2 * L)]
    for i, j in edges:
        adj[i].append(L + j)
        adj[L + j].append(i)
    pot = [None] * (2 * L)
    pot[0] = 0.0
    stack = [0]
    while stack:
        u = stack.pop()
        for v in adj[u]:
            if pot[v] is None:
                pot[v] = (M[u, v - L] if u < L else M[v, u - L]) - pot[u]
                stack.append(v)
    if any(q is None for q in pot):
        raise RuntimeError("not a spanning tree")
    return np.array(pot[:L]), np.array(pot[L:])


def _enumerate_trees(Mp: np.ndarray):
    """All spanning trees that are dual-feasible bases for a generic cost Mp (BFS by pivots)."""
    L = Mp.shape[0]
    # start: g = column minima (feasible), then merge tight components one edge at a time
    f = np.zeros(L)
    g = Mp.min(0)
    edges = {(int(np.argmin(Mp[:, j])), j) for j in range(L)}
    while len(edges) < 2 * L - 1:
        comp = _components(edges, L)
        slack = Mp - f[:, None] - g[None, :]
        c_row = comp[:L]
        c_col = comp[L:]
        done = False
        for c in np.unique(c_row):
            in_r, in_c = c_row == c, c_col == c
            mask = in_r[:, None] & ~in_c[None, :]  # rows in C x columns outside C
            if not mask.any():
                continue
            s = np.where(mask, slack, np.inf)
            k = int(np.argmin(s))
            t = s.flat[k]
            f[in_r] += t
            g[in_c] -= t
            edges.add((k // L, k % L))
            done = True
            break
        if not done:
            raise RuntimeError("could not build a starting dual vertex")
    start = tuple(sorted(i * L + j for i, j in edges))  # edges as flat ids i * L + j
    seen = {sum(1 << e for e in start)}
    trees = [start]
    queue = deque([start])
    while queue:
        tree = queue.popleft()
        key = sum(1 << e for e in tree)
        fv, gv, side = _tree_dual(tree, Mp)  # side (E, 2L): component of each edge's row
        slack = Mp - fv[:, None] - gv[None, :]  # (L, L), >= 0
        in_r, in_c = side[:, :L], side[:, L:]
        mask = ~in_r[:, :, None] & in_c[:, None, :]  # rows outside C x columns in C: slack falls
        s = np.where(mask, slack[None], np.inf).reshape(len(tree), -1)
        k = np.argmin(s, 1)
        ok = np.isfinite(s[np.arange(len(tree)), k])  # else a ray, not an edge to a vertex
        for e in np.flatnonzero(ok).tolist():
            ent = int(k[e])
            new_key = (key ^ (1 << tree[e])) | (1 << ent)
            if new_key not in seen:
                seen.add(new_key)
                new = tree[:e] + tree[e + 1 :] + (ent,)
                trees.append(new)
                queue.append(new)
    return [[(e // L, e % L) for e in t] for t in trees]


def _components(edges, L):
    parent = list(range(2 * L))

    def find(u):
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for i, j in edges:
        parent[find(i)] = find(L + j)
    return np.array([find(u) for u in range(2 * L)])


def _tree_dual(tree, M):
    """One DFS over a spanning tree (flat edge ids): potentials (f_0 = 0) and, for each
    edge (i, j), the mask (2L,) of the component that holds row i once the edge is cut."""
    L = M.shape[0]
    n = 2 * L
    adj = [[] for _ in range(n)]
    for k, e in enumerate(tree):
        i, j = divmod(e, L)
        adj[i].append((L + j, k))
        adj[L + j].append((i, k))
    pot = np.zeros(n)
    tin = np.zeros(n, dtype=np.int64)
    tout = np.zeros(n, dtype=np.int64)
    child = np.zeros(len(tree), dtype=np.int64)
    visited = [False] * n
    clock = 0
    stack = [(0, 0)]
    while stack:  # iterative DFS with Euler-tour times
        u, state = stack.pop()
        if state:
            tout[u] = clock - 1
            continue
        visited[u] = True
        tin[u] = clock
        clock += 1
        stack.append((u, 1))
        for v, k in adj[u]:
            if not visited[v]:
                child[k] = v
                pot[v] = (M[u, v - L] if u < L else M[v, u - L]) - pot[u]
                stack.append((v, 0))
    sub = (tin[None, :] >= tin[child][:, None]) & (tin[None, :] <= tout[child][:, None])  # (E, 2L)
    rows = np.array(tree) // L
    row_in_sub = sub[np.arange(len(tree)), rows]
    return pot[:L], pot[L:], np.where(row_in_sub[:, None], sub, ~sub)


@functools.lru_cache(maxsize=64)
def _dual_vertices_cached(buf: bytes, L: int):
    M = np.frombuffer(buf, dtype=np.float64).reshape(L, L)
    scale = max(float(np.abs(M).max()), 1.0)
    rng = np.random.default_rng(0)
    for delta in (1e-7, 1e-10, 1e-4):
        Mp = M + delta * scale * rng.random((L, L))
        trees = _enumerate_trees(Mp)
        if len(trees) != math.comb(2 * L - 2, L - 1):
            continue  # perturbation not generic enough; try another size
        pots = [_tree_potentials(t, M) for t in trees]
        F = np.stack([p[0] for p in pots])
        G = np.stack([p[1] for p in pots])
        worst = (M[None] - F[:, :, None] - G[:, None, :]).min()
        if worst < -1e-9 * scale:
            continue  # a tree of the perturbed cost is infeasible for M: finer perturbation
        V = np.unique(np.round(np.concatenate([F, G], 1), 12), axis=0)
        return V[:, :L].copy(), V[:, L:].copy()
    raise RuntimeError("dual vertex enumeration failed for this cost matrix")


def dual_vertices(M: torch.Tensor):
    """Vertices (F (K, L), G (K, L)) of the dual feasible set of Eq. (O1), cached per M."""
    Mc = M.detach().to("cpu", torch.float64).contiguous().numpy()
    L = Mc.shape[0]
    if L > MAX_VERTEX_LABELS:
        raise ValueError(f"dual vertex enumeration is for L <= {MAX_VERTEX_LABELS}, got L = {L}")
    return _dual_vertices_cached(Mc.tobytes(), L)


def ot_dual_vertices(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, chunk_elems: int = 1 << 24):
    """Exact OT (Eq. O3) for any cost with L <= MAX_VERTEX_LABELS. a, b (B, L), M (L, L).

    Returns (value (B,), f (B, L), g (B, L)), f and g centred optimal duals.
    """
    F, G = dual_vertices(M)
    V = torch.as_tensor(np.concatenate([F, G], 1), dtype=a.dtype, device=a.device)  # (K, 2L)
    L = a.shape[1]
    ab = torch.cat([a, b], 1)  # (B, 2L)
    B, K = ab.shape[0], V.shape[0]
    value = torch.empty(B, dtype=a.dtype, device=a.device)
    idx = torch.empty(B, dtype=torch.long, device=a.device)
    step = max(1, chunk_elems // K)
    for s in range(0, B, step):
        scores = ab[s : s + step] @ V.T  # (b, K)  <F_k, a> + <G_k, b>
        value[s : s + step], idx[s : s + step] = scores.max(1)  # (Eq. O3)
    fg = V[idx]  # (B, 2L)
    f, g = fg[:, :L], fg[:, L:]
    return value, _centre(f), _centre(g)
