"""compare.py: running models with LiteRT and comparing their outputs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tflite_cluster.compare import (
    CompareReport,
    OutputComparison,
    Runner,
    compare,
    format_compare,
    load_inputs,
    random_inputs,
    run_model,
    sqnr_db,
)
from tflite_cluster.errors import InputFileError, MissingExtraError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models"
DATA = SHARED / "data"

MLP_F32 = MODELS / "digits_mlp_float32.tflite"
MLP_INT8 = MODELS / "digits_mlp_int8.tflite"
CNN_INT8 = MODELS / "digits_cnn_int8.tflite"
MWW = MODELS / "mww_okay_nabu.tflite"

MLP_INPUT = "serving_default_pixels:0"


@pytest.fixture(scope="module")
def Interpreter():
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    return litert.Interpreter


def shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (no ../shared next to the project)")
    return path


@pytest.fixture(scope="module")
def digits_x():
    """The 450 test digits flattened to the MLP's [64] samples (pixel / 16)."""
    data = np.load(shared_file(DATA / "digits_test.npz"))
    return data["x"].reshape(len(data["x"]), 64).astype(np.float32), data["y"]


def run_direct(Interpreter, path: Path, x: np.ndarray) -> np.ndarray:
    """Reference run with our own interpreter calls: one sample per invoke, float64 out."""
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    rows = []
    for sample in x:
        interp.set_tensor(inp["index"], sample.reshape(inp["shape"]).astype(inp["dtype"]))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"])[0].astype(np.float64))
    return np.array(rows)


def perturbed_mlp(seed: int = 1, rel: float = 0.05) -> bytes:
    """digits_mlp_float32 with its FULLY_CONNECTED weights multiplied by (1 + rel * noise)."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    data = bytearray(shared_file(MLP_F32).read_bytes())
    model = tflite.Model.GetRootAs(data, 0)
    subgraph = model.Subgraphs(0)
    rng = np.random.default_rng(seed)
    patched = 0
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != BuiltinOperator.FULLY_CONNECTED:
            continue
        tensor = subgraph.Tensors(op.Inputs(1))
        weights = model.Buffers(tensor.Buffer()).DataAsNumpy().view(np.float32)
        weights *= (1.0 + rel * rng.standard_normal(weights.shape)).astype(np.float32)
        patched += 1
    assert patched == 3
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# SQNR and reports without any model


def test_sqnr_special_values():
    a = np.array([1.0, -2.0, 3.0])
    assert sqnr_db(a, a) == math.inf
    assert sqnr_db(np.zeros(3), np.zeros(3)) == math.inf
    assert sqnr_db(np.zeros(3), a) == -math.inf
    assert math.isnan(sqnr_db(a, np.array([1.0, np.nan, 3.0])))
    assert sqnr_db(a, a + np.array([0.1, 0.0, 0.0])) == pytest.approx(10 * math.log10(14 / 0.01))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
       st.floats(0.01, 10.0), st.integers(0, 2**31 - 1))
def test_sqnr_matches_formula_and_is_scale_invariant(values, scale, seed):
    a = np.array(values)
    b = a + np.random.default_rng(seed).standard_normal(a.shape)
    signal, error = np.sum(a ** 2), np.sum((a - b) ** 2)
    if signal == 0:
        assert sqnr_db(a, b) == -math.inf
        return
    expected = 10 * math.log10(signal / error)
    assert sqnr_db(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert sqnr_db(a * scale, b * scale) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_report_to_dict_is_json_safe_and_formats():
    outputs = (
        OutputComparison(0, "probs", (1, 10), "float32", "int8", math.inf, 0.0, 0.0, 1.0),
        OutputComparison(1, "box", (1, 4), "float32", "float32", 21.5, 0.25, 0.01, None),
        OutputComparison(2, "zero", (1,), "float32", "float32", -math.inf, 1.0, 1.0, None),
    )
    report = CompareReport("a.tflite", "b.tflite", "random (seed 0)", 32, False, outputs)
    assert report.min_sqnr_db == -math.inf
    d = report.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["outputs"][0]["sqnr_db"] == "inf"
    assert d["min_sqnr_db"] == "-inf"
    assert d["outputs"][1]["sqnr_db"] == 21.5 and d["outputs"][1]["top1_agreement"] is None
    table = format_compare(report)
    for needle in ("a.tflite", "b.tflite", "probs", "box", "21.50", "inf", "100.0 %", "float32/int8"):
        assert needle in table
    assert "min SQNR: -inf dB" in table
    assert CompareReport("a", "b", "x", 1, False, ()).min_sqnr_db == math.inf


def test_missing_litert_raises_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingExtraError) as info:
        Runner(b"not needed")
    assert info.value.extra == "litert" and info.value.package == "ai-edge-litert"


# ---------------------------------------------------------------------------------------------
# load_inputs without a model


def test_load_inputs_named_and_positional(tmp_path):
    x = np.zeros((3, 64), np.float32)
    np.savez(tmp_path / "pos.npz", x, np.ones((3, 2)))
    np.savez(tmp_path / "named.npz", **{"in:0": x})
    pos = load_inputs(tmp_path / "pos.npz")
    assert isinstance(pos, list) and [a.shape for a in pos] == [(3, 64), (3, 2)]
    named = load_inputs(tmp_path / "named.npz")
    assert isinstance(named, dict) and list(named) == ["in:0"]


@pytest.mark.parametrize("arrays, match", [
    ({}, "no arrays"),
    ({"arr_0": np.zeros((3, 2)), "arr_2": np.zeros((3, 2))}, "arr_0..arr_1"),
    ({"arr_0": np.zeros((3, 2)), "pixels": np.zeros((3, 2))}, "mixes"),
    ({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, "number of samples"),
    ({"a": np.float32(1.0)}, "scalar"),
    ({"a": np.zeros((0, 2))}, "no samples"),
    ({"a": np.array([[1 + 2j]])}, "dtype"),
])
def test_load_inputs_rejects_bad_files(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputFileError, match=match) as info:
        load_inputs(path)
    assert info.value.path == str(path)


def test_load_inputs_missing_or_not_npz(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        load_inputs(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(InputFileError, match="not a readable") as info:
        load_inputs(junk)
    assert info.value.path == str(junk)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(InputFileError, match="single .npy"):
        load_inputs(tmp_path / "one.npy")


# ---------------------------------------------------------------------------------------------
# Real models from ../shared/models


def test_invalid_model_and_missing_file(Interpreter, tmp_path):
    with pytest.raises(InputFileError, match="cannot load") as info:
        Runner(b"TFL3 but not a model at all" * 4)
    assert info.value.path == "model"
    with pytest.raises(InputFileError, match="cannot read model") as info:
        compare(tmp_path / "absent.tflite", tmp_path / "absent.tflite")
    assert info.value.path == str(tmp_path / "absent.tflite")


@pytest.mark.shared
def test_identical_models_give_inf_and_full_agreement(Interpreter, digits_x):
    x, _ = digits_x
    report = compare(shared_file(MLP_F32), MLP_F32, inputs=[x])
    assert report.samples == len(x) and not report.stateful
    (out,) = report.outputs
    assert out.sqnr_db == math.inf and report.min_sqnr_db == math.inf
    assert out.max_abs_diff == 0.0 and out.mean_abs_diff == 0.0
    assert out.top1_agreement == 1.0
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["min_sqnr_db"] == "inf"


@pytest.mark.shared
def test_perturbed_model_sqnr_matches_independent_computation(Interpreter, digits_x, tmp_path):
    x, _ = digits_x
    x = x[:100]
    b_bytes = perturbed_mlp()
    b_path = tmp_path / "perturbed.tflite"
    b_path.write_bytes(b_bytes)
    ya = run_direct(Interpreter, MLP_F32, x)
    yb = run_direct(Interpreter, b_path, x)
    expected = 10 * np.log10(np.sum(ya ** 2) / np.sum((ya - yb) ** 2))
    report = compare(MLP_F32.read_bytes(), b_bytes, inputs=[x])
    (out,) = report.outputs
    assert math.isfinite(out.sqnr_db) and out.sqnr_db > 0
    assert out.sqnr_db == pytest.approx(expected, rel=1e-9)
    assert out.max_abs_diff == pytest.approx(np.max(np.abs(ya - yb)), rel=1e-9)
    assert out.mean_abs_diff == pytest.approx(np.mean(np.abs(ya - yb)), rel=1e-9)
    agree = np.mean(np.argmax(ya, 1) == np.argmax(yb, 1))
    assert out.top1_agreement == pytest.approx(agree)
    assert (report.model_a, report.model_b) == ("model A", "model B")
    # run_model gives the same arrays as the direct calls.
    (ra,) = run_model(b_bytes, [x])
    assert ra.dtype == np.float64 and ra.shape == (100, 10)
    np.testing.assert_array_equal(ra, yb)


@pytest.mark.shared
def test_int8_io_against_float_io(Interpreter, digits_x):
    x, y = digits_x
    report = compare(shared_file(MLP_F32), shared_file(MLP_INT8), inputs=[x])
    (out,) = report.outputs
    assert (out.dtype_a, out.dtype_b) == ("float32", "int8")
    assert out.sqnr_db > 15 and out.top1_agreement > 0.9
    # The int8 model's dequantized outputs are probabilities like the float model's.
    (probs,) = run_model(MLP_INT8, [x])
    assert probs.min() >= 0 and probs.max() <= 1
    assert np.mean(np.argmax(probs, 1) == y) > 0.95
    # Reversed roles and random inputs: A's quantized range is the one drawn.
    reverse = compare(MLP_INT8, MLP_F32)
    assert reverse.outputs[0].sqnr_db > 15 and reverse.samples == 32


@pytest.mark.shared
def test_float_inputs_are_quantized_like_raw_codes(Interpreter, digits_x):
    x, _ = digits_x
    runner = Runner(shared_file(MLP_INT8))
    (info,) = runner.inputs
    assert info.quantized and info.dtype == np.int8
    codes = np.clip(np.round(x[:50] / info.scale) + info.zero_point, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(runner.run([x[:50]])[0], runner.run([codes])[0])
    # Out-of-range floats are clipped, not wrapped.
    big = runner.run([np.full((2, 64), 1e6, np.float32)])[0]
    top = runner.run([np.full((2, 64), (127 - info.zero_point) * info.scale, np.float32)])[0]
    np.testing.assert_array_equal(big, top)


@pytest.mark.shared
def test_npz_by_name_by_signature_name_and_by_position(Interpreter, digits_x, tmp_path):
    x, _ = digits_x
    x = x[:40]
    np.savez(tmp_path / "named.npz", **{MLP_INPUT: x})
    np.savez(tmp_path / "signature.npz", pixels=x)
    np.savez(tmp_path / "positional.npz", x)
    runner = Runner(shared_file(MLP_F32))
    results = [runner.run(tmp_path / f"{n}.npz")[0]
               for n in ("named", "signature", "positional")]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    report = compare(MLP_F32, MLP_INT8, inputs=tmp_path / "named.npz")
    assert report.inputs == str(tmp_path / "named.npz") and report.samples == 40
    assert isinstance(load_inputs(tmp_path / "named.npz", model=runner), list)


@pytest.mark.shared
def test_bad_npz_for_the_model(Interpreter, digits_x, tmp_path):
    x, _ = digits_x
    runner = Runner(shared_file(MLP_F32))
    cases = {
        "wrongkey": ({"image": x}, "names no input"),
        "wrongshape": ({MLP_INPUT: x.reshape(-1, 8, 8, 1)}, r"shape \[450, 8, 8, 1\]"),
        "twoarrays": ({"arr_0": x, "arr_1": x}, "2 input array"),
        "duplicate": ({MLP_INPUT: x, "pixels": x}, "both name"),
    }
    for stem, (arrays, match) in cases.items():
        path = tmp_path / f"{stem}.npz"
        np.savez(path, **arrays)
        with pytest.raises(InputFileError, match=match) as info:
            compare(MLP_F32, MLP_F32, inputs=path)
        assert info.value.path == str(path)
        with pytest.raises(InputFileError, match=match):
            load_inputs(path, model=runner)
    with pytest.raises(InputFileError, match="outside"):  # raw int8 codes out of range
        run_model(shared_file(MLP_INT8), [np.full((2, 64), 300, np.int64)])
    with pytest.raises(InputFileError, match="non-finite"):
        run_model(MLP_INT8, [np.full((2, 64), np.nan, np.float32)])


@pytest.mark.shared
def test_mismatched_models_name_b(Interpreter):
    with pytest.raises(InputFileError, match="shape") as info:
        compare(shared_file(MLP_F32), shared_file(CNN_INT8))
    assert info.value.path == str(CNN_INT8)
    with pytest.raises(InputFileError, match="input 0") as info:
        compare(MLP_F32, shared_file(MWW).read_bytes())
    assert info.value.path == "model B"


@pytest.mark.shared
def test_random_inputs_ranges_and_seed(Interpreter):
    (f,) = random_inputs(shared_file(MLP_F32), samples=20, seed=3)
    assert f.shape == (20, 64) and f.dtype == np.float32 and 0 <= f.min() and f.max() < 1
    (again,) = random_inputs(MLP_F32, samples=20, seed=3)
    np.testing.assert_array_equal(f, again)
    assert not np.array_equal(f, random_inputs(MLP_F32, samples=20, seed=4)[0])
    runner = Runner(shared_file(MWW))
    (info,) = runner.inputs
    (q,) = random_inputs(runner, samples=200, seed=0)
    assert q.shape == (200, 3, 40) and q.dtype == np.float32
    codes = np.round(q / info.scale) + info.zero_point
    np.testing.assert_allclose(q, (codes - info.zero_point) * info.scale, rtol=1e-6)
    assert codes.min() == -128 and codes.max() == 127  # the whole calibrated range
    with pytest.raises(ValueError):
        random_inputs(runner, samples=0)


@pytest.mark.shared
def test_streaming_model_is_deterministic_and_reset_per_sequence(Interpreter):
    runner = Runner(shared_file(MWW))
    assert runner.stateful
    (info,) = runner.inputs
    assert info.sample_shape == (3, 40)
    rng = np.random.default_rng(0)
    # Low-energy features drive the wake-word probability up over a few dozen steps.
    codes = rng.integers(-128, -100, size=(3, 40, 3, 40)).astype(np.int8)
    stream = codes.reshape(120, 3, 40)
    first = runner.run([stream])[0]
    second = run_model(runner, [stream])[0]
    np.testing.assert_array_equal(first, second)
    assert first.shape == (120, 1) and first.max() > 0  # the state does build up

    # Same as one fresh interpreter fed the whole stream by hand.
    interp = Interpreter(model_path=str(MWW))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    manual = []
    for step in stream:
        interp.set_tensor(inp["index"], step[None])
        interp.invoke()
        manual.append(interp.get_tensor(out["index"])[0])
    manual = (np.array(manual, np.float64) - out["quantization"][1]) * out["quantization"][0]
    np.testing.assert_array_equal(first, manual)

    # [sequences, steps, ...]: every sequence starts from the initial state.
    per_sequence = runner.run([codes])[0]
    assert per_sequence.shape == (3, 40, 1)
    for s in range(3):
        np.testing.assert_array_equal(per_sequence[s], runner.run([codes[s]])[0])
    np.testing.assert_array_equal(per_sequence[0], first[:40])
    assert not np.array_equal(per_sequence[1], first[40:80])

    report = compare(MWW, MWW, samples=16, seed=5)
    assert report.stateful and report.samples == 16 and report.outputs[0].sqnr_db == math.inf
    assert "streamed" in format_compare(report)


@pytest.mark.shared
def test_runner_reuse_and_shapes(Interpreter):
    runner = Runner(shared_file(CNN_INT8))
    assert not runner.stateful and runner.inputs[0].sample_shape == (8, 8, 1)
    x = random_inputs(runner, samples=5, seed=0)
    a = runner.run(x)[0]
    b = runner.run(x)[0]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 10) and a.dtype == np.float64
    report = compare(runner, runner, inputs=x)
    assert report.outputs[0].top1_agreement == 1.0
    assert "StatefulPartitionedCall" in format_compare(report)
