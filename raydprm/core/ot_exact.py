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

__all__ = ["ot_line", "ot_dual_vertices", "dual_vertices", "w1_layout", "MAX_VERTEX_LABELS"]

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
        value, f, _ = _w1_blocks(a, b, perm, inv, gaps, need_f or need_g)
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


def w1_layout(x, dtype, device):
    """(perm, inv, gaps) of Eq. (O2) for positions x (L,), cached per (x, dtype, device)."""
    return _w1_layout_cached(tuple(torch.as_tensor(x).tolist()), dtype, str(device))


# Up to this L the dual of a block is read from a table of all sign patterns of the CDF
# differences (3^(L-1) rows: 243 at L = 6, 2187 at L = 8); above it, computed by a cumsum.
_W1_TABLE_MAX_L = 8


@functools.lru_cache(maxsize=64)
def _w1_dual_table(gaps: tuple, dtype, device: str):
    """(table (3^(L-1), L), w (L,), offset) for Eq. (O2)'s dual with `gaps` (x order, trailing
    0): a row whose CDF differences have signs s_k (k < L - 1; gap_(L-1) = 0 makes the last
    one irrelevant) has the centred dual table[sum_k s_k w_k + offset], in x order. Built in
    float64 by the naive formula: f_i = sum_(k >= i) s_k gap_k, minus the row mean."""
    L = len(gaps)
    g = torch.tensor(gaps, dtype=torch.float64)
    states = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)] * (L - 1))
    states = states.view(-1, L - 1)  # (3^(L-1), L-1); column k has weight 3^(L-2-k)
    h = torch.cat([states * g[: L - 1], states.new_zeros(len(states), 1)], 1)  # (K, L)
    suffix = torch.flip(torch.cumsum(torch.flip(h, [1]), 1), [1])
    f = suffix - suffix.mean(1, keepdim=True)
    w = torch.tensor([3.0 ** (L - 2 - k) for k in range(L - 1)] + [0.0], dtype=torch.float64)
    return f.to(dtype=dtype, device=device).contiguous(), w.to(dtype=dtype, device=device), float(w.sum())


def _w1_blocks(a, b, perm, inv, gaps, duals: bool, *, per_row: bool = True, scale: float = 1.0,
               check=(False, False), logits_shift: float | None = None):
    """Eq. (O2) in row blocks, one pass over a and b. In x order, with c = cumsum(a - b):

        value = sum_k |c_k| gap_k,   f_i = sum_{k >= i} h_k - mean_i(.),  h_k = sign(c_k) gap_k.

    The dual depends on c only through its signs: for L <= _W1_TABLE_MAX_L it is one gather
    from the table of all 3^(L-1) sign patterns (`_w1_dual_table`, centred, scaled). Above,
    f_i = r - P_(i-1) with P = cumsum(h), P_(-1) = 0, r = sum_k h_k (L - 1 - k) / L: since
    gap_(L-1) = 0, the row [r, -h_0, ..., -h_(L-2)] is the flat buffer of -h shifted right by
    one element with column 0 overwritten by r, and one cumsum gives f. Neither path has a
    per-row broadcast (2-5 ns per element on CPU against 0.1-0.3 for a flat op).

    per_row: value (B,) per row (mv), else a 0-dim total (one dot per block). scale
    multiplies f (a "mean" reduction's 1/B, at no pass of its own). check = (check_a,
    check_b): also collect min(x) and the row sums of a / b while the block is in cache
    (label_scale.check_distribution's two tests, without its two passes over memory per
    input); with both, b's row sums are a's minus c_(L-1).

    logits_shift: a holds logits z, and the block's softmax is computed in the pass,
    p = exp(z - shift) / sum_j exp(z_j - shift), with shift = max(z) over the whole batch (the
    caller checks max(z) - min(z) keeps every exp normal); the returned dual is then the
    gradient in z, p * (f - <p, f>) (softmax's Jacobian applied in the same pass; torch's
    softmax and its backward on a 6-long last dim cost ~40 and ~20 clone floors at B = 1e6).

    Returns (value, f (B, L) centred times scale in the caller's label order or None,
    (min, min row sum, max row sum) as floats over the checked inputs, or None).
    """
    B, L = a.shape
    rows = max(1, _W1_BLOCK_BYTES // (L * a.element_size())) if a.device.type == "cpu" else max(B, 1)
    rows = min(rows, max(B, 1))
    D, C = a.new_empty(rows, L), a.new_empty(rows, L)
    value = a.new_empty(B) if per_row else a.new_zeros(())
    gaps_rows = None if per_row else gaps.expand(rows, L).contiguous()  # flat operand: dot vectorises
    f = a.new_empty(B, L) if duals else None
    logits = logits_shift is not None
    if logits:
        P = a.new_empty(rows, L)
        ones_l = a.new_ones(L)
        zs = a.new_empty(rows)
        Fbuf = a.new_empty(rows, L) if duals else None
    table = duals and L <= _W1_TABLE_MAX_L
    if table:
        tab, w3, off = _w1_dual_table(tuple(gaps.tolist()), a.dtype, str(a.device))
        tab = tab if perm is None else tab[:, inv]  # rows indexed by signs in x order, columns the caller's
        tab = tab if scale == 1.0 else tab * scale
        S, fidx = a.new_empty(rows, L), a.new_empty(rows)
        offs = a.new_full((rows,), off)
        idx = torch.empty(rows, dtype=torch.int32, device=a.device)
    elif duals:
        Hs = a.new_zeros(rows, L)
        # column j of the shifted buffer holds -h_(j-1): factor -scale gap_(j-1); column 0's
        # factor is gap_(L-1) = 0 and r overwrites it anyway
        g_shift = (-scale * torch.roll(gaps, 1)).expand(rows, L).contiguous().view(-1)
        j = torch.arange(1, L, dtype=a.dtype, device=a.device)
        v_shift = -(L - j) / L  # r = sum_(j >= 1) Hs_j v_shift_j  (h_(j-1) = -Hs_j)
        r = a.new_empty(rows)
        Fx = a.new_empty(rows, L) if inv is not None else None
    if check[0] or check[1]:
        ones = a.new_ones(L)
        rs = a.new_empty(2, rows)  # row sums of a, b
        lows, sums = [], []
    splits = [t.split(rows) for t in (a, b, value if per_row else None, f) if t is not None] if B else []
    for blk in zip(*splits):
        ab, bb = blk[0], blk[1]
        n = ab.shape[0]
        full = n == rows  # the last block is ragged: slice the buffers for it
        if check[0]:  # the first touch of the block: it is in cache from here on
            lows.append(ab.amin())
            torch.mv(ab, ones, out=rs[0] if full else rs[0, :n])
        if check[1]:
            lows.append(bb.amin())
            if not check[0]:
                torch.mv(bb, ones, out=rs[1] if full else rs[1, :n])
        if logits:  # p = softmax(z) for the block, shifted by the batch max
            pb = torch.sub(ab, logits_shift, out=P if full else P[:n]).exp_()
            zsum = torch.mv(pb, ones_l, out=zs if full else zs[:n])
            ab = pb.div_(zsum[:, None])
        c = torch.sub(ab, bb, out=D if full else D[:n])  # (rows, L)
        if perm is not None:
            c = c[:, perm]  # x order
        c = torch.cumsum(c, 1, out=C if full else C[:n])  # c_k = A_k - B_k
        if check[0]:
            if check[1]:
                torch.sub(rs[0, :n], c[:, -1], out=rs[1, :n])  # sum(b) = sum(a) - c_(L-1)
            sums.extend(torch.aminmax(rs[:, :n] if check[1] else rs[0, :n]))
        elif check[1]:
            sums.extend(torch.aminmax(rs[1, :n]))
        fb = blk[-1] if duals else None
        fd = (Fbuf if full else Fbuf[:n]) if logits and duals else fb  # where the dual f goes
        if table:  # f = table[sign pattern of c]: one gather, centring and scale included
            sg = torch.sign(c, out=S if full else S[:n])
            i32 = idx if full else idx[:n]
            fi = torch.addmv(offs if full else offs[:n], sg, w3, out=fidx if full else fidx[:n])
            torch.index_select(tab, 0, i32.copy_(fi), out=fd)  # index sum_k (s_k + 1) 3^(L-2-k), exact
        elif duals:
            hs = Hs if full else Hs[:n]
            hf = hs.view(-1)
            torch.sign(c.view(-1)[:-1], out=hf[1:])  # shifted by one: Hs_j = sign(c_(j-1))
            hf.mul_(g_shift[: n * L])  # Hs_j = -scale h_(j-1)
            torch.mv(hs[:, 1:], v_shift, out=r[:n])  # r (scaled); column 0 is not read
            hs[:, 0] = r[:n]
            fx = torch.cumsum(hs, 1, out=fd if inv is None else Fx[:n])  # f_i = r - P_(i-1)
            if inv is not None:
                fd.copy_(fx[:, inv])  # back to the caller's label order
        if logits and duals:  # d loss / d z_j = p_j (f_j - <p, f>)
            pf = fd.mul_(ab)
            pdotf = torch.mv(pf, ones_l, out=zs if full else zs[:n])
            torch.addcmul(pf, ab, pdotf[:, None], value=-1, out=fb)
        if per_row:
            torch.mv(c.abs_(), gaps, out=blk[2])  # (Eq. O2)
        else:
            value += torch.dot(c.abs_().view(-1), (gaps_rows if full else gaps_rows[:n]).view(-1))  # (Eq. O2)
    stats = None
    if (check[0] or check[1]) and B:
        sm = torch.stack(sums)
        stats = (float(torch.stack(lows).amin()), float(sm.amin()), float(sm.amax()))
    return value, f, stats


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
