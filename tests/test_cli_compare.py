"""tflite-cluster compare: the CLI over compare.py, on models built by tools/model_builder.py."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import model_builder as mb
from tflite_cluster import model as tfl
from tflite_cluster.cli import main

pytest.importorskip("ai_edge_litert.interpreter")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def perturbed(data: bytes, rel: float = 0.05, seed: int = 1) -> bytes:
    """Every float32 weight tensor multiplied by (1 + rel * noise), patched in place."""
    info = tfl.parse(data)
    rng = np.random.default_rng(seed)
    changes = {}
    for w in info.weights:
        assert w.dtype == "float32"
        values = tfl.read_array(data, w).astype(np.float64)
        new = values * (1.0 + rel * rng.standard_normal(values.shape))
        changes[w.data_offset] = new.astype(np.float32).tobytes()
    return bytes(tfl.patch(data, changes))


def direct_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    """One invoke per sample with our own interpreter: the independent reference."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    rows = []
    for sample in x:
        interp.set_tensor(inp["index"], sample.reshape(inp["shape"]).astype(inp["dtype"]))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"]).astype(np.float64).reshape(-1))
    return np.array(rows)


@pytest.fixture()
def mlp(tmp_path):
    path = tmp_path / "mlp.tflite"
    path.write_bytes(mb.mlp_model("float32"))
    return path


@pytest.fixture()
def inputs(tmp_path):
    x = np.random.default_rng(3).uniform(-1, 1, (20, 64)).astype(np.float32)
    np.savez(tmp_path / "named.npz", input=x)
    np.savez(tmp_path / "positional.npz", x)
    return x, tmp_path / "named.npz", tmp_path / "positional.npz"


def test_identical_models_infinite_sqnr_full_agreement(capsys, mlp):
    code, out, _ = run_cli(capsys, "compare", mlp, mlp, "--min-sqnr", "100")
    assert code == 0
    assert "min SQNR: inf dB" in out and "100.0 %" in out and "ok: min SQNR inf dB" in out
    code, out, _ = run_cli(capsys, "compare", mlp, mlp, "--json", "--samples", "7", "--seed", "2")
    doc = json.loads(out)
    assert code == 0 and doc["samples"] == 7 and doc["inputs"] == "random (seed 2)"
    assert doc["min_sqnr_db"] == "inf"
    (o,) = doc["outputs"]
    assert o["sqnr_db"] == "inf" and o["max_abs_diff"] == 0.0 and o["top1_agreement"] == 1.0


def test_perturbed_model_sqnr_matches_independent_computation(capsys, mlp, inputs, tmp_path):
    x, named, _ = inputs
    b = tmp_path / "perturbed.tflite"
    b.write_bytes(perturbed(mlp.read_bytes()))
    ya = direct_outputs(mlp.read_bytes(), x)
    yb = direct_outputs(b.read_bytes(), x)
    expected = 10 * math.log10(np.sum(ya ** 2) / np.sum((ya - yb) ** 2))
    assert 10 < expected < 60
    code, out, _ = run_cli(capsys, "compare", mlp, b, "--inputs", named, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["samples"] == 20
    assert doc["min_sqnr_db"] == pytest.approx(expected, abs=1e-9)
    assert doc["outputs"][0]["max_abs_diff"] == pytest.approx(np.max(np.abs(ya - yb)))
    top1 = np.mean(ya.argmax(1) == yb.argmax(1))
    assert doc["outputs"][0]["top1_agreement"] == pytest.approx(top1)

    # --min-sqnr is a gate: exit 1 below it, 0 at or above it.
    code, out, _ = run_cli(capsys, "compare", mlp, b, "--inputs", named, "--min-sqnr",
                           f"{expected + 1:.3f}")
    assert code == 1 and "FAIL: min SQNR" in out
    code, out, _ = run_cli(capsys, "compare", mlp, b, "--inputs", named, "--min-sqnr",
                           f"{expected - 1:.3f}")
    assert code == 0 and "ok: min SQNR" in out
    code, out, _ = run_cli(capsys, "compare", mlp, b, "--inputs", named, "--json",
                           "--min-sqnr", f"{expected + 1:.3f}")
    assert code == 1 and json.loads(out)["gate"] == {"min_sqnr_db": pytest.approx(expected + 1,
                                                                                 abs=1e-3),
                                                     "passed": False}


def test_npz_by_name_and_by_position_agree(capsys, mlp, inputs, tmp_path):
    _, named, positional = inputs
    b = tmp_path / "perturbed.tflite"
    b.write_bytes(perturbed(mlp.read_bytes()))
    code1, out1, _ = run_cli(capsys, "compare", mlp, b, "--inputs", named, "--json")
    code2, out2, _ = run_cli(capsys, "compare", mlp, b, "--inputs", positional, "--json")
    assert code1 == code2 == 0
    d1, d2 = json.loads(out1), json.loads(out2)
    assert d1["outputs"] == d2["outputs"] and d1["samples"] == d2["samples"] == 20


def test_int8_io_against_float_io(capsys, tmp_path):
    a = tmp_path / "conv_f32.tflite"
    b = tmp_path / "conv_int8.tflite"
    a.write_bytes(mb.conv_model("float32"))
    b.write_bytes(mb.conv_model("int8"))
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x)
    code, out, _ = run_cli(capsys, "compare", a, b, "--inputs", tmp_path / "x.npz", "--json")
    doc = json.loads(out)
    assert code == 0
    (o,) = doc["outputs"]
    assert o["dtype_a"] == "float32" and o["dtype_b"] == "int8"
    assert 15 < doc["min_sqnr_db"] < 60  # int8 quantization noise, in real units
    # Random inputs for a float A against an int8 B use B's calibrated range.
    code, out, _ = run_cli(capsys, "compare", a, b, "--samples", "8")
    assert code == 0 and "float32/int8" in out


def test_streaming_model_with_variables(capsys, tmp_path):
    a = tmp_path / "stream.tflite"
    a.write_bytes(mb.streaming_model())
    b = tmp_path / "stream_perturbed.tflite"
    b.write_bytes(perturbed(a.read_bytes(), rel=0.02))
    code, out, _ = run_cli(capsys, "compare", a, a, "--samples", "12")
    assert code == 0 and "streamed, state reset per sequence" in out and "min SQNR: inf dB" in out
    # Three independent sequences of 5 steps.
    x = np.random.default_rng(1).uniform(0, 1, (3, 5, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", input=x)
    code, out, _ = run_cli(capsys, "compare", a, b, "--inputs", tmp_path / "seq.npz", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["stateful"] and doc["samples"] == 15
    assert 20 < doc["min_sqnr_db"] < 80


def test_errors_exit_2_with_one_line(capsys, mlp, tmp_path, monkeypatch):
    code, _, err = run_cli(capsys, "compare", mlp, tmp_path / "missing.tflite")
    assert code == 2 and "missing.tflite" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "compare", mlp, mlp, "--inputs", tmp_path / "none.npz")
    assert code == 2 and "none.npz" in err and err.count("\n") == 1
    np.savez(tmp_path / "x.npz", np.zeros((2, 64), np.float32))
    code, _, err = run_cli(capsys, "compare", mlp, mlp, "--inputs", tmp_path / "x.npz",
                           "--samples", "3")
    assert code == 2 and "--samples" in err
    code, _, err = run_cli(capsys, "compare", mlp, mlp, "--samples", "0")
    assert code == 2 and err.count("\n") == 1
    conv = tmp_path / "conv.tflite"
    conv.write_bytes(mb.conv_model("float32"))
    code, _, err = run_cli(capsys, "compare", mlp, conv)
    assert code == 2 and "conv.tflite" in err
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    code, _, err = run_cli(capsys, "compare", mlp, mlp)
    assert code == 2 and "tflite-cluster[litert]" in err and err.count("\n") == 1
