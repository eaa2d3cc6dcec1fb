"""auto.py and cluster --auto: the smallest model meeting an output SQNR target."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import model_builder as mb
from tflite_cluster.auto import (DEFAULT_LADDER, AutoConfig, _allocate, auto_plan, format_auto)
from tflite_cluster.cli import main
from tflite_cluster.clustering import cluster
from tflite_cluster.config import ClusterConfig, Granularity, Space
from tflite_cluster.errors import ConfigError
from tflite_cluster.size import deflate_size

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="module", autouse=True)
def litert():
    pytest.importorskip("ai_edge_litert.interpreter")


def calibration(shape, n=24, seed=0, low=-1.0, high=1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (n, *shape)).astype(np.float32)


def uniform_best(data: bytes, inputs, target: float, *, granularity="channel",
                 size=deflate_size, **extra) -> int | None:
    """The best uniform setting (same ladder, one k for all tensors) meeting ``target``, found
    independently: cluster() + compare() for every k, with and without small tensors."""
    from tflite_cluster.compare import compare

    best = None
    for min_elements in (0, 1024):
        for k in DEFAULT_LADDER:
            out = cluster(data, ClusterConfig(k=k, granularity=granularity,
                                              min_elements=min_elements, **extra)).data
            if compare(data, out, inputs=inputs).min_sqnr_db >= target:
                s = size(out)
                best = s if best is None else min(best, s)
    return best


def replay(tmp_path, data: bytes, result) -> bytes:
    """Write the plan as a file and run `cluster --config` on it."""
    model = tmp_path / "model.tflite"
    model.write_bytes(data)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(result.plan_dict()))
    out = tmp_path / "replayed.tflite"
    assert main(["cluster", str(model), "-o", str(out), "--config", str(plan), "-q", "--strict"]) == 0
    return out.read_bytes()


# ---------------------------------------------------------------------------------------------
# Built models


@pytest.mark.parametrize("name, shape, target", [
    ("conv_float32", (8, 8, 8), 30.0),
    ("conv_float16", (8, 8, 8), 25.0),
    ("mlp_float32", (64,), 35.0),
    ("conv_int8", (8, 8, 8), 30.0),
])
def test_meets_target_no_larger_than_best_uniform_and_replays(tmp_path, name, shape, target):
    from tflite_cluster.compare import compare

    data = mb.ALL_FACTORIES[name]()
    x = calibration(shape)
    r = auto_plan(data, AutoConfig(min_sqnr_db=target), inputs=[x])
    check = compare(data, r.data, inputs=[x])
    assert check.min_sqnr_db >= target
    assert r.sqnr_db == pytest.approx(check.min_sqnr_db) and r.met
    assert r.size == deflate_size(r.data) and r.original_size == deflate_size(data)
    best = uniform_best(data, [x], target)
    assert best is not None  # k = 256 per channel passes on these
    assert r.size <= best
    assert r.uniform is not None and r.uniform.size == best
    assert replay(tmp_path, data, r) == r.data
    assert not r.warnings and r.samples == 24 and r.runs > 1
    assert len(r.plan) == len(r.result.report.tensors)
    text = format_auto(r)
    assert "SQNR" in text and "best uniform setting" in text


def test_float_model_shrinks_and_plan_is_per_tensor(tmp_path):
    data = mb.conv_model("float32")
    x = calibration((8, 8, 8))
    r = auto_plan(data, AutoConfig(min_sqnr_db=20.0), inputs=[x])
    assert r.size < 0.8 * r.original_size
    clustered = [p for p in r.plan if p.k is not None]
    assert clustered and all(p.granularity == "channel" and p.k in DEFAULT_LADDER
                             for p in clustered)
    for p in clustered:
        assert p.measured and p.sqnr_db >= 20.0 and p.size <= p.size_before
    doc = r.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["met"] and doc["plan"][0]["name"] == r.plan[0].name
    # A stricter target never gives a smaller model.
    strict = auto_plan(data, AutoConfig(min_sqnr_db=40.0), inputs=[x])
    assert strict.sqnr_db >= 40.0 and strict.size >= r.size


def test_screening_path_and_process_pool_give_exact_replayable_bytes(tmp_path, monkeypatch):
    """Large float tensors are screened with the fast estimate and clustered exactly only when
    picked, in worker processes: the result is still exactly what `cluster --config` writes."""
    import tflite_cluster.auto as auto

    monkeypatch.setattr(auto, "SCREEN_ELEMENTS", 0)
    monkeypatch.setattr(auto, "POOL_WORK", 0)
    data = mb.conv_model("float32")
    x = calibration((8, 8, 8))
    r = auto_plan(data, AutoConfig(min_sqnr_db=25.0, workers=2), inputs=[x])
    assert r.met and r.size < r.original_size
    assert replay(tmp_path, data, r) == r.data


def test_estimate_kernel_is_close_to_optimal():
    from tflite_cluster import kmeans
    from tflite_cluster.auto import _estimate_rows

    rows = np.random.default_rng(0).standard_normal((5, 648))
    for k in (4, 16, 64):
        est = _estimate_rows(rows, k)
        opt = kmeans.snap_rows(rows, k)
        assert all(np.unique(r).size <= k for r in est)
        sse_est = np.sum((est - rows) ** 2)
        sse_opt = np.sum((opt - rows) ** 2)
        assert sse_opt <= sse_est * (1 + 1e-9) and sse_est <= 1.3 * sse_opt


def test_shared_buffers_and_subgraphs_replay(tmp_path):
    for i, factory in enumerate((mb.shared_buffer_model, mb.multi_subgraph_model)):
        data = factory()
        shape = (64,) if factory is mb.shared_buffer_model else (32,)
        r = auto_plan(data, AutoConfig(min_sqnr_db=25.0), inputs=[calibration(shape)])
        folder = tmp_path / str(i)
        folder.mkdir()
        assert replay(folder, data, r) == r.data
        assert r.met


def test_streaming_model_with_variables():
    data = mb.streaming_model()
    r = auto_plan(data, AutoConfig(min_sqnr_db=30.0, samples=16))
    assert r.met and r.samples == 16
    assert any("random" in w for w in r.warnings)
    from tflite_cluster.compare import compare
    assert compare(data, r.data, samples=16, seed=0).min_sqnr_db >= 30.0


def test_ethos_u_target_per_tensor_int8_codes():
    data = mb.conv_model("int8")
    x = calibration((8, 8, 8))
    r = auto_plan(data, AutoConfig(min_sqnr_db=25.0, target="ethos-u", metric="palette"),
                  inputs=[x])
    assert r.auto.ladder == (4, 8, 16, 32) and r.met
    assert r.config.space == Space.INT8 and r.config.preserve_sparsity
    for p in r.plan:
        assert p.k is None or (p.granularity == "tensor" and p.k <= 32)


def test_ethos_u_target_vela_metric():
    pytest.importorskip("ethosu.vela")
    from tflite_cluster.size import run_vela

    data = mb.conv_model("int8")
    x = calibration((8, 8, 8))
    r = auto_plan(data, AutoConfig(min_sqnr_db=20.0, target="ethos-u"), inputs=[x])
    assert r.metric == "vela" and r.met
    assert r.size == run_vela(r.data, "ethos-u55-128").encoded_weights
    assert r.size <= r.original_size


def test_config_validation():
    with pytest.raises(ConfigError):
        AutoConfig(metric="zip")
    with pytest.raises(ConfigError):
        AutoConfig(min_sqnr_db=math.nan)
    with pytest.raises(ConfigError):
        AutoConfig(ladder=(0, 4))
    with pytest.raises(ConfigError):
        AutoConfig(target="ethos-u", ladder=(64, 256))
    with pytest.raises(ConfigError):
        AutoConfig(target="npu")
    with pytest.raises(ConfigError):
        AutoConfig(samples=0)
    c = AutoConfig(ladder=(16, 4, 16))
    assert c.ladder == (4, 16) and c.metric == "deflate" and c.granularities == (Granularity.CHANNEL,)
    e = AutoConfig(target="ethos-u")
    assert e.metric == "vela" and e.granularities == (Granularity.TENSOR,)
    assert e.ladder == (4, 8, 16, 32)


def test_vela_metric_needs_int8_weights():
    from tflite_cluster.errors import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match="int8"):
        auto_plan(mb.mlp_model("float32"), AutoConfig(metric="vela"),
                  inputs=[calibration((64,), n=4)])


# ---------------------------------------------------------------------------------------------
# The allocation on its own


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**31 - 1), st.floats(0.01, 3.0))
def test_allocation_is_feasible_and_locally_minimal(units, outputs, seed, budget):
    rng = np.random.default_rng(seed)
    costs, noise = [], []
    for _ in range(units):
        n = int(rng.integers(1, 6))
        c = np.concatenate([[100.0], rng.uniform(1, 120, n)])
        e = np.vstack([np.zeros(outputs), rng.exponential(0.5, (n, outputs))])
        costs.append(c)
        noise.append(e)
    choice = _allocate(costs, noise, budget)
    total = sum(e[i] for e, i in zip(noise, choice))
    assert np.all(total <= budget + 1e-12)  # option 0 has no noise: always feasible
    for u in range(units):  # no single cheaper option still fits
        for j in range(len(costs[u])):
            if costs[u][j] < costs[u][choice[u]]:
                assert np.any(total - noise[u][choice[u]] + noise[u][j] > budget)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_auto_writes_model_plan_and_report(tmp_path, capsys):
    data = mb.conv_model("float32")
    model = tmp_path / "m.tflite"
    model.write_bytes(data)
    np.savez(tmp_path / "x.npz", input=calibration((8, 8, 8)))
    out, plan, report = tmp_path / "o.tflite", tmp_path / "plan.json", tmp_path / "r.json"
    code = main(["cluster", str(model), "-o", str(out), "--auto", "--min-sqnr", "25",
                 "--inputs", str(tmp_path / "x.npz"), "--save-plan", str(plan),
                 "--report", str(report)])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "SQNR" in text and "wrote" in text and "warning" not in err
    doc = json.loads(report.read_text())
    assert doc["met"] and doc["target_sqnr_db"] == 25.0 and doc["plan"]
    again = tmp_path / "again.tflite"
    assert main(["cluster", str(model), "-o", str(again), "--config", str(plan), "-q"]) == 0
    assert again.read_bytes() == out.read_bytes()
    # compare as a gate on the result
    assert main(["compare", str(model), str(out), "--inputs", str(tmp_path / "x.npz"),
                 "--min-sqnr", "25"]) == 0
    capsys.readouterr()
    # Without inputs: random samples and a warning.
    code = main(["cluster", str(model), "-o", str(tmp_path / "o2.tflite"), "--auto", "-q",
                 "--samples", "8", "--ladder", "8,32"])
    _, err = capsys.readouterr()
    assert code == 0 and "random" in err and "real" in err


def test_cli_auto_usage_errors(tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.tflite"
    model.write_bytes(mb.mlp_model("float32"))
    out = str(tmp_path / "o.tflite")
    for argv in (["--min-sqnr", "20"], ["--auto", "-k", "8"], ["--auto", "--ladder", "x"],
                 ["--auto", "--samples", "0"], ["--save-plan", "p.json"],
                 ["--granularities", "tensor"], ["--auto", "--granularities", "channel,bogus"],
                 ["--auto", "--granularity", "channel", "--granularities", "tensor"]):
        assert main(["cluster", str(model), "-o", out, *argv]) == 2
        _, err = capsys.readouterr()
        assert err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert main(["cluster", str(model), "-o", out, "--auto"]) == 2
    _, err = capsys.readouterr()
    assert "tflite-cluster[litert]" in err


# ---------------------------------------------------------------------------------------------
# A real model (../shared), when present


@pytest.mark.shared
def test_digits_cnn_int8_meets_target_and_beats_uniform(tmp_path):
    path = SHARED / "models" / "digits_cnn_int8.tflite"
    if not path.exists():
        pytest.skip(f"{path} is absent (no ../shared next to the project)")
    from tflite_cluster.compare import compare

    data = path.read_bytes()
    x = np.load(SHARED / "data" / "digits_test.npz")["x"][:64]
    r = auto_plan(data, AutoConfig(min_sqnr_db=30.0), inputs=[x])
    assert compare(data, r.data, inputs=[x]).min_sqnr_db >= 30.0
    best = uniform_best(data, [x], 30.0)
    assert best is not None and r.size <= best
    assert replay(tmp_path, data, r) == r.data
