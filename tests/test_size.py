"""Measured sizes, the budget gate, and the Ethos-U (Vela) pre-pass.

Figures are checked against independent computations: zlib on the same bytes, and a hand count
on a tiny model whose int8 codes are known. Vela tests skip cleanly without ethos-u-vela.
"""

from __future__ import annotations

import importlib.util
import json
import math
import zlib

import numpy as np
import pytest

from tflite_cluster import size as sz
from tflite_cluster.budget import Budget, load_budgets
from tflite_cluster.cli import main
from tflite_cluster.errors import ConfigError, InputFileError, MissingExtraError

mb = pytest.importorskip("model_builder", reason="tools/model_builder.py not available")

HAS_VELA = importlib.util.find_spec("ethosu.vela") is not None
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_vela = pytest.mark.skipif(not HAS_VELA, reason="ethos-u-vela not installed (extra 'vela')")


# --- a tiny model with known codes --------------------------------------------------------

# FULLY_CONNECTED [3, 4]. Symmetric per-channel int8 (scale = max|w| / 127 per row) turns each
# row into these codes, so the tensor holds 127 x10, -127 x1, 0 x1: 3 distinct values.
HAND_WEIGHT = np.array([[1, -1, 1, 1], [2, 2, 2, 0], [1, 1, 1, 1]], dtype=np.float32)
HAND_CODES = np.array([[127, -127, 127, 127], [127, 127, 127, 0], [127, 127, 127, 127]], dtype=np.int8)


def hand_model(weight=HAND_WEIGHT) -> bytes:
    layer = mb.FullyConnected(weight, np.zeros(weight.shape[0], np.float32), name="hand")
    return mb.sequential_model([layer], (1, weight.shape[1]), "int8")


@pytest.fixture(scope="module")
def conv_int8() -> bytes:
    return mb.conv_model("int8")


@pytest.fixture
def model_file(tmp_path, conv_int8):
    path = tmp_path / "conv.tflite"
    path.write_bytes(conv_int8)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- size figures -------------------------------------------------------------------------

def test_file_and_deflate_match_zlib(conv_int8):
    s = sz.measure(conv_int8)
    assert s.file == len(conv_int8)
    assert s.deflate == len(zlib.compress(conv_int8, 9))
    # The weight codes, computed independently from the builder's layers.
    streams = []
    for layer in mb.conv_layers(0):
        if hasattr(layer, "weight"):
            codes, _ = mb.quantize_per_channel(layer.weight, layer.quantized_dimension)
            streams.append(codes.tobytes())
    assert sorted(t.deflate for t in s.tensors) == sorted(len(zlib.compress(b, 9)) for b in streams)
    assert s.weights == sum(len(b) for b in streams)
    # Every weight stream sits in the file; the whole stream in file order is what is deflated.
    order = sorted(streams, key=conv_int8.find)
    assert all(conv_int8.find(b) >= 0 for b in streams)
    assert s.weights_deflate == len(zlib.compress(b"".join(order), 9))


def test_hand_count_palette_and_entropy():
    data = hand_model()
    assert HAND_CODES.tobytes() in data
    s = sz.measure(data)
    (t,) = s.tensors
    assert (t.values, t.distinct, t.file) == (12, 3, 12)
    # 12 weights x ceil(log2 3) = 2 bits = 3 bytes, plus 3 one-byte values.
    assert t.palette == 3 + 3
    p = np.array([10, 1, 1]) / 12
    bits = 12 * float(-(p * np.log2(p)).sum())  # 9.8 bits -> 2 bytes
    assert t.entropy == math.ceil(bits / 8) + 3 == 5
    assert t.deflate == len(zlib.compress(HAND_CODES.tobytes(), 9))
    assert s.palette == len(data) - 12 + 6
    assert s.entropy == len(data) - 12 + 5


def test_one_value_costs_only_its_table_and_palette_never_exceeds_stored():
    s = sz.measure(hand_model(np.ones((4, 8), np.float32)))  # every code 127
    (t,) = s.tensors
    assert (t.distinct, t.palette, t.entropy) == (1, 1, 1)
    f = sz.measure(mb.mlp_model("float32"))  # float32 weights: all distinct
    for t in f.tensors:
        assert t.distinct > 0.99 * t.values
        assert t.palette == t.entropy == t.file  # a packer would keep the raw bytes
    assert f.palette == f.file


def test_measure_path_and_bytes_agree(model_file, conv_int8):
    a, b = sz.measure(model_file), sz.measure(conv_int8)
    assert a.model == str(model_file) and b.model == "<bytes>"
    assert a.to_dict()["tensors"] == b.to_dict()["tensors"]
    assert (a.file, a.deflate, a.palette, a.entropy) == (b.file, b.deflate, b.palette, b.entropy)


def test_size_cli_json(capsys, model_file):
    code, out, err = run(capsys, "size", model_file, model_file, "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert len(doc["models"]) == 2
    m = doc["models"][0]
    assert {"model", "file", "deflate", "palette", "entropy", "vela", "tensors"} <= set(m)
    assert m["vela"] is None and m["file"] == model_file.stat().st_size
    assert {"name", "file", "deflate", "palette", "entropy", "distinct"} <= set(m["tensors"][0])


def test_size_cli_table(capsys, model_file):
    code, out, _ = run(capsys, "size", model_file, "--tensors")
    assert code == 0
    assert f"{model_file.stat().st_size:,}" in out and "conv/weights" in out


def test_size_cli_bad_model(capsys, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all")
    code, out, err = run(capsys, "size", bad)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(bad) in err


def test_missing_vela_names_the_extra(monkeypatch, tmp_path, capsys, model_file):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ethosu") else real(name, *a))
    monkeypatch.setattr(sz.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(MissingExtraError) as info:
        sz.measure(model_file, vela="ethos-u55-128")
    assert info.value.package == "ethos-u-vela" and info.value.extra == "vela"
    code, _, err = run(capsys, "size", model_file, "--vela", "ethos-u55-128")
    assert code == 2 and "tflite-cluster[vela]" in err


# --- units --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("300000", 300000), (300000, 300000), ("300KB", 300_000), ("300kb", 300_000), ("300 kB", 300_000),
    ("1.5MiB", 1_572_864), ("1.5mib", 1_572_864), ("2GB", 2 * 10**9), ("1GiB", 2**30),
    ("1KiB", 1024), ("12B", 12), ("0.5KB", 500), ("1.0001KiB", 1024), (".5MB", 500_000),
])
def test_parse_size(text, expected):
    assert sz.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "KB", "-1", "-5KB", "1.5XB", "abc", "1e3", "1,000", "1 K B",
                                  "1.5Mi", None, True, -3])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError):
        sz.parse_size(text)


# --- the budget gate ----------------------------------------------------------------------

@pytest.mark.parametrize("delta, code", [(+1, 0), (0, 0), (-1, 1)])
def test_budget_exit_codes(capsys, model_file, delta, code):
    n = model_file.stat().st_size
    got, out, err = run(capsys, "budget", model_file, "--max", n + delta)
    assert got == code and err == ""
    (line,) = out.strip().splitlines()
    assert str(model_file) in line and "file" in line
    assert f"{n:,} B" in line and f"{n + delta:,} B" in line and f"{delta:+,} B" in line
    assert ("OVER" in line) == (code == 1)


def test_budget_units_and_metrics(capsys, model_file, conv_int8):
    deflate = len(zlib.compress(conv_int8, 9))
    assert run(capsys, "budget", model_file, "--max", "1MB", "--metric", "deflate")[0] == 0
    assert run(capsys, "budget", model_file, "--max", str(deflate), "--metric", "deflate")[0] == 0
    assert run(capsys, "budget", model_file, "--max", str(deflate - 1), "--metric", "deflate")[0] == 1
    code, out, _ = run(capsys, "budget", model_file, model_file, "--max", "1KB", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["within"] is False and len(doc["models"]) == 2
    v = doc["models"][0]
    assert v["budget"] == 1000 and v["measured"] == len(conv_int8) and v["margin"] == 1000 - len(conv_int8)


@pytest.mark.parametrize("argv", [
    ["--max", "lots"],                       # bad size
    [],                                      # no --max
    ["--max", "1MB", "--metric", "vela"],    # vela metric without a config
    ["--max", "1MB", "--vela", "ethos-u99"],  # unknown config
    ["--max", "1MB", "--metric", "file", "--vela", "ethos-u55-128"],
])
def test_budget_usage_errors(capsys, model_file, argv):
    code, out, err = run(capsys, "budget", model_file, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_budget_file_json_and_toml(capsys, tmp_path, conv_int8):
    (tmp_path / "models" / "big").mkdir(parents=True)
    small = tmp_path / "models" / "a.tflite"
    big = tmp_path / "models" / "big" / "b.tflite"
    small.write_bytes(conv_int8)
    big.write_bytes(conv_int8)
    n = len(conv_int8)
    (tmp_path / "budgets.json").write_text(json.dumps({
        "models/**/*.tflite": {"max": n},
        "models/big/*.tflite": {"max": n - 1},   # last match wins: b is over
    }))
    code, out, err = run(capsys, "budget", "--budgets", tmp_path / "budgets.json")
    assert code == 1 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert [("OVER" in ln, "b.tflite" in ln) for ln in sorted(lines, key=lambda s: "b.tflite" in s)] \
        == [(False, False), (True, True)]
    (tmp_path / "budgets.toml").write_text(
        f'["models/*.tflite"]\nmax = "{n}"\nmetric = "deflate"\n'
        f'["models/big/*.tflite"]\nmax = "1MiB"\n')
    code, out, _ = run(capsys, "budget", "--budgets", tmp_path / "budgets.toml")
    assert code == 0 and "deflate" in out and out.count("within") == 2
    # Given models are looked up in the file; one no glob matches is an error.
    code, out, _ = run(capsys, "budget", "--budgets", tmp_path / "budgets.json", small)
    assert code == 0 and len(out.strip().splitlines()) == 1
    other = tmp_path / "other.tflite"
    other.write_bytes(conv_int8)
    code, _, err = run(capsys, "budget", "--budgets", tmp_path / "budgets.json", other)
    assert code == 2 and "no budget" in err


@pytest.mark.parametrize("name, text, words", [
    ("b.json", "{not json", "not valid JSON"),
    ("b.json", "[1, 2]", "map path globs"),
    ("b.json", "{}", "no budgets"),
    ("b.json", '{"*.tflite": 5}', "expected a table"),
    ("b.json", '{"*.tflite": {"max": "5KB", "maximum": 1}}', "unknown key"),
    ("b.json", '{"*.tflite": {"metric": "file"}}', "missing \"max\""),
    ("b.json", '{"*.tflite": {"max": "5 parsecs"}}', "5 parsecs"),
    ("b.json", '{"*.tflite": {"max": "5KB", "metric": "zip"}}', "metric"),
    ("b.json", '{"*.tflite": {"max": "5KB", "metric": "vela"}}', "Vela accelerator config"),
    ("b.json", '{"*.tflite": {"max": "5KB", "vela": "ethos-u99"}}', "ethos-u99"),
    ("b.json", '{"nothing/*.tflite": {"max": "5KB"}}', "matches no file"),
    ("b.toml", '["*.tflite"\nmax = 5', "not valid TOML"),
    ("b.json", b"\xff\xfe\x00", "UTF-8"),
])
def test_bad_budget_files(capsys, tmp_path, conv_int8, name, text, words):
    (tmp_path / "m.tflite").write_bytes(conv_int8)
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputFileError) as info:
        load_budgets(path).assign(metric=None)
    assert info.value.path == path and words in str(info.value)
    code, out, err = run(capsys, "budget", "--budgets", path)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(path) in err and words in err


def test_budget_file_missing_and_max_conflict(capsys, tmp_path, model_file):
    code, _, err = run(capsys, "budget", "--budgets", tmp_path / "none.json")
    assert code == 2 and "no such file" in err
    (tmp_path / "b.json").write_text('{"*.tflite": {"max": 1}}')
    code, _, err = run(capsys, "budget", "--budgets", tmp_path / "b.json", "--max", "1")
    assert code == 2 and "exclude" in err


def test_budget_object_validates():
    assert Budget("1KiB").max == 1024
    with pytest.raises(ConfigError):
        Budget(10, "vela")
    with pytest.raises(ConfigError):
        Budget(10, "bogus")


# --- the Ethos-U pre-pass -----------------------------------------------------------------

def test_target_preset_choices(conv_int8):
    from tflite_cluster.targets import ethos_u_preset
    p = ethos_u_preset(conv_int8, 16)
    c = p.config
    assert (c.k, c.granularity.value, c.space.value, c.preserve_sparsity) == (16, "tensor", "int8", True)
    by_op = {ch.op: ch for ch in p.choices}
    # The 3x3 depthwise kernel (144 weights, 9 per channel) is small: left alone, and says why.
    assert by_op["DEPTHWISE_CONV_2D"].action == "leave" and "small" in by_op["DEPTHWISE_CONV_2D"].reason
    assert by_op["FULLY_CONNECTED"].action == "cluster" and by_op["FULLY_CONNECTED"].k == 16
    assert p.warnings == ()
    assert "ethos-u" in p.summary() and "k 16" in p.summary()
    # Explicit settings override the preset; k above 32 is refused.
    assert ethos_u_preset(conv_int8, 8, {"granularity": "channel"}).config.granularity.value == "channel"
    with pytest.raises(ConfigError, match="at most 32"):
        ethos_u_preset(conv_int8, 33)
    with pytest.raises(ConfigError, match="at most 32"):
        ethos_u_preset(conv_int8, 16, {"names": [{"regex": ".*", "k": 64}]})


def test_target_preset_warns_about_float_activations(capsys, tmp_path):
    from tflite_cluster.targets import ethos_u_preset
    data = mb.conv_model("dynamic_int8")
    p = ethos_u_preset(data)
    assert any("float activations" in w for w in p.warnings)
    (tmp_path / "dyn.tflite").write_bytes(data)
    code, out, err = run(capsys, "cluster", tmp_path / "dyn.tflite", "-o", tmp_path / "o.tflite",
                         "--target", "ethos-u", "--report", tmp_path / "r.json")
    assert code == 0 and "warning: the model has float activations" in err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["target"]["target"] == "ethos-u" and doc["target"]["warnings"] == list(p.warnings)
    assert {c["name"] for c in doc["target"]["choices"]} == {c.name for c in p.choices}


def test_target_preset_warns_about_weight_zero_points():
    from tflite_cluster.targets import ethos_u_preset
    builder, sg = mb.new_model()
    q = mb.Quantization([0.1], [0])
    x = sg.add_tensor("input", (1, 8), "int8", quantization=q)
    codes = np.random.default_rng(0).integers(-100, 100, (4, 8)).astype(np.int8)
    w = sg.add_constant("w", codes, quantization=mb.Quantization([0.02], [3]))
    bias = sg.add_constant("b", np.zeros(4, np.int32), quantization=mb.Quantization([0.002], [0]))
    y = sg.add_tensor("output", (1, 4), "int8", quantization=q)
    sg.add_operator("FULLY_CONNECTED", [x, w, bias], [y], {"fused_activation_function": "NONE"})
    p = ethos_u_preset(mb._finish(builder, sg, {"input": x}, {"output": y}))
    assert any("zero points" in msg and "'w'" in msg for msg in p.warnings)


def test_cluster_target_k_above_32_is_an_error(capsys, tmp_path, model_file):
    code, out, err = run(capsys, "cluster", model_file, "-o", tmp_path / "o.tflite", "--target",
                         "ethos-u", "-k", "33")
    assert code == 2 and "at most 32" in err and not (tmp_path / "o.tflite").exists()


@needs_vela
def test_vela_figures_come_from_its_csv(conv_int8):
    v = sz.run_vela(conv_int8, "ethos-u55-128")
    w = sz.measure(conv_int8).weights
    assert v.original_weights == w  # every weight of this model runs on the NPU
    assert v.encoded_weights > 0 and v.cpu_ops == 0 and v.npu_ops == 1
    assert v.system_config  # read from the CSV file name


@needs_vela
def test_vela_failure_is_a_typed_error(tmp_path):
    path = tmp_path / "broken.tflite"
    path.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(InputFileError) as info:
        sz.run_vela(path, "ethos-u55-128")
    assert str(path) in str(info.value) and "Vela" in str(info.value)


@needs_vela
@pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert not installed")
def test_ethos_u_prepass_shrinks_vela_weights_and_keeps_outputs(capsys, tmp_path, model_file):
    from tflite_cluster.compare import compare
    out_path = tmp_path / "conv_ethos.tflite"
    code, out, err = run(capsys, "cluster", model_file, "-o", out_path, "--target", "ethos-u",
                         "--vela-report", "ethos-u55-128")
    assert code == 0, err
    assert "target ethos-u" in out and "leave alone" in out and "encoded weights" in out
    before = sz.run_vela(model_file, "ethos-u55-128")
    after = sz.run_vela(out_path, "ethos-u55-128")
    assert after.cpu_ops == 0
    assert after.encoded_weights < 0.75 * before.encoded_weights
    report = compare(model_file, out_path, samples=64, seed=0)
    assert report.min_sqnr_db > 15.0
