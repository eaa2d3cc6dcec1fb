"""The main job on built models of every kind: properties of the output, checked under LiteRT."""

from __future__ import annotations

import json

import numpy as np
import pytest

import model_builder as mb
import tflite_cluster as tc
from tflite_cluster import model as tfl
from tflite_cluster.quant import INTEGER_DTYPES, distinct_values, make_rows

compare = pytest.importorskip("tflite_cluster.compare")
pytest.importorskip("ai_edge_litert")


def weight_mask(data: bytes) -> np.ndarray:
    """True on every byte that belongs to a candidate weight's data."""
    mask = np.zeros(len(data), dtype=bool)
    for w in tfl.parse(data).weights:
        mask[w.data_offset:w.data_offset + w.nbytes] = True
    return mask


def assert_only_weights_changed(before: bytes, after: bytes) -> None:
    assert len(before) == len(after)
    a = np.frombuffer(before, np.uint8)
    b = np.frombuffer(after, np.uint8)
    changed = a != b
    assert not np.any(changed & ~weight_mask(before)), "bytes outside weight data changed"


def max_distinct_per_row(data: bytes, t: tc.TensorReport, group_size=None) -> int:
    w = next(w for w in tfl.parse(data).weights if w.buffer == t.buffer)
    stored = tfl.read_array(data, w)
    rows = make_rows(stored.shape, tc.Granularity(t.granularity), w.channel_axis() if not w.sparse else None,
                     group_size)
    return max(len(distinct_values(r)) for block in rows.split(stored) for r in block)


@pytest.fixture(scope="module")
def models():
    return {name: make() for name, make in mb.ALL_FACTORIES.items()}


@pytest.mark.parametrize("name", list(mb.ALL_FACTORIES))
def test_every_kind_clusters_and_runs(models, name):
    data = models[name]
    result = tc.cluster(data, tc.ClusterConfig(k=8, min_elements=256))
    out = result.data
    assert_only_weights_changed(data, out)
    clustered = result.report.clustered
    assert clustered, f"{name}: nothing was clustered"
    for t in clustered:
        if t.space == "int8" or t.dtype not in INTEGER_DTYPES:
            assert max_distinct_per_row(out, t) <= 8, t.name
    # metadata and signatures are untouched because every byte outside weights is; LiteRT agrees
    report = compare.compare(data, out, samples=4, seed=1)
    assert report.min_sqnr_db > 8, f"{name}: output SQNR {report.min_sqnr_db:.1f} dB"
    if any(t.sqnr_db is not None for t in clustered):
        assert out != data


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "dynamic_int8"])
@pytest.mark.parametrize("granularity,k,min_db", [("tensor", 4, 2), ("channel", 16, 15), ("group", 6, 6)])
def test_granularity_bounds_distinct_values(dtype, granularity, k, min_db):
    data = mb.conv_model(dtype)
    cfg = tc.ClusterConfig(k=k, granularity=granularity, group_size=3, min_elements=0)
    result = tc.cluster(data, cfg)
    for t in result.report.clustered:
        assert t.granularity == granularity
        assert max_distinct_per_row(result.data, t, group_size=3) <= k
        if granularity == "tensor":
            assert t.unique_after <= k
    assert compare.compare(data, result.data, samples=4).min_sqnr_db > min_db


def test_int8_space_keeps_codes_integer_and_in_range():
    data = mb.conv_model("int8")
    result = tc.cluster(data, tc.ClusterConfig(k=5, min_elements=0))
    info = tfl.parse(result.data)
    for w in info.weights:
        codes = tfl.read_array(result.data, w)
        original = tfl.read_array(data, w)
        assert codes.dtype == np.int8
        assert codes.min() >= original.min() and codes.max() <= original.max()


def test_float_space_on_int8_requantizes_and_runs():
    data = mb.conv_model("int8")
    result = tc.cluster(data, tc.ClusterConfig(k=8, space="float", min_elements=0))
    assert all(t.space == "float" for t in result.report.clustered)
    assert compare.compare(data, result.data, samples=4).min_sqnr_db > 10


def test_float16_values_rounded_to_storage():
    data = mb.conv_model("float16")
    result = tc.cluster(data, tc.ClusterConfig(k=4, granularity="tensor", min_elements=0))
    for w in tfl.parse(result.data).weights:
        if w.dtype == "float16" and w.elements >= 1024:
            assert len(distinct_values(tfl.read_array(result.data, w))) <= 4


def test_exact_per_tensor_optimum_matches_kernel_brute_force():
    """The pipeline's per-tensor SSE equals brute force over all partitions on a tiny tensor."""
    from tflite_cluster import kmeans

    data = mb.mlp_model("float32")
    w = tfl.parse(data).weights[-1]
    stored = tfl.read_array(data, w).astype(np.float64)
    # keep the brute force small: a few distinct values
    sub = np.round(stored.ravel()[:40] * 4) / 4
    best = kmeans.optimal_sse_bruteforce(sub, 3)
    snapped = kmeans.snap_rows(sub.reshape(1, -1), 3)
    assert float(kmeans.sse(sub.reshape(1, -1), snapped)[0]) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_preserve_sparsity_keeps_zeros():
    data = mb.sparse_model()
    dense = mb.mlp_model("float32")
    for model_bytes in (data, dense):
        result = tc.cluster(model_bytes, tc.ClusterConfig(k=4, preserve_sparsity=True, min_elements=0))
        for w in tfl.parse(model_bytes).weights:
            before = tfl.read_array(model_bytes, w)
            after = tfl.read_array(result.data, w)
            assert np.all(after[before == 0] == 0)


def test_idempotent_and_deterministic():
    data = mb.conv_model("float32")
    cfg = tc.ClusterConfig(k=8, min_elements=0)
    once = tc.cluster(data, cfg).data
    assert tc.cluster(data, cfg).data == once
    assert tc.cluster(once, cfg).data == once
    km = tc.ClusterConfig(k=8, method="kmeans", init="kmeans++", seed=3, min_elements=0)
    assert tc.cluster(data, km).data == tc.cluster(data, km).data


def test_error_sums_in_chunks_match_one_piece(monkeypatch):
    from tflite_cluster import quant

    rng = np.random.default_rng(4)
    stored = rng.normal(size=(37, 29)).astype(np.float32)
    new = (stored + rng.normal(scale=0.01, size=stored.shape)).astype(np.float32)
    ref = stored.astype(np.float64)
    want = (float(np.sum((new - ref) ** 2)), float(np.sum(ref ** 2)))
    monkeypatch.setattr(quant, "_SUM_CHUNK", 100)  # 11 chunks, the last one short
    got = quant.error_sums(stored, new, "float32", None)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_same_result_on_one_thread_and_many():
    """Weights are clustered ahead on worker threads; the bytes and the report do not depend on
    how many: one thread, or more than there are weights."""
    from tflite_cluster import kmeans

    data = mb.conv_model("float32")
    cfg = tc.ClusterConfig(k=6, min_elements=0, granularity="tensor")
    try:
        kmeans.set_threads(1)
        one = tc.cluster(data, cfg)
        kmeans.set_threads(8)
        many = tc.cluster(data, cfg)
    finally:
        kmeans.set_threads(None)
    assert many.data == one.data
    strip = [dict(t.to_dict()) for t in one.report.tensors]
    assert [t.to_dict() for t in many.report.tensors] == strip
    assert len(one.report.clustered) >= 2


@pytest.mark.parametrize("init", ["linear", "kmeans++", "density", "random"])
def test_kmeans_method_each_init(init):
    data = mb.mlp_model("float32")
    result = tc.cluster(data, tc.ClusterConfig(k=8, method="kmeans", init=init, min_elements=0))
    for t in result.report.clustered:
        assert max_distinct_per_row(result.data, t) <= 8
    assert compare.compare(data, result.data, samples=4).min_sqnr_db > 5


def test_optimal_never_worse_than_kmeans_per_tensor():
    data = mb.conv_model("float32")
    opt = tc.cluster(data, tc.ClusterConfig(k=8, min_elements=0)).report
    km = tc.cluster(data, tc.ClusterConfig(k=8, method="kmeans", min_elements=0)).report
    for a, b in zip(opt.tensors, km.tensors):
        if a.mse is not None:
            assert a.mse <= b.mse * (1 + 1e-9)


def test_shared_buffer_clustered_once():
    data = mb.shared_buffer_model()
    info = tfl.parse(data)
    shared = [w for w in info.weights if w.aliases or len(w.uses) > 1]
    assert shared, "builder model should share a buffer"
    result = tc.cluster(data, tc.ClusterConfig(k=4, min_elements=0))
    buffers = [t.buffer for t in result.report.tensors]
    assert len(buffers) == len(set(buffers))
    assert compare.compare(data, result.data, samples=4).min_sqnr_db > 5


def test_shared_buffer_conflicting_configs_is_an_error():
    data = mb.shared_buffer_model()
    w = next(w for w in tfl.parse(data).weights if w.aliases)
    alias = w.aliases[0][2]
    cfg = tc.ClusterConfig.from_dict({"names": [{"regex": alias, "k": 2}]})
    with pytest.raises(tc.ConfigError, match="shared"):
        tc.cluster(data, cfg)


def test_external_buffers_clustered_in_place():
    data = mb.external_buffer_model()
    info = tfl.parse(data)
    assert any(w.external for w in info.weights)
    result = tc.cluster(data, tc.ClusterConfig(k=4, min_elements=0))
    assert_only_weights_changed(data, result.data)
    assert any(t.sqnr_db is not None for t in result.report.clustered)
    inline = tc.cluster(mb.conv_model("float32"), tc.ClusterConfig(k=4, min_elements=0))
    a = compare.run_model(result.data, compare.random_inputs(data, 3, 0))
    b = compare.run_model(inline.data, compare.random_inputs(data, 3, 0))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_multiple_subgraphs_all_clustered():
    data = mb.multi_subgraph_model()
    result = tc.cluster(data, tc.ClusterConfig(k=4, min_elements=0))
    assert len({t.subgraph for t in result.report.clustered}) >= 2


def test_min_elements_and_skip_reasons():
    data = mb.conv_model("float32")
    report = tc.cluster(data, tc.ClusterConfig()).report
    small = [t for t in report.tensors if t.elements < 1024]
    assert small and all(t.skipped.startswith("fewer than min_elements") for t in small)
    assert all(t.skipped is None for t in report.tensors if t.elements >= 1024)
    assert not report.problems


def test_rules_and_unmatched_rules():
    data = mb.conv_model("float32")
    cfg = tc.ClusterConfig.from_dict({
        "min_elements": 0,
        "op_types": {"DEPTHWISE_CONV_2D": "skip", "LSTM": {"k": 2}},
        "names": [{"regex": "no_such_tensor", "k": 2}],
    })
    report = tc.cluster(data, cfg).report
    dw = [t for t in report.tensors if t.op == "DEPTHWISE_CONV_2D"]
    assert dw and all(t.skipped.startswith("skipped by config") for t in dw)
    assert any("op_types.LSTM" in p for p in report.problems)
    assert any("no_such_tensor" in p for p in report.problems)


def test_report_json_keys():
    data = mb.conv_model("int8")
    report = tc.cluster(data).report
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["config"] == tc.ClusterConfig().to_dict()
    keys = {"name", "subgraph", "tensor", "op", "dtype", "shape", "clusters", "granularity", "space",
            "method", "unique_before", "unique_after", "mse", "sqnr_db", "skipped"}
    for t in d["tensors"]:
        assert keys <= set(t)


def test_inspect_json_keys_and_values():
    data = mb.conv_model("int8")
    ins = tc.inspect(data)
    d = ins.to_dict()
    keys = {"subgraph", "tensor", "buffer", "name", "ops", "dtype", "shape", "elements", "unique",
            "max_unique_per_channel", "zeros", "clusterable", "reason"}
    assert d["model"] == "<bytes>" and d["tensors"]
    for t, w in zip(d["tensors"], tfl.parse(data).weights):
        assert keys <= set(t)
        stored = tfl.read_array(data, w)
        assert t["unique"] == len(distinct_values(stored))
        assert t["zeros"] == pytest.approx(float(np.mean(stored == 0)))
        assert t["clusterable"] == (t["reason"] is None)


def test_nan_weights_are_an_error():
    data = bytearray(mb.mlp_model("float32"))
    w = max(tfl.parse(bytes(data)).weights, key=lambda w: w.elements)
    data[w.data_offset:w.data_offset + 4] = np.float32(np.nan).tobytes()
    with pytest.raises(tc.InvalidModelError, match="NaN or Inf"):
        tc.cluster(bytes(data))
