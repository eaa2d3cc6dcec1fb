"""Clustering kernels: exact 1-D k-means over rows, and seeded Lloyd (scipy ``kmeans2``).

numpy/scipy plus an optional compiled kernel (``_dp.c``): no model format, no printing. The pipeline hands over a 2-D array, one row per
independent problem (a tensor, a channel or a group of channels), and gets back the same shape with
every value replaced by the centroid of its cluster (:func:`snap_rows`).

``method="optimal"`` is the exact minimum of the sum of squared errors of each row. Clusters of 1-D
k-means are contiguous runs of the sorted values, so the optimum is a dynamic programme over the
row's sorted distinct values weighted by their counts (Wang & Song 2011, Ckmeans.1d.dp)::

    E_q(t) = min_{q-1 <= s < t} E_{q-1}(s) + cost(s, t)        (first t points, q clusters)

with ``cost(s, t) = S2 - S1**2 / W`` from prefix sums of w, w*x, w*x**2 over the (centred) points
``s..t-1``. For integer centroids a segment's best centroid is its rounded mean ``floor(mean+0.5)``
and the cost is evaluated with it; sums of integer codes are exact in float64, so that DP is
exact to the last unit. Either cost obeys the quadrangle inequality (for the integer one: the best
centroid of the inner segment is at least as good as the outer one's for the points beyond it),
so the leftmost optimal split ``s`` is monotone in ``t`` and in ``q`` (Knuth: ``opt_{q-1}(t) <=
opt_q(t)``). Two kernels use that, both vectorised across rows (rows are grouped by size, padded
and solved together):

* dense (rows of at most ``_DENSE_MAX`` distinct values: every int8 row): the candidates of a
  layer are swept by segment length ``d = t - s`` as whole-array operations over a chunk of
  rows; Knuth's bound limits ``d`` to the longest last cluster of the previous layer. The table
  of segment "gains" (``dS2 - cost``) is ``b x (M+1) x R`` int64 keys per chunk of ``R`` rows
  (``b = M - k + 1``), value and ``d`` packed so that one ``np.minimum`` does min and argmin;
  chunks are sized to keep it under ~32 MB. Integer sums are exact; float ones are fixed point
  at ``2**-40`` of the row's total cost. ``O(k b M)`` per row.
* divide and conquer (bigger rows): ``opt`` is monotone in ``t``, so each layer is solved by the
  classic divide-and-conquer optimisation, run level by level: all pending positions of one
  recursion level (of all rows) are evaluated at once from flattened candidate ranges
  (``np.repeat`` + ``np.minimum.reduceat``), bounded by their tree neighbours' optima and by
  Knuth's bound; runs of ``_LEAF`` positions are finished as padded blocks. ``O(k n log n)``.

Both keep the optimal split of every state for backtracking: an int32 table of ``k x n`` entries
(``4 k n`` bytes: 64 MB for k=16 and a million distinct values). A problem whose table would
exceed ``_TABLE_LIMIT`` (2 GiB) is refused with :class:`ValueError`.

The compiled kernel (``_dp.c``, an optional extension; :func:`kernel` says which is in use)
runs the same recurrences one problem at a time in C: divide and conquer per layer with Knuth's
bound, exact integer sums, the GIL released and big batches split over threads. Problems of at
most 256 distinct values (all int8 rows, which it reads as per-row histograms) instead keep a
table of every segment cost and run Knuth's sweep over it; the table holds the very same
values, so the optimum and its ties do not change. The numpy kernels above are the fallback and
the tests' second opinion.

Certified rows (``tolerance > 0``, float rows longer than ``ATOM_MIN``): the DP runs over the
non-empty cells of a uniform grid instead of the distinct values, and the result comes with a
proven bound on its excess over the optimal SSE (see :func:`_certified_row` and
:func:`_grid_lower_bound`); the grid is refined until the bound is under ``tolerance``, or the
row is solved exactly.

:func:`map_ahead` runs many problems (the pipeline's tensors) a few at a time on worker threads,
in order and within a memory budget, so tensors too small to split still use every core.

``zero_fixed`` (preserve sparsity): zero is a centroid and exact zeros stay zero. The zero cluster
is an interval around 0 in sorted order, so the cost separates into the negatives (a prefix DP
that ends with a tail ``[a, zero)`` at centroid 0) and the mirrored positives; the best split of
the other ``k - 1`` clusters between the two sides is searched exactly.

``method="kmeans"`` is scipy's ``kmeans2`` (Lloyd) per row with TFMOT's initialisations, seeded.

Speed (``tools/bench.py --section targets``, 2-core machine, k=16, compiled kernel): a
MobileNetV2-sized set (2.2 M values, 17 k channels) takes 0.04-0.05 s in int8 per channel and
0.14-0.20 s in float per channel (scipy ``kmeans2``: 5-8 s, with 20-25 % more SSE), 0.05-0.09 s
per tensor in float (certified within 1e-4). The numpy kernels are 3-10x slower.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import warnings
from collections import deque
from concurrent.futures import Future

import numpy as np

try:  # the optional compiled kernel (tflite_cluster/_dp.c); numpy kernels otherwise
    from . import _dp
except ImportError:  # pragma: no cover - depends on the build
    _dp = None

__all__ = ["ATOM_MIN", "INITS", "MAX_TOLERANCE", "METHODS", "ProblemTooLarge", "kernel",
           "map_ahead", "optimal_sse_bruteforce", "set_threads", "snap_rows", "sse"]

METHODS = ("optimal", "kmeans")
INITS = ("linear", "kmeans++", "density", "random")

ATOM_MIN = 1 << 14  # float rows longer than this may be certified instead (tolerance > 0)
MAX_TOLERANCE = 1e-3  # the largest certified gap allowed (0.1 % of the optimal SSE)
_ATOM_FIRST = 2048  # grid cells of the first (upper-bound) solve
_ATOM_PAYS = 2  # atoms are used only when at most 1/_ATOM_PAYS of the row's length
_ATOM_CELLS_MAX = 4  # ... and when the grid has at most this many cells per value
_ATOM_ROUNDS = 4  # grids tried before a row is solved exactly
_ATOM_SAMPLE = 1 << 15  # values of the sample that sizes the first grid
_LAMBDA_STEPS = 3  # fixed-point steps for the certificate's multiplier
_DENSE_MAX = 512  # rows with more distinct values go to divide and conquer
_CHUNK_ELEMS = 1 << 22  # entries of a dense chunk's cost table (32 MB in float64)
_CAND_CHUNK = 1 << 16  # candidates evaluated at once by divide and conquer
_LEAF = 8  # divide and conquer solves runs of this many positions as one block
_LEAF_WIDTH = 64  # ... when their common candidate range is at most this wide
_PAD_MAX = 32  # other narrower candidate ranges are evaluated as padded blocks
_SLICE_MIN = 4096  # wider ones one node at a time, as slices
_TABLE_LIMIT = 1 << 31  # bytes of backtracking table allowed for one problem
_HIST_SPAN = 1 << 10  # integer rows whose codes span at most this (or 4x the row length) are
# clustered from per-row histograms by the compiled kernel
_SORT_INT_MAX = 4096  # integer rows up to this long take the compiled kernel's sorted-row path
_AHEAD_ELEMS = 40_000_000  # elements of the problems map_ahead keeps in flight at once
_AHEAD_PER_CORE = 4  # items map_ahead queues per core
_THREAD_MIN_WORK = 2e6  # estimated evaluations below which the compiled kernel runs on one thread
_FLOAT_EXACT = float(1 << 52)  # integer sums below this are exact in float64


# ----------------------------------------------------------------------------- public API


class ProblemTooLarge(ValueError):
    """A row too large for the exact method (its backtracking table would pass 2 GiB)."""


def snap_rows(rows: np.ndarray, k: int, *, method: str = "optimal", integer: bool = False,
              zero_fixed: bool = False, init: str = "kmeans++", seed: int = 0,
              tolerance: float = 0.0, info: dict | None = None) -> np.ndarray:
    """Cluster each row of ``rows`` into at most ``k`` values; returns the snapped array.

    ``rows`` is 2-D (R x N), float (used as float64) or, with ``integer=True``, integer codes.
    The result has the same shape, float64 for float input and the input's dtype for integer
    input (centroids are then integers: a cluster's rounded mean, ``floor(mean + 0.5)``). A row
    with at most ``k`` distinct values comes back unchanged, bit for bit.

    ``method``: ``"optimal"`` (exact minimum SSE per row) or ``"kmeans"`` (scipy ``kmeans2``
    with ``init`` in ``"linear"``, ``"kmeans++"``, ``"density"``, ``"random"``, seeded with
    ``seed``; the same seed is used for every row). ``zero_fixed``: zero is one of the centroids
    of every row that holds exact zeros, and those stay 0. Deterministic for the same input.
    ``tolerance`` (optimal method, float rows only, 0 <= tolerance <= 0.001): a row longer than
    ``ATOM_MIN`` may be solved on "atoms" (the values of a fine grid's cells taken together)
    instead of its distinct values, when that provably lands within ``tolerance`` of the
    optimal SSE (relative); 0 (the default) always solves exactly. ``info``: a dict that
    receives ``"gap"``, the largest certified relative gap over the rows (0.0: all exact).
    Raises :class:`ValueError` for bad arguments or values (NaN/Inf, wrong ndim, ...).
    """
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance <= MAX_TOLERANCE):
        raise ValueError(f"tolerance must be between 0 and {MAX_TOLERANCE}, got {tolerance!r}")
    if info is not None:
        info["gap"] = 0.0
    a, k, codes = _check(rows, k, method, init, integer)
    if a.size == 0 or a.shape[1] <= k:  # (no row can have more than k distinct values)
        return a.copy() if integer else a.astype(np.float64)
    if not integer and (method == "kmeans" or zero_fixed or kernel() != "c"):
        a = a.astype(np.float64, copy=False)  # (only the compiled row path reads float32)
    if method == "kmeans":
        return _kmeans_rows(a, k, integer, zero_fixed, init, seed)
    if tolerance > 0 and not integer and not zero_fixed and k > 1 and a.shape[1] > ATOM_MIN:
        out = np.empty(a.shape, np.float64)
        gaps = [_certified_row(a[r].astype(np.float64, copy=False), k, float(tolerance), out[r])
                for r in range(a.shape[0])]
        rest = [r for r, g in enumerate(gaps) if g is None]
        if len(rest) < a.shape[0]:
            if info is not None:
                info["gap"] = max(g for g in gaps if g is not None)
            if rest:
                out[rest] = snap_rows(a[rest], k, method=method, zero_fixed=zero_fixed)
            return out
    if not zero_fixed and kernel() == "c":
        if not integer:
            return _c_rows(a, k, False)
        lo, span = codes[0], codes[1] - codes[0] + 1
        if span <= max(_HIST_SPAN, 4 * a.shape[1]):
            return _c_int_rows(a, k, lo, span)
        if a.shape[1] <= _SORT_INT_MAX:
            return _c_rows(a, k, True)  # (long integer rows: the histograms below beat sorting)
    vals, wts, ptr, inv = _distinct(a, integer)
    m = np.diff(ptr)
    changed = m > k
    out = a.copy() if integer else a.astype(np.float64, copy=True)
    if not changed.any():
        return out
    flags, zero_mark = _optimal_flags(vals, wts, ptr, k, integer, zero_fixed, changed)
    cen = _centroids(vals, wts, flags, zero_mark, integer)
    rows_c = np.flatnonzero(changed)
    out[rows_c] = cen[inv[rows_c]].astype(out.dtype, copy=False)
    return out


def sse(rows, snapped) -> np.ndarray:
    """Per-row sum of squared errors between ``rows`` and ``snapped`` (float64)."""
    a = np.asarray(rows, dtype=np.float64)
    b = np.asarray(snapped, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    if a.ndim == 1:
        a, b = a[None], b[None]
    d = a - b
    return np.einsum("ij,ij->i", d, d)


def plain_dp_sse(values, k: int, integer: bool = False) -> float:
    """Reference: optimal SSE by the textbook O(k m^2) DP (no monotonicity shortcut, no
    packing), for tests and the benchmark. Memory O(m^2): small m only."""
    x, w = np.unique(np.asarray(values), return_counts=True)
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    m = len(x)
    if m <= k:
        return 0.0
    xc = x - (np.floor((x[0] + x[-1]) / 2) if integer else np.dot(w, x) / w.sum())
    P = [np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * xc, w * xc * xc)]
    s = np.arange(m + 1)[:, None]
    t = np.arange(m + 1)[None, :]
    with np.errstate(all="ignore"):
        dW, d1, d2 = P[0][t] - P[0][s], P[1][t] - P[1][s], P[2][t] - P[2][s]
        if integer:
            c = np.floor(d1 / dW + 0.5)
            C = d2 - c * (2 * d1 - c * dW)
        else:
            C = d2 - d1 * d1 / dW
    C[s >= t] = np.inf
    E = C[0].copy()
    for _ in range(2, k + 1):
        E = (E[:, None] + C).min(axis=0)
    return float(E[m])


def optimal_sse_bruteforce(values, k, integer=False, zero_fixed=False) -> float:
    """Reference optimum by enumerating every contiguous partition of the sorted distinct values.

    For tests on small inputs only (the number of partitions grows as ``C(n-1, k-1)``). Integer
    centroids are rounded means; with ``zero_fixed`` (and a zero among the values) the cluster
    holding zero has centroid 0 and the others are free.
    """
    x = np.asarray(values).ravel()
    if x.size == 0:
        return 0.0
    u, w = np.unique(x, return_counts=True)
    u = u.astype(np.float64)
    w = w.astype(np.float64)
    n = len(u)
    if k < 1:
        raise ValueError("k must be >= 1")
    has_zero = bool(zero_fixed) and bool(np.any(u == 0))
    if n <= k:
        return 0.0

    def seg(i, j):
        xs, ws = u[i:j], w[i:j]
        if has_zero and np.any(xs == 0):
            c = 0.0
        else:
            c = float(np.dot(ws, xs)) / float(ws.sum())
            if integer:
                c = float(np.floor(c + 0.5))
        return float(np.dot(ws, (xs - c) ** 2))

    best = np.inf
    for nc in range(1, k + 1):
        for cuts in itertools.combinations(range(1, n), nc - 1):
            b = (0, *cuts, n)
            best = min(best, sum(seg(i, j) for i, j in zip(b[:-1], b[1:])))
    return float(best)


# ----------------------------------------------------------------------------- validation


def _check(rows, k, method, init, integer):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    a = np.asarray(rows)
    codes = None  # integer rows: their smallest and largest code
    if a.ndim != 2:
        raise ValueError(f"rows must be a 2-D array (rows x values), got {a.ndim}-D")
    if integer:
        if a.dtype.kind not in "iu":
            raise ValueError(f"integer=True needs integer codes, got dtype {a.dtype}")
        if a.size:
            lo, hi = codes = int(a.min()), int(a.max())
            span = float(hi - lo)
            if span * span * a.shape[1] >= _FLOAT_EXACT or max(abs(lo), abs(hi)) >= 1 << 31:
                raise ValueError("integer codes too large for exact clustering "
                                 f"(range {lo}..{hi} over {a.shape[1]} values per row)")
    else:
        if a.dtype.kind not in "fiu":
            raise ValueError(f"rows must be real numbers, got dtype {a.dtype}")
        if a.dtype != np.float32:  # (float32 is widened later, where a kernel needs it)
            a = a.astype(np.float64, copy=False)
        if a.size and not np.all(np.isfinite(a)):
            raise ValueError("rows contain NaN or infinite values")
    return a, k, codes


# ----------------------------------------------------------------------------- distinct values


def _distinct(a, integer):
    """Sorted distinct values of each row as flat arrays.

    Returns ``vals`` (int64 or float64), ``wts`` (int64 counts), ``ptr`` (R+1 offsets of each
    row's values) and ``inv`` (R x N: index into ``vals`` of every element).
    """
    R, N = a.shape
    if integer:
        lo = int(a.min())
        span = int(a.max()) - lo + 1
        if R * span <= max(8 * a.size, 1 << 20):
            key = (a.astype(np.int64) - lo) + (np.arange(R, dtype=np.int64) * span)[:, None]
            cnt = np.bincount(key.ravel(), minlength=R * span)
            present = cnt > 0
            nz = np.flatnonzero(present)
            rank = np.cumsum(present) - 1
            inv = rank[key]
            vals = nz % span + lo
            ptr = np.zeros(R + 1, np.int64)
            np.cumsum(np.bincount(nz // span, minlength=R), out=ptr[1:])
            return vals.astype(np.int64), cnt[nz].astype(np.int64), ptr, inv
    order = np.argsort(a, axis=1)  # (ties need no order: equal values share an index)
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones((R, N), bool)
    np.not_equal(s[:, 1:], s[:, :-1], out=new[:, 1:])
    flat_new = new.ravel()
    did = np.cumsum(flat_new) - 1
    vals = s.ravel()[flat_new]
    starts = np.flatnonzero(flat_new)
    wts = np.diff(np.append(starts, R * N)).astype(np.int64)
    ptr = np.zeros(R + 1, np.int64)
    np.cumsum(new.sum(axis=1), out=ptr[1:])
    inv = np.empty((R, N), np.int64)
    np.put_along_axis(inv, order, did.reshape(R, N), axis=1)
    if integer:
        vals = vals.astype(np.int64)
    return vals, wts, ptr, inv


# ----------------------------------------------------------------------------- optimal method


def _optimal_flags(vals, wts, ptr, k, integer, zero_fixed, changed):
    """Cluster-start flags over the flat distinct values of the rows to change.

    Returns ``flags`` (bool per distinct value: it starts a cluster) and ``zero_mark`` (bool per
    distinct value: its cluster's centroid is fixed at 0).
    """
    n = len(vals)
    m = np.diff(ptr)
    flags = np.ones(n, bool)  # unchanged rows: every distinct value is its own cluster
    zero_mark = np.zeros(n, bool)
    rows = np.flatnonzero(changed)
    flags[_ranges(ptr[rows], m[rows])] = False
    flags[ptr[rows]] = True
    zrow = np.zeros(len(rows), bool)
    zpos = np.zeros(len(rows), np.int64)
    if zero_fixed:
        zeros = np.flatnonzero(vals == 0)  # at most one per row (distinct values)
        zr = np.searchsorted(ptr, zeros, side="right") - 1
        at = np.searchsorted(rows, zr)
        hit = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == zr)
        zrow[at[hit]] = True
        zpos[at[hit]] = zeros[hit] - ptr[zr[hit]]
    plain = rows[~zrow]
    if len(plain) and k > 1:  # (k == 1: the row start is the only flag)
        starts = _solve_exact(vals, wts, ptr[plain], m[plain], k, integer)
        for j in range(1, k):
            flags[ptr[plain] + starts[:, j]] = True
    if zrow.any():
        _zero_fixed_flags(vals, wts, ptr, m, rows[zrow], zpos[zrow], k, integer, flags, zero_mark)
    return flags, zero_mark


def _certified_row(x, K, tol, out):
    """One float row (1-D) clustered on "atoms" with a proof that its SSE is within ``tol``
    (relative) of the optimum: the snapped row is written to ``out`` (float64, like ``x``) and
    the certified gap returned; or None when that does not pay or cannot be shown (the caller
    then solves exactly; ``out`` may have been written).

    Atoms are the non-empty cells of a uniform grid over the row's range (a pass over the
    values, no sort). A clustering that never splits an atom costs what the DP over the atoms
    (their means, weighted by their counts) says plus the within-atom sums of squares, a
    constant; so the atom optimum ``U`` is an upper bound on the optimum ``OPT``, and
    :func:`_grid_lower_bound` proves a lower bound. The grid starts coarse and is refined (the
    bound's gap shrinks as the square of the cell width) until the gap is under ``tol``.
    """
    n = len(x)
    lo = float(x.min())
    span = float(x.max()) - lo
    if not span > 0:
        return None
    mu = float(x.mean())

    def on_grid(v, cells, most):
        """The atom solve of values ``v`` on ``cells`` cells: (its gap, and the pieces); or
        (None, None) when there are at most K atoms, or more than ``most``."""
        h = span / cells
        Wd, S1d, S2d, Dd = _grid(v, lo, h, mu, cells)
        nz = np.flatnonzero(Wd)
        W, S1, S2 = Wd[nz], S1d[nz], S2d[nz]
        if not K < len(nz) <= most:
            return None, None
        loc = _solve_exact(S1 / W, W, np.zeros(1, np.int64), np.array([len(W)]), K, False)[0]
        cw, c1, c2 = (np.add.reduceat(t, loc) for t in (W, S1, S2))
        U = float(np.sum(c2 - c1 * c1 / cw))
        lb = _grid_lower_bound(U, K, span, h, Wd, nz, Dd[nz], lam=tol / 4)
        gap = (U - lb) / lb if lb > 0 else np.inf
        return gap, (h, nz, W, S1, loc, lb, U)

    def finer(cells, gap):
        """More cells, aiming at half the tolerance (the gap shrinks as the cell width^2)."""
        grow = np.sqrt(gap / (tol / 2)) if np.isfinite(gap) else 16.0
        return int(np.ceil(cells * min(max(grow, 1.25), 16.0)))

    cells = _ATOM_FIRST
    step = n // _ATOM_SAMPLE
    if step > 1:
        # the gap is about the same for a sample of the values (relative to its optimum), so
        # a coarse solve of a sample tells the grid to start the real solve with
        gap, _ = on_grid(np.ascontiguousarray(x[::step]), cells, np.inf)
        if gap is None:
            return None
        if gap > tol:
            cells = finer(cells, gap)
    for _ in range(_ATOM_ROUNDS):
        if cells > _ATOM_CELLS_MAX * n:
            return None
        gap, got = on_grid(x, cells, n // _ATOM_PAYS)
        if gap is None:
            return None
        if gap <= tol:
            break
        cells = finer(cells, gap)
    else:
        return None
    h, nz, W, S1, loc, lb, U = got
    label = np.zeros(len(W), np.int64)
    label[loc[1:]] = 1
    label = np.cumsum(label)
    cen = np.add.reduceat(S1, loc) / np.add.reduceat(W, loc) + mu
    cen_cell = np.zeros(cells)
    cen_cell[nz] = cen[label]
    if kernel() == "c":
        _dp.grid_map(np.ascontiguousarray(x, np.float64), lo, 1.0 / h, cen_cell, out)
    else:
        out[:] = cen_cell[_cells(x, lo, h, cells)]
    return (U - lb) / lb


def _cells(x, lo, h, cells):
    """Each value's grid cell (as the compiled kernel's ``grid_cell`` computes it)."""
    return np.minimum(np.maximum((x - lo) * (1.0 / h), 0).astype(np.int64), cells - 1)


def _grid(x, lo, h, mu, cells):
    """Per grid cell: count, sum of ``x - mu``, of its square, and ``D``, the sum of the values'
    deviations above their cell's mean (dense float64 arrays of ``cells`` entries)."""
    W, S1, S2, D = (np.empty(cells) for _ in range(4))
    if kernel() == "c":
        _dp.grid(np.ascontiguousarray(x, np.float64), lo, 1.0 / h, mu, W, S1, S2, D)
        return W, S1, S2, D
    cell = _cells(x, lo, h, cells)
    xc = x - mu
    W = np.bincount(cell, minlength=cells).astype(np.float64)
    S1 = np.bincount(cell, weights=xc, minlength=cells)
    S2 = np.bincount(cell, weights=xc * xc, minlength=cells)
    mean = np.divide(S1, W, out=np.zeros(cells), where=W > 0)
    D = np.bincount(cell, weights=np.maximum(xc - mean[cell], 0), minlength=cells)
    return W, S1, S2, D


def _grid_lower_bound(U, K, span, h, Wd, nz, D, lam=1e-4):
    """A lower bound on the optimal SSE of values whose best clustering on the grid's atoms
    costs ``U`` (``Wd``: counts per cell; ``nz``: the atoms' cells; ``D``: per atom, the sum of
    its values' deviations above its mean).

    Take an optimal clustering, centroids ``c_1 < ... < c_K``, and ``r_j = (c_{j+1} - c_j) / 2``:
    cluster j ends at the midpoint ``b_j = c_j + r_j``. It splits at most ``K - 1`` atoms, one
    per cut, and putting each split atom whole into one of its two clusters, centroids kept,
    costs at most ``4 r_j D`` more (Abel summation over the atom's parts; ``D`` of the atom
    holding ``b_j``). That clustering never splits an atom, so

        U <= OPT + sum_j 4 r_j D_j.                                          (1)

    Two ways to bound the sum:

    * ``sum_j 2 r_j <= span``, so ``OPT >= U - 2 span max D`` (the bound of the first version);
    * every value within ``r_j`` of ``b_j`` is ``r_j - |x - b_j|`` from its centroid, and these
      neighbourhoods ``[c_j, c_{j+1}]`` do not overlap, so ``OPT >= sum_j Phi_j`` with
      ``Phi_j = sum_{|x - b_j| <= r_j} (r_j - |x - b_j|)^2``. The ``M(p)`` values in the cells
      within ``p - 1`` of ``b_j``'s cell are within ``p h`` of it, so
      ``Phi_j >= M(p) max(r_j - p h, 0)^2`` for every ``p``. For any ``lambda > 0``,
      ``4 r D - lambda M (r - p h)^2 <= 4 p h D + 4 D^2 / (lambda M)`` over all ``r``; so with
      ``G`` the largest over atoms of the smallest of these over ``p`` (``grid_reach``),
      (1) gives ``U <= OPT + (K - 1) G + lambda OPT``: ``OPT >= (U - (K - 1) G) / (1 + lambda)``.

    ``lambda`` is chosen by a few fixed-point steps from ``lam`` (any value gives a valid bound;
    the steps approach the one where the two terms balance, as ``G ~ lambda^-1/2``). The larger
    bound is returned, with margins for rounding (``U`` relative 1e-9; ``h`` relative 1e-9,
    plus ``1e-12`` of the span for the rounding of each value's cell).
    """
    Uc = U * (1 - 1e-9)
    best = Uc - 2 * span * float(np.max(D))
    live = D > 0
    if not live.any():
        return Uc  # no atom has two different values: nothing to split
    idx = np.ascontiguousarray(nz[live], np.int64)
    d = np.ascontiguousarray(D[live], np.float64)
    cum = np.concatenate([[0.0], np.cumsum(Wd)])
    hh = h * (1 + 1e-9) + span * 1e-12  # (a value's cell is computed with rounding)
    for _ in range(_LAMBDA_STEPS):
        G = _grid_reach(cum, idx, d, hh, 1.0 / lam)
        best = max(best, (Uc - (K - 1) * G) / (1 + lam))
        if not G > 0 or not U > 0:
            break
        lam = (K - 1) * G / (2 * U)
    return best


def _grid_reach(cum, idx, D, h, t):
    """max over atoms of min over p = 1, 2, 4, ... of ``4 p h D + 4 D^2 t / M(p)``."""
    if kernel() == "c":
        return _dp.grid_reach(cum, idx, D, h, t)
    nc = len(cum) - 1
    best = np.full(len(idx), np.inf)
    p = 1
    while True:
        M = cum[np.minimum(idx + p, nc)] - cum[np.maximum(idx - p + 1, 0)]
        best = np.minimum(best, 4 * p * h * D + 4 * D * D * t / M)
        if p >= nc:
            break
        p *= 2
    return float(best.max()) if len(best) else 0.0


def _ranges(starts, lengths):
    """Concatenation of ``arange(s, s + l)`` for each pair (vectorised)."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    off = np.repeat(np.asarray(starts, np.int64) - np.cumsum(lengths) + lengths, lengths)
    return off + np.arange(total, dtype=np.int64)


def kernel() -> str:
    """The exact kernel in use: ``"c"`` (the compiled extension) or ``"numpy"``.

    The compiled one is used when it was built, unless the environment variable
    ``TFLITE_CLUSTER_KERNEL`` is ``numpy``. Both give the same clusterings (tests check it)."""
    if _dp is None or os.environ.get("TFLITE_CLUSTER_KERNEL", "").lower() == "numpy":
        return "numpy"
    return "c"


def _check_table(K, n, nbytes=None):
    """Refuse a problem of ``n`` values whose backtracking table (``nbytes``; the compiled
    kernel's ``4 K (n + 1)`` by default) would pass ``_TABLE_LIMIT``."""
    nbytes = K * (n + 1) * 4 if nbytes is None else nbytes
    if nbytes > _TABLE_LIMIT:
        raise ProblemTooLarge(f"too large for the exact method: k={K} over {n} values needs a "
                              f"{nbytes / 2**30:.1f} GiB table; use a tolerance > 0 "
                              "(certified), fewer clusters, smaller rows or method kmeans")


_MAX_THREADS = None  # set_threads(); None: every available core (at most 8)


def _threads() -> int:
    if _MAX_THREADS is not None:
        return _MAX_THREADS
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(os.cpu_count() or 1, 8))


def set_threads(n: int | None) -> None:
    """Threads the compiled kernel may use in this process (``None``: every available core, at
    most 8). The CLI gives each ``--jobs`` worker its share of the cores."""
    global _MAX_THREADS
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    _MAX_THREADS = n
    if _dp is not None:
        _dp.set_threads(_threads())


if _dp is not None:
    _dp.set_threads(_threads())  # one big problem's layers are split over this many threads

_POOL = None


def _forget_pool():
    global _POOL
    _POOL = None  # a forked child has the pool object but none of its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool(n):
    global _POOL
    if _POOL is None or _POOL._max_workers < n:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(n, thread_name_prefix="tflite-cluster-dp")
    return _POOL


def _in_parts(work, run):
    """``run(lo, hi)`` over contiguous ranges of items of about equal estimated ``work``, on
    threads (one per available core) when there is enough work; the compiled kernel releases
    the GIL, and each range writes its own slice of the outputs."""
    n = len(work)
    nt = min(_threads(), n)
    total = float(np.sum(work))
    if nt < 2 or total < _THREAD_MIN_WORK:
        run(0, n)
        return
    cuts = np.searchsorted(np.cumsum(work), total * np.arange(1, nt) / nt)
    bounds = np.unique(np.concatenate([[0], cuts, [n]]))
    list(_pool(nt).map(lambda lo, hi: run(int(lo), int(hi)), bounds[:-1], bounds[1:]))


class _LargestFirst:
    """``nt`` worker threads that run the queued call with the most elements first (the earliest
    among equals): a big item queued behind small ones starts as soon as a core is free, so it
    does not end the batch alone on one core while the others idle (the longest-first rule)."""

    def __init__(self, nt):
        self._heap, self._seq, self._closed = [], 0, False
        self._cv = threading.Condition()
        self._workers = [threading.Thread(target=self._work, name=f"tflite-cluster-ahead-{i}",
                                          daemon=True) for i in range(nt)]
        for t in self._workers:
            t.start()

    def submit(self, size, fn, item):
        fut = Future()
        with self._cv:
            heapq.heappush(self._heap, (-size, self._seq, fut, fn, item))
            self._seq += 1
            self._cv.notify()
        return fut

    def _work(self):
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                fut, fn, item = heapq.heappop(self._heap)[2:]
            if fut.set_running_or_notify_cancel():  # (False: cancelled while queued)
                try:
                    fut.set_result(fn(item))
                except BaseException as exc:  # handed to the caller through the future
                    fut.set_exception(exc)

    def shutdown(self):
        """Wait for the running calls; queued ones must have been cancelled."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._workers:
            t.join()


def map_ahead(fn, items, sizes=None, budget=None):
    """Futures of ``fn(item)`` for every item, in order, computed up to one per available core
    at once on worker threads (the kernels release the GIL), so small problems that would each
    run on one thread keep every core busy. Up to ``_AHEAD_PER_CORE`` items per core are queued
    ahead of the one the caller waits for, so a core that finishes a small item goes on with
    the next while a big one is still running; a free core takes the largest queued item first
    (:class:`_LargestFirst`), so a big last item does not run alone at the end. A new item is
    queued only while the items in flight have at most ``budget`` elements in all (``sizes``:
    elements per item; default ``_AHEAD_ELEMS``), so memory stays bounded. Each future is done
    when yielded; ``result()`` returns the value or raises the item's own exception. One core
    (or one item): plain calls, in order."""
    items = list(items)
    sizes = [1] * len(items) if sizes is None else list(sizes)
    budget = _AHEAD_ELEMS if budget is None else budget
    nt = min(_threads(), len(items))
    if nt < 2:
        for item in items:
            fut = Future()
            try:
                fut.set_result(fn(item))
            except Exception as exc:  # handed to the caller through the future
                fut.set_exception(exc)
            yield fut
        return
    ex = _LargestFirst(nt)
    pending = deque()
    try:
        held = nxt = 0
        for _ in items:
            while nxt < len(items) and (not pending or (
                    len(pending) < _AHEAD_PER_CORE * nt and held + sizes[nxt] <= budget)):
                pending.append((ex.submit(sizes[nxt], fn, items[nxt]), sizes[nxt]))
                held += sizes[nxt]
                nxt += 1
            fut, size = pending.popleft()
            fut.exception()  # (waits)
            held -= size
            yield fut
    finally:
        for fut, _ in pending:
            fut.cancel()
        ex.shutdown()


def _c_solve(vals, wts, pstart, plen, K, integer):
    """The compiled kernel over all problems (see :func:`_in_parts`)."""
    vals = np.ascontiguousarray(vals, np.float64)
    wts = np.ascontiguousarray(wts, np.float64)
    pstart = np.ascontiguousarray(pstart, np.int64)
    plen = np.ascontiguousarray(plen, np.int64)
    starts = np.empty((len(pstart), K), np.int64)

    def run(lo, hi):
        _dp.solve(vals, wts, pstart[lo:hi], plen[lo:hi], K, bool(integer), starts[lo:hi])

    _in_parts(K * plen * np.log2(plen + 1), run)  # divide and conquer: ~k n log n evaluations
    return starts


def _c_rows(a, K, integer):
    """Every row clustered by the compiled kernel, end to end: rows sorted by numpy, then the
    kernel finds each row's distinct values, solves, and writes the centroids back (float64).
    float32 rows are read as they are (the kernel widens each value, exactly)."""
    R, N = a.shape
    _check_table(K, N)
    single = a.dtype == np.float32 and not integer
    x = np.ascontiguousarray(a, np.float32 if single else np.float64)
    srt = np.sort(x, axis=1)
    cen = np.empty((R, K))
    last = np.empty((R, K))
    ncl = np.empty(R, np.int64)
    # (float64 rows: each range's sorted rows are done with once rows() returns, and hold its
    # output; float32 ones are too narrow for it)
    out = np.empty((R, N)) if single else srt

    def run(lo, hi):
        _dp.rows(srt[lo:hi], N, K, bool(integer), cen[lo:hi], last[lo:hi], ncl[lo:hi], single)
        _dp.assign(x[lo:hi], N, K, cen[lo:hi], last[lo:hi], ncl[lo:hi], out[lo:hi], single)

    _in_parts(np.full(R, K * N * np.log2(N + 1)), run)
    return out.astype(a.dtype) if integer else out


def _c_int_rows(a, K, lo, span):
    """Every integer row clustered by the compiled kernel from its histogram of codes (all in
    ``[lo, lo + span)``): no sort, centroids written back through a lookup table. 8, 16 and
    32-bit codes (native byte order) are read and written as they are; others go through int32
    (``_check`` keeps every code below 2**31 in size)."""
    R, N = a.shape
    _check_table(K, min(N, span))
    native = a.dtype.itemsize <= 4 and a.dtype.isnative  # (the kernel reads 8 to 32-bit codes)
    x = np.ascontiguousarray(a if native else a.astype(np.int32))
    out = np.empty_like(x)

    def run(r0, r1):
        _dp.int_rows(x[r0:r1], N, K, lo, span, out[r0:r1])

    m = min(N, span)
    _in_parts(np.full(R, K * m * np.log2(m + 1) + N), run)
    return out.astype(a.dtype, copy=False)


def _solve_exact(vals, wts, pstart, plen, K, integer):
    """Exact K-clustering of each problem (``plen > K`` points from ``pstart``).

    Returns the start (local index) of every cluster, shape (P, K).
    """
    P = len(pstart)
    if kernel() == "c":
        _check_table(K, int(np.max(plen)))
        return _c_solve(vals, wts, pstart, plen, K, integer)
    res = _solve(vals, wts, pstart, plen, None, K, integer, None, allq=False)
    qsel = np.full(P, K, np.int64)
    starts = np.empty((P, K), np.int64)
    for chunk in res:
        idx = chunk["idx"]
        starts[idx] = _backtrack(chunk["A"], qsel[idx], plen[idx], K)[:, :K]
    return starts


def _zero_fixed_flags(vals, wts, ptr, m, rows, zpos, k, integer, flags, zero_mark):
    """Flags of rows whose zero must stay a centroid (see module doc)."""
    R = len(rows)
    base = ptr[rows]
    if k == 1:
        zero_mark[_ranges(base, m[rows])] = True
        return
    K = k - 1
    nneg = zpos
    npos = m[rows] - zpos - 1
    # negatives: points base .. base+nneg-1; positives mirrored: -x from the row's end backwards
    Fn, Tn, bt_n = _side(vals, wts, base, nneg, K, integer, mirror=False)
    Fp, Tp, bt_p = _side(vals, wts, base + m[rows] - 1, npos, K, integer, mirror=True)
    # best q1 + q2 <= K: prefix minimum of the positives' F over q2 <= K - q1
    gp = np.minimum.accumulate(Fp, axis=1)
    q1s = np.arange(K + 1)
    tot = Fn + gp[:, K - q1s]
    q1 = np.argmin(tot, axis=1)
    lim = K - q1
    fp_masked = np.where(np.arange(K + 1)[None, :] <= lim[:, None], Fp, np.inf)
    q2 = np.argmin(fp_masked, axis=1)
    a_neg = Tn[np.arange(R), q1]  # negatives from a_neg on join the zero cluster
    b_pos = Tp[np.arange(R), q2]  # mirrored positives from b_pos on join it
    starts_n = bt_n(q1, a_neg)  # (R, K+1) local starts, -1 unused
    starts_p = bt_p(q2, b_pos)
    rr, cc = np.nonzero(starts_n >= 0)
    flags[base[rr] + starts_n[rr, cc]] = True
    # zero cluster starts at a_neg (the row start when q1 == 0)
    flags[base + a_neg] = True
    rr, cc = np.nonzero(starts_p > 0)  # a mirrored start s > 0 is the x start m - s
    mr = m[rows]
    flags[base[rr] + mr[rr] - starts_p[rr, cc]] = True
    hasp = q2 > 0  # first positive cluster starts after the zero cluster's end
    flags[base[hasp] + mr[hasp] - b_pos[hasp]] = True
    zlen = (mr - b_pos) - a_neg
    zero_mark[_ranges(base + a_neg, zlen)] = True


def _side(vals, wts, start, n, K, integer, mirror):
    """One side of zero-fixed rows: F[r, q] = best cost of the side with q free clusters and the
    rest (the points nearest zero) at centroid 0; T[r, q] the first point at zero; and a
    backtracking function ``(q, t) -> starts`` (R x K+1, -1 unused)."""
    R = len(start)
    F = np.full((R, K + 1), np.inf)
    T = np.zeros((R, K + 1), np.int64)
    if kernel() == "c":
        _check_table(K, int(np.max(n, initial=0)))
        S = np.empty((R, K + 1, K + 1), np.int64)
        _dp.side(np.ascontiguousarray(vals, np.float64), np.ascontiguousarray(wts, np.float64),
                 np.ascontiguousarray(start, np.int64), np.ascontiguousarray(n, np.int64), K,
                 bool(integer), bool(mirror), F, T, S)

        def backtrack_c(q, t):
            return S[np.arange(R), q]

        return F, T, backtrack_c
    if mirror:  # the side's points in increasing order of x' = -x: backwards from ``start``
        flat = np.repeat(start, n) - _ranges(np.zeros_like(start), n)
    else:
        flat = _ranges(start, n)
    x = vals[flat]
    if mirror:
        x = -x
    w = wts[flat]
    lptr = np.zeros(R + 1, np.int64)
    np.cumsum(n, out=lptr[1:])
    # zero-cluster cost of a suffix: sum of w x^2 from t to the end (exact for integers)
    xf = x.astype(np.float64)
    wx2 = w * xf * xf
    csum = np.zeros(len(x) + 1)
    np.cumsum(wx2, out=csum[1:])
    F[:, 0] = csum[lptr[1:]] - csum[lptr[:-1]]
    T[:, 0] = 0
    act = np.flatnonzero(n > 0)
    chunks = []
    if len(act):
        tail = ("suffix", csum, lptr)
        chunks = _solve(x, w, lptr[act], n[act], act, K, integer, tail, allq=True)
        for ch in chunks:
            rows_g = act[ch["idx"]]
            F[rows_g, 1:] = ch["F"][:, 1:]
            T[rows_g, 1:] = ch["T"][:, 1:]
    def backtrack(q, t):
        out = np.full((R, K + 1), -1, np.int64)
        for ch in chunks:
            rows_g = act[ch["idx"]]
            out[rows_g] = _backtrack(ch["A"], q[rows_g], t[rows_g], K)
        return out

    return F, T, backtrack


def _centroids(vals, wts, flags, zero_mark, integer):
    """Centroid of every distinct value's cluster (clusters = runs started by ``flags``)."""
    starts = np.flatnonzero(flags)
    lens = np.diff(np.append(starts, len(vals)))
    cid = np.cumsum(flags) - 1
    if integer:
        v = vals.astype(np.int64)
        W = np.add.reduceat(wts, starts)
        S1 = np.add.reduceat(wts * v, starts)
        c = np.floor_divide(2 * S1 + W, 2 * W)
    else:
        first = vals[starts]
        dev = vals - np.repeat(first, lens)
        W = np.add.reduceat(wts.astype(np.float64), starts)
        c = first + np.add.reduceat(wts * dev, starts) / W
    cz = np.zeros(len(starts), bool)
    cz[cid[zero_mark]] = True
    c[cz] = 0
    return c[cid]


# ----------------------------------------------------------------------------- DP driver


def _solve(x, w, pstart, plen, ids, K, integer, tail, allq):
    """Run the layered DP on problems ``x[pstart[i] : pstart[i] + plen[i]]`` (sorted ascending).

    ``tail`` describes the cost added after the last cluster: None (all points must be used:
    0 at ``t = m``, +inf elsewhere) or ``("suffix", csum, lptr)`` (the points from t on sit at
    centroid 0, cost from the prefix sums ``csum`` of w*x^2 over the problems laid out by
    ``lptr``; ``ids`` maps problems to those rows). ``allq`` pads rows so that every layer
    covers every end point.

    Returns a list of chunk results: ``idx`` (problem indices), ``A`` (K x R x b int32 optimal
    segment lengths), ``F`` (R x K+1 best total per number of clusters) and ``T`` (its end).
    """
    P = len(pstart)
    order = np.argsort(plen, kind="stable")
    out = []
    i = 0
    while i < P:
        Mi = int(plen[order[i]])
        # grow the chunk while its table stays in budget (rows sorted by size)
        j = i + 1
        while j < P:
            Mj = int(plen[order[j]]) + (K - 1 if allq else 0)
            if Mj > _DENSE_MAX and Mi + (K - 1 if allq else 0) <= _DENSE_MAX:
                break  # keep dense and divide-and-conquer chunks apart
            b = Mj - K + 1
            cost = b * (j + 1 - i) * (Mj + 1) if Mj <= _DENSE_MAX else (j + 1 - i) * (Mj + 1) * 8
            if cost > _CHUNK_ELEMS:
                break
            j += 1
        idx = order[i:j]
        out.append(_solve_chunk(x, w, pstart[idx], plen[idx], None if ids is None else ids[idx],
                                K, integer, tail, allq, idx))
        i = j
    return out


def _solve_chunk(x, w, pstart, plen, ids, K, integer, tail, allq, idx):
    R = len(pstart)
    M = int(plen.max()) + (K - 1 if allq else 0)
    b = M - K + 1
    _check_table(K, int(plen.max()), K * R * b * 4)
    # padded points: copies of the last point with weight 1 (keeps the instance valid)
    j = np.arange(M, dtype=np.int64)
    src = pstart[:, None] + np.minimum(j[None, :], plen[:, None] - 1)
    xs = x[src]
    ws = np.where(j[None, :] < plen[:, None], w[src], 1)
    if integer:
        xs = xs.astype(np.int64)
        lo = x[pstart].astype(np.int64)
        hi = x[pstart + plen - 1].astype(np.int64)
        xc = (xs - ((lo + hi) // 2)[:, None]).astype(np.float64)
        unit = np.ones(R)
    else:
        # centred and scaled to unit variance: costs come back in the row's units times ``unit``
        xs = xs.astype(np.float64)
        wf = ws.astype(np.float64)
        mu = (wf * xs).sum(axis=1) / wf.sum(axis=1)
        xc = xs - mu[:, None]
        sd = np.sqrt((wf * xc * xc).sum(axis=1) / wf.sum(axis=1))
        sd[~(sd > 0)] = 1.0
        xc /= sd[:, None]
        unit = sd * sd
    wf = ws.astype(np.float64)
    P3 = np.zeros((3, R, M + 1))
    np.cumsum(wf, axis=1, out=P3[0, :, 1:])
    np.cumsum(wf * xc, axis=1, out=P3[1, :, 1:])
    np.cumsum(wf * xc * xc, axis=1, out=P3[2, :, 1:])
    # tail cost per end point t
    tl = np.full((R, M + 1), np.inf)
    if tail is None:
        tl[np.arange(R), plen] = 0.0
    else:
        _, csum, lptr = tail
        t = np.arange(M + 1)[None, :]
        ok = t <= plen[:, None]
        g = lptr[ids][:, None] + np.minimum(t, plen[:, None])
        end = lptr[ids + 1][:, None]
        tl[ok] = (csum[end] - csum[g])[ok]
    if M <= _DENSE_MAX:
        A, F, T = _dense(P3, K, integer, tl, plen, unit, tail is None)
    else:
        A, F, T = _dc(P3, K, integer, tl, plen, unit)
    return {"idx": idx, "A": A, "F": F, "T": T}


def _seg_cost(dW, dS1, dS2, integer):
    """Cost of segments from their sums (new array)."""
    if integer:
        c = dS1 / dW
        c += 0.5
        np.floor(c, out=c)
        t = c * dW
        t -= dS1
        t -= dS1
        t *= c
        t += dS2  # dS2 - 2 c dS1 + c^2 dW
        return t
    t = dS1 * dS1
    t /= dW
    np.subtract(dS2, t, out=t)
    return t


def _seg_gain(dW, dS1, integer):
    """``dS2 - cost`` of segments (new array): what their centroid saves on the sum of squares."""
    if integer:
        c = dS1 / dW
        c += 0.5
        np.floor(c, out=c)
        g = c * dW
        np.subtract(dS1, g, out=g)
        g += dS1
        g *= c  # c (2 dS1 - c dW)
        return g
    g = dS1 * dS1
    g /= dW
    return g


def _layer_tail(E, tl, q, F, T):
    """F[:, q], T[:, q] = min / leftmost argmin over t of E_q(t) + tail(t)."""
    b = E.shape[1]
    v = E + tl[:, q:q + b]
    u = np.argmin(v, axis=1)
    F[:, q] = v[np.arange(len(v)), u]
    T[:, q] = u + q


def _dense(P3, K, integer, tl, plen, unit, last_only):
    """Dense layered DP over segment lengths with Knuth's window (see module doc).

    ``E_q(t) = S2(t) + min_d [E_{q-1}(t - d) - S2(t - d) - gain(t - d, t)]`` where ``gain =
    dS2 - cost`` (what the segment's centroid saves). The table holds int64 keys ``-gain * 1024
    + (1023 - d)``: one ``np.minimum`` keeps the best value and, among equal values, the longest
    last segment (the leftmost split). Integer sums are used as they are (exact); float sums are
    fixed point, ``2**40`` units for the row's total (one-cluster) cost, so a chosen solution is
    within a few units (``~1e-12`` relative) of the optimum: float64's own noise on these sums.
    ``last_only``: the last layer is only needed at ``t = m`` (exact cover).
    """
    _, R, M1 = P3.shape
    b = M1 - K
    Q = np.ascontiguousarray(P3.transpose(0, 2, 1))  # (3, M+1, R): rows innermost
    if integer:
        scale = np.ones(R)
        S2f = Q[2].astype(np.int64)
    else:
        tot = _seg_cost(Q[0, -1] - Q[0, 0], Q[1, -1] - Q[1, 0], Q[2, -1] - Q[2, 0], False)
        scale = float(1 << 40) / np.maximum(tot, 1.0)  # tot ~ W: the points have unit variance
        S2f = np.rint(Q[2] * scale).astype(np.int64)
    S2f <<= 10
    G = np.empty((b, M1, R), np.int64)
    for d in range(1, b + 1):
        g = _seg_gain(Q[0, d:] - Q[0, :-d], Q[1, d:] - Q[1, :-d], integer)
        if integer:
            g *= -1024.0
        else:
            g *= -scale
            np.rint(g, out=g)
            g *= 1024.0
        g += 1023 - d
        G[d - 1, d:] = g
    A = np.empty((K, R, b), np.int32)
    A[0] = np.arange(1, b + 1, dtype=np.int32)
    F = np.full((R, K + 1), np.inf)
    T = np.zeros((R, K + 1), np.int64)
    F[:, 0] = tl[:, 0]
    ar = np.arange(b)
    to_units = (unit / scale / 1024.0)[:, None]
    E = (G[ar, ar + 1] & ~1023) + S2f[1:b + 1]  # (b, R): E_1(t = u + 1) = cost(0, t), key units
    _layer_tail(E.T * to_units, tl, 1, F, T)
    big = np.iinfo(np.int64).max
    acc = np.empty((b, R), np.int64)
    tmp = np.empty((b, R), np.int64)
    src = np.empty((b, R), np.int64)
    W = b
    rr = np.arange(R)
    for q in range(2, K + 1):
        np.subtract(E, S2f[q - 1:q - 1 + b], out=src)
        if q == K and last_only:  # only t = m: one candidate list per row
            u = plen - K
            D = np.arange(1, W + 1)[:, None]
            us = u[None, :] - D + 1
            cand = src[np.maximum(us, 0), rr] + G[D - 1, plen[None, :], rr]
            cand[us < 0] = big
            best = cand.min(axis=0)
            A[K - 1, rr, u] = 1023 - (best & 1023)
            F[:, K] = ((best & ~1023) + S2f[plen, rr]) * to_units[:, 0] + tl[rr, plen]
            T[:, K] = plen
            break
        acc.fill(big)
        for d in range(1, W + 1):
            n = b - d + 1
            cand = tmp[:n]
            np.add(src[:n], G[d - 1, q + d - 1:q + b], out=cand)
            a = acc[d - 1:]
            np.minimum(a, cand, out=a)
        Aq = A[q - 1]
        np.subtract(1023, (acc & 1023).T, out=Aq, casting="unsafe")
        np.bitwise_and(acc, ~1023, out=E)
        E += S2f[q:q + b]
        _layer_tail(E.T * to_units, tl, q, F, T)
        # Knuth: opt_{q+1}(t) >= opt_q(t), i.e. d_{q+1}(t) <= d_q(t) (+1 past the band's end);
        # only real end points (t <= m) count.
        valid = ar[None, :] <= (plen - q)[:, None]
        W = min(b, int(np.where(valid, Aq, 0).max()) + 1)
    return A, F, T


def _dc_levels(b, leaf):
    """Divide-and-conquer tree over band positions 0..b-1.

    Returns the internal levels, each ``(u, left, right)``: the positions solved at that level
    and the positions whose optima bound their candidates (-1: the band's edge), and the leaves
    ``(lo, hi, left, right)``: runs of at most ``leaf`` positions solved together, bounded by the
    optima of ``left`` and ``right``.
    """
    lo = np.array([0])
    hi = np.array([b - 1])
    ln = np.array([-1])
    rn = np.array([-1])
    out = []
    leaves = []
    while len(lo):
        small = hi - lo + 1 <= leaf
        leaves.append((lo[small], hi[small], ln[small], rn[small]))
        lo, hi, ln, rn = lo[~small], hi[~small], ln[~small], rn[~small]
        if not len(lo):
            break
        mid = (lo + hi) >> 1
        out.append((mid, ln, rn))
        lo, hi, ln, rn = (np.concatenate([lo, mid + 1]), np.concatenate([mid - 1, hi]),
                          np.concatenate([ln, mid]), np.concatenate([mid, rn]))
    leaves = tuple(np.concatenate(c) for c in zip(*leaves))
    return out, leaves


def _seg_argmin(vals, starts, counts):
    mins = np.minimum.reduceat(vals, starts)
    nz = np.flatnonzero(vals == np.repeat(mins, counts))
    first = nz[np.searchsorted(nz, starts)]
    return mins, first - starts


def _width_classes(width):
    """Groups of nodes by padded width 2, 4, 8, ...: yields (node indices, padded width)."""
    wcls = np.frexp(np.maximum(width - 1, 1).astype(np.float64))[1]  # bit length of width-1
    order = np.argsort(wcls, kind="stable")
    bounds = np.searchsorted(wcls[order], np.arange(1, int(wcls.max()) + 2))
    for c in range(len(bounds) - 1):
        if bounds[c + 1] > bounds[c]:
            yield order[bounds[c]:bounds[c + 1]], 1 << (c + 1)


def _dc_eval(src, srcv, lo, hi, tv, integer):
    """Minimum over s in [lo, hi] (flat source indices) of E(s) + cost(s, t) per node, with the
    leftmost argmin. ``src`` (N x 3, ``srcv`` its packed view) holds (E - S2, W, S1) per source;
    ``tv`` (P x 3) the t-side sums (W, S1, S2): ``E(s) + cost(s, t) = (E(s) - S2(s)) -
    gain(s, t) + S2(t)``. Wide ranges are evaluated as slices one node at a time, narrow ones as
    padded blocks, the others as one flat list of candidates."""
    P = len(lo)
    best = np.empty(P)
    arg = np.empty(P, np.int64)
    cnt = hi - lo + 1
    for i in np.flatnonzero(cnt >= _SLICE_MIN):  # few nodes (top levels of long rows)
        best[i], arg[i] = _dc_slice(src, int(lo[i]), int(hi[i]), tv[i], integer)
    narrow = np.flatnonzero(cnt <= _PAD_MAX)
    for sel, Wp in _width_classes(cnt[narrow]) if len(narrow) else ():
        nodes = narrow[sel]
        step = max(1, _CAND_CHUNK // Wp)
        J = np.arange(Wp)
        for i in range(0, len(nodes), step):
            nd = nodes[i:i + step]
            S = np.minimum(lo[nd, None] + J, hi[nd, None])  # clamped repeats of hi at the end
            V = np.take(srcv, S).view(np.float64).reshape(S.shape + (3,))
            t = tv[nd]
            tot = _seg_gain(t[:, 0, None] - V[:, :, 1], t[:, 1, None] - V[:, :, 2], integer)
            np.subtract(V[:, :, 0], tot, out=tot)
            a = np.argmin(tot, axis=1)  # leftmost
            best[nd] = tot[np.arange(len(nd)), a] + t[:, 2]
            arg[nd] = S[np.arange(len(nd)), a]
    rest = np.flatnonzero((cnt > _PAD_MAX) & (cnt < _SLICE_MIN))
    if not len(rest):
        return best, arg
    c_all = cnt[rest]
    cum = np.cumsum(c_all)
    gstart = 0
    while gstart < len(rest):  # groups of about _CAND_CHUNK candidates
        base = cum[gstart - 1] if gstart else 0
        gend = max(int(np.searchsorted(cum, base + _CAND_CHUNK, side="right")), gstart + 1)
        nd = rest[gstart:gend]
        c = c_all[gstart:gend]
        st = np.zeros(len(c), np.int64)
        np.cumsum(c[:-1], out=st[1:])
        nc = int(st[-1] + c[-1])
        gs = np.repeat(lo[nd] - st, c)
        gs += np.arange(nc)
        v = np.take(srcv, gs).view(np.float64).reshape(nc, 3)
        t = tv[nd]
        tot = _seg_gain(np.repeat(t[:, 0], c) - v[:, 1], np.repeat(t[:, 1], c) - v[:, 2], integer)
        np.subtract(v[:, 0], tot, out=tot)  # E(s) - S2(s) - gain; S2(t) is added per node
        mn, am = _seg_argmin(tot, st, c)
        best[nd] = mn + t[:, 2]
        arg[nd] = lo[nd] + am
        gstart = gend
    return best, arg


def _dc_slice(src, lo, hi, t, integer):
    """One node's minimum over the contiguous candidates lo..hi, in pieces (leftmost wins)."""
    best, arg = np.inf, lo
    for a in range(lo, hi + 1, _CAND_CHUNK):
        v = src[a:min(a + _CAND_CHUNK, hi + 1)]
        tot = _seg_gain(t[0] - v[:, 1], t[1] - v[:, 2], integer)
        np.subtract(v[:, 0], tot, out=tot)
        j = int(np.argmin(tot))
        if tot[j] < best:
            best, arg = float(tot[j]), a + j
    return best + t[2], arg


def _dc(P3, K, integer, tl, plen, unit):
    """Layered DP by divide and conquer on the monotone optimal split (see module doc).

    The recursion stops at runs of ``_LEAF`` positions, whose common candidate range (between
    their neighbours' optima) is evaluated as one padded block: few candidates per position
    without per-position bookkeeping.
    """
    _, R, M1 = P3.shape
    b = M1 - K
    Nb = R * b
    rb = (np.arange(R, dtype=np.int64) * b)[:, None]
    tree, (llo, lhi, lln, lrn) = _dc_levels(b, _LEAF)
    levels = []
    for u, ln, rn in tree:
        gu = (rb + u).ravel()
        gl = np.where(ln >= 0, rb + ln, Nb).ravel()  # sentinel Nb: no left bound
        gr = np.where(rn >= 0, rb + rn, Nb + 1).ravel()  # sentinel Nb+1: no right bound
        gk = (rb + np.minimum(u + 1, b - 1)).ravel()
        rowb = np.broadcast_to(rb, (R, len(u))).ravel()
        levels.append((gu, gl, gr, gk, rowb))
    # leaves: positions (padded to _LEAF by repeating the last), bounds, Knuth index of the first
    Lu = np.minimum(llo[:, None] + np.arange(_LEAF), lhi[:, None])
    Lu = (rb[:, :, None] + Lu).reshape(-1, _LEAF)
    Lgl = np.where(lln >= 0, rb + lln, Nb).ravel()
    Lgr = np.where(lrn >= 0, rb + lrn, Nb + 1).ravel()
    Lgk = (rb + np.minimum(llo + 1, b - 1)).ravel()
    Lrow = np.broadcast_to(rb, (R, len(llo))).ravel()
    Lhi = (rb + lhi).ravel()
    A = np.empty((K, R, b), np.int32)
    A[0] = np.arange(1, b + 1, dtype=np.int32)
    F = np.full((R, K + 1), np.inf)
    T = np.zeros((R, K + 1), np.int64)
    F[:, 0] = tl[:, 0]
    d = P3[:, :, 1:b + 1] - P3[:, :, :1]
    E = _seg_cost(d[0], d[1], d[2], integer).ravel()
    _layer_tail(E.reshape(R, b) * unit[:, None], tl, 1, F, T)
    src = np.empty((Nb, 3))
    srcv = src.view(np.dtype((np.void, 24))).ravel()
    Oprev = np.empty(Nb + 2, np.int64)
    Oprev[:Nb] = np.repeat(rb.ravel(), b)  # layer 1: s = 0, at source position 0 of the row
    On = np.empty(Nb + 2, np.int64)
    uu = np.tile(np.arange(b, dtype=np.int64), R)
    for q in range(2, K + 1):
        np.subtract(E, P3[2, :, q - 1:q - 1 + b].ravel(), out=src[:, 0])
        for c in range(2):
            src[:, c + 1] = P3[c, :, q - 1:q - 1 + b].ravel()
        T3 = np.stack([P3[c, :, q:q + b].ravel() for c in range(3)], axis=1)
        Enew = np.empty(Nb)
        On[Nb] = -1
        On[Nb + 1] = np.iinfo(np.int64).max
        for gu, gl, gr, gk, rowb in levels:
            lo = np.maximum(On[gl], Oprev[gk] - 1)  # Knuth: s >= opt_{q-1}(t)
            np.maximum(lo, rowb, out=lo)
            hi = np.minimum(On[gr], gu)  # s <= t - 1
            np.minimum(lo, hi, out=lo)
            best, arg = _dc_eval(src, srcv, lo, hi, np.take(T3, gu, axis=0), integer)
            On[gu] = arg
            Enew[gu] = best
        lo = np.maximum(On[Lgl], Oprev[Lgk] - 1)
        np.maximum(lo, Lrow, out=lo)
        hi = np.minimum(On[Lgr], Lhi)
        np.minimum(lo, hi, out=lo)
        _dc_leaves(src, srcv, T3, lo, hi, Lu, integer, On, Enew)
        E = Enew
        # segment length d = t - s = u - v + 1 with v = On - row base
        A[q - 1] = (uu - (On[:Nb] - np.repeat(rb.ravel(), b)) + 1).reshape(R, b)
        _layer_tail(E.reshape(R, b) * unit[:, None], tl, q, F, T)
        Oprev, On = On, Oprev
    return A, F, T


def _dc_leaves(src, srcv, T3, lo, hi, U, integer, On, Enew):
    """Solve leaf runs: positions ``U`` (L x _LEAF, flat band indices) share the candidate range
    [lo, hi] (flat source indices, same row), restricted per position to s <= t - 1."""
    width = hi - lo + 1
    wide = width > _LEAF_WIDTH
    if wide.any():  # rare: wide ranges go through the ragged evaluation, position by position
        w = np.flatnonzero(wide)
        uw = U[w].ravel()
        lw = np.repeat(lo[w], U.shape[1])
        hw = np.minimum(np.repeat(hi[w], U.shape[1]), uw)
        best, arg = _dc_eval(src, srcv, np.minimum(lw, hw), hw, np.take(T3, uw, axis=0), integer)
        On[uw] = arg
        Enew[uw] = best
        keep = np.flatnonzero(~wide)
        lo, hi, U, width = lo[keep], hi[keep], U[keep], width[keep]
    if not len(lo):
        return
    # padded blocks by width class (2, 4, ..., _LEAF_WIDTH), so that padding at most doubles
    for sel, Wp in _width_classes(width):
        _dc_leaf_block(srcv, T3, lo[sel], hi[sel], U[sel], Wp, integer, On, Enew)


def _dc_leaf_block(srcv, T3, lo, hi, U, Wp, integer, On, Enew):
    step = max(1, _CAND_CHUNK // (U.shape[1] * Wp))
    J = np.arange(Wp)
    for i in range(0, len(lo), step):
        sl = slice(i, i + step)
        S = np.minimum(lo[sl, None] + J, hi[sl, None])  # (L, Wp) candidates, clamped
        u = U[sl]  # (L, LEAF)
        V = np.take(srcv, S).view(np.float64).reshape(S.shape + (3,))
        Tv = np.take(T3, u, axis=0)  # (L, LEAF, 3)
        with np.errstate(divide="ignore", invalid="ignore"):  # s >= t: masked just below
            tot = _seg_gain(Tv[:, :, None, 0] - V[:, None, :, 1],
                            Tv[:, :, None, 1] - V[:, None, :, 2], integer)
        np.subtract(V[:, None, :, 0], tot, out=tot)
        tot[S[:, None, :] > u[:, :, None]] = np.inf  # s <= t - 1
        a = np.argmin(tot, axis=2)  # leftmost
        On[u] = np.take_along_axis(S, a, axis=1)
        Enew[u] = np.take_along_axis(tot, a[:, :, None], axis=2)[:, :, 0] + Tv[:, :, 2]


def _backtrack(A, q, t, K):
    """Cluster starts from the optimal segment lengths ``A`` (K x R x b): row r has q[r]
    clusters ending at t[r]; returns (R, K+1) local starts, -1 where unused."""
    R = len(q)
    out = np.full((R, K + 1), -1, np.int64)
    t = np.asarray(t, np.int64).copy()
    q = np.asarray(q, np.int64)
    for layer in range(K, 0, -1):
        r = np.flatnonzero(q >= layer)
        if not len(r):
            continue
        d = A[layer - 1, r, t[r] - layer]
        s = t[r] - d
        out[r, layer - 1] = s
        t[r] = s
    return out


# ----------------------------------------------------------------------------- kmeans method


def _kmeans2(x, start, minit, rng):
    from scipy.cluster.vq import kmeans2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty clusters: dropped by the caller
        try:
            return kmeans2(x, start, minit=minit, rng=rng, check_finite=False)
        except TypeError:  # scipy < 1.15 names the generator ``seed``
            return kmeans2(x, start, minit=minit, seed=rng, check_finite=False)


def _kmeans_rows(a, k, integer, zero_fixed, init, seed):
    out = a.copy() if integer else a.astype(np.float64, copy=True)
    for r in range(a.shape[0]):
        x = a[r].astype(np.float64)
        u = np.unique(x)
        if len(u) <= k:
            continue
        rng = np.random.default_rng(seed)
        if init == "kmeans++":
            start, minit = k, "++"
        elif init == "linear":
            start, minit = np.linspace(u[0], u[-1], k), "matrix"
        elif init == "density":
            start, minit = np.quantile(x, (np.arange(k) + 0.5) / k), "matrix"
        else:  # random: k values drawn uniformly between min and max (TFMOT's RANDOM)
            start, minit = np.sort(rng.uniform(u[0], u[-1], k)), "matrix"
        cen, lab = _kmeans2(x, start, minit, rng)
        cen = np.asarray(cen, np.float64).ravel()
        cen = cen[np.unique(lab)]
        if integer:
            cen = np.floor(cen + 0.5)
        if zero_fixed and np.any(x == 0):
            cen[np.argmin(np.abs(cen))] = 0.0
        cen = np.unique(cen)
        out[r] = _nearest(x, cen).astype(out.dtype, copy=False)
    return out


def _nearest(x, cen):
    """Nearest centroid of each value (``cen`` sorted, distinct); a tie goes to the lower one."""
    if len(cen) == 1:
        return np.full_like(x, cen[0])
    mids = (cen[1:] + cen[:-1]) / 2
    return cen[np.searchsorted(mids, x, side="left")]
