"""Read, locate and patch the TFLite FlatBuffer.

This is the only module that imports ``tflite`` / ``flatbuffers``. It parses a model once into
plain frozen records (:class:`ModelInfo`, :class:`WeightTensor`), with every candidate weight
tensor located to the byte in the file, and it patches new weight bytes into a same-length
copy of the file. Everything that can go wrong with untrusted bytes is turned into an
:class:`InvalidModelError` that says which step of the parse broke.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import tflite

from .errors import InvalidModelError, UnsupportedModelError

FILE_IDENTIFIER = b"TFL3"

# TensorType code -> (name, numpy little-endian dtype or None when not a plain array type).
_TENSOR_TYPES: dict[int, tuple[str, str | None]] = {
    tflite.TensorType.FLOAT32: ("float32", "<f4"),
    tflite.TensorType.FLOAT16: ("float16", "<f2"),
    tflite.TensorType.INT32: ("int32", "<i4"),
    tflite.TensorType.UINT8: ("uint8", "u1"),
    tflite.TensorType.INT64: ("int64", "<i8"),
    tflite.TensorType.STRING: ("string", None),
    tflite.TensorType.BOOL: ("bool", "?"),
    tflite.TensorType.INT16: ("int16", "<i2"),
    tflite.TensorType.INT8: ("int8", "i1"),
    tflite.TensorType.FLOAT64: ("float64", "<f8"),
    tflite.TensorType.RESOURCE: ("resource", None),
    tflite.TensorType.VARIANT: ("variant", None),
}
for _name in ("COMPLEX64", "COMPLEX128", "UINT64", "UINT32", "UINT16", "INT4", "BFLOAT16"):
    if hasattr(tflite.TensorType, _name):
        _TENSOR_TYPES.setdefault(getattr(tflite.TensorType, _name), (_name.lower(), None))

#: dtypes whose weights can be clustered.
CLUSTERABLE_DTYPES = frozenset({"float32", "float16", "int8", "uint8"})

_OP_NAMES: dict[int, str] = {
    v: k for k, v in vars(tflite.BuiltinOperator).items() if k.isupper() and isinstance(v, int)
}


@dataclass(frozen=True)
class WeightOperand:
    """Where an op keeps a constant weight: input position and output-channel axis."""

    inputs: tuple[int, ...]
    axis: int


# One immutable table: op type -> weight operand positions and their output-channel axis.
_LSTM_W = (1, 2, 3, 4, 5, 6, 7, 8, 16)
WEIGHT_OPERANDS: Mapping[str, WeightOperand] = {
    "CONV_2D": WeightOperand((1,), 0),  # OHWI
    "DEPTHWISE_CONV_2D": WeightOperand((1,), 3),  # 1HWO
    "FULLY_CONNECTED": WeightOperand((1,), 0),  # OI
    "TRANSPOSE_CONV": WeightOperand((1,), 0),  # OHWI; input 0 is the output shape
    "CONV_3D": WeightOperand((1,), 4),  # DHWIO
    "CONV_3D_TRANSPOSE": WeightOperand((1,), 3),  # DHWOI; input 0 is the output shape
    "BATCH_MATMUL": WeightOperand((1, 0), -1),  # the constant operand; RHS columns
    "EMBEDDING_LOOKUP": WeightOperand((1,), 0),  # table rows
    "GATHER": WeightOperand((0,), 0),  # constant params table
    "LSTM": WeightOperand(_LSTM_W, 0),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": WeightOperand(_LSTM_W, 0),
    "BIDIRECTIONAL_SEQUENCE_LSTM": WeightOperand(
        _LSTM_W + (18, 19, 20, 21, 22, 23, 24, 25, 33), 0
    ),
    "RNN": WeightOperand((1, 2), 0),
    "UNIDIRECTIONAL_SEQUENCE_RNN": WeightOperand((1, 2), 0),
    "BIDIRECTIONAL_SEQUENCE_RNN": WeightOperand((1, 2, 4, 5), 0),
    "SVDF": WeightOperand((1, 2), 0),
}

#: ops through which a stored constant reaches a weight operand.
PASS_THROUGH_OPS = frozenset({"DEQUANTIZE", "DENSIFY"})


@dataclass(frozen=True)
class Quantization:
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int

    def to_dict(self) -> dict:
        return {"scales": list(self.scales), "zero_points": list(self.zero_points),
                "quantized_dimension": self.axis}


@dataclass(frozen=True)
class OpUse:
    """One op consuming a weight: ``op`` of type ``op_type`` takes it at ``input``."""

    subgraph: int
    op_index: int
    op_type: str
    input: int
    via: str | None = None  # DEQUANTIZE / DENSIFY when the weight reaches the op through one

    def to_dict(self) -> dict:
        return {"subgraph": self.subgraph, "op_index": self.op_index, "op": self.op_type,
                "input": self.input, "via": self.via}


@dataclass(frozen=True)
class WeightTensor:
    """A candidate weight: one constant buffer and the tensor(s) that hold it."""

    subgraph: int
    tensor: int
    buffer: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    quantization: Quantization | None
    uses: tuple[OpUse, ...]
    data_offset: int  # absolute file offset of the first weight byte
    nbytes: int
    external: bool  # stored after the FlatBuffer (Buffer.offset/size)
    sparse: bool
    aliases: tuple[tuple[int, int, str], ...] = ()  # other (subgraph, tensor, name) on the buffer

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def op_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(u.op_type for u in self.uses))

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_dtype_code(self.dtype))

    def channel_axis(self) -> int | None:
        """Output-channel axis: quantized_dimension if per-channel, else from the op table."""
        q = self.quantization
        if q is not None and len(q.scales) > 1:
            return q.axis
        axes = set()
        for use in self.uses:
            axis = WEIGHT_OPERANDS[use.op_type].axis
            if use.op_type == "BATCH_MATMUL" and use.input == 0:
                axis = -2
            axes.add(axis % len(self.shape) if self.shape else 0)
        if len(axes) != 1 or not self.shape:
            return None
        return axes.pop()


@dataclass(frozen=True)
class ModelInfo:
    label: str  # what errors call the model (its path, or "<bytes>")
    size: int
    version: int
    subgraphs: int
    description: str
    weights: tuple[WeightTensor, ...] = field(default_factory=tuple)


def _dtype_code(name: str) -> str:
    for tname, code in _TENSOR_TYPES.values():
        if tname == name and code is not None:
            return code
    raise UnsupportedModelError("<model>", f"dtype {name} has no array form")


def _opcode_names(model) -> list[str]:
    """Op type names by opcode index (custom ops as ``CUSTOM:<code>``)."""
    names = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # As the TFLite runtime does: older files only set the deprecated int8 field.
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = _OP_NAMES.get(code, f"BUILTIN_{code}")
        if code == tflite.BuiltinOperator.CUSTOM:
            cc = oc.CustomCode()
            name = f"CUSTOM:{cc.decode('utf-8', 'replace')}" if cc else "CUSTOM"
        names.append(name)
    return names


class _Step:
    """Remembers which part of the file the parser is on, for error messages."""

    def __init__(self) -> None:
        self.where = "header"


def read_array(data, w: WeightTensor) -> np.ndarray:
    """The weight's stored values as a read-only numpy array of its dtype and shape.

    Sparse weights are returned flat (the stored values only).
    """
    arr = np.frombuffer(data, dtype=w.numpy_dtype, count=w.nbytes // w.numpy_dtype.itemsize,
                        offset=w.data_offset)
    return arr if w.sparse else arr.reshape(w.shape)


def parse(data, label: str = "<bytes>") -> ModelInfo:
    """Parse model bytes (bytes, bytearray, memoryview or mmap) and locate candidate weights."""
    step = _Step()
    try:
        return _parse(data, label, step)
    except InvalidModelError:
        raise
    except UnsupportedModelError:
        raise
    except (IndexError, struct.error, ValueError, TypeError, OverflowError, UnicodeDecodeError,
            AttributeError, MemoryError, RecursionError) as exc:
        raise InvalidModelError(
            label, f"corrupt FlatBuffer while reading {step.where} ({type(exc).__name__})"
        ) from None


def _check_vector(tab, field_offset: int, elem_size: int, size: int, what: str, label: str):
    """Bounds-check a vector field; return (start, length) or None when absent."""
    o = tab.Offset(field_offset)
    if o == 0:
        return None
    start = tab.Vector(o)
    length = tab.VectorLen(o)
    if start < 0 or start + length * elem_size > size:
        raise InvalidModelError(label, f"{what} runs past the end of the file "
                                       f"({length} items at byte {start}, file is {size} bytes)")
    return start, length


def _parse(data, label: str, step: _Step) -> ModelInfo:
    size = len(data)
    if size == 0:
        raise InvalidModelError(label, "file is empty")
    if size < 8:
        raise InvalidModelError(label, f"file is too short to be a .tflite model ({size} bytes)")
    ident = bytes(data[4:8])
    if ident != FILE_IDENTIFIER:
        raise InvalidModelError(label, f"not a .tflite model: file identifier is {ident!r}, "
                                       f"expected {FILE_IDENTIFIER!r}")
    root = struct.unpack_from("<I", data, 0)[0]
    if root + 4 > size:
        raise InvalidModelError(label, f"root table offset {root} is outside the file ({size} bytes)")
    step.where = "model table"
    model = tflite.Model.GetRootAs(data, 0)
    mtab = model._tab
    vt = root - struct.unpack_from("<i", data, root)[0]
    if vt < 0 or vt + 4 > size:
        raise InvalidModelError(label, "model vtable is outside the file")
    # Bounds of the top-level vectors: operator_codes(6), subgraphs(8), buffers(12).
    for off, what in ((6, "operator_codes"), (8, "subgraphs"), (12, "buffers"), (16, "metadata"),
                      (18, "signature_defs")):
        _check_vector(mtab, off, 4, size, what, label)
    version = model.Version()

    step.where = "operator codes"
    opcodes = _opcode_names(model)

    step.where = "buffers"
    n_buffers = model.BuffersLength()
    buffer_ranges: list[tuple[int, int, bool] | None] = []  # (start, length, external)
    for b in range(n_buffers):
        step.where = f"buffer {b}"
        buf = model.Buffers(b)
        vec = _check_vector(buf._tab, 4, 1, size, f"buffer {b} data", label)
        offset, bsize = buf.Offset(), buf.Size()
        if vec is not None and vec[1] > 0:
            buffer_ranges.append((vec[0], vec[1], False))
        elif offset > 1 and bsize > 0:
            if offset + bsize > size:
                raise InvalidModelError(label, f"buffer {b} points to bytes {offset}..{offset + bsize} "
                                               f"outside the file ({size} bytes)")
            buffer_ranges.append((offset, bsize, True))
        else:
            buffer_ranges.append(None)

    step.where = "description"
    desc = model.Description()
    description = desc.decode("utf-8", "replace") if desc else ""

    _walk_structure(model, size, label, step)

    found: dict[int, dict] = {}  # buffer -> record
    n_sub = model.SubgraphsLength()
    for s in range(n_sub):
        step.where = f"subgraph {s}"
        sg = model.Subgraphs(s)
        _check_vector(sg._tab, 4, 4, size, f"subgraph {s} tensors", label)
        _check_vector(sg._tab, 10, 4, size, f"subgraph {s} operators", label)
        n_tensors = sg.TensorsLength()
        producers: dict[int, int] = {}
        ops = []
        for oi in range(sg.OperatorsLength()):
            step.where = f"subgraph {s} operator {oi}"
            op = sg.Operators(oi)
            _check_vector(op._tab, 6, 4, size, f"subgraph {s} operator {oi} inputs", label)
            _check_vector(op._tab, 8, 4, size, f"subgraph {s} operator {oi} outputs", label)
            idx, ins, outs = _operator_io(op, s, oi, len(opcodes), label)
            for t in ins + outs:
                if t >= n_tensors or t < -1:
                    raise InvalidModelError(label, f"subgraph {s} operator {oi} refers to tensor {t}, "
                                                   f"but the subgraph has {n_tensors}")
            for t in outs:
                producers[t] = oi
            ops.append((opcodes[idx], ins, outs))

        for oi, (op_type, ins, _outs) in enumerate(ops):
            operand = WEIGHT_OPERANDS.get(op_type)
            if operand is None:
                continue
            for pos in operand.inputs:
                if pos >= len(ins) or ins[pos] < 0:
                    continue
                t, via = ins[pos], None
                prod = producers.get(t)
                if prod is not None and ops[prod][0] in PASS_THROUGH_OPS and ops[prod][1]:
                    via = ops[prod][0]
                    t = ops[prod][1][0]
                    if t < 0 or t in producers:
                        continue
                elif prod is not None:
                    continue
                step.where = f"subgraph {s} tensor {t}"
                tensor = sg.Tensors(t)
                b = tensor.Buffer()
                if b >= n_buffers:
                    raise InvalidModelError(label, f"subgraph {s} tensor {t} refers to buffer {b}, "
                                                   f"but the model has {n_buffers}")
                if b == 0 or buffer_ranges[b] is None or tensor.IsVariable():
                    continue
                use = OpUse(s, oi, op_type, pos, via)
                rec = found.get(b)
                if rec is not None:
                    if (s, t) != (rec["subgraph"], rec["tensor"]) and (s, t) not in rec["aliases"]:
                        rec["aliases"][(s, t)] = _name(tensor)
                    if use not in rec["uses"]:
                        rec["uses"].append(use)
                    continue
                found[b] = _tensor_record(tensor, s, t, b, use, buffer_ranges[b], label)

    weights = []
    for b in sorted(found, key=lambda b: (found[b]["subgraph"], found[b]["tensor"])):
        rec = found[b]
        aliases = tuple((s, t, n) for (s, t), n in rec.pop("aliases").items())
        rec["uses"] = tuple(rec["uses"])
        weights.append(WeightTensor(aliases=aliases, **rec))
    return ModelInfo(label=label, size=size, version=version, subgraphs=n_sub,
                     description=description, weights=tuple(weights))


def _operator_io(op, s: int, oi: int, n_opcodes: int, label: str):
    """An operator's opcode index (checked against the model's opcodes), inputs and outputs."""
    idx = op.OpcodeIndex()
    if idx >= n_opcodes:
        raise InvalidModelError(label, f"subgraph {s} operator {oi} uses opcode {idx}, "
                                       f"but the model has {n_opcodes}")
    ins = [int(x) for x in (op.InputsAsNumpy() if not op.InputsIsNone() else [])]
    outs = [int(x) for x in (op.OutputsAsNumpy() if not op.OutputsIsNone() else [])]
    return idx, ins, outs


def _walk_structure(model, size: int, label: str, step: _Step) -> None:
    """Bounds-check every vector and string the model holds, so a truncated or damaged file is
    caught here even in parts clustering never reads (they are copied, and must be intact)."""

    def vec(tab, slot, elem, what):
        _check_vector(tab, slot, elem, size, what, label)

    def string(tab, slot, what):
        r = _check_vector(tab, slot, 1, size, what, label)
        if r is not None and r[0] + r[1] >= size:
            raise InvalidModelError(label, f"{what} runs past the end of the file")

    mtab = model._tab
    string(mtab, 10, "model description")
    for i in range(model.OperatorCodesLength()):
        step.where = f"operator code {i}"
        string(model.OperatorCodes(i)._tab, 6, f"operator code {i} custom code")
    for i in range(model.MetadataLength()):
        step.where = f"metadata {i}"
        md = model.Metadata(i)
        string(md._tab, 4, f"metadata {i} name")
        if md.Buffer() >= model.BuffersLength():
            raise InvalidModelError(label, f"metadata {i} refers to buffer {md.Buffer()}, but the model "
                                           f"has {model.BuffersLength()}")
    for i in range(model.SignatureDefsLength()):
        step.where = f"signature def {i}"
        sd = model.SignatureDefs(i)
        string(sd._tab, 8, f"signature def {i} key")
        for slot, maps, length in ((4, sd.Inputs, sd.InputsLength()), (6, sd.Outputs, sd.OutputsLength())):
            vec(sd._tab, slot, 4, f"signature def {i} tensor map")
            for j in range(length):
                string(maps(j)._tab, 4, f"signature def {i} tensor name")
    for s in range(model.SubgraphsLength()):
        step.where = f"subgraph {s}"
        sg = model.Subgraphs(s)
        for slot, what in ((4, "tensors"), (6, "inputs"), (8, "outputs"), (10, "operators")):
            vec(sg._tab, slot, 4, f"subgraph {s} {what}")
        string(sg._tab, 12, f"subgraph {s} name")
        for t in range(sg.TensorsLength()):
            step.where = f"subgraph {s} tensor {t}"
            tensor = sg.Tensors(t)
            tab = tensor._tab
            vec(tab, 4, 4, f"subgraph {s} tensor {t} shape")
            vec(tab, 18, 4, f"subgraph {s} tensor {t} shape signature")
            string(tab, 10, f"subgraph {s} tensor {t} name")
            q = tensor.Quantization()
            if q is not None:
                for slot, elem in ((4, 4), (6, 4), (8, 4), (10, 8)):
                    vec(q._tab, slot, elem, f"subgraph {s} tensor {t} quantization")
        for o in range(sg.OperatorsLength()):
            step.where = f"subgraph {s} operator {o}"
            tab = sg.Operators(o)._tab
            for slot, elem in ((6, 4), (8, 4), (14, 1), (18, 1), (20, 4)):
                vec(tab, slot, elem, f"subgraph {s} operator {o}")


def _name(tensor) -> str:
    n = tensor.Name()
    return n.decode("utf-8", "replace") if n else ""


def _tensor_record(tensor, s, t, b, use, brange, label) -> dict:
    name = _name(tensor)
    type_code = tensor.Type()
    if type_code not in _TENSOR_TYPES:
        raise InvalidModelError(label, f"tensor '{name}' (subgraph {s}, tensor {t}) has unknown "
                                       f"type code {type_code}")
    dtype, code = _TENSOR_TYPES[type_code]
    shape = tuple(int(x) for x in tensor.ShapeAsNumpy()) if not tensor.ShapeIsNone() else ()
    if any(d < 0 for d in shape):
        raise InvalidModelError(label, f"constant tensor '{name}' has a dynamic shape {shape}")
    quant = None
    q = tensor.Quantization()
    if q is not None and not q.ScaleIsNone() and q.ScaleLength() > 0:
        scales = tuple(float(x) for x in q.ScaleAsNumpy())
        zps = tuple(int(x) for x in q.ZeroPointAsNumpy()) if not q.ZeroPointIsNone() else (0,) * len(scales)
        quant = Quantization(scales, zps, int(q.QuantizedDimension()))
    sparse = tensor.Sparsity() is not None
    start, length, external = brange
    if code is not None and not sparse:
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(code).itemsize
        if expected != length:
            raise InvalidModelError(label, f"tensor '{name}' (subgraph {s}, tensor {t}) has shape "
                                           f"{list(shape)} of {dtype} = {expected} bytes, but its buffer "
                                           f"{b} holds {length} bytes")
    if quant is not None and len(quant.scales) > 1:
        if not shape or quant.axis >= len(shape) or shape[quant.axis] != len(quant.scales):
            raise InvalidModelError(label, f"tensor '{name}' has {len(quant.scales)} scales, which do not "
                                           f"match quantized_dimension {quant.axis} of shape {list(shape)}")
    return {
        "subgraph": s, "tensor": t, "buffer": b, "name": name, "dtype": dtype, "shape": shape,
        "quantization": quant, "uses": [use], "data_offset": start, "nbytes": length,
        "external": external, "sparse": sparse, "aliases": {},
    }


def patch(data, changes: Mapping[int, bytes]) -> bytearray:
    """A same-length copy of ``data`` with ``changes`` (file offset -> new bytes) written in."""
    out = bytearray(data)
    for offset, new in changes.items():
        end = offset + len(new)
        if end > len(out):
            raise ValueError(f"patch at {offset} of {len(new)} bytes runs past the end")
        out[offset:end] = new
    return out


@dataclass(frozen=True)
class OpRecord:
    """One operator: its type and the dtypes of its inputs (None for an omitted input) and outputs."""

    subgraph: int
    index: int
    op_type: str
    input_dtypes: tuple[str | None, ...]
    output_dtypes: tuple[str, ...]


def operators(data, label: str = "<bytes>") -> tuple[OpRecord, ...]:
    """Every operator of every subgraph, in order (custom ops as ``CUSTOM:<code>``).

    Used to see where a model's activations are float, and to count the ops an NPU compiler
    (Vela) left on the CPU in its output model. Raises :class:`InvalidModelError` on bad bytes.
    """
    size = len(data)
    if size < 8 or bytes(data[4:8]) != FILE_IDENTIFIER:
        raise InvalidModelError(label, "not a .tflite model (no TFL3 file identifier)")
    step = _Step()
    try:
        model = tflite.Model.GetRootAs(data, 0)
        step.where = "operator codes"
        opcodes = _opcode_names(model)
        out = []
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            n_tensors = sg.TensorsLength()
            types = [_TENSOR_TYPES.get(sg.Tensors(t).Type(), (f"type{sg.Tensors(t).Type()}", None))[0]
                     for t in range(n_tensors)]
            for oi in range(sg.OperatorsLength()):
                step.where = f"subgraph {s} operator {oi}"
                op = sg.Operators(oi)
                idx, ins, outs = _operator_io(op, s, oi, len(opcodes), label)
                if any(t >= n_tensors or t < -1 for t in ins + outs):
                    raise InvalidModelError(label, f"subgraph {s} operator {oi} refers to a tensor "
                                                   f"outside the {n_tensors} of its subgraph")
                out.append(OpRecord(s, oi, opcodes[idx], tuple(types[t] if t >= 0 else None for t in ins),
                                    tuple(types[t] for t in outs if t >= 0)))
        return tuple(out)
    except InvalidModelError:
        raise
    except (IndexError, struct.error, ValueError, TypeError, OverflowError, AttributeError,
            RecursionError) as exc:
        raise InvalidModelError(
            label, f"corrupt FlatBuffer while reading {step.where} ({type(exc).__name__})") from None


#: ops that keep state between invocations in resource variables.
STATE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"})


def is_stateful(data, label: str = "<bytes>") -> bool:
    """True when the model keeps state between invocations: resource-variable ops
    (VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE) or variable tensors.

    Reads only the operator codes and the tensors' ``is_variable`` flags (cheap: the automatic
    search asks it for every candidate model). Raises :class:`InvalidModelError` on bad bytes.
    """
    if len(data) < 8 or bytes(data[4:8]) != FILE_IDENTIFIER:
        raise InvalidModelError(label, "not a .tflite model (no TFL3 file identifier)")
    try:
        model = tflite.Model.GetRootAs(data, 0)
        if STATE_OPS.intersection(_opcode_names(model)):
            return True
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            for t in range(sg.TensorsLength()):
                if sg.Tensors(t).IsVariable():
                    return True
    except (IndexError, struct.error, ValueError, TypeError, OverflowError, AttributeError,
            RecursionError) as exc:
        raise InvalidModelError(label, f"corrupt FlatBuffer while reading operator codes and "
                                       f"tensors ({type(exc).__name__})") from None
    return False
