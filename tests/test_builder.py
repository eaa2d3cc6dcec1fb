"""The test-model builder (tools/model_builder.py) and the example models it exports: every factory
model is a valid .tflite that LiteRT loads and runs, and computes what its numpy reference computes."""

from pathlib import Path

import numpy as np
import pytest
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

import make_example
import model_builder as mb

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

_NUMPY_TYPES = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.INT8: np.int8,
    tflite.TensorType.INT64: np.int64,
}


@pytest.fixture(scope="module")
def models():
    return {name: factory() for name, factory in mb.ALL_FACTORIES.items()}


def _root(data: bytes) -> tflite.Model:
    return tflite.Model.GetRootAs(data, 0)


def _tensors(data: bytes, subgraph: int = 0) -> dict:
    sg = _root(data).Subgraphs(subgraph)
    return {sg.Tensors(i).Name().decode(): sg.Tensors(i) for i in range(sg.TensorsLength())}


def _constant(data: bytes, name: str, subgraph: int = 0) -> np.ndarray:
    """The value of constant tensor ``name``, read from inline or external buffer data."""
    tensor = _tensors(data, subgraph)[name]
    buffer = _root(data).Buffers(tensor.Buffer())
    if buffer.Offset() > 1:
        raw = np.frombuffer(data, np.uint8, buffer.Size(), buffer.Offset())
    else:
        raw = buffer.DataAsNumpy()
    return raw.view(_NUMPY_TYPES[tensor.Type()]).reshape(tensor.ShapeAsNumpy())


def _operators(data: bytes, subgraph: int = 0) -> list[tuple[str, list[int], list[int]]]:
    model = _root(data)
    sg = model.Subgraphs(subgraph)
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = BUILTIN_OPCODE2NAME[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ops.append((name, list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())))
    return ops


def _run(data: bytes, *inputs: np.ndarray, invokes: int = 1) -> list[np.ndarray]:
    """Outputs of ``invokes`` successive runs (same inputs) of one interpreter."""
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    outputs = []
    for _ in range(invokes):
        for detail, value in zip(interpreter.get_input_details(), inputs):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return outputs


def _random_inputs(data: bytes, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    interpreter = Interpreter(model_content=data)
    return [mb.random_input(d["shape"], d["dtype"], rng) for d in interpreter.get_input_details()]


# ---- every factory ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(mb.ALL_FACTORIES))
def test_model_is_valid_tflite(models, name):
    data = models[name]
    assert tflite.Model.ModelBufferHasIdentifier(data, 0)
    model = _root(data)
    assert model.Version() == 3
    sentinel = model.Buffers(0)
    assert sentinel.DataLength() == 0 and sentinel.Offset() <= 1 and sentinel.Size() == 0
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        assert code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)
    metadata = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        metadata[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert metadata == mb.METADATA
    signature = model.SignatureDefs(0)
    assert signature.SignatureKey() == b"serving_default" and signature.SubgraphIndex() == 0
    sizes = [int(np.prod(t.ShapeAsNumpy())) for s in range(model.SubgraphsLength())
             for t in _tensors(data, s).values() if model.Buffers(t.Buffer()).Size() or
             model.Buffers(t.Buffer()).DataLength()]
    assert max(sizes) >= 1024, "a main weight must be selected for clustering by default"


@pytest.mark.parametrize("name", sorted(mb.ALL_FACTORIES))
def test_model_runs_in_litert(models, name):
    data = models[name]
    (output,) = _run(data, *_random_inputs(data, seed=0))
    assert np.isfinite(output.astype(np.float64)).all()
    assert len(np.unique(output)) > 1


def test_factories_are_deterministic(models):
    assert mb.conv_model("int8") == models["conv_int8"]
    assert mb.streaming_model() == models["streaming"]
    assert mb.conv_model("float32", seed=1) != models["conv_float32"]


# ---- sequential models in four dtypes ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("float16", 2e-3),
                                             ("dynamic_int8", 0.03), ("int8", 0.05)])
def test_sequential_matches_numpy_reference(kind, dtype, tolerance):
    layers, shape = (mb.conv_layers(), mb.CONV_INPUT_SHAPE) if kind == "conv" else (mb.mlp_layers(), mb.MLP_INPUT_SHAPE)
    data = getattr(mb, f"{kind}_model")(dtype)
    x = np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32)
    expected = mb.reference_forward(layers, x)
    interpreter = Interpreter(model_content=data)
    if dtype == "int8":
        (scale, zero), = [d["quantization"] for d in interpreter.get_input_details()]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    (y,) = _run(data, x)
    if dtype == "int8":
        (scale, zero), = [d["quantization"] for d in interpreter.get_output_details()]
        y = (y.astype(np.float32) - zero) * scale
    assert np.abs(y - expected).max() <= tolerance * np.abs(expected).max()


def test_int8_conv_is_full_integer_per_channel():
    data = mb.conv_model("int8")
    tensors = _tensors(data)
    assert tensors["input"].Type() == tensors["dense/output"].Type() == tflite.TensorType.INT8
    input_scale = tensors["input"].Quantization().ScaleAsNumpy()[0]
    for layer, axis, channels in (("conv", 0, 16), ("depthwise", 3, 16), ("dense", 0, 10)):
        weight, bias = tensors[f"{layer}/weights"], tensors[f"{layer}/bias"]
        q = weight.Quantization()
        assert weight.Type() == tflite.TensorType.INT8 and q.QuantizedDimension() == axis
        assert q.ScaleLength() == channels and not q.ZeroPointAsNumpy().any()
        assert np.abs(_constant(data, f"{layer}/weights").astype(int)).max() == 127
        assert bias.Type() == tflite.TensorType.INT32
        # the layer's input scale: the model input for conv, the previous activation otherwise
        np.testing.assert_allclose(bias.Quantization().ScaleAsNumpy(),
                                   input_scale * q.ScaleAsNumpy(), rtol=1e-6)
        input_scale = tensors[f"{layer}/output"].Quantization().ScaleAsNumpy()[0]


def test_float16_weights_feed_dequantize():
    data = mb.conv_model("float16")
    tensors = _tensors(data)
    names = list(tensors)
    dequantized = {names[i] for op, inputs, _ in _operators(data) if op == "DEQUANTIZE" for i in inputs}
    assert {"conv/weights", "depthwise/weights", "dense/weights"} <= dequantized
    assert all(tensors[n].Type() == tflite.TensorType.FLOAT16 for n in dequantized)
    conv_inputs = next(inputs for op, inputs, _ in _operators(data) if op == "CONV_2D")
    assert names[conv_inputs[1]] == "conv/weights/dequantize"


def test_dynamic_range_quantizes_large_weights_only():
    tensors = _tensors(mb.conv_model("dynamic_int8"))
    assert tensors["input"].Type() == tflite.TensorType.FLOAT32
    assert tensors["conv/weights"].Type() == tensors["dense/weights"].Type() == tflite.TensorType.INT8
    assert tensors["depthwise/weights"].Type() == tflite.TensorType.FLOAT32  # 144 < 1024 elements


# ---- layouts ----------------------------------------------------------------------------------


def test_external_buffers_layout(models):
    data, inline = models["external_buffer"], models["conv_float32"]
    model = _root(data)
    external = [model.Buffers(i) for i in range(model.BuffersLength()) if model.Buffers(i).Size()]
    assert external, "constant data must live outside the FlatBuffer"
    for buffer in external:
        assert buffer.DataIsNone() and buffer.Offset() % 16 == 0
        assert buffer.Offset() + buffer.Size() <= len(data)
    for name in ("conv/weights", "depthwise/bias", "dense/weights"):
        np.testing.assert_array_equal(_constant(data, name), _constant(inline, name))
    x = np.random.default_rng(0).standard_normal(mb.CONV_INPUT_SHAPE).astype(np.float32)
    np.testing.assert_array_equal(_run(data, x)[0], _run(inline, x)[0])


def test_shared_buffer_and_shared_tensor(models):
    data = models["shared_buffer"]
    tensors = _tensors(data)
    assert tensors["dense_a/weights"].Buffer() == tensors["dense_b/weights"].Buffer()
    index = list(tensors).index("dense_cd/weights")
    assert sum(inputs[1] == index for _, inputs, _ in _operators(data)) == 2
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    h = x
    for name, weight, activation in (("dense_a", "dense_a", True), ("dense_b", "dense_b", True),
                                     ("dense_c", "dense_cd", True), ("dense_d", "dense_cd", False)):
        h = h @ _constant(data, f"{weight}/weights").T + _constant(data, f"{name}/bias")
        h = np.maximum(h, 0) if activation else h
    np.testing.assert_allclose(_run(data, x)[0], h, rtol=1e-4, atol=1e-5)


def test_sparse_weights_are_densified(models):
    data = models["sparse"]
    tensors = _tensors(data)
    sparsity = tensors["dense/weights"].Sparsity()
    assert sparsity is not None and sparsity.DimMetadata(1).Format() == tflite.DimensionType.SPARSE_CSR
    assert [op for op, _, _ in _operators(data)] == ["DENSIFY", "FULLY_CONNECTED"]
    values = _root(data).Buffers(tensors["dense/weights"].Buffer()).DataAsNumpy().view(np.float32)
    dense = np.zeros((32, 64), np.float32)
    segments = sparsity.DimMetadata(1).ArraySegments()
    rows = np.repeat(np.arange(32), np.diff(_index_vector(sparsity.DimMetadata(1).ArraySegmentsType(), segments)))
    cols = _index_vector(sparsity.DimMetadata(1).ArrayIndicesType(), sparsity.DimMetadata(1).ArrayIndices())
    dense[rows, cols] = values
    assert 0.1 < np.count_nonzero(dense) / dense.size < 0.5
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(data, x)[0], x @ dense.T + _constant(data, "dense/bias"), rtol=1e-5, atol=1e-5)


def _index_vector(kind: int, table) -> np.ndarray:
    names = {v: k for k, v in vars(tflite.SparseIndexVector).items() if not k.startswith("_")}
    vector = getattr(tflite, names[kind])()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy()


def test_multi_subgraph_weights_and_both_branches(models):
    data = models["multi_subgraph"]
    assert _root(data).SubgraphsLength() == 3
    w, b = _constant(data, "main/dense/weights"), _constant(data, "main/dense/bias")
    branches = {name: (_constant(data, f"{name}/dense/weights", s), _constant(data, f"{name}/dense/bias", s))
                for s, name in ((1, "then"), (2, "else"))}
    taken = set()
    for seed in range(8):
        x = np.random.default_rng(seed).standard_normal((1, 32)).astype(np.float32)
        h = x @ w.T + b
        branch = "then" if h.sum() > 0 else "else"
        taken.add(branch)
        y = h @ branches[branch][0].T + branches[branch][1]
        np.testing.assert_allclose(_run(data, x)[0], np.tanh(y) if branch == "else" else y, rtol=1e-4, atol=1e-5)
    assert taken == {"then", "else"}


def test_streaming_state_carries_between_invokes(models):
    data = models["streaming"]
    assert {op for op, _, _ in _operators(data, 1)} == {"VAR_HANDLE", "ASSIGN_VARIABLE"}
    frames = np.random.default_rng(0).standard_normal((4, 1, 1, 16)).astype(np.float32)
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    (detail,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    w1, b1 = _constant(data, "dense_1/weights"), _constant(data, "dense_1/bias")
    w2, b2 = _constant(data, "dense_2/weights"), _constant(data, "dense_2/bias")
    window = np.zeros((4, 16), np.float32)
    for frame in frames:
        interpreter.set_tensor(detail["index"], frame)
        interpreter.invoke()
        window = np.concatenate([window[1:], frame[0]])
        expected = np.maximum(window.reshape(1, -1) @ w1.T + b1, 0) @ w2.T + b2
        np.testing.assert_allclose(interpreter.get_tensor(out["index"]), expected, rtol=1e-4, atol=1e-5)


# ---- other weight-carrying ops ----------------------------------------------------------------


def test_embedding_and_gather_look_up_constant_tables(models):
    ids = np.array([3, 99, 0, 42], np.int32)
    data = models["embedding"]
    np.testing.assert_array_equal(_run(data, ids)[0], _constant(data, "embedding/table")[ids])
    indices = np.array([1, 49, 0, 7, 7, 3], np.int32)
    data = models["gather"]
    np.testing.assert_array_equal(_run(data, indices)[0], _constant(data, "gather/params")[indices])


def test_batch_matmul_with_constant_rhs(models):
    data = models["batch_matmul"]
    x = np.random.default_rng(0).standard_normal((1, 4, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(data, x)[0], x @ _constant(data, "matmul/rhs"), rtol=1e-4, atol=1e-5)


def test_transpose_conv(models):
    data = models["transpose_conv"]
    w, b = _constant(data, "transpose_conv/weights"), _constant(data, "transpose_conv/bias")
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 16)).astype(np.float32)
    full = np.zeros((9, 9, 8), np.float32)  # stride 2, kernel 3, SAME: no leading padding
    for y in range(4):
        for xx in range(4):
            full[2 * y:2 * y + 3, 2 * xx:2 * xx + 3] += np.einsum("ohwi,i->hwo", w, x[0, y, xx])
    np.testing.assert_allclose(_run(data, x)[0][0], full[:8, :8] + b, rtol=1e-4, atol=1e-4)


def test_conv3d(models):
    data = models["conv3d"]
    w, b = _constant(data, "conv3d/weights"), _constant(data, "conv3d/bias")
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6, 4)).astype(np.float32)
    padded = np.pad(x[0], ((1, 1), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3, 3), axis=(0, 1, 2))
    expected = np.maximum(np.einsum("dhwiabc,abcio->dhwo", windows, w) + b, 0)
    np.testing.assert_allclose(_run(data, x)[0][0], expected, rtol=1e-4, atol=1e-4)


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_rnn(models):
    data = models["rnn"]
    w, r, b = (_constant(data, f"rnn/{n}") for n in ("weights", "recurrent_weights", "bias"))
    x = np.random.default_rng(0).standard_normal((1, 5, 32)).astype(np.float32)
    h, expected = np.zeros(32, np.float32), []
    for t in range(5):
        h = np.tanh(w @ x[0, t] + r @ h + b)
        expected.append(h)
    np.testing.assert_allclose(_run(data, x)[0][0], expected, rtol=1e-4, atol=1e-5)


def test_lstm(models):
    data = models["lstm"]
    gates = ("input", "forget", "cell", "output")
    w = {g: _constant(data, f"lstm/input_to_{g}_weights") for g in gates}
    r = {g: _constant(data, f"lstm/recurrent_to_{g}_weights") for g in gates}
    b = {g: _constant(data, f"lstm/{g}_gate_bias") for g in gates}
    x = np.random.default_rng(0).standard_normal((1, 5, 32)).astype(np.float32)
    h, c, expected = np.zeros(32), np.zeros(32), []
    for t in range(5):
        pre = {g: w[g] @ x[0, t] + r[g] @ h + b[g] for g in gates}
        c = _sigmoid(pre["forget"]) * c + _sigmoid(pre["input"]) * np.tanh(pre["cell"])
        h = _sigmoid(pre["output"]) * np.tanh(c)
        expected.append(h)
    np.testing.assert_allclose(_run(data, x)[0][0], expected, rtol=1e-4, atol=1e-5)


# ---- the generic layer ------------------------------------------------------------------------


def test_builder_rejects_unknown_options_and_tensors():
    builder = mb.ModelBuilder()
    sg = builder.add_subgraph()
    x = sg.add_tensor("x", (1, 4))
    with pytest.raises(ValueError, match="no field 'strides'"):
        sg.add_operator("CONV_2D", [x], [x], {"strides": 2})
    with pytest.raises(ValueError, match="no tensor 7"):
        sg.add_operator("RELU", [7], [x])
    with pytest.raises(ValueError, match="takes no builtin options"):
        sg.add_operator("RELU", [x], [x], {"alpha": 1})
    with pytest.raises(ValueError, match="unsupported tensor dtype"):
        sg.add_tensor("s", (1,), "complex64")


# ---- the shipped example models (tools/make_example.py) ----------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_example_models_classify_digits(dtype):
    data = (EXAMPLES / f"digits_{dtype}.tflite").read_bytes()
    test = np.load(EXAMPLES / "digits_test.npz")
    assert make_example.litert_accuracy(data, test["x"], test["y"]) > 0.9
    expected_type = tflite.TensorType.INT8 if dtype == "int8" else tflite.TensorType.FLOAT32
    assert _tensors(data)["input"].Type() == expected_type


def test_synthetic_digits_are_seeded():
    first = make_example.make_dataset(5, np.random.default_rng(7))
    second = make_example.make_dataset(5, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], second[0])
    assert first[0].shape == (50, 8, 8, 1) and 0 <= first[0].min() and first[0].max() <= 1
