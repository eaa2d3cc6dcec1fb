"""Train a small 8x8 digit classifier in numpy and export it as float32 and full-integer int8 .tflite.

Run from the repository root::

    python tools/make_example.py [--out examples]

It writes ``digits_float32.tflite``, ``digits_int8.tflite`` and ``digits_test.npz`` (``x`` float32
[N, 8, 8, 1] in [0, 1], ``y`` int64 labels) and prints the test accuracy of both models under
LiteRT. No TensorFlow and no dataset download: the digits are rendered from hand-made stroke
templates (random affine distortion, stroke thickness and pixel noise) on a 32x32 bitmap and
reduced to 8x8 by counting the set pixels of each 4x4 block, as the UCI/scikit-learn digits were
made. Everything is seeded: two runs on the same machine write byte-identical files.

Network: CONV_2D 3x3 (16 filters, stride 2) relu -> RESHAPE -> FULLY_CONNECTED [64, 256] relu ->
FULLY_CONNECTED [10, 64] -> SOFTMAX, trained with Adam on a cross-entropy loss. The int8 export
uses per-channel weights and activation scales calibrated on training images.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

import model_builder as mb

SEED = 0
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100
EPOCHS = 20
BATCH = 128
INPUT_SHAPE = (1, 8, 8, 1)
NOISE = 0.04  # probability of flipping a 32x32 pixel


# ---- synthetic digits -------------------------------------------------------------------------


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 9) -> np.ndarray:
    """Points of an elliptic arc; angles in degrees, 0 = right, 90 = down (image coordinates)."""
    t = np.radians(np.linspace(start, end, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64)


# Each digit: polylines in the unit square (x right, y down).
GLYPHS = {
    0: [_arc(0.5, 0.5, 0.26, 0.4, 0, 360, 16)],
    1: [_line((0.34, 0.26), (0.52, 0.1), (0.52, 0.9))],
    2: [np.concatenate([_arc(0.5, 0.33, 0.25, 0.22, -165, 35), _line((0.22, 0.9), (0.8, 0.9))])],
    3: [_arc(0.47, 0.3, 0.24, 0.2, -160, 90), _arc(0.47, 0.7, 0.27, 0.2, -90, 160)],
    4: [_line((0.64, 0.9), (0.64, 0.1), (0.18, 0.64), (0.82, 0.64))],
    5: [_line((0.76, 0.1), (0.32, 0.1), (0.3, 0.45)), _arc(0.48, 0.65, 0.27, 0.25, -125, 150)],
    6: [_arc(0.56, 0.62, 0.31, 0.52, -70, -180), _arc(0.5, 0.68, 0.25, 0.22, 0, 360, 13)],
    7: [_line((0.2, 0.1), (0.8, 0.1), (0.42, 0.9))],
    8: [_arc(0.5, 0.3, 0.21, 0.2, 0, 360, 13), _arc(0.5, 0.7, 0.26, 0.21, 0, 360, 13)],
    9: [_arc(0.5, 0.32, 0.25, 0.22, 0, 360, 13), _line((0.75, 0.32), (0.7, 0.9))],
}


def _segments(polylines: list[np.ndarray]) -> np.ndarray:
    """[S, 2, 2] segment endpoints of some polylines."""
    return np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in polylines])


def render_digits(digit: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distorted renderings of ``digit`` as float32 [n, 8, 8, 1] in [0, 1] (4x4 block counts / 16)."""
    segments = (_segments(GLYPHS[digit]) - 0.5).astype(np.float32)  # centred
    angle = rng.uniform(-0.35, 0.35, n)
    scale = rng.uniform(0.65, 1.1, (n, 2))
    shear = rng.uniform(-0.35, 0.35, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    stretch = np.zeros((n, 2, 2))
    stretch[:, 0, 0], stretch[:, 0, 1], stretch[:, 1, 1] = scale[:, 0], shear * scale[:, 1], scale[:, 1]
    shift = 0.5 + rng.uniform(-0.14, 0.14, (n, 1, 1, 2))
    ends = (np.einsum("nij,skj->nski", rotation @ stretch, segments) + shift).astype(np.float32)
    thickness = rng.uniform(0.03, 0.075, (n, 1)).astype(np.float32)
    distance = np.concatenate([_distance(ends[i:i + 64]) for i in range(0, n, 64)])
    bitmap = (distance < thickness) ^ (rng.random(distance.shape) < NOISE)
    counts = bitmap.reshape(n, 8, 4, 8, 4).sum(axis=(2, 4))
    return (counts / 16.0).astype(np.float32)[..., None]


_GRID = ((np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1).reshape(-1, 2) + 0.5) / 32).astype(np.float32)


def _distance(ends: np.ndarray) -> np.ndarray:
    """[n, 1024] distance from each pixel centre of the 32x32 grid to the nearest of [n, S, 2, 2] segments."""
    a = ends[:, None, :, 0]  # [n, 1, S, 2]
    ab = (ends[:, :, 1] - ends[:, :, 0])[:, None]
    ap = _GRID[None, :, None] - a  # [n, 1024, S, 2]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    gap = ap - t[..., None] * ab
    return np.sqrt((gap * gap).sum(-1).min(-1))


def make_dataset(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A shuffled, class-balanced set of synthetic digits."""
    x = np.concatenate([render_digits(d, per_class, rng) for d in range(10)])
    y = np.repeat(np.arange(10), per_class)
    order = rng.permutation(len(y))
    return x[order], y[order]


# ---- training ---------------------------------------------------------------------------------


def _patches(x: np.ndarray) -> np.ndarray:
    """[N, 16, 9] 3x3 windows of the stride-2 SAME convolution (kernel order H, W, C as in OHWI)."""
    return mb.image_patches(x, 3, 3, stride=2, padding="SAME").reshape(len(x), 16, 9)


def _forward(params: dict, patches: np.ndarray) -> tuple[np.ndarray, ...]:
    conv = np.maximum(patches @ params["conv_w"].T + params["conv_b"], 0)  # [N, 16 positions, 16]
    flat = conv.reshape(len(conv), -1)  # NHWC flatten, as RESHAPE does
    hidden = np.maximum(flat @ params["fc1_w"].T + params["fc1_b"], 0)
    logits = hidden @ params["fc2_w"].T + params["fc2_b"]
    return conv, flat, hidden, logits


def train(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Adam on softmax cross-entropy; returns float32 parameters (conv weights as [16, 9])."""
    shapes = {"conv_w": (16, 9), "conv_b": (16,), "fc1_w": (64, 256), "fc1_b": (64,),
              "fc2_w": (10, 64), "fc2_b": (10,)}
    params = {k: (rng.standard_normal(s) * np.sqrt(2.0 / s[1]) if len(s) == 2 else np.zeros(s)).astype(np.float32)
              for k, s in shapes.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    patches = _patches(x)
    onehot = np.eye(10, dtype=np.float32)[y]
    step = 0
    for epoch in range(EPOCHS):
        lr = 3e-3 * 0.5 ** (epoch // 7)
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            batch = order[start:start + BATCH]
            p = patches[batch]
            conv, flat, hidden, logits = _forward(params, p)
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            d_logits = (prob - onehot[batch]) / len(batch)
            d_hidden = (d_logits @ params["fc2_w"]) * (hidden > 0)
            d_conv = (d_hidden @ params["fc1_w"]).reshape(conv.shape) * (conv > 0)
            grads = {"fc2_w": d_logits.T @ hidden, "fc2_b": d_logits.sum(0),
                     "fc1_w": d_hidden.T @ flat, "fc1_b": d_hidden.sum(0),
                     "conv_w": np.einsum("npf,npk->fk", d_conv, p), "conv_b": d_conv.sum((0, 1))}
            step += 1
            for k, g in grads.items():
                m, v = moments[k]
                m[...] = 0.9 * m + 0.1 * g
                v[...] = 0.999 * v + 0.001 * g * g
                update = lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
                params[k] = (params[k] - update).astype(np.float32)
    return params


def to_layers(params: dict[str, np.ndarray]) -> list:
    """The trained network as model_builder layers."""
    return [
        mb.Conv2D(params["conv_w"].reshape(16, 3, 3, 1), params["conv_b"], stride=2, activation="RELU", name="conv"),
        mb.Flatten(name="flatten"),
        mb.FullyConnected(params["fc1_w"], params["fc1_b"], activation="RELU", name="dense_1"),
        mb.FullyConnected(params["fc2_w"], params["fc2_b"], name="dense_2"),
        mb.Softmax(name="softmax"),
    ]


# ---- evaluation and output --------------------------------------------------------------------


def litert_accuracy(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` under LiteRT, one image per invoke (int8 input quantized)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    if inp["dtype"] == np.int8:
        scale, zero_point = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    correct = 0
    for image, label in zip(x, y):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])) == label)
    return correct / len(y)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "examples",
                        help="output directory (default: the repository's examples/)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(SEED)
    x_train, y_train = make_dataset(TRAIN_PER_CLASS, rng)
    x_test, y_test = make_dataset(TEST_PER_CLASS, rng)
    layers = to_layers(train(x_train, y_train, rng))
    numpy_accuracy = np.mean(mb.reference_forward(layers, x_test).argmax(1) == y_test)
    print(f"numpy float model: test accuracy {numpy_accuracy:.2%} ({len(y_test)} images)")

    args.out.mkdir(parents=True, exist_ok=True)
    for dtype in ("float32", "int8"):
        model = mb.sequential_model(layers, INPUT_SHAPE, dtype, calibration=x_train[:1000],
                                    description=f"tflite-cluster example: synthetic 8x8 digits, {dtype}")
        path = args.out / f"digits_{dtype}.tflite"
        path.write_bytes(model)
        print(f"{path}: {len(model):,} bytes, LiteRT test accuracy {litert_accuracy(model, x_test, y_test):.2%}")
    write_npz(args.out / "digits_test.npz", x=x_test, y=y_test.astype(np.int64))
    print(f"{args.out / 'digits_test.npz'}: {len(y_test)} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
