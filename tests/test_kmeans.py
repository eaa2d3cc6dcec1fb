"""Kernels of tflite_cluster.kmeans: exactness against brute force and a plain DP, properties."""

import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tflite_cluster import kmeans as km


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(params=["compiled", "dense", "divide_and_conquer"])
def kernel(request, monkeypatch):
    """Run a test with each DP kernel: the compiled one (skipped when it is not built), and the
    numpy ones; the third forces divide and conquer on small rows, with tiny leaves, candidate
    chunks, width limits and table chunks so that every path is exercised."""
    if request.param == "compiled":
        if km._dp is None:
            pytest.skip("compiled kernel not built")
        monkeypatch.delenv("TFLITE_CLUSTER_KERNEL", raising=False)
        assert km.kernel() == "c"
        return request.param
    monkeypatch.setenv("TFLITE_CLUSTER_KERNEL", "numpy")
    assert km.kernel() == "numpy"
    if request.param == "divide_and_conquer":
        monkeypatch.setattr(km, "_DENSE_MAX", 0)
        monkeypatch.setattr(km, "_LEAF", 2)
        monkeypatch.setattr(km, "_LEAF_WIDTH", 3)
        monkeypatch.setattr(km, "_CAND_CHUNK", 3)
        monkeypatch.setattr(km, "_PAD_MAX", 2)
        monkeypatch.setattr(km, "_SLICE_MIN", 6)
    monkeypatch.setattr(km, "_CHUNK_ELEMS", 200)
    return request.param




def random_rows(rng, integer, zero_fixed):
    R = int(rng.integers(1, 4))
    N = int(rng.integers(1, 11))
    if integer:
        a = rng.integers(-6, 7, size=(R, N))
    else:
        kind = int(rng.integers(0, 4))
        if kind == 0:
            a = rng.normal(size=(R, N))
        elif kind == 1:  # many ties
            a = np.round(rng.normal(size=(R, N)) * 2) / 2
        elif kind == 2:  # negative only
            a = -np.abs(rng.normal(size=(R, N))) - 0.1
        else:  # all equal rows
            a = np.full((R, N), 0.3)
        if zero_fixed:
            a[rng.random((R, N)) < 0.3] = 0.0
    return a


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("zero_fixed", [False, True])
def test_optimal_matches_bruteforce(kernel, integer, zero_fixed):
    rng = np.random.default_rng(1234 + 2 * integer + zero_fixed)
    for _ in range(120):
        a = random_rows(rng, integer, zero_fixed)
        k = int(rng.integers(1, 7))
        out = km.snap_rows(a, k, integer=integer, zero_fixed=zero_fixed)
        got = km.sse(a, out)
        for r in range(a.shape[0]):
            ref = km.optimal_sse_bruteforce(a[r], k, integer=integer, zero_fixed=zero_fixed)
            assert got[r] == pytest.approx(ref, rel=1e-9, abs=1e-12), (a[r], k)
            assert len(np.unique(out[r])) <= k


@pytest.mark.parametrize("integer", [False, True])
def test_optimal_matches_plain_dp_on_larger_rows(kernel, integer):
    """Rows of 30..150 values with k up to 20: exercises the Knuth windows and the recursion."""
    rng = np.random.default_rng(7 + integer)
    for trial in range(6):
        k = int(rng.integers(2, 21))
        n = int(rng.integers(30, 150))
        if integer:
            a = np.round(rng.laplace(size=(3, n)) * rng.uniform(2, 30))
            a = np.clip(a, -127, 127).astype(np.int8)
        else:
            a = rng.standard_t(3, size=(3, n)) * rng.uniform(0.01, 100)
            if trial % 2:
                a = np.round(a, 1)  # ties
        out = km.snap_rows(a, k, integer=integer)
        got = km.sse(a, out)
        for r in range(3):
            ref = km.plain_dp_sse(a[r], k, integer)
            if integer:
                assert got[r] == ref  # integer costs are exact
            else:
                assert got[r] == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.skipif(km._dp is None, reason="compiled kernel not built")
@pytest.mark.parametrize("integer", [False, True])
def test_compiled_paths_match_plain_dp_at_their_boundaries(integer):
    """Rows on both sides of the compiled kernel's limits: the cost table (n <= 256 distinct
    values and n <= 24 k; whole layers swept eight end points at a time), and divide and conquer
    with its bottom sweeps (nodes of <= 32 end points); unit weights (distinct floats, the
    reciprocal path), weighted floats (ties) and integer codes. Integer costs are exact, so the
    optimum must be equal; float ones within rounding."""
    rng = np.random.default_rng(21 + integer)
    # (17..25, 16) and the other small ones: every end point layout of the table's sweep
    # groups of eight, including groups that start before a layer's first end point
    for n, k in [(255, 16), (256, 16), (257, 16), (240, 10), (241, 10), (96, 4), (97, 4),
                 (40, 2), (300, 2), (520, 31), (700, 5), *[(n, 16) for n in range(17, 26)],
                 (9, 8), (10, 3), (13, 3), (14, 12), (33, 2), (36, 7)]:
        rows = []
        for _ in range(4):
            if integer:  # n distinct codes, about as dense as an int8 row's, Laplace counts
                codes = np.sort(rng.choice(np.arange(-n, n), size=n, replace=False))
                counts = 1 + rng.poisson(30 * np.exp(-np.abs(codes) / (n / 4)))
                rows.append(np.repeat(codes, counts).astype(np.int16))
            else:
                x = rng.laplace(size=n) * rng.uniform(0.01, 10)
                rows.append(x)
                m = max(n // 2, k + 1)
                rows.append(np.repeat(x[:m], rng.integers(1, 4, size=m)))  # ties
        for r in rows:
            a = r[None, :]
            assert len(np.unique(a)) > k
            got = km.sse(a, km.snap_rows(a, k, integer=integer))[0]
            ref = km.plain_dp_sse(r, k, integer)
            if integer:
                assert got == ref, (n, k)
            else:
                assert got == pytest.approx(ref, rel=1e-9), (n, k)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-20, 20), min_size=1, max_size=9), st.integers(1, 5), st.booleans(),
       st.booleans())
def test_property_bruteforce(values, k, integer, zero_fixed):
    a = np.array([values], dtype=np.int16 if integer else np.float64)
    if not integer:
        a = a / 4.0
    out = km.snap_rows(a, k, integer=integer, zero_fixed=zero_fixed)
    ref = km.optimal_sse_bruteforce(a[0], k, integer=integer, zero_fixed=zero_fixed)
    assert km.sse(a, out)[0] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_zero_fixed_large_rows_match_plain_split(kernel):
    """zero_fixed on rows of ~60 values: optimum equals the best split of the other k-1
    clusters between negatives and positives, each side solved by brute force over the zero
    cluster's extent with the plain DP."""
    rng = np.random.default_rng(5)
    for _ in range(4):
        a = np.round(rng.laplace(size=(2, 60)) * 8).astype(np.int64)
        a[:, :5] = 0
        k = int(rng.integers(2, 7))
        out = km.snap_rows(a, k, integer=True, zero_fixed=True)
        for r in range(2):
            assert np.all(out[r][a[r] == 0] == 0)
            assert len(np.unique(out[r])) <= k
            assert km.sse(a[r:r + 1], out[r:r + 1])[0] == _zero_fixed_reference(a[r], k)


def _zero_fixed_reference(x, k):
    u, w = np.unique(x, return_counts=True)
    neg, pos = u < 0, u > 0

    def side(vals, wts, q):  # best cost of one side with q free clusters, rest at 0
        n = len(vals)
        best = np.inf
        for a in range(q, n + 1):  # vals[a:] join the zero cluster (vals sorted by |x| last)
            rest = float(np.dot(wts[a:], vals[a:].astype(np.float64) ** 2))
            if a == 0:
                head = 0.0
            else:
                head = np.inf if q == 0 else km.plain_dp_sse(np.repeat(vals[:a], wts[:a]), q, True)
            best = min(best, head + rest)
        return best

    nv, nw = u[neg], w[neg]
    pv, pw = -u[pos][::-1], w[pos][::-1]
    return min(side(nv, nw, q1) + side(pv, pw, q2)
               for q1 in range(0, min(k - 1, len(nv)) + 1)
               for q2 in range(0, min(k - 1 - q1, len(pv)) + 1))


# ----------------------------------------------------------------------------- properties


def test_multi_row_equals_rows_alone(kernel):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(7, 40)) * rng.uniform(0.1, 10, size=(7, 1))
    a[2, :] = a[2, 0]  # a constant row
    a[4, :35] = 0.0  # mostly zeros
    for zero_fixed in (False, True):
        together = km.snap_rows(a, 5, zero_fixed=zero_fixed)
        alone = np.concatenate([km.snap_rows(a[r:r + 1], 5, zero_fixed=zero_fixed)
                                for r in range(7)])
        np.testing.assert_array_equal(together, alone)
    codes = np.round(rng.laplace(size=(9, 50)) * 10).astype(np.int8)
    together = km.snap_rows(codes, 4, integer=True)
    alone = np.concatenate([km.snap_rows(codes[r:r + 1], 4, integer=True) for r in range(9)])
    np.testing.assert_array_equal(together, alone)


def test_never_worse_than_scipy_kmeans2():
    from scipy.cluster.vq import kmeans2

    rng = np.random.default_rng(11)
    a = rng.standard_t(4, size=(5, 300))
    for k in (3, 8, 16):
        ours = km.sse(a, km.snap_rows(a, k))
        for r in range(5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cen, lab = kmeans2(a[r], k, minit="++", rng=0)
            theirs = float(np.sum((a[r] - cen[lab]) ** 2))
            assert ours[r] <= theirs * (1 + 1e-12)


def test_rows_with_at_most_k_values_are_unchanged():
    a = np.array([[0.1, 0.1, 0.1, 0.7, -0.0, 0.7],
                  [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    out = km.snap_rows(a, 3)
    assert out[0].tobytes() == a[0].tobytes()  # bit for bit (keeps -0.0 and 0.1 exactly)
    assert len(np.unique(out[1])) == 3
    codes = np.array([[5, -3, 5, 5], [1, 2, 3, 4]], dtype=np.int8)
    out = km.snap_rows(codes, 2, integer=True, zero_fixed=True)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out[0], codes[0])


def test_rows_no_longer_than_k_come_back_as_they_are():
    """Rows of at most k values skip the kernel: integer codes keep their dtype, floats come back
    as float64, bit for bit; bad values are still refused."""
    codes = np.array([[5, -3, 7], [1, 1, 1]], dtype=np.int16)
    out = km.snap_rows(codes, 3, integer=True)
    assert out.dtype == np.int16 and out is not codes
    np.testing.assert_array_equal(out, codes)
    x = np.array([[0.1, -0.0], [3.0, 2.5]], dtype=np.float32)
    out = km.snap_rows(x, 2)
    assert out.dtype == np.float64 and out.tobytes() == x.astype(np.float64).tobytes()
    with pytest.raises(ValueError, match="NaN"):
        km.snap_rows(np.array([[np.nan, 1.0]]), 2)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, ">i2"])
def test_integer_rows_of_every_code_type(kernel, dtype):
    """The compiled kernel reads and writes 8, 16 and 32-bit codes as they are (others are
    widened): the same optimum for every type, the input's dtype back."""
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    rng = np.random.default_rng(4)
    centre = 0 if info.min < 0 else 100
    x = np.clip(np.round(rng.laplace(size=(5, 300)) * 20) + centre, info.min, info.max)
    a = x.astype(dt)
    out = km.snap_rows(a, 8, integer=True)
    assert out.dtype == dt and out.shape == a.shape
    for r in range(5):
        assert len(np.unique(out[r])) <= 8
        assert km.sse(a[r:r + 1], out[r:r + 1])[0] == km.plain_dp_sse(a[r], 8, True)


def test_at_most_k_values_and_float64_output():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 500)).astype(np.float32)
    for k in (1, 2, 16, 100):
        out = km.snap_rows(a, k)
        assert out.dtype == np.float64 and out.shape == a.shape
        assert all(len(np.unique(row)) <= k for row in out)


def test_k1_is_the_mean():
    a = np.array([[1.0, 2.0, 6.0]])
    np.testing.assert_allclose(km.snap_rows(a, 1), [[3.0, 3.0, 3.0]])
    c = np.array([[1, 2, 2]], dtype=np.int8)  # mean 5/3 rounds to 2
    np.testing.assert_array_equal(km.snap_rows(c, 1, integer=True), [[2, 2, 2]])
    z = np.array([[0.0, 1.0, 3.0]])
    np.testing.assert_array_equal(km.snap_rows(z, 1, zero_fixed=True), [[0.0, 0.0, 0.0]])


def test_deterministic_and_row_order_independent():
    rng = np.random.default_rng(9)
    a = np.round(rng.normal(size=(6, 200)), 2)  # many ties
    first = km.snap_rows(a, 7)
    np.testing.assert_array_equal(first, km.snap_rows(a, 7))
    perm = rng.permutation(6)
    np.testing.assert_array_equal(first[perm], km.snap_rows(a[perm], 7))


def test_integer_results_are_codes_within_the_range():
    rng = np.random.default_rng(4)
    for dtype in (np.int8, np.uint8, np.int64):
        info = np.iinfo(dtype)
        a = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=(5, 300)).astype(dtype)
        out = km.snap_rows(a, 6, integer=True)
        assert out.dtype == dtype
        assert np.all(out.min(axis=1) >= a.min(axis=1)) and np.all(out.max(axis=1) <= a.max(axis=1))
        assert all(len(np.unique(r)) <= 6 for r in out)


def test_integer_centroid_is_rounded_mean_half_up():
    a = np.array([[0, 1, 10, 11]], dtype=np.int8)  # clusters {0,1} and {10,11}: means x.5
    np.testing.assert_array_equal(km.snap_rows(a, 2, integer=True), [[1, 1, 11, 11]])
    b = np.array([[-1, 0, 10, 11]], dtype=np.int8)  # mean -0.5 -> 0
    np.testing.assert_array_equal(km.snap_rows(b, 2, integer=True), [[0, 0, 11, 11]])


def test_zero_fixed_keeps_zeros_and_includes_zero():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(8, 120)) + 3.0  # mostly positive: zero would not be a centroid
    a[rng.random(a.shape) < 0.4] = 0.0
    for method in ("optimal", "kmeans"):
        out = km.snap_rows(a, 4, zero_fixed=True, method=method)
        for r in range(8):
            assert np.all(out[r][a[r] == 0] == 0)
            assert 0.0 in out[r]
            assert len(np.unique(out[r])) <= 4
    plain = km.sse(a, km.snap_rows(a, 4))
    fixed = km.sse(a, km.snap_rows(a, 4, zero_fixed=True))
    assert np.all(fixed >= plain * (1 - 1e-12))


def test_zero_fixed_near_zero_values_may_join_zero():
    a = np.array([[-5.0, -5.1, 0.0, 0.0, 0.01, 5.0, 5.2]])
    out = km.snap_rows(a, 3, zero_fixed=True)
    np.testing.assert_allclose(out, [[-5.05, -5.05, 0, 0, 0, 5.1, 5.1]])


def test_sse():
    a = np.array([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(km.sse(a, np.array([[1.0, 1.0], [4.0, 4.0]])), [1.0, 2.0])


# ----------------------------------------------------------------------------- kmeans method


@pytest.mark.parametrize("init", km.INITS)
def test_kmeans_each_init(init):
    rng = np.random.default_rng(8)
    a = rng.laplace(size=(3, 400))
    out = km.snap_rows(a, 8, method="kmeans", init=init, seed=5)
    np.testing.assert_array_equal(out, km.snap_rows(a, 8, method="kmeans", init=init, seed=5))
    assert all(len(np.unique(r)) <= 8 for r in out)
    opt = km.sse(a, km.snap_rows(a, 8))
    assert np.all(km.sse(a, out) >= opt * (1 - 1e-12))
    codes = np.round(a * 20).astype(np.int8)
    outc = km.snap_rows(codes, 8, method="kmeans", init=init, integer=True, zero_fixed=True)
    assert outc.dtype == np.int8
    assert all(len(np.unique(r)) <= 8 for r in outc)
    assert np.all(outc[codes == 0] == 0)


def test_kmeans_rows_with_few_values_unchanged():
    a = np.array([[0.1, 0.2, 0.1], [1.0, 2.0, 3.0]])
    out = km.snap_rows(a, 3, method="kmeans")
    assert out.tobytes() == a.tobytes()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must be >= 1"),
    ({"k": 2.5}, "k must be an integer"),
    ({"k": True}, "k must be an integer"),
    ({"k": 2, "method": "fast"}, "unknown method"),
    ({"k": 2, "init": "best"}, "unknown init"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        km.snap_rows(np.zeros((1, 3)), **kwargs)


def test_bad_values():
    with pytest.raises(ValueError, match="NaN or infinite"):
        km.snap_rows(np.array([[1.0, np.nan]]), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        km.snap_rows(np.array([[1.0, np.inf]]), 2, method="kmeans")
    with pytest.raises(ValueError, match="2-D"):
        km.snap_rows(np.zeros(4), 2)
    with pytest.raises(ValueError, match="integer codes"):
        km.snap_rows(np.zeros((1, 4)), 2, integer=True)


def test_empty_input():
    assert km.snap_rows(np.zeros((0, 5)), 3).shape == (0, 5)
    assert km.snap_rows(np.zeros((2, 0), np.int8), 3, integer=True).dtype == np.int8


# ----------------------------------------------------------------------------- compiled kernel


def test_compiled_kernel_is_built_in_ci():
    """CI installs from a clean checkout with a compiler: the extension must be there, so that a
    broken build cannot pass silently on the numpy fallback."""
    if not os.environ.get("CI"):
        pytest.skip("only checked in CI (CI=true)")
    assert km._dp is not None and km.kernel() == "c"


@pytest.mark.skipif(km._dp is None, reason="compiled kernel not built")
def test_compiled_kernel_is_built_from_this_source():
    """The extension carries the hash of the _dp.c it was built from. A rebuild that fails (an
    optional extension fails silently, and the old build stays) would otherwise test old code."""
    import hashlib
    from pathlib import Path

    source = Path(km.__file__).with_name("_dp.c")
    if not source.exists():
        pytest.skip("installed without the C source")
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    assert km._dp.SOURCE_SHA256 == want, (
        "the compiled kernel is stale (built from another _dp.c): rebuild it with "
        "`python setup.py build_ext --inplace`, which shows compiler errors")


@pytest.mark.skipif(km._dp is None, reason="compiled kernel not built")
@pytest.mark.parametrize("zero_fixed", [False, True])
def test_compiled_equals_numpy_kernels(monkeypatch, zero_fixed):
    """Mixed batches (short rows, rows over the numpy dense limit, ties, int codes): the compiled
    kernel, also split over threads, reaches the same optimum as the numpy kernels."""
    rng = np.random.default_rng(11 + zero_fixed)
    cases = []
    for n, scale in [(40, 1.0), (300, 30.0), (700, 1.0), (2000, 0.01)]:
        a = rng.laplace(size=(5, n)) * scale
        a[1] = np.round(a[1], 1)  # ties
        a[2, : n // 3] = 0.0
        cases.append((a, False))
        cases.append((np.clip(np.round(a * 40 / scale), -127, 127).astype(np.int8), True))
    for a, integer in cases:
        for k in (3, 16):
            monkeypatch.setenv("TFLITE_CLUSTER_KERNEL", "numpy")
            ref = km.sse(a, km.snap_rows(a, k, integer=integer, zero_fixed=zero_fixed))
            monkeypatch.delenv("TFLITE_CLUSTER_KERNEL")
            got = km.sse(a, km.snap_rows(a, k, integer=integer, zero_fixed=zero_fixed))
            monkeypatch.setattr(km, "_THREAD_MIN_WORK", 0)
            threaded = km.snap_rows(a, k, integer=integer, zero_fixed=zero_fixed)
            monkeypatch.undo()
            np.testing.assert_array_equal(km.sse(a, threaded), got)
            if integer:
                np.testing.assert_array_equal(got, ref)  # exact costs on both sides
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------- certified rows


@pytest.mark.parametrize("dist", ["laplace", "t3", "two_bumps"])
def test_certified_rows_are_within_their_bound(dist):
    """Long float rows solved on a grid: at most k values, a certified gap <= tolerance, and the
    true excess over the exact optimum (solved here with tolerance 0) within that gap."""
    rng = np.random.default_rng(21)
    n = max(km.ATOM_MIN * 2, 1 << 17)  # long enough for the grid to pay at 1e-4
    if dist == "laplace":
        x = rng.laplace(size=n)
    elif dist == "t3":
        x = rng.standard_t(3, size=n) * 0.05
    else:
        x = np.concatenate([rng.normal(-3, 0.1, n // 2), rng.normal(5, 1.0, n - n // 2)])
    x = x.astype(np.float32).astype(np.float64)[None]
    for tol in (1e-3, 1e-4):
        info = {}
        out = km.snap_rows(x, 16, tolerance=tol, info=info)
        assert len(np.unique(out)) <= 16
        assert 0 < info["gap"] <= tol
        exact = km.sse(x, km.snap_rows(x, 16))[0]
        got = km.sse(x, out)[0]
        assert exact <= got * (1 + 1e-12)
        assert got - exact <= info["gap"] * exact * (1 + 1e-9)


def test_certified_bound_is_a_true_lower_bound():
    """The lower bound behind the certificate never exceeds the exact optimum: rows built so
    that the grid is coarse (tolerance at its maximum) on several shapes and k."""
    rng = np.random.default_rng(8)
    for trial in range(6):
        n = km.ATOM_MIN + 1 + trial * 997
        x = (rng.gamma(0.5 + trial, size=n) * rng.choice([-1, 1], n))[None]
        k = [2, 4, 8, 16, 32, 64][trial]
        info = {}
        out = km.snap_rows(x, k, tolerance=km.MAX_TOLERANCE, info=info)
        got = km.sse(x, out)[0]
        exact = km.sse(x, km.snap_rows(x, k))[0]
        if info["gap"] == 0:  # fell back to the exact path
            assert got == pytest.approx(exact, rel=1e-12)
            continue
        lower = got / (1 + info["gap"])  # the certificate's lower bound, recovered
        assert lower <= exact * (1 + 1e-12), (trial, k)


@pytest.mark.parametrize("use_c", [True, False])
def test_grid_lower_bound_never_exceeds_the_optimum(use_c, monkeypatch):
    """The certificate's lower bound, taken directly at many grid widths (from a handful of cells,
    where it is loose, to fine ones, where it is tight), on shapes that stress it: dense clumps
    straddling cell edges, heavy tails, few distinct values, two far bumps. It must never exceed
    the exact optimum, and it must get within 1e-3 of it on the finest grids."""
    if use_c and km._dp is None:
        pytest.skip("compiled kernel not built")
    if not use_c:
        monkeypatch.setenv("TFLITE_CLUSTER_KERNEL", "numpy")
    rng = np.random.default_rng(31)
    n = 3000
    rows = {
        "laplace": rng.laplace(size=n),
        "t2": rng.standard_t(2, size=n),
        "clumps": np.repeat(np.linspace(-1, 1, 40), n // 40) + rng.normal(0, 1e-3, n // 40 * 40),
        "few": rng.choice([-2.0, -0.5, 0.0, 0.25, 3.0], n),
        "bumps": np.concatenate([rng.normal(-50, 0.1, n // 2), rng.normal(50, 3, n - n // 2)]),
    }
    tight = 0
    for name, x in rows.items():
        lo, span, mu = float(x.min()), float(np.ptp(x)), float(x.mean())
        for k in (2, 5, 16):
            exact = km.sse(x[None], km.snap_rows(x[None], k))[0]
            for cells in (7, 64, 500, 4000, 60000):
                h = span / cells
                Wd, S1d, S2d, Dd = km._grid(x, lo, h, mu, cells)
                nz = np.flatnonzero(Wd)
                if len(nz) <= k:
                    continue
                W, S1, S2 = Wd[nz], S1d[nz], S2d[nz]
                loc = km._solve_exact(S1 / W, W, np.zeros(1, np.int64), np.array([len(W)]), k,
                                      False)[0]
                cw, c1, c2 = (np.add.reduceat(v, loc) for v in (W, S1, S2))
                U = float(np.sum(c2 - c1 * c1 / cw))
                assert U >= exact * (1 - 1e-9), (name, k, cells)  # an upper bound
                lb = km._grid_lower_bound(U, k, span, h, Wd, nz, Dd[nz])
                assert lb <= exact * (1 + 1e-12), (name, k, cells, lb, exact)
                tight += cells == 60000 and lb >= exact * (1 - 1e-3)
    assert tight >= 12  # the bound is useful, not just valid


def test_tolerance_zero_and_short_rows_stay_exact():
    rng = np.random.default_rng(2)
    long_row = rng.normal(size=(1, km.ATOM_MIN + 10))
    info = {}
    exact = km.snap_rows(long_row, 8, tolerance=0.0, info=info)
    assert info["gap"] == 0.0
    short = rng.normal(size=(3, 1000))
    info = {}
    np.testing.assert_array_equal(km.snap_rows(short, 8, tolerance=1e-3, info=info),
                                  km.snap_rows(short, 8))
    assert info["gap"] == 0.0
    # integer rows are never approximated
    codes = rng.integers(-127, 128, size=(1, km.ATOM_MIN + 10)).astype(np.int8)
    info = {}
    np.testing.assert_array_equal(km.snap_rows(codes, 8, integer=True, tolerance=1e-3, info=info),
                                  km.snap_rows(codes, 8, integer=True))
    assert info["gap"] == 0.0
    assert km.sse(long_row, exact)[0] > 0


@pytest.mark.parametrize("tol", [-1e-4, 2e-3, float("nan"), "0.1"])
def test_bad_tolerance(tol):
    with pytest.raises(ValueError, match="tolerance"):
        km.snap_rows(np.zeros((1, 4)), 2, tolerance=tol)


# ----------------------------------------------------------------------------- distinct counts


@pytest.mark.parametrize("compiled", [True, False])
def test_count_distinct_matches_numpy(monkeypatch, compiled):
    """The report's distinct counts (histograms, the compiled radix count, or np.unique) agree
    with np.unique on values (-0.0 counts as 0.0)."""
    from tflite_cluster import quant

    if compiled and quant._count32 is None:
        pytest.skip("compiled kernel not built")
    if not compiled:
        monkeypatch.setattr(quant, "_count32", None)
    rng = np.random.default_rng(4)
    base = np.round(rng.normal(size=50000), 3)
    base[:100] = 0.0
    base[100:200] = -0.0
    for arr in (base.astype(np.float32), base.astype(np.float16), (base * 1000).astype(np.int32),
                np.clip(base * 40, -128, 127).astype(np.int8), base.astype(np.float32)[:0],
                rng.standard_normal((64, 3000)).astype(np.float32)):
        assert quant.count_distinct(arr) == len(np.unique(arr.astype(np.float64))), arr.dtype


@pytest.mark.skipif(km._dp is None, reason="compiled kernel not built")
def test_compiled_big_rows_split_over_threads_match(monkeypatch):
    """Rows long enough for the compiled kernel to split each layer over threads give the same
    clustering on one thread and the same optimum as the numpy kernel."""
    rng = np.random.default_rng(17)
    a = rng.laplace(size=(2, 40000))
    a[1] = np.round(a[1], 2)  # ties
    try:
        assert km._dp.set_threads(1) == 1
        one = km.snap_rows(a, 16)
        assert km._dp.set_threads(2) == 2
        two = km.snap_rows(a, 16)
    finally:
        km._dp.set_threads(km._threads())
    np.testing.assert_array_equal(one, two)
    monkeypatch.setenv("TFLITE_CLUSTER_KERNEL", "numpy")
    ref = km.snap_rows(a, 16)
    np.testing.assert_allclose(km.sse(a, two), km.sse(a, ref), rtol=1e-11)


@pytest.mark.skipif(km._dp is None, reason="compiled kernel not built")
def test_compiled_kernel_rejects_bad_buffers():
    """Wrong sizes, ranges or read-only outputs raise (they never write out of bounds)."""
    dp = km._dp
    i64 = np.int64
    with pytest.raises(ValueError, match="wts"):
        dp.solve(np.zeros(3), np.zeros(2), np.zeros(1, i64), np.ones(1, i64), 2, False,
                 np.zeros(2, i64))
    with pytest.raises(ValueError, match="out of range"):
        dp.solve(np.zeros(3), np.ones(3), np.array([2], i64), np.array([3], i64), 2, False,
                 np.zeros(2, i64))
    with pytest.raises(ValueError, match="rows"):
        dp.rows(np.zeros(7), 2, 2, False, np.zeros(6), np.zeros(6), np.zeros(3, i64))
    with pytest.raises(ValueError, match="cluster count"):
        dp.assign(np.zeros(4), 2, 2, np.zeros(4), np.zeros(4), np.array([0, 1], i64), np.zeros(4))
    with pytest.raises(ValueError, match="out of range"):
        dp.side(np.zeros(3), np.ones(3), np.array([5], i64), np.array([2], i64), 2, False, False,
                np.zeros(3), np.zeros(3, i64), np.zeros(9, i64))
    with pytest.raises(BufferError):
        dp.solve(np.zeros(3), np.ones(3), np.zeros(1, i64), np.array([3], i64), 2, False,
                 b"\0" * 16)
    i32 = np.int32
    with pytest.raises(ValueError, match="outside"):  # a code outside the stated span
        dp.int_rows(np.array([0, 5, 9], i32), 3, 2, 0, 9, np.zeros(3, i32))
    with pytest.raises(ValueError, match="out"):
        dp.int_rows(np.array([0, 5, 8], i32), 3, 2, 0, 9, np.zeros(2, i32))
    with pytest.raises(ValueError, match="whole number"):
        dp.int_rows(np.zeros(5, i32), 2, 2, 0, 1, np.zeros(5, i32))
    with pytest.raises(ValueError, match="8, 16 or 32-bit"):
        dp.int_rows(np.zeros(4), 2, 2, 0, 1, np.zeros(4))
    with pytest.raises(ValueError, match="codes' type"):
        dp.int_rows(np.zeros(4, np.int8), 2, 2, 0, 1, np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="int32"):
        dp.int_rows(np.zeros(4, np.uint32), 2, 2, 2**31, 1, np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="D"):
        dp.grid(np.zeros(4), 0.0, 1.0, 0.0, np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="out"):
        dp.grid_map(np.zeros(4), 0.0, 1.0, np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="outside the grid"):
        dp.grid_reach(np.zeros(4), np.array([3], i64), np.ones(1), 1.0, 1.0)


@pytest.mark.parametrize("use_c", [True, False])
def test_float32_rows_give_what_their_float64_values_give(use_c, monkeypatch):
    """float32 rows are read by the compiled kernel without a float64 copy; the result is the
    same, bit for bit, as for the same values in float64 (every path: rows, certified, kmeans,
    zero kept, numpy kernels), and always float64."""
    if use_c and km._dp is None:
        pytest.skip("compiled kernel not built")
    if not use_c:
        monkeypatch.setenv("TFLITE_CLUSTER_KERNEL", "numpy")
    rng = np.random.default_rng(9)
    a32 = (rng.laplace(size=(7, 300)) * 0.05).astype(np.float32)
    a32[2, :100] = 0
    long32 = rng.laplace(size=(1, km.ATOM_MIN * 3)).astype(np.float32)
    for a, kw in [(a32, {}), (a32, {"zero_fixed": True}), (a32, {"method": "kmeans"}),
                  (long32, {"tolerance": 1e-4}), (long32, {})]:
        got = km.snap_rows(a, 8, **kw)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, km.snap_rows(a.astype(np.float64), 8, **kw))


@pytest.mark.skipif(km._dp is None, reason="compiled kernel not built")
def test_integer_row_paths_agree(monkeypatch):
    """Integer rows take the compiled histogram path when their codes span little (int8 always;
    int16 when the span is at most 1024 or 4x the row), else the sorted-row or histogram paths;
    every one reaches the numpy kernels' optimum, leaves rows of <= k codes alone, and keeps the
    dtype."""
    rng = np.random.default_rng(5)
    cases = [
        rng.integers(-128, 128, size=(40, 9)).astype(np.int8),  # rows of <= k codes
        np.round(rng.laplace(size=(30, 500)) * 20).clip(-128, 127).astype(np.int8),
        np.round(rng.laplace(size=(6, 300)) * 200).astype(np.int16),  # span < 4 N
        np.round(rng.laplace(size=(6, 50)) * 3000).astype(np.int16),  # wide span: sorted rows
        np.round(rng.laplace(size=(1, 6000)) * 3000).astype(np.int16),  # long and wide
        rng.integers(0, 256, size=(3, 700)).astype(np.uint8),
    ]
    for a in cases:
        for k in (1, 4, 16):
            got = km.snap_rows(a, k, integer=True)
            assert got.dtype == a.dtype
            monkeypatch.setenv("TFLITE_CLUSTER_KERNEL", "numpy")
            ref = km.snap_rows(a, k, integer=True)
            monkeypatch.delenv("TFLITE_CLUSTER_KERNEL")
            np.testing.assert_array_equal(km.sse(a, got), km.sse(a, ref))
            for r in range(a.shape[0]):
                assert len(np.unique(got[r])) <= k
                if len(np.unique(a[r])) <= k:
                    np.testing.assert_array_equal(got[r], a[r])


@pytest.mark.parametrize("threads", [1, 3])
def test_map_ahead_order_errors_and_budget(threads):
    """Results come back in order, each item's exception in its own future, and the items in
    flight never hold more than the budget (one item may exceed it alone)."""
    import threading
    import time

    lock = threading.Lock()
    held, peak = [0], [0]

    def fn(item):
        size, value = item
        with lock:
            held[0] += size
            peak[0] = max(peak[0], held[0])
        time.sleep(0.01)
        with lock:
            held[0] -= size
        if value < 0:
            raise ValueError(f"bad {value}")
        return value * 10

    items = [(4, 0), (4, 1), (9, -2), (2, 3), (2, 4), (2, 5), (3, -6), (1, 7)]
    try:
        km.set_threads(threads)
        got = []
        for fut in km.map_ahead(fn, items, sizes=[n for n, _ in items], budget=8):
            assert fut.done()
            try:
                got.append(fut.result())
            except ValueError as exc:
                got.append(str(exc))
    finally:
        km.set_threads(None)
    assert got == [0, 10, "bad -2", 30, 40, 50, "bad -6", 70]
    assert peak[0] <= 9  # the 9-element item ran alone
    if threads == 1:
        assert peak[0] == 9


def test_map_ahead_workers_take_the_largest_queued_item_first():
    """A big item queued behind small ones starts as soon as a worker is free (so it does not
    end a batch alone on one core); equal sizes keep their order."""
    import threading

    started, gate, order = threading.Event(), threading.Event(), []

    def block(name):
        started.set()
        gate.wait(10)
        order.append(name)

    pool = km._LargestFirst(1)
    try:
        futs = [pool.submit(1, block, "first")]
        assert started.wait(10)  # the only worker is busy: the rest queue up
        futs += [pool.submit(size, order.append, name)
                 for size, name in [(2, "a"), (9, "b"), (2, "c"), (5, "d")]]
        gate.set()
        for fut in futs:
            fut.result(timeout=10)
    finally:
        pool.shutdown()
    assert order == ["first", "b", "d", "a", "c"]


def test_map_ahead_stopped_early_leaves_nothing_running():
    import threading

    started = []
    ahead = km.map_ahead(lambda i: started.append(i) or i, range(100))
    assert next(ahead).result() == 0
    ahead.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("tflite-cluster-ahead")]
    assert len(started) < 100


def test_set_threads():
    try:
        km.set_threads(1)
        assert km._threads() == 1
        a = np.random.default_rng(1).normal(size=(64, 500))
        one = km.snap_rows(a, 8)
        km.set_threads(None)
        np.testing.assert_array_equal(km.snap_rows(a, 8), one)
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="threads"):
                km.set_threads(bad)
    finally:
        km.set_threads(None)
