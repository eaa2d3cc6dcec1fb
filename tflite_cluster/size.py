"""Measured sizes: what a model costs on disk, zipped, ideally packed, and after Arm's Vela.

Public API::

    measure(model, *, vela=None) -> ModelSize     # every figure for one model (path or bytes)
    run_vela(model, config) -> VelaSize           # compile with Vela, read its summary CSV
    parse_size("300KB") -> 300000                 # bytes or units (KB/MB/GB, KiB/MiB/GiB)
    format_bytes(n) -> "1,234 B"

Figures, per model and per weight tensor:

* ``file``: bytes on disk (the tensor's stored bytes).
* ``deflate``: zlib level 9 (what ``zip -9`` stores) of the whole file; ``weights_deflate`` of
  the weight data alone (every weight tensor's bytes, in file order, as one stream); per
  tensor, of that tensor's bytes.
* ``palette``: the ideal packed size. Each weight tensor costs ``n x ceil(log2 d)`` bits (0 bits
  when ``d == 1``) plus its ``d`` distinct values at the dtype's size, where ``n`` is the number
  of stored values and ``d`` the number of distinct ones (bit patterns, so 0.0 and -0.0 differ);
  rounded up to whole bytes, and never more than the tensor's stored size (a packer would keep
  the raw bytes). Everything else in the file counts at its stored size.
* ``entropy``: the same accounting with the empirical entropy of the values (``n x H`` bits)
  in place of ``ceil(log2 d)`` bits: the bound an entropy coder could reach.
* ``vela`` (only when a Vela accelerator config is given): Vela's ``total_original_weights``
  and ``total_npu_encoded_weights`` from its summary CSV, and the number of ops Vela left on
  the CPU (every op of its output model other than the ``ethos-u`` custom op; the 5.2 CSV does
  not carry that count).

The weight tensors are the candidate weight tensors :func:`tflite_cluster.model.parse` finds
(the constant weight operands of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ... whatever their
dtype; one entry per buffer). Tensors without an array form (strings) count at stored size.

Nothing here prints; errors are the typed errors of :mod:`errors`.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from . import model as tfl
from .errors import ConfigError, InvalidModelError, MissingExtraError, UnsupportedModelError, VelaError
from .fileio import read_bytes

#: accelerator configs Vela 5.2 accepts for --accelerator-config.
VELA_CONFIGS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                "ethos-u85-2048")
VELA_CUSTOM_OP = "CUSTOM:ethos-u"
VELA_TIMEOUT = 900.0  # seconds


@dataclass(frozen=True)
class TensorSize:
    name: str
    subgraph: int
    tensor: int
    buffer: int
    op: str
    dtype: str
    shape: list
    values: int  # stored values (elements, or the stored values of a sparse tensor)
    distinct: int | None  # None when the dtype has no array form
    file: int  # stored bytes
    deflate: int
    palette: int
    entropy: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VelaSize:
    config: str  # accelerator config, e.g. ethos-u55-128
    system_config: str  # the system config Vela used (from its CSV)
    original_weights: int  # total_original_weights
    encoded_weights: int  # total_npu_encoded_weights
    cpu_ops: int  # ops of the output model other than the ethos-u custom op
    npu_ops: int  # ethos-u custom ops (one per NPU subgraph Vela cut)

    @property
    def ratio(self) -> float | None:
        return self.encoded_weights / self.original_weights if self.original_weights else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


@dataclass(frozen=True)
class ModelSize:
    model: str
    file: int
    deflate: int
    weights: int  # stored bytes of all weight tensors
    weights_deflate: int
    palette: int
    entropy: int
    vela: VelaSize | None
    tensors: tuple[TensorSize, ...]

    def metric(self, name: str) -> int:
        """One figure by name: file, deflate, palette, entropy or vela (encoded weight bytes)."""
        if name == "vela":
            if self.vela is None:
                raise ConfigError("metric vela needs a Vela accelerator config")
            return self.vela.encoded_weights
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {"model": self.model, "file": self.file, "deflate": self.deflate,
                "weights": self.weights, "weights_deflate": self.weights_deflate,
                "palette": self.palette, "entropy": self.entropy,
                "vela": self.vela.to_dict() if self.vela else None,
                "tensors": [t.to_dict() for t in self.tensors]}


METRICS = ("file", "deflate", "palette", "entropy", "vela")


# --- sizes --------------------------------------------------------------------------------

def deflate_size(data) -> int:
    """Bytes after zlib level 9 (header and checksum included)."""
    return len(zlib.compress(bytes(data), 9))


def _tensor_size(data, w: tfl.WeightTensor) -> TensorSize:
    raw = bytes(data[w.data_offset:w.data_offset + w.nbytes])
    common = dict(name=w.name, subgraph=w.subgraph, tensor=w.tensor, buffer=w.buffer,
                  op=w.uses[0].op_type, dtype=w.dtype, shape=list(w.shape), file=w.nbytes,
                  deflate=deflate_size(raw))
    try:
        itemsize = w.numpy_dtype.itemsize
    except UnsupportedModelError:  # no array form (string, resource): stored size
        return TensorSize(values=w.nbytes, distinct=None, palette=w.nbytes, entropy=w.nbytes, **common)
    n = w.nbytes // itemsize
    # Distinct bit patterns: the values viewed as unsigned integers of the same width.
    bits_view = np.frombuffer(raw, dtype=f"<u{itemsize}", count=n)
    _, counts = np.unique(bits_view, return_counts=True)
    d = int(counts.size)
    table = d * itemsize
    index_bits = n * math.ceil(math.log2(d)) if d > 1 else 0
    p = counts / max(n, 1)
    entropy_bits = float(-(p * np.log2(p)).sum()) * n if d > 1 else 0.0
    palette = min(math.ceil(index_bits / 8) + table, w.nbytes)
    entropy = min(math.ceil(entropy_bits / 8) + table, w.nbytes)
    return TensorSize(values=n, distinct=d, palette=palette, entropy=entropy, **common)


def measure(model, *, vela: str | None = None, vela_timeout: float = VELA_TIMEOUT) -> ModelSize:
    """Every size figure of ``model`` (a path or the model's bytes); Vela's with ``vela``."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, label = bytes(model), "<bytes>"
    else:
        data, label = read_bytes(model), str(model)
    info = tfl.parse(data, label)
    tensors = tuple(_tensor_size(data, w) for w in info.weights)
    stored = sum(t.file for t in tensors)
    weight_stream = b"".join(bytes(data[w.data_offset:w.data_offset + w.nbytes])
                             for w in sorted(info.weights, key=lambda w: w.data_offset))
    rest = len(data) - stored
    vela_size = run_vela(model if label != "<bytes>" else data, vela, timeout=vela_timeout) \
        if vela else None
    return ModelSize(model=label, file=len(data), deflate=deflate_size(data), weights=stored,
                     weights_deflate=deflate_size(weight_stream) if weight_stream else 0,
                     palette=rest + sum(t.palette for t in tensors),
                     entropy=rest + sum(t.entropy for t in tensors), vela=vela_size, tensors=tensors)


# --- Vela ---------------------------------------------------------------------------------

def vela_command() -> list[str]:
    """How to run Vela: ``python -m ethosu.vela`` under this interpreter, else the ``vela``
    script next to it. :class:`MissingExtraError` when ethos-u-vela is not installed."""
    try:
        found = importlib.util.find_spec("ethosu.vela") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return [sys.executable, "-m", "ethosu.vela"]
    script = Path(sys.executable).with_name("vela")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    raise MissingExtraError("ethos-u-vela", "vela")


def check_vela_config(config: str) -> str:
    if config not in VELA_CONFIGS:
        raise ConfigError(f"Vela accelerator config {config!r} is not one of {', '.join(VELA_CONFIGS)}")
    return config


def _vela_reason(output: str) -> str:
    """The most telling line of Vela's console output, for an error message."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error", ln, re.IGNORECASE):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def run_vela(model, config: str, *, timeout: float = VELA_TIMEOUT, label: str | None = None) -> VelaSize:
    """Compile ``model`` (path or bytes) with ``vela --accelerator-config CONFIG --optimise Size``
    into a temporary folder and read its summary CSV and output model. ``label`` names the model
    in errors (default: its path, or ``<bytes>``)."""
    check_vela_config(config)
    command = vela_command()
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, stem = bytes(model), Path(label).stem if label else "model"
        label = label or "<bytes>"
    else:
        data, label, stem = read_bytes(model), label or str(model), Path(model).stem
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"
    with tempfile.TemporaryDirectory(prefix="tflite-cluster-vela-") as tmp:
        src = Path(tmp) / f"{stem}.tflite"
        src.write_bytes(data)
        out_dir = Path(tmp) / "out"
        args = command + [str(src), "--accelerator-config", config, "--optimise", "Size",
                          "--output-dir", str(out_dir)]
        try:
            proc = subprocess.run(args, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise VelaError(label, f"Vela ({config}) did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise VelaError(label, f"cannot run Vela: {exc.strerror or exc}") from None
        text = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise VelaError(label, f"Vela ({config}) failed (exit {proc.returncode}): {_vela_reason(text)}")
        csvs = sorted(out_dir.glob(f"{stem}_summary_*.csv"))
        if len(csvs) != 1:
            raise VelaError(label, f"Vela ({config}) wrote {len(csvs)} summary CSV files, expected 1")
        system_config = csvs[0].stem[len(stem) + len("_summary_"):]
        original, encoded = _read_summary(csvs[0], label)
        out_model = out_dir / f"{stem}_vela.tflite"
        if not out_model.is_file():
            raise VelaError(label, f"Vela ({config}) wrote no output model")
        try:
            ops = tfl.operators(out_model.read_bytes(), f"{label} (Vela output)")
        except InvalidModelError as exc:
            raise VelaError(label, f"cannot read Vela's output model: {exc.message}") from None
    npu = sum(1 for op in ops if op.op_type == VELA_CUSTOM_OP)
    return VelaSize(config=config, system_config=system_config, original_weights=original,
                    encoded_weights=encoded, cpu_ops=len(ops) - npu, npu_ops=npu)


def _read_summary(path: Path, label: str) -> tuple[int, int]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise VelaError(label, f"cannot read Vela's summary CSV: {exc}") from None
    if len(rows) != 1:
        raise VelaError(label, f"Vela's summary CSV has {len(rows)} rows, expected 1")
    out = []
    for key in ("total_original_weights", "total_npu_encoded_weights"):
        value = rows[0].get(key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise VelaError(label, f"Vela's summary CSV has no number in column {key} "
                                   f"(got {value!r})") from None
        if not number.is_integer() or number < 0:
            raise VelaError(label, f"Vela's summary CSV column {key} is {value!r}, not a byte count")
        out.append(int(number))
    return out[0], out[1]


# --- units --------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text) -> int:
    """Bytes from ``text``: a whole number of bytes (``300000``), or a number with a unit,
    case-insensitive: ``B``, decimal ``KB``/``MB``/``GB``/``TB`` (``300KB`` = 300,000) or binary
    ``KiB``/``MiB``/``GiB``/``TiB`` (``1.5MiB`` = 1,572,864). A fractional result is rounded
    down to whole bytes. Anything else raises :class:`ConfigError`."""
    if isinstance(text, bool):
        raise ConfigError(f"size {text!r} is not a number of bytes")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size {text} is negative")
        return text
    if isinstance(text, float):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"size {text!r} is not a number of bytes")
        return int(text)
    if not isinstance(text, str):
        raise ConfigError(f"size {text!r} is not a number of bytes")
    m = _SIZE_RE.fullmatch(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"size {text!r} is not bytes or a number with a unit "
                          f"(B, KB, MB, GB, KiB, MiB, GiB; e.g. 300KB, 1.5MiB)")
    try:
        value = Decimal(m.group(1)) * _UNITS[m.group(2).lower()]
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ConfigError(f"size {text!r} is not a number") from None
    return int(value)  # Decimal -> int truncates toward zero (it is >= 0)


def format_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"
