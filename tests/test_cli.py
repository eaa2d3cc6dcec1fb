"""The CLI: exit codes, one-line errors, nothing written on failure, atomic in-place rewrites."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import model_builder as mb
from tflite_cluster import __version__, cli
from tflite_cluster import model as tfl


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "m.tflite"
    p.write_bytes(mb.conv_model("int8"))
    return p


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and __version__ in out
    assert "exact kernel: c" in out or "exact kernel: numpy" in out


def test_cluster_writes_output_and_report(model_file, tmp_path, capsys):
    out = tmp_path / "o.tflite"
    rep = tmp_path / "r.json"
    code, stdout, err = run(["cluster", model_file, "-o", out, "-k", "8", "--report", rep], capsys)
    assert code == 0, err
    assert out.exists() and "clustered" in stdout and "SQNR" in stdout
    report = json.loads(rep.read_text())
    assert report["config"]["k"] == 8
    assert any(t["skipped"] is None for t in report["tensors"])
    tfl.parse(out.read_bytes())
    compare = pytest.importorskip("tflite_cluster.compare")
    pytest.importorskip("ai_edge_litert")
    assert compare.compare(model_file.read_bytes(), out.read_bytes(), samples=4).min_sqnr_db > 10  # k=8


def test_existing_output_needs_force(model_file, tmp_path, capsys):
    out = tmp_path / "o.tflite"
    out.write_bytes(b"keep me")
    code, _, err = run(["cluster", model_file, "-o", out], capsys)
    assert_one_line_error(code, err, out, "--force")
    assert out.read_bytes() == b"keep me"
    code, _, err = run(["cluster", model_file, "-o", out, "--force", "-q"], capsys)
    assert code == 0 and out.read_bytes() != b"keep me"


def test_in_place_keeps_permissions_and_is_atomic(model_file, capsys):
    os.chmod(model_file, 0o640)
    before = model_file.read_bytes()
    code, _, err = run(["cluster", model_file, "--in-place", "-q", "-k", "4"], capsys)
    assert code == 0, err
    assert model_file.read_bytes() != before
    assert oct(model_file.stat().st_mode & 0o777) == oct(0o640)
    assert files_in(model_file.parent) == ["m.tflite"]  # no temp file left behind


def test_in_place_on_bad_model_leaves_it_alone(tmp_path, capsys):
    p = tmp_path / "bad.tflite"
    p.write_bytes(b"\x00" * 100)
    code, _, err = run(["cluster", p, "--in-place"], capsys)
    assert_one_line_error(code, err, p)
    assert p.read_bytes() == b"\x00" * 100
    assert files_in(tmp_path) == ["bad.tflite"]


def test_strict_fails_on_unmatched_rule_and_writes_nothing(model_file, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"names": [{"regex": "nothing_matches_this", "k": 2}]}))
    out = tmp_path / "o.tflite"
    code, stdout, err = run(["cluster", model_file, "-o", out, "--config", cfg, "--strict"], capsys)
    assert code == 1
    assert "nothing_matches_this" in stdout + err
    assert not out.exists()
    code, _, _ = run(["cluster", model_file, "-o", out, "--config", cfg, "-q"], capsys)
    assert code == 0 and out.exists()


def test_flags_override_config_file(model_file, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"k": 2, "granularity": "tensor"}))
    rep = tmp_path / "r.json"
    code, _, err = run(["cluster", model_file, "-o", tmp_path / "o.tflite", "--config", cfg, "-k", "6",
                        "--report", rep, "-q"], capsys)
    assert code == 0, err
    config = json.loads(rep.read_text())["config"]
    assert (config["k"], config["granularity"]) == (6, "tensor")


def test_inspect_table_and_json(model_file, capsys):
    code, out, _ = run(["inspect", model_file], capsys)
    assert code == 0 and "CONV_2D" in out and "fewer than min_elements" in out
    code, out, _ = run(["inspect", model_file, "--json"], capsys)
    d = json.loads(out)
    assert d["model"] == str(model_file) and len(d["tensors"]) == 3


# --- bad input ------------------------------------------------------------------------------

def _corrupt_cases():
    good = mb.conv_model("float32")
    info = tfl.parse(good)
    w = max(info.weights, key=lambda w: w.nbytes)
    cases = {
        "empty": (b"", "empty"),
        "random": (np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(), "not a .tflite"),
        "text": (b"this is not a flatbuffer at all, just text\n" * 20, "not a .tflite"),
        "wrong_identifier": (good[:4] + b"XXXX" + good[8:], "identifier"),
        "root_outside": (struct.pack("<I", len(good) + 100) + good[4:], "outside the file"),
    }
    # a vector longer than the file: the weight buffer's length prefix
    bad = bytearray(good)
    struct.pack_into("<I", bad, w.data_offset - 4, len(good) * 4)
    cases["vector_too_long"] = (bytes(bad), "past the end")
    # a tensor shape that does not match its buffer size: shrink the buffer's length prefix
    bad = bytearray(good)
    struct.pack_into("<I", bad, w.data_offset - 4, w.nbytes - 4)
    cases["shape_mismatch"] = (bytes(bad), "shape")
    # offsets pointing outside the file: external buffer offset
    ext = mb.external_buffer_model()
    ew = next(x for x in tfl.parse(ext).weights if x.external)
    pos = ext.find(struct.pack("<Q", ew.data_offset))
    assert pos > 0
    bad = bytearray(ext)
    struct.pack_into("<Q", bad, pos, len(ext) + 4096)
    cases["offset_outside"] = (bytes(bad), "outside the file")
    return cases


CASES = _corrupt_cases()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_models_give_one_line_and_write_nothing(case, tmp_path, capsys):
    data, needle = CASES[case]
    p = tmp_path / f"{case}.tflite"
    p.write_bytes(data)
    out = tmp_path / "out.tflite"
    for argv in (["cluster", p, "-o", out], ["inspect", p], ["cluster", p, "--in-place"]):
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, p, needle)
    assert files_in(tmp_path) == [p.name]
    assert p.read_bytes() == data


def test_truncated_at_every_point_is_an_error(tmp_path, capsys):
    good = mb.conv_model("int8")
    p = tmp_path / "t.tflite"
    for cut in sorted(set(np.linspace(0, len(good) - 1, 60).astype(int)) | {len(good) - 1, 1, 7}):
        p.write_bytes(good[:cut])
        code, _, err = run(["cluster", p, "-o", tmp_path / "o.tflite"], capsys)
        assert_one_line_error(code, err, p)
        assert not (tmp_path / "o.tflite").exists()


def test_missing_file_and_folder(tmp_path, capsys):
    code, _, err = run(["cluster", tmp_path / "nope.tflite", "-o", tmp_path / "o.tflite"], capsys)
    assert_one_line_error(code, err, "nope.tflite", "no such file")
    code, _, err = run(["inspect", tmp_path], capsys)
    assert_one_line_error(code, err, "folder")


def test_model_with_no_weights(tmp_path, capsys):
    b, sg = mb.new_model()
    x = sg.add_tensor("x", [1, 4])
    y = sg.add_tensor("y", [1, 4])
    sg.add_operator("RELU", [x], [y])
    sg.inputs, sg.outputs = [x], [y]
    b.add_signature(sg, {"x": x}, {"y": y})
    p = tmp_path / "noweights.tflite"
    p.write_bytes(b.build())
    out = tmp_path / "o.tflite"
    code, stdout, err = run(["cluster", p, "-o", out], capsys)
    assert code == 0, err
    assert "clustered 0 of 0" in stdout
    code, _, err = run(["cluster", p, "-o", tmp_path / "o2.tflite", "--strict"], capsys)
    assert code == 0


def test_unwritable_output_folder(model_file, tmp_path, capsys):
    code, _, err = run(["cluster", model_file, "-o", tmp_path / "no" / "such" / "dir.tflite"], capsys)
    assert_one_line_error(code, err, "does not exist")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write to read-only folders (root)")
        code, _, err = run(["cluster", model_file, "-o", ro / "o.tflite"], capsys)
        assert_one_line_error(code, err, "ro")
        assert files_in(ro) == []
    finally:
        os.chmod(ro, 0o700)


def test_unwritable_output_as_root_via_readonly_file_target(model_file, tmp_path, capsys):
    """An output path that is an existing folder fails cleanly (works as root too)."""
    target = tmp_path / "adir"
    target.mkdir()
    code, _, err = run(["cluster", model_file, "-o", target, "--force"], capsys)
    assert_one_line_error(code, err, "folder")


@pytest.mark.parametrize("content,needle", [
    ("{", "not valid JSON"),
    ('{"k": 4, "bogus": 1}', "unknown key"),
    ('{"k": 0}', "out of range"),
    ('{"granularity": "rows"}', "granularity"),
    ('{"names": [{"regex": "(", "k": 2}]}', "regular expression"),
    ('[1, 2]', "JSON object"),
])
def test_bad_config_files(model_file, tmp_path, capsys, content, needle):
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    out = tmp_path / "o.tflite"
    code, _, err = run(["cluster", model_file, "-o", out, "--config", cfg], capsys)
    assert_one_line_error(code, err, "c.json", needle)
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["cluster", "m.tflite"], "required"),
    (["cluster", "m.tflite", "-o", "x", "-k", "0"], "k"),
    (["cluster", "m.tflite", "-o", "x", "-k", "many"], "invalid int"),
    (["cluster", "m.tflite", "-o", "x", "--granularity", "group"], "group_size"),
    (["nope"], "invalid choice"),
])
def test_bad_arguments(model_file, capsys, argv, needle, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, needle)


def test_console_script_runs_without_traceback(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"nonsense")
    r = subprocess.run([sys.executable, "-m", "tflite_cluster", "cluster", str(p), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- fuzz --------------------------------------------------------------------------------

_FUZZ_BASES = {"int8": mb.conv_model("int8"), "float16": mb.conv_model("float16"),
               "external": mb.external_buffer_model()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(_FUZZ_BASES)), data=st.data())
def test_fuzz_mutated_models_never_crash(tmp_path_factory, base, data):
    good = _FUZZ_BASES[base]
    blob = bytearray(good)
    n = data.draw(st.integers(1, 8))
    for _ in range(n):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    folder = tmp_path_factory.mktemp("fuzz")
    p = folder / "f.tflite"
    p.write_bytes(bytes(blob))
    out = folder / "o.tflite"
    import io
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["cluster", str(p), "-o", str(out), "-q"])
    msg = err.getvalue()
    assert "internal error" not in msg and "Traceback" not in msg, msg
    if code == 0:
        tfl.parse(out.read_bytes())
    else:
        assert code == 2 and len(msg.strip().splitlines()) == 1
        assert not out.exists()
    assert sorted(x.name for x in folder.iterdir()) in (["f.tflite"], ["f.tflite", "o.tflite"])


# --- several models ------------------------------------------------------------------------

def test_batch_folder_with_jobs_and_one_bad_model(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.tflite").write_bytes(mb.conv_model("int8"))
    (src / "b.tflite").write_bytes(mb.mlp_model("float32"))
    (src / "c.tflite").write_bytes(b"broken")
    out = tmp_path / "out"
    rep = tmp_path / "r.json"
    code, stdout, err = run(["cluster", src, "-o", out, "--jobs", "2", "--report", rep, "-k", "8"], capsys)
    assert code == 2
    assert files_in(out) == ["a.tflite", "b.tflite"]
    assert "c.tflite" in err and len(err.strip().splitlines()) == 1
    assert "2 of 3 models written, 1 failed" in stdout
    # each output equals what the single-model API gives
    import tflite_cluster as tc
    for name in ("a.tflite", "b.tflite"):
        assert (out / name).read_bytes() == tc.cluster(src / name, tc.ClusterConfig(k=8)).data
    doc = json.loads(rep.read_text())
    assert [m["exit"] for m in doc["models"]] == [0, 0, 2]


def test_batch_in_place_several_files(tmp_path, capsys):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    a.write_bytes(mb.conv_model("float16"))
    b.write_bytes(mb.conv_model("float32"))
    before = a.read_bytes(), b.read_bytes()
    code, _, err = run(["cluster", a, b, "--in-place", "-j", "1", "-q"], capsys)
    assert code == 0, err
    assert (a.read_bytes(), b.read_bytes()) != before
    assert files_in(tmp_path) == ["a.tflite", "b.tflite"]
    compare = pytest.importorskip("tflite_cluster.compare")
    pytest.importorskip("ai_edge_litert")
    for path, original in zip((a, b), before):
        assert compare.compare(original, path.read_bytes(), samples=4).min_sqnr_db > 15


def test_batch_needs_folder_output(tmp_path, capsys):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    a.write_bytes(mb.conv_model("int8"))
    b.write_bytes(mb.conv_model("int8"))
    f = tmp_path / "file.tflite"
    f.write_bytes(b"x")
    code, _, err = run(["cluster", a, b, "-o", f], capsys)
    assert_one_line_error(code, err, "not a folder")


def test_unwritable_folder_simulated(model_file, tmp_path, capsys, monkeypatch):
    """As root a chmod'ed folder is still writable, so simulate the refusal itself."""
    import tflite_cluster.fileio as fileio

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    out = tmp_path / "o.tflite"
    code, _, err = run(["cluster", model_file, "-o", out], capsys)
    assert_one_line_error(code, err, "Permission denied")
    assert not out.exists()


def test_failure_mid_write_leaves_input_intact(model_file, capsys, monkeypatch):
    """A disk-full error while writing --in-place: the input is untouched, no temp file left."""
    import tflite_cluster.fileio as fileio

    before = model_file.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", disk_full)
    code, _, err = run(["cluster", model_file, "--in-place", "-k", "4"], capsys)
    assert_one_line_error(code, err, "No space left on device")
    assert model_file.read_bytes() == before
    assert files_in(model_file.parent) == ["m.tflite"]


def test_tolerance_certified_tensors_reported_and_run(tmp_path, capsys):
    """A float32 FULLY_CONNECTED weight of 96,000 values per tensor: by default it is solved on
    a grid with a certified gap (reported per tensor and in the summary), with --tolerance 0
    exactly; both outputs stay close to the original under LiteRT, and the certified SSE is
    within its bound of the exact one."""
    compare = pytest.importorskip("tflite_cluster.compare")
    rng = np.random.default_rng(3)
    layers = [mb.FullyConnected((rng.laplace(size=(320, 300)) * 0.05).astype(np.float32),
                                np.zeros(320, np.float32), name="wide")]
    src = tmp_path / "wide.tflite"
    src.write_bytes(mb.sequential_model(layers, (1, 300)))
    results = {}
    for tol in ("1e-4", "0"):
        out, rep = tmp_path / f"o{tol}.tflite", tmp_path / f"r{tol}.json"
        code, stdout, err = run(["cluster", src, "-o", out, "--granularity", "tensor",
                                 "--tolerance", tol, "--report", rep], capsys)
        assert code == 0, err
        t = next(t for t in json.loads(rep.read_text())["tensors"] if t["name"] == "wide/weights")
        results[tol] = t
        assert t["unique_after"] <= 16
        assert compare.compare(src.read_bytes(), out.read_bytes(), samples=4).min_sqnr_db > 15
        if tol == "0":
            assert t["optimality_gap"] == 0.0 and "fine grid" not in stdout
        else:
            assert 0 < t["optimality_gap"] <= 1e-4
            assert "proven within" in stdout and "certified bound" in t["note"]
    excess = results["1e-4"]["mse"] / results["0"]["mse"] - 1
    assert -1e-9 <= excess <= results["1e-4"]["optimality_gap"] + 1e-9
    code, _, err = run(["cluster", src, "-o", tmp_path / "x.tflite", "--tolerance", "0.5"], capsys)
    assert_one_line_error(code, err, "tolerance")
    assert not (tmp_path / "x.tflite").exists()


def test_too_large_for_the_exact_method_is_a_skip_with_a_reason(tmp_path, capsys, monkeypatch):
    """A row whose exact table would pass the limit is skipped with the reason (exit 0, the
    rest still clustered), and --strict turns that into exit 1 with nothing written."""
    from tflite_cluster import kmeans

    monkeypatch.setattr(kmeans, "_TABLE_LIMIT", 16 * 200 * 4)  # rows over ~200 values
    src = tmp_path / "m.tflite"
    src.write_bytes(mb.conv_model("float32"))
    out, rep = tmp_path / "o.tflite", tmp_path / "r.json"
    code, stdout, err = run(["cluster", src, "-o", out, "--granularity", "tensor",
                             "--min-elements", "100", "--report", rep], capsys)
    assert code == 0, err
    tensors = {t["name"]: t for t in json.loads(rep.read_text())["tensors"]}
    big = [t for t in tensors.values() if t["elements"] > 200]
    assert big and all("too large for the exact method" in t["skipped"] for t in big)
    assert any(t["skipped"] is None for t in tensors.values())  # the 144-weight depthwise
    code, stdout, err = run(["cluster", src, "-o", tmp_path / "s.tflite", "--granularity",
                             "tensor", "--min-elements", "100", "--strict"], capsys)
    assert code == 1 and "--strict" in err and "too large" in stdout + err
    assert not (tmp_path / "s.tflite").exists()
