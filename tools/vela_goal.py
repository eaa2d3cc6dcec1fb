"""Measure the Ethos-U pre-pass goal (issue 4), by hand: not part of the test suite.

For each model, Vela accelerator config and k: Vela's encoded weight bytes (``--optimise
Size``) before and after ``cluster --target ethos-u -k K``, and the accuracy cost: top-1 on the
digits test split for the digits CNN; for the wake-word model, on a seeded random feature stream of 400 steps (uniform
over the input's calibrated range), the SQNR of the features feeding its last FULLY_CONNECTED,
of its logit, and of its output probability (which random input leaves near 0). The goal: encoded weights <= 0.5x the
unclustered model's, losing <= 0.5 point of top-1.

    python tools/vela_goal.py [--models ../shared/models] [--data ../shared/data/digits_test.npz]
                              [--configs ethos-u55-128,ethos-u85-256] [--ks 8,16,32] [--json]
                              [--small-share 0.10] [--small-elements 10000]

Needs ethos-u-vela and ai-edge-litert. Prints a markdown table (or JSON with --json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tflite_cluster") is None:  # run from a checkout, not installed
    sys.path.insert(0, str(ROOT))

from tflite_cluster import cluster  # noqa: E402
from tflite_cluster.compare import compare, run_model, sqnr_db  # noqa: E402
from tflite_cluster.size import run_vela  # noqa: E402
from tflite_cluster.targets import ethos_u_preset  # noqa: E402

SHARED = ROOT.parent / "shared"


def top1(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    (out,) = run_model(model, [x])
    return float(np.mean(np.argmax(out.reshape(len(x), -1), axis=1) == y))


def _dequantize(t: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (t.astype(np.float64) - zero) * scale if scale else t.astype(np.float64)


def stream_internals(model: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a streaming classifier step by step on one fresh interpreter and return, per step,
    the feature vector feeding its last FULLY_CONNECTED and the logit feeding its LOGISTIC."""
    import warnings
    from ai_edge_litert.interpreter import Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    ops = it._get_ops_details()
    logistic = next(o for o in ops if o["op_name"] == "LOGISTIC")
    logit = int(logistic["inputs"][0])
    fc = next(o for o in ops if logit in [int(t) for t in o["outputs"]])
    feature = int(fc["inputs"][0])
    details = {t["index"]: t for t in it.get_tensor_details()}
    inp = it.get_input_details()[0]
    scale, zero = inp["quantization"]
    feats, logits = [], []
    for step in x:
        q = np.clip(np.round(step / scale) + zero, -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        feats.append(_dequantize(it.get_tensor(feature), details[feature]).reshape(-1))
        logits.append(_dequantize(it.get_tensor(logit), details[logit]).reshape(-1))
    return np.array(feats), np.array(logits)


def wake_word_quality(original: bytes, clustered: bytes, steps: int = 400, seed: int = 0) -> dict:
    """SQNR of the wake-word model's last features and logits on a seeded random feature stream
    (its output probability stays ~0 on random input, so the output alone shows nothing)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 26.0, (steps, 3, 40)).astype(np.float32)  # the input's calibrated range
    fa, la = stream_internals(original, x)
    fb, lb = stream_internals(clustered, x)
    rep = compare(original, clustered, samples=steps, seed=seed)
    return {"feature_sqnr_db": sqnr_db(fa, fb), "logit_sqnr_db": sqnr_db(la, lb),
            "output_sqnr_db": rep.min_sqnr_db,
            "max_abs_diff": max(o.max_abs_diff for o in rep.outputs)}


def measure_model(name: str, path: Path, configs, ks, data, small_share, small_elements) -> list[dict]:
    original = path.read_bytes()
    rows = []
    digits = name.startswith("digits")
    if digits:
        x, y = data
        base_acc = top1(original, x, y)
    before = {c: run_vela(original, c) for c in configs}
    for k in ks:
        t0 = time.perf_counter()
        preset = ethos_u_preset(original, k, small_share=small_share, small_elements=small_elements)
        result = cluster(original, preset.config)
        seconds = time.perf_counter() - t0
        left = [c.name for c in preset.choices if c.action == "leave"]
        if digits:
            acc = top1(result.data, x, y)
            quality = {"top1_before": base_acc, "top1_after": acc,
                       "top1_loss_points": 100 * (base_acc - acc)}
        else:
            quality = wake_word_quality(original, result.data)
        for c in configs:
            after = run_vela(result.data, c)
            rows.append({"model": name, "config": c, "k": k,
                         "original_weights": before[c].original_weights,
                         "encoded_before": before[c].encoded_weights,
                         "encoded_after": after.encoded_weights,
                         "ratio": after.encoded_weights / before[c].encoded_weights,
                         "cpu_ops_after": after.cpu_ops, "left_alone": len(left),
                         "tensors": len(preset.choices), "seconds": seconds, **quality})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "digits_test.npz")
    ap.add_argument("--configs", default="ethos-u55-128,ethos-u85-256")
    ap.add_argument("--ks", default="8,16,32")
    ap.add_argument("--small-share", type=float, default=0.10)
    ap.add_argument("--small-elements", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    ks = [int(k) for k in args.ks.split(",")]
    npz = np.load(args.data)
    data = (npz["x"].astype(np.float32), npz["y"].astype(np.int64))
    rows = []
    for name in ("digits_cnn_int8", "mww_okay_nabu"):
        path = args.models / f"{name}.tflite"
        if not path.is_file():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        rows += measure_model(name, path, configs, ks, data, args.small_share, args.small_elements)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| model | Vela config | k | encoded before | encoded after | after/before | accuracy |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        if "top1_after" in r:
            q = (f"top-1 {100 * r['top1_before']:.2f} % -> {100 * r['top1_after']:.2f} % "
                 f"({-r['top1_loss_points']:+.2f} pt)")
        else:
            q = (f"SQNR: features {r['feature_sqnr_db']:.1f} dB, logit {r['logit_sqnr_db']:.1f} dB, "
                 f"output {r['output_sqnr_db']:.1f} dB (max |diff| {r['max_abs_diff']:.4f})")
        print(f"| {r['model']} | {r['config']} | {r['k']} | {r['encoded_before']:,} | "
              f"{r['encoded_after']:,} | {r['ratio']:.3f} | {q} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
