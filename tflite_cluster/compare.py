"""Run two .tflite models on the same inputs with LiteRT and compare their outputs.

Public API::

    load_inputs(path, model=None) -> dict | list      # read an .npz of model inputs
    random_inputs(model, samples=32, seed=0) -> list  # seeded inputs in a documented range
    Runner(model, name=None, num_threads=None)        # one prepared interpreter, reusable
    run_model(model_or_runner, inputs) -> list        # float64 outputs, dequantized
    compare(a, b, inputs=None, samples=32, seed=0) -> CompareReport
    format_compare(report) -> str                     # a table for people
    sqnr_db(a, b) -> float                            # SQNR of b against a, in dB

Samples.  Every input array carries samples on its first axis.  A model input whose first
dimension is 1 (a batch of one) is fed one sample per ``invoke``: a sample has the tensor's
shape without that leading 1.  Any other input shape (no batch axis, or a fixed batch larger
than 1) is fed whole, so one sample has the tensor's full shape.  Each returned output array
has the samples on its first axis; a leading 1 of the output tensor is dropped when every
input was batched that way (``[1, 10]`` outputs give ``[N, 10]``).

Types.  A float array given for an integer input with a scale is quantized with the input
tensor's scale and zero point (``round(x / scale) + zero_point``, half away from zero as
TFLite's QUANTIZE does, clipped to the dtype's range); an integer array for such an input is
taken as raw codes.  Integer outputs with a scale are dequantized, so every output comes back
as float64 in real units and two models may differ in their I/O types.

Streaming models.  A model that keeps state between invocations (resource variables:
VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE ops, or variable tensors) is run as a stream:
each sample is one step, in order.  The input arrays are either ``[steps, *sample]`` (one
sequence) or ``[sequences, steps, *sample]`` (several independent sequences).  The state is
reset at the start of every sequence by running it on a fresh interpreter:
``Interpreter.reset_all_variables()`` clears variable tensors but not resource variables.
So every ``Runner.run`` call, and so every ``compare``, starts from the initial state and is
deterministic.

Random inputs (``random_inputs``), drawn with ``numpy.random.default_rng(seed)``, input by
input in model order, ``samples`` samples each (one sequence for streaming models):

* float inputs: uniform in [0, 1) (the range of normalised pixels);
* quantized integer inputs (scale != 0): integer codes uniform over the dtype's full range,
  that is uniform over the float range the converter calibrated; returned as float32 real
  values ``(code - zero_point) * scale``, which quantize back to exactly those codes, so a
  float model compared against a quantized one sees the same real inputs;
* 8-bit integer inputs without a scale (raw bytes, e.g. pixels): uniform over the full range;
* wider integer inputs without a scale (token ids, indices): uniform integers in [0, 16);
* bool inputs: fair random booleans.

In ``compare`` a float input of A whose counterpart in B is quantized takes B's range.

JSON.  ``to_dict`` results are JSON-safe: non-finite floats are written as the strings
``"inf"``, ``"-inf"`` and ``"nan"`` (``json.dumps(..., allow_nan=False)`` works).

LiteRT is an optional dependency (the ``litert`` extra); it is imported when first needed and
its absence raises :class:`~tflite_cluster.errors.MissingExtraError`.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from . import model as tfl
from .errors import InputFileError, InvalidModelError, MissingExtraError, UnsupportedModelError

__all__ = [
    "CompareReport",
    "OutputComparison",
    "Runner",
    "TensorInfo",
    "compare",
    "format_compare",
    "load_inputs",
    "random_inputs",
    "run_model",
    "sqnr_db",
]

ModelLike = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
InputsLike = Union[Mapping[str, Any], Sequence[Any], np.ndarray, str, "os.PathLike[str]"]

#: Integers drawn for integer inputs wider than 8 bits that carry no scale: [0, SMALL_INT_HIGH).
SMALL_INT_HIGH = 16


# --------------------------------------------------------------------------------------------
# Loading models and the interpreter


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingExtraError("ai-edge-litert", "litert") from exc
    return Interpreter


def _read_model(model: ModelLike, default_name: str) -> tuple[bytes, str]:
    """Return (bytes, display name) for model bytes or a path."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), default_name
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        try:
            return path.read_bytes(), str(model)
        except OSError as exc:
            raise InputFileError(str(model), f"cannot read model: {exc.strerror or exc}") from exc
    raise TypeError(f"model must be bytes or a path, not {type(model).__name__}")


def _is_stateful(data: bytes, name: str) -> bool:
    """True when the model keeps state between invocations (resource or variable tensors)."""
    return tfl.is_stateful(data, name)


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the interpreter sees it."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def batched(self) -> bool:
        """The tensor's first dimension is a batch of one, fed one sample per invoke."""
        return len(self.shape) >= 1 and self.shape[0] == 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.batched else self.shape

    @property
    def quantized(self) -> bool:
        return self.dtype.kind in "iu" and self.scale != 0.0

    @classmethod
    def _from_details(cls, details: Mapping[str, Any], model_name: str) -> "TensorInfo":
        params = details.get("quantization_parameters") or {}
        scales = np.asarray(params.get("scales", []))
        zero_points = np.asarray(params.get("zero_points", []))
        if scales.size > 1:
            raise UnsupportedModelError(
                model_name, f"tensor {details['name']!r} is quantized per channel; "
                "per-channel model inputs and outputs are not supported")
        scale, zero_point = details.get("quantization", (0.0, 0))
        if scales.size == 1:
            scale = float(scales[0])
            zero_point = int(zero_points[0]) if zero_points.size else 0
        return cls(
            name=str(details["name"]),
            index=int(details["index"]),
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


class Runner:
    """A prepared LiteRT interpreter for one model, reusable across many ``run`` calls.

    ``Runner(model)`` takes model bytes or a path.  ``inputs`` / ``outputs`` describe the
    model's tensors (:class:`TensorInfo`, in model order); ``stateful`` tells whether the
    model is run as a stream (see the module documentation).  ``run(inputs)`` returns one
    float64 array per output.
    """

    def __init__(self, model: ModelLike, *, name: str | None = None,
                 num_threads: int | None = None) -> None:
        data, default_name = _read_model(model, "model")
        self.name = name if name is not None else default_name
        self.model_bytes = data
        self.num_threads = num_threads
        self._interpreter_cls = _interpreter_class()
        self._interpreter = self._new_interpreter()  # LiteRT verifies the FlatBuffer first
        self.stateful = _is_stateful(data, self.name)
        self._fresh = True
        interp = self._interpreter
        self.inputs = tuple(TensorInfo._from_details(d, self.name)
                            for d in interp.get_input_details())
        self.outputs = tuple(TensorInfo._from_details(d, self.name)
                             for d in interp.get_output_details())
        if not self.inputs:
            raise UnsupportedModelError(self.name, "the model has no inputs")
        self._aliases = self._signature_aliases(interp)

    def __repr__(self) -> str:
        return (f"Runner({self.name!r}, inputs={[i.name for i in self.inputs]}, "
                f"outputs={[o.name for o in self.outputs]}, stateful={self.stateful})")

    def _new_interpreter(self):
        try:
            interp = self._interpreter_cls(model_content=self.model_bytes,
                                           num_threads=self.num_threads)
        except (ValueError, RuntimeError) as exc:
            raise InvalidModelError(self.name, f"LiteRT cannot load the model: {exc}") from exc
        try:
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedModelError(
                self.name, f"LiteRT cannot prepare the model: {exc}") from exc
        return interp

    def _signature_aliases(self, interp) -> dict[str, int]:
        """Signature input names (e.g. 'pixels') -> input position, for single-signature models."""
        try:
            signatures = interp.get_signature_list()
        except Exception:  # noqa: BLE001 - signatures are only a naming convenience
            return {}
        if len(signatures) != 1:
            return {}
        (key,) = signatures
        try:
            details = interp.get_signature_runner(key).get_input_details()
        except Exception:  # noqa: BLE001
            return {}
        by_index = {t.index: pos for pos, t in enumerate(self.inputs)}
        aliases = {}
        for alias, d in details.items():
            pos = by_index.get(int(d["index"]))
            if pos is not None:
                aliases[alias] = pos
        return aliases

    # -- inputs --------------------------------------------------------------------------

    def bind(self, inputs: InputsLike, source: str = "given arrays") -> list[np.ndarray]:
        """Validate ``inputs`` against this model; return arrays in model input order.

        ``inputs`` is an .npz path, a dict keyed by input tensor name, signature input name or
        ``arr_<i>``, a sequence in input order, or one array for a one-input model.  Errors
        raise :class:`InputFileError` naming ``source`` (the .npz path when there is one).
        """
        if isinstance(inputs, (str, os.PathLike)):
            source = str(inputs)
            inputs = load_inputs(inputs)
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            arrays = self._by_key(inputs, source)
        elif isinstance(inputs, Sequence):
            if len(inputs) != len(self.inputs):
                raise InputFileError(source, f"{len(inputs)} input array(s) for "
                                     f"{len(self.inputs)} model input(s) of {self.name}")
            arrays = list(inputs)
        else:
            raise TypeError(f"inputs must be a path, mapping, sequence or array, "
                            f"not {type(inputs).__name__}")
        arrays = [np.asarray(a) for a in arrays]
        self._lead_shape(arrays, source)
        return arrays

    def _prepare(self, inputs: InputsLike, source: str
                 ) -> tuple[list[np.ndarray], tuple[int, ...], str]:
        if isinstance(inputs, (str, os.PathLike)):
            source = str(inputs)
        arrays = self.bind(inputs, source)
        return arrays, self._lead_shape(arrays, source), source

    def _by_key(self, inputs: Mapping[str, Any], source: str) -> list[np.ndarray]:
        positions: dict[int, str] = {}
        for key in inputs:
            pos = self._position(key)
            if pos is None:
                raise InputFileError(source, f"key {key!r} names no input of {self.name}; "
                                     f"expected {self._expected_keys()}")
            if pos in positions:
                raise InputFileError(source, f"keys {positions[pos]!r} and {key!r} both name "
                                     f"input {pos} ({self.inputs[pos].name!r})")
            positions[pos] = key
        missing = [i for i in range(len(self.inputs)) if i not in positions]
        if missing:
            names = ", ".join(repr(self.inputs[i].name) for i in missing)
            raise InputFileError(source, f"no array for input(s) {names} of {self.name}; "
                                 f"expected {self._expected_keys()}")
        return [inputs[positions[i]] for i in range(len(self.inputs))]

    def _position(self, key: str) -> int | None:
        for pos, info in enumerate(self.inputs):
            if key == info.name:
                return pos
        if key in self._aliases:
            return self._aliases[key]
        if key.startswith("arr_") and key[4:].isdigit():
            pos = int(key[4:])
            if pos < len(self.inputs):
                return pos
        return None

    def _expected_keys(self) -> str:
        names = [repr(i.name) for i in self.inputs]
        positional = [f"'arr_{i}'" for i in range(len(self.inputs))]
        return f"{', '.join(names)} (or {', '.join(positional)})"

    def _lead_shape(self, arrays: Sequence[np.ndarray], source: str) -> tuple[int, ...]:
        """The samples' leading shape: (steps,) or, for streaming models, (sequences, steps)."""
        lead: tuple[int, ...] | None = None
        first = None
        for info, arr in zip(self.inputs, arrays):
            sample = info.sample_shape
            nd = len(sample)
            if arr.ndim == nd + 1 and arr.shape[1:] == sample:
                this = arr.shape[:1]
            elif self.stateful and arr.ndim == nd + 2 and arr.shape[2:] == sample:
                this = arr.shape[:2]
            else:
                want = f"[samples, {', '.join(map(str, sample))}]" if sample else "[samples]"
                if self.stateful:
                    want += " or [sequences, steps" + "".join(f", {d}" for d in sample) + "]"
                raise InputFileError(
                    source, f"input {info.name!r} of {self.name} has shape {list(arr.shape)}; "
                    f"expected {want} (the tensor's shape is {list(info.shape)})")
            if lead is None:
                lead, first = this, info.name
            elif this != lead:
                raise InputFileError(
                    source, f"input {info.name!r} has samples {list(this)} but {first!r} has "
                    f"{list(lead)}: every input needs the same number of samples")
        assert lead is not None  # at least one input, checked in __init__
        if math.prod(lead) == 0:
            raise InputFileError(source, "the inputs hold no samples")
        return lead

    # -- running -------------------------------------------------------------------------

    def run(self, inputs: InputsLike, *, source: str = "given arrays") -> list[np.ndarray]:
        """Run every sample; return one float64 array per output (dequantized).

        Each output array has shape ``lead + output shape`` where ``lead`` is the inputs'
        leading sample shape (``(samples,)`` or ``(sequences, steps)``) and a leading 1 of the
        output tensor is dropped when every input is batched.
        """
        arrays, lead, source = self._prepare(inputs, source)
        converted = [_to_tensor_dtype(a, info, source)
                     for a, info in zip(arrays, self.inputs)]
        batched = all(info.batched for info in self.inputs)
        flat = [a.reshape((-1,) + info.sample_shape) for a, info in zip(converted, self.inputs)]
        steps_per_sequence = lead[-1]
        n = math.prod(lead)
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        interp = self._interpreter
        for i in range(n):
            if self.stateful and i % steps_per_sequence == 0:
                interp = self._fresh_interpreter()
            for info, arr in zip(self.inputs, flat):
                sample = arr[i]
                interp.set_tensor(info.index, sample.reshape(info.shape) if info.batched
                                  else sample)
            try:
                interp.invoke()
            except RuntimeError as exc:
                raise UnsupportedModelError(self.name, f"invoke failed: {exc}") from exc
            self._fresh = False
            for out, store in zip(self.outputs, results):
                store.append(np.array(interp.get_tensor(out.index), copy=True))
        outputs = []
        for out, store in zip(self.outputs, results):
            try:
                stacked = np.stack(store)
            except ValueError as exc:
                raise UnsupportedModelError(
                    self.name, f"output {out.name!r} changes shape between samples") from exc
            if batched and stacked.ndim >= 2 and stacked.shape[1] == 1:
                stacked = stacked[:, 0]
            stacked = stacked.reshape(lead + stacked.shape[1:])
            outputs.append(_dequantize(stacked, out))
        return outputs

    def _fresh_interpreter(self):
        """An interpreter in its initial state (the current one if it was never invoked)."""
        if not self._fresh:
            self._interpreter = self._new_interpreter()
            self._fresh = True
        return self._interpreter


# --------------------------------------------------------------------------------------------
# Type conversion


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _to_tensor_dtype(arr: np.ndarray, info: TensorInfo, source: str) -> np.ndarray:
    """Convert one input array to the tensor's dtype (quantizing floats for quantized ints)."""
    dtype = info.dtype
    where = f"input {info.name!r}"
    if arr.dtype == dtype:
        return arr
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise InputFileError(source, f"{where}: unsupported array dtype {arr.dtype}")
    if dtype.kind == "f":
        return arr.astype(dtype)
    if dtype.kind == "b":
        if kind != "b" and not np.isin(arr, (0, 1)).all():
            raise InputFileError(source, f"{where} is bool; values other than 0 and 1 given")
        return arr.astype(bool)
    if dtype.kind not in "iu":
        raise UnsupportedModelError(source, f"{where} has dtype {dtype}, which is not supported")
    limits = np.iinfo(dtype)
    if kind == "f":
        if not np.isfinite(arr).all():
            raise InputFileError(source, f"{where}: non-finite values")
        if info.quantized:
            q = _round_half_away(arr.astype(np.float32) / np.float32(info.scale))
            q = q.astype(np.float64) + info.zero_point
            return np.clip(q, limits.min, limits.max).astype(dtype)
        if not (arr == np.round(arr)).all():
            raise InputFileError(source, f"{where} is {dtype} without a scale; "
                                 "non-integer values given")
    if arr.size and (arr.min() < limits.min or arr.max() > limits.max):
        raise InputFileError(source, f"{where} is {dtype}; values outside "
                             f"[{limits.min}, {limits.max}] given")
    return arr.astype(dtype)


def _dequantize(arr: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.quantized:
        return (arr.astype(np.float64) - info.zero_point) * info.scale
    return arr.astype(np.float64)


# --------------------------------------------------------------------------------------------
# Inputs


def load_inputs(path: str | os.PathLike[str], model: ModelLike | Runner | None = None
                ) -> dict[str, np.ndarray] | list[np.ndarray]:
    """Read model inputs from an .npz file.

    The file holds one array per model input, keyed by input name, or ``arr_0``, ``arr_1``...
    in input order (what ``np.savez(path, a, b)`` writes); the first axis of every array is
    the samples.  Returns a list for positional files, a dict for named ones.  With ``model``
    the keys and shapes are checked against it and a list in its input order is returned.
    Raises :class:`InputFileError` naming the file and the problem.
    """
    name = str(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputFileError(name, "no such file") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputFileError(name, f"not a readable .npz file: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputFileError(name, "a single .npy array, not an .npz archive of inputs")
    with npz:
        try:
            arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise InputFileError(name, f"cannot read an array: {exc}") from exc
    if not arrays:
        raise InputFileError(name, "the archive holds no arrays")
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise InputFileError(name, f"array {key!r} has dtype {arr.dtype}; "
                                 "expected numbers or bools")
        if arr.ndim == 0:
            raise InputFileError(name, f"array {key!r} is a scalar; the first axis must be "
                                 "the samples")
    counts = {key: arr.shape[0] for key, arr in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InputFileError(name, f"arrays differ in their number of samples: {counts}")
    if next(iter(counts.values())) == 0:
        raise InputFileError(name, "the arrays hold no samples")
    positional = [k for k in arrays if k.startswith("arr_") and k[4:].isdigit()]
    result: dict[str, np.ndarray] | list[np.ndarray]
    if positional and len(positional) == len(arrays):
        order = sorted(int(k[4:]) for k in positional)
        if order != list(range(len(order))):
            raise InputFileError(name, f"positional keys must be arr_0..arr_{len(order) - 1}, "
                                 f"got {sorted(positional)}")
        result = [arrays[f"arr_{i}"] for i in order]
    elif positional:
        raise InputFileError(name, f"mixes positional keys {sorted(positional)} with named "
                             f"keys {sorted(set(arrays) - set(positional))}")
    else:
        result = arrays
    if model is None:
        return result
    runner = model if isinstance(model, Runner) else Runner(model)
    return runner.bind(result, name)


def _random_arrays(specs: Sequence[TensorInfo], samples: int, seed: int, model_name: str
                   ) -> list[np.ndarray]:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    rng = np.random.default_rng(seed)
    arrays = []
    for info in specs:
        shape = (samples,) + info.sample_shape
        dtype = info.dtype
        if info.quantized:
            limits = np.iinfo(dtype)
            codes = rng.integers(limits.min, limits.max, size=shape, endpoint=True)
            real = (codes.astype(np.float64) - info.zero_point) * info.scale
            arrays.append(real.astype(np.float32))
        elif dtype.kind == "f":
            draw = np.float64 if dtype == np.float64 else np.float32
            arrays.append(rng.random(shape, dtype=draw).astype(dtype, copy=False))
        elif dtype.kind in "iu" and dtype.itemsize == 1:
            limits = np.iinfo(dtype)
            arrays.append(rng.integers(limits.min, limits.max, size=shape, endpoint=True)
                          .astype(dtype))
        elif dtype.kind in "iu":
            arrays.append(rng.integers(0, SMALL_INT_HIGH, size=shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.random(shape) < 0.5)
        else:
            raise UnsupportedModelError(
                model_name, f"input {info.name!r} has dtype {dtype}; cannot draw random values")
    return arrays


def random_inputs(model: ModelLike | Runner, samples: int = 32, seed: int = 0
                  ) -> list[np.ndarray]:
    """Seeded random inputs for ``model``, one array per input in model order.

    Each array has shape ``[samples, *sample_shape]``; the ranges are listed in the module
    documentation (floats uniform in [0, 1), quantized inputs uniform over their calibrated
    range as float32 real values, ...).  For streaming models the samples form one sequence.
    """
    runner = model if isinstance(model, Runner) else Runner(model)
    return _random_arrays(runner.inputs, samples, seed, runner.name)


# --------------------------------------------------------------------------------------------
# Running and comparing


def run_model(model: ModelLike | Runner, inputs: InputsLike, *, source: str = "given arrays",
              num_threads: int | None = None) -> list[np.ndarray]:
    """Run ``model`` (bytes, path or a prepared :class:`Runner`) on every sample of ``inputs``.

    Returns one float64 array per output, dequantized; see :meth:`Runner.run`.
    """
    runner = model if isinstance(model, Runner) else Runner(model, num_threads=num_threads)
    return runner.run(inputs, source=source)


def json_float(x: float | None, digits: int | None = None) -> float | str | None:
    """A float for JSON: non-finite values as the strings "inf", "-inf", "nan"."""
    if x is None:
        return None
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x if digits is None else round(x, digits)


@dataclass(frozen=True)
class OutputComparison:
    """How output ``index`` of model B differs from the same output of model A."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    sqnr_db: float
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "shape": list(self.shape),
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "sqnr_db": json_float(self.sqnr_db),
            "max_abs_diff": json_float(self.max_abs_diff),
            "mean_abs_diff": json_float(self.mean_abs_diff),
            "top1_agreement": json_float(self.top1_agreement),
        }


@dataclass(frozen=True)
class CompareReport:
    """The result of :func:`compare`: one :class:`OutputComparison` per output."""

    model_a: str
    model_b: str
    inputs: str
    samples: int
    stateful: bool
    outputs: tuple[OutputComparison, ...]

    @property
    def min_sqnr_db(self) -> float:
        """The worst SQNR over the outputs (NaN if any output's SQNR is NaN)."""
        values = [o.sqnr_db for o in self.outputs]
        if any(math.isnan(v) for v in values):
            return math.nan
        return min(values, default=math.inf)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "inputs": self.inputs,
            "samples": self.samples,
            "stateful": self.stateful,
            "min_sqnr_db": json_float(self.min_sqnr_db),
            "outputs": [o.to_dict() for o in self.outputs],
        }


def sqnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """SQNR of ``b`` against reference ``a`` in dB: 10 log10(sum a^2 / sum (a - b)^2).

    ``inf`` when they are identical, ``-inf`` when ``a`` is all zeros and ``b`` is not, NaN
    when either holds NaN or infinities.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        signal = float(np.sum(a * a))
        error = float(np.sum((a - b) ** 2))
    if math.isnan(signal) or math.isnan(error) or math.isinf(signal) or math.isinf(error):
        return math.nan
    if error == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / error)


def _top1_agreement(a: np.ndarray, b: np.ndarray, info: TensorInfo) -> float | None:
    shape = info.shape
    classifier = (len(shape) == 1 and shape[0] > 1) or (
        len(shape) == 2 and shape[0] == 1 and shape[1] > 1)
    if not classifier:
        return None
    classes = shape[-1]
    top_a = np.argmax(a.reshape(-1, classes), axis=-1)
    top_b = np.argmax(b.reshape(-1, classes), axis=-1)
    return float(np.mean(top_a == top_b))


def _check_pair(ra: Runner, rb: Runner) -> None:
    """B must have A's inputs (sample shapes) and outputs (shapes), in the same order."""
    if len(ra.inputs) != len(rb.inputs):
        raise InputFileError(rb.name, f"has {len(rb.inputs)} input(s); "
                             f"{ra.name} has {len(ra.inputs)}")
    for i, (ia, ib) in enumerate(zip(ra.inputs, rb.inputs)):
        if ia.sample_shape != ib.sample_shape:
            raise InputFileError(rb.name, f"input {i} ({ib.name!r}) has shape {list(ib.shape)}; "
                                 f"{ra.name} has {list(ia.shape)}")
    if len(ra.outputs) != len(rb.outputs):
        raise InputFileError(rb.name, f"has {len(rb.outputs)} output(s); "
                             f"{ra.name} has {len(ra.outputs)}")
    for i, (oa, ob) in enumerate(zip(ra.outputs, rb.outputs)):
        if oa.shape != ob.shape:
            raise InputFileError(rb.name, f"output {i} ({ob.name!r}) has shape "
                                 f"{list(ob.shape)}; {ra.name} has {list(oa.shape)}")
    if ra.stateful != rb.stateful:
        raise InputFileError(rb.name, "one model keeps state between invocations and the "
                             "other does not")


def _random_specs(ra: Runner, rb: Runner) -> list[TensorInfo]:
    """A's inputs, except that a float input of A takes B's range when B's is quantized."""
    specs = []
    for ia, ib in zip(ra.inputs, rb.inputs):
        if ia.dtype.kind == "f" and ib.quantized:
            specs.append(ib)
        else:
            specs.append(ia)
    return specs


def compare(a: ModelLike | Runner, b: ModelLike | Runner, inputs: InputsLike | None = None,
            samples: int = 32, seed: int = 0, *, num_threads: int | None = None
            ) -> CompareReport:
    """Run models A (reference) and B on the same inputs and compare every output.

    ``a``/``b`` are model bytes, paths or prepared :class:`Runner` objects.  ``inputs`` is
    an .npz path, a dict or a sequence of arrays (see :meth:`Runner.bind`); ``None`` draws
    ``samples`` random samples with ``seed`` (see :func:`random_inputs`).  Outputs are matched
    by order; B must have A's input and output shapes, else :class:`InputFileError` naming B.
    """
    ra = a if isinstance(a, Runner) else Runner(
        a, name=None if isinstance(a, (str, os.PathLike)) else "model A",
        num_threads=num_threads)
    rb = b if isinstance(b, Runner) else Runner(
        b, name=None if isinstance(b, (str, os.PathLike)) else "model B",
        num_threads=num_threads)
    _check_pair(ra, rb)
    if inputs is None:
        inputs = _random_arrays(_random_specs(ra, rb), samples, seed, ra.name)
        source = f"random (seed {seed})"
    else:
        source = "given arrays"
    arrays, lead, source = ra._prepare(inputs, source)
    outs_a = ra.run(arrays, source=source)
    outs_b = rb.run(arrays, source=source)
    n = math.prod(lead)
    records = []
    for i, (oa, ob, ya, yb) in enumerate(zip(ra.outputs, rb.outputs, outs_a, outs_b)):
        with np.errstate(all="ignore"):
            diff = np.abs(ya - yb)
            max_abs = float(np.max(diff)) if diff.size else 0.0
            mean_abs = float(np.mean(diff)) if diff.size else 0.0
        records.append(OutputComparison(
            index=i,
            name=oa.name,
            shape=oa.shape,
            dtype_a=oa.dtype.name,
            dtype_b=ob.dtype.name,
            sqnr_db=sqnr_db(ya, yb),
            max_abs_diff=max_abs,
            mean_abs_diff=mean_abs,
            top1_agreement=_top1_agreement(ya, yb, oa),
        ))
    return CompareReport(model_a=ra.name, model_b=rb.name, inputs=source, samples=n,
                         stateful=ra.stateful, outputs=tuple(records))


# --------------------------------------------------------------------------------------------
# Rendering


def format_db(x: float, digits: int = 2) -> str:
    """dB for people: ``nan``, ``inf``, ``-inf`` or a fixed number of decimals."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _fmt_num(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return format_db(x)
    return f"{x:.4g}"


def format_compare(report: CompareReport) -> str:
    """A plain-text table of ``report`` for people (the CLI prints it)."""
    head = [
        f"A: {report.model_a}",
        f"B: {report.model_b}",
        f"inputs: {report.inputs}, {report.samples} sample(s)"
        + (" (streamed, state reset per sequence)" if report.stateful else ""),
        "",
    ]
    columns = ("#", "output", "shape", "dtype A/B", "SQNR dB", "max |diff|", "mean |diff|",
               "top-1 agree")
    rows = []
    for o in report.outputs:
        rows.append((
            str(o.index),
            o.name,
            "x".join(map(str, o.shape)) or "scalar",
            f"{o.dtype_a}/{o.dtype_b}" if o.dtype_a != o.dtype_b else o.dtype_a,
            format_db(o.sqnr_db),
            _fmt_num(o.max_abs_diff),
            _fmt_num(o.mean_abs_diff),
            "-" if o.top1_agreement is None else f"{100.0 * o.top1_agreement:.1f} %",
        ))
    widths = [max(len(c), *(len(r[k]) for r in rows)) if rows else len(c)
              for k, c in enumerate(columns)]
    left = {1, 2, 3}

    def line(cells):
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    table = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(head + table + ["", f"min SQNR: {format_db(report.min_sqnr_db)} dB"])
