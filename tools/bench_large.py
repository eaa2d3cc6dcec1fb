"""Whole-CLI benchmark on large models (run by hand, not by pytest).

Builds float32 (or dynamic-range int8) fully-connected chains with the project's builder (tools/model_builder.py) and
times ``tflite-cluster cluster MODEL -o OUT`` in a fresh process, reporting wall time and the
child's peak RSS against the file size:

    python tools/bench_large.py                       # 1 GB inline model
    python tools/bench_large.py --gb 2.3 --external   # > 2 GB, data after the FlatBuffer
    python tools/bench_large.py --gb 0.25 --run       # also run both models under LiteRT
    python tools/bench_large.py --dtype int8 --gb 2.3 --external --granularity tensor
    python tools/bench_large.py --mobilenetv2         # 2.2 M int8 weights, per channel k=16

Each run checks the output: same length, at most k distinct values in every output channel of
every weight (all channels are checked), and with ``--run`` LiteRT loads both models and the
output SQNR is printed. Models are written to --dir (default: a temporary folder), then deleted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_builder as mb  # noqa: E402

from tflite_cluster import model as tfl  # noqa: E402
from tflite_cluster.quant import distinct_values  # noqa: E402

WIDTH = 4096  # each layer: WIDTH x WIDTH float32 = 64 MiB


def build(gb: float, external: bool, dtype: str, seed: int = 0) -> bytes:
    """A chain of WIDTH x WIDTH FULLY_CONNECTED layers: float32 weights, or per-channel int8
    weights with float activations (dynamic-range, as the converter writes it)."""
    itemsize = 4 if dtype == "float32" else 1
    layers = max(1, round(gb * 2**30 / (WIDTH * WIDTH * itemsize)))
    rng = np.random.default_rng(seed)
    b, sg = mb.new_model("tflite-cluster large benchmark")
    x = first = sg.add_tensor("input", [1, WIDTH])
    for i in range(layers):
        if dtype == "float32":
            w = sg.add_constant(f"fc{i}/weights", rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / 64)
        else:
            codes = np.clip(np.round(rng.laplace(size=(WIDTH, WIDTH)) * 25), -127, 127).astype(np.int8)
            scales = [1 / (64 * 127)] * WIDTH
            w = sg.add_constant(f"fc{i}/weights", codes,
                                quantization=mb.Quantization(scales, [0] * WIDTH, 0))
        bias = sg.add_constant(f"fc{i}/bias", np.zeros(WIDTH, np.float32))
        y = sg.add_tensor(f"fc{i}/out", [1, WIDTH])
        sg.add_operator("FULLY_CONNECTED", [x, w, bias], [y], {"fused_activation_function": "NONE"})
        x = y
    sg.inputs, sg.outputs = [first], [x]
    b.add_signature(sg, {"input": first}, {"output": x})
    return b.build(external_buffers=external)


def build_mobilenetv2(seed: int = 0) -> bytes:
    """int8 per-channel weights shaped like MobileNetV2's (2.19 M weights, 17 k output
    channels: 1x1 expand / 3x3 depthwise / 1x1 project blocks), Laplace-distributed codes, on
    an 8x8 float feature map (dynamic-range ops, so LiteRT can run it)."""
    rng = np.random.default_rng(seed)
    b, sg = mb.new_model("tflite-cluster MobileNetV2-shaped benchmark")
    x = first = sg.add_tensor("input", [1, 8, 8, 32])
    state = {"x": x, "i": 0, "cin": 32}

    def layer(kind: str, shape: tuple[int, ...], axis: int, cout: int) -> None:
        i = state["i"]
        codes = np.clip(np.round(rng.laplace(size=shape) * 25), -127, 127).astype(np.int8)
        w = sg.add_constant(f"{kind.lower()}_{i}/weights", codes,
                            quantization=mb.Quantization([1 / 3000] * shape[axis], [0] * shape[axis], axis))
        bias = sg.add_constant(f"{kind.lower()}_{i}/bias", np.zeros(cout, np.float32))
        y = sg.add_tensor(f"act_{i}", [1, 8, 8, cout])
        opts = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "fused_activation_function": "NONE"}
        if kind == "DEPTHWISE_CONV_2D":
            opts["depth_multiplier"] = 1
        sg.add_operator(kind, [state["x"], w, bias], [y], opts)
        state.update(x=y, i=i + 1)

    for t, c, n in [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]:
        for _ in range(n):
            cin, e = state["cin"], state["cin"] * t
            if t != 1:
                layer("CONV_2D", (e, 1, 1, cin), 0, e)
            layer("DEPTHWISE_CONV_2D", (1, 3, 3, e), 3, e)
            layer("CONV_2D", (c, 1, 1, e), 0, c)
            state["cin"] = c
    layer("CONV_2D", (1280, 1, 1, state["cin"]), 0, 1280)
    sg.inputs, sg.outputs = [first], [state["x"]]
    b.add_signature(sg, {"input": first}, {"output": state["x"]})
    return b.build()


def check(src: Path, out: Path, k: int) -> str:
    a = tfl.parse(np.memmap(src, mode="r"))
    data = np.memmap(out, mode="r")
    b = tfl.parse(data)
    assert a.size == b.size, "length changed"
    worst = 0
    for w in b.weights:
        if w.elements < 1024:  # below the default min_elements: left alone
            continue
        x = tfl.read_array(data, w)
        axis = w.channel_axis() or 0
        rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        worst = max(worst, max(len(distinct_values(r)) for r in rows))
    assert worst <= k, f"a channel holds {worst} > {k} values"
    return f"ok: {len(b.weights)} weights, at most {worst} values per channel"


def run_litert(src: Path, out: Path) -> str:
    from tflite_cluster.compare import compare
    r = compare(str(src), str(out), samples=2)
    return f"LiteRT output SQNR {r.min_sqnr_db:.1f} dB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--external", action="store_true", help="store weights after the FlatBuffer")
    ap.add_argument("--dtype", choices=["float32", "int8"], default="float32")
    ap.add_argument("--mobilenetv2", action="store_true",
                    help="instead: the 2.2 M-weight MobileNetV2-shaped int8 model (--gb ignored)")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--granularity", default="channel")
    ap.add_argument("--run", action="store_true", help="also run both models under LiteRT")
    ap.add_argument("--dir", help="where to write the models (default: a temporary folder)")
    ap.add_argument("--build-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        model = build_mobilenetv2() if args.mobilenetv2 else build(args.gb, args.external, args.dtype)
        Path(args.build_only).write_bytes(model)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, out = Path(tmp) / "large.tflite", Path(tmp) / "large_k.tflite"
        t = time.perf_counter()
        # Build in a child process: Linux carries a parent's peak RSS into its children's
        # ru_maxrss, so this process must stay small for the measurement below to be the CLI's.
        subprocess.run([sys.executable, __file__, "--build-only", str(src), "--gb", str(args.gb),
                        "--dtype", args.dtype] + (["--external"] if args.external else [])
                       + (["--mobilenetv2"] if args.mobilenetv2 else []), check=True)
        size = src.stat().st_size
        kind = "MobileNetV2-shaped int8" if args.mobilenetv2 else f"{size / 2**30:.2f} GiB {args.dtype}"
        print(f"built {kind} model, {size:,} bytes ({'external' if args.external else 'inline'} buffers) "
              f"in {time.perf_counter() - t:.1f} s")
        cmd = [sys.executable, "-m", "tflite_cluster", "cluster", str(src), "-o", str(out), "-q",
               "-k", str(args.k), "--granularity", args.granularity]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        wall = time.perf_counter() - t
        rss = usage.ru_maxrss * 1024
        if os.waitstatus_to_exitcode(status) != 0:
            print(proc.stderr.read().decode())
            return 1
        print(f"cluster -k {args.k} --granularity {args.granularity}: {wall:.1f} s wall, peak RSS "
              f"{rss / 2**30:.2f} GiB = {rss / size:.2f}x the file")
        print(check(src, out, args.k))
        if args.run:
            print(run_litert(src, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
