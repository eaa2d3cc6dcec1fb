"""Build tiny but valid .tflite models from numpy arrays, without TensorFlow.

Two layers:

* :class:`ModelBuilder` / :class:`Subgraph` -- a thin, generic writer over the ``tflite``
  package's generated FlatBuffer functions (``tflite.ModelStart``, ``tflite.BufferAddData``, ...).
  It writes what the TensorFlow Lite converter writes: schema version 3, buffer 0 the empty
  sentinel, one buffer per tensor, both ``deprecated_builtin_code`` and ``builtin_code`` in the
  operator codes, metadata buffers last, signature defs, and (``build(external_buffers=True)``)
  the >2 GB layout where constant data follows the FlatBuffer and ``Buffer.offset``/``size``
  point at it.
* Factories (:data:`ALL_FACTORIES`) returning the bytes of small models with seeded weights, one
  per situation the clustering tool meets: every weight dtype (float32, float16 behind
  DEQUANTIZE, dynamic-range int8, full-integer int8), conv / depthwise / fully-connected /
  transpose-conv / conv3d / batch-matmul / embedding / gather / LSTM / RNN weights, shared
  buffers, several subgraphs, resource variables, sparse weights and external buffers.
  Every model loads and runs in LiteRT (``ai_edge_litert.interpreter.Interpreter``), carries the
  metadata entries of :data:`METADATA` and a ``serving_default`` signature.

Sequential conv / fully-connected networks are described by layer objects (:class:`Conv2D`,
:class:`DepthwiseConv2D`, :class:`FullyConnected`, :class:`Flatten`, :class:`Softmax`) whose
``forward`` is a numpy reference of the TFLite kernel; :func:`sequential_model` exports them in
any of the four dtypes, calibrating int8 activation scales with that reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import flatbuffers
import numpy as np
import tflite

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
ALIGNMENT = 16  # the converter aligns buffer data (inline and external) to 16 bytes
WEIGHT_DTYPES = ("float32", "float16", "int8", "dynamic_int8")
DYNAMIC_RANGE_MIN_ELEMENTS = 1024  # the converter leaves smaller weights in float32
METADATA = {
    "min_runtime_version": b"1.14.0".ljust(16, b"\0"),
    "tflite_cluster_test": b"tflite-cluster test model v1",
}
"""Metadata entries every factory model carries, so tests can check they survive untouched."""

_TENSOR_TYPES = {
    "float32": tflite.TensorType.FLOAT32,
    "float16": tflite.TensorType.FLOAT16,
    "int32": tflite.TensorType.INT32,
    "uint8": tflite.TensorType.UINT8,
    "int64": tflite.TensorType.INT64,
    "bool": tflite.TensorType.BOOL,
    "int16": tflite.TensorType.INT16,
    "int8": tflite.TensorType.INT8,
    "resource": tflite.TensorType.RESOURCE,
}

# Builtin options table written for each op (ops absent here take no options).
_OPTIONS_CLASS = {
    "ADD": "AddOptions",
    "BATCH_MATMUL": "BatchMatMulOptions",
    "CALL_ONCE": "CallOnceOptions",
    "CONCATENATION": "ConcatenationOptions",
    "CONV_2D": "Conv2DOptions",
    "CONV_3D": "Conv3DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "GATHER": "GatherOptions",
    "IF": "IfOptions",
    "MUL": "MulOptions",
    "RNN": "RNNOptions",
    "SOFTMAX": "SoftmaxOptions",
    "STRIDED_SLICE": "StridedSliceOptions",
    "SUM": "ReducerOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTMOptions",
    "UNIDIRECTIONAL_SEQUENCE_RNN": "SequenceRNNOptions",
    "VAR_HANDLE": "VarHandleOptions",
    "WHILE": "WhileOptions",
}
# Fields whose schema default (0) is not a usable value; the converter always writes them.
_OPTION_DEFAULTS = {
    "CONV_2D": {"stride_w": 1, "stride_h": 1, "dilation_w_factor": 1, "dilation_h_factor": 1},
    "CONV_3D": {"stride_d": 1, "stride_w": 1, "stride_h": 1,
                "dilation_d_factor": 1, "dilation_w_factor": 1, "dilation_h_factor": 1},
    "DEPTHWISE_CONV_2D": {"stride_w": 1, "stride_h": 1, "depth_multiplier": 1,
                          "dilation_w_factor": 1, "dilation_h_factor": 1},
    "SOFTMAX": {"beta": 1.0},
    "TRANSPOSE_CONV": {"stride_w": 1, "stride_h": 1},
}
# Option fields that take an enum: a string value is looked up by name in that enum class.
_OPTION_ENUMS = {
    "padding": tflite.Padding,
    "fused_activation_function": tflite.ActivationFunctionType,
    "weights_format": tflite.FullyConnectedOptionsWeightsFormat,
    "quantized_bias_type": tflite.TensorType,
}


# --------------------------------------------------------------------------------------------
# Generic layer
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Quantization:
    """Affine quantization: ``real = scale[c] * (code - zero_point[c])`` along ``quantized_dimension``."""

    scale: Sequence[float]
    zero_point: Sequence[int]
    quantized_dimension: int = 0

    def __post_init__(self):
        if len(self.scale) != len(self.zero_point) or not len(self.scale):
            raise ValueError("scale and zero_point need the same, non-zero length")


@dataclasses.dataclass(frozen=True)
class DimensionMetadata:
    """One dimension of a sparse tensor: ``DENSE`` (``dense_size``) or ``SPARSE_CSR`` (segments, indices)."""

    format: str
    dense_size: int = 0
    segments: Sequence[int] = ()
    indices: Sequence[int] = ()

    def __post_init__(self):
        if self.format not in ("DENSE", "SPARSE_CSR"):
            raise ValueError(f"dimension format must be 'DENSE' or 'SPARSE_CSR', not {self.format!r}")


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """``SparsityParameters`` of the schema: traversal order, block map and per-dimension metadata."""

    traversal_order: Sequence[int]
    dim_metadata: Sequence[DimensionMetadata]
    block_map: Sequence[int] = ()


@dataclasses.dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    quantization: Quantization | None
    sparsity: Sparsity | None
    is_variable: bool


@dataclasses.dataclass
class _Operator:
    opcode_index: int
    op: str
    inputs: list[int]
    outputs: list[int]
    options: dict


class Subgraph:
    """One subgraph: tensors, operators (in execution order) and its input/output tensor lists.

    Create it with :meth:`ModelBuilder.add_subgraph`; fill ``inputs``/``outputs`` with tensor
    indices returned by :meth:`add_tensor` / :meth:`add_constant`.
    """

    def __init__(self, model: ModelBuilder, index: int, name: str):
        self.model = model
        self.index = index
        self.name = name
        self.tensors: list[_Tensor] = []
        self.operators: list[_Operator] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def add_tensor(self, name: str, shape: Sequence[int], dtype="float32", *, buffer: int | None = None,
                   quantization: Quantization | None = None, sparsity: Sparsity | None = None,
                   is_variable: bool = False) -> int:
        """Add a tensor and return its index. Without ``buffer`` it gets a new empty buffer (as the
        converter gives every activation its own); pass a buffer index to share or fill one."""
        dtype = _dtype_name(dtype)
        if buffer is None:
            buffer = self.model.add_buffer()
        elif not 0 <= buffer < len(self.model.buffers):
            raise ValueError(f"tensor {name!r}: no buffer {buffer}")
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), dtype, buffer,
                                    quantization, sparsity, is_variable))
        return len(self.tensors) - 1

    def add_constant(self, name: str, data: np.ndarray, *, quantization: Quantization | None = None) -> int:
        """Add a constant tensor holding ``data`` (dtype and shape taken from the array)."""
        data = np.asarray(data)
        return self.add_tensor(name, data.shape, data.dtype, buffer=self.model.add_buffer(data),
                               quantization=quantization)

    def add_operator(self, op: str, inputs: Sequence[int], outputs: Sequence[int],
                     options: Mapping | None = None, *, version: int = 1) -> None:
        """Append builtin operator ``op`` (e.g. ``'CONV_2D'``). ``-1`` in ``inputs`` marks an omitted
        optional operand. ``options`` maps snake_case schema field names to values; enum fields
        take names (``{'padding': 'SAME', 'fused_activation_function': 'RELU'}``)."""
        if not hasattr(tflite.BuiltinOperator, op):
            raise ValueError(f"unknown builtin operator {op!r}")
        if options and op not in _OPTIONS_CLASS:
            raise ValueError(f"{op} takes no builtin options (got {sorted(options)})")
        for key in options or {}:
            if not hasattr(tflite, f"{_OPTIONS_CLASS[op]}Add{_camel(key)}"):
                raise ValueError(f"{op}: {_OPTIONS_CLASS[op]} has no field {key!r}")
        for t in (*(t for t in inputs if t != -1), *outputs):
            if not 0 <= t < len(self.tensors):
                raise ValueError(f"{op}: no tensor {t} in subgraph {self.name!r}")
        merged = {**_OPTION_DEFAULTS.get(op, {}), **(options or {})}
        self.operators.append(_Operator(self.model.opcode_index(op, version), op,
                                        list(inputs), list(outputs), merged))


class ModelBuilder:
    """Collects buffers, subgraphs, metadata and signatures, then serialises a .tflite model."""

    def __init__(self, description: str = "tflite-cluster test model"):
        self.description = description
        self.buffers: list[bytes | None] = [None]  # buffer 0: the empty sentinel
        self.subgraphs: list[Subgraph] = []
        self.opcodes: list[tuple[str, int]] = []
        self.metadata: dict[str, bytes] = {}
        self.signatures: list[tuple[str, int, dict[str, int], dict[str, int]]] = []

    def add_buffer(self, data: np.ndarray | bytes | None = None) -> int:
        """Add a buffer (array bytes, little-endian C order; raw bytes; or empty) and return its index."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
        self.buffers.append(bytes(data) if data else None)
        return len(self.buffers) - 1

    def add_subgraph(self, name: str = "main") -> Subgraph:
        """Add a subgraph; the first one added is the model's entry subgraph."""
        self.subgraphs.append(Subgraph(self, len(self.subgraphs), name))
        return self.subgraphs[-1]

    def add_metadata(self, name: str, data: bytes) -> None:
        """Add a metadata entry; its buffer is written after all tensor buffers, like the converter's."""
        self.metadata[name] = bytes(data)

    def add_signature(self, subgraph: Subgraph, inputs: Mapping[str, int], outputs: Mapping[str, int],
                      key: str = "serving_default") -> None:
        """Add a signature def mapping names to tensors of ``subgraph``."""
        for t in (*inputs.values(), *outputs.values()):
            if not 0 <= t < len(subgraph.tensors):
                raise ValueError(f"signature {key!r}: no tensor {t} in subgraph {subgraph.name!r}")
        self.signatures.append((key, subgraph.index, dict(inputs), dict(outputs)))

    def opcode_index(self, op: str, version: int = 1) -> int:
        """Index of the operator code for (``op``, ``version``), added on first use."""
        key = (op, version)
        if key not in self.opcodes:
            self.opcodes.append(key)
        return self.opcodes.index(key)

    def build(self, external_buffers: bool = False) -> bytes:
        """Serialise the model.

        With ``external_buffers`` the data of every tensor buffer is stored after the FlatBuffer
        (the layout the converter uses above 2 GB): each piece 16-byte aligned, ``Buffer.offset``
        its absolute file offset, ``Buffer.size`` its length, no ``data`` vector, and 16 zero bytes
        after the last piece. Metadata buffers stay inline, as the converter writes them.
        """
        if not self.subgraphs:
            raise ValueError("a model needs at least one subgraph")
        if not external_buffers:
            return self._serialize({})
        external = [i for i, data in enumerate(self.buffers) if data]
        # The encoded size does not depend on the offset values, so a pass with placeholders
        # tells where the FlatBuffer ends and the data can start.
        end = len(self._serialize({i: (1, 1) for i in external}))
        out = bytearray()
        locations = {}
        position = _align(end)
        for i in external:
            locations[i] = (position, len(self.buffers[i]))
            position = _align(position + len(self.buffers[i]))
        head = self._serialize(locations)
        if len(head) != end:
            raise RuntimeError("FlatBuffer size changed between the two passes")
        out += head
        for i in external:
            out += bytes(locations[i][0] - len(out)) + self.buffers[i]
        out += bytes(_align(len(out)) - len(out) + ALIGNMENT)
        return bytes(out)

    # -- serialisation ---------------------------------------------------------------------

    def _serialize(self, external: Mapping[int, tuple[int, int]]) -> bytes:
        b = flatbuffers.Builder(1024)
        buffer_data = self.buffers + list(self.metadata.values())
        buffers = [_write_buffer(b, data, external.get(i)) for i, data in enumerate(buffer_data)]
        subgraphs = [_write_subgraph(b, sg) for sg in self.subgraphs]
        opcodes = [_write_opcode(b, op, version) for op, version in self.opcodes]
        first_metadata_buffer = len(self.buffers)
        metadata = []
        for i, name in enumerate(self.metadata):
            name_off = b.CreateString(name)
            tflite.MetadataStart(b)
            tflite.MetadataAddName(b, name_off)
            tflite.MetadataAddBuffer(b, first_metadata_buffer + i)
            metadata.append(tflite.MetadataEnd(b))
        signatures = [_write_signature(b, *sig) for sig in self.signatures]
        description = b.CreateString(self.description)
        vectors = {name: _offset_vector(b, offsets) for name, offsets in (
            ("opcodes", opcodes), ("subgraphs", subgraphs), ("buffers", buffers),
            ("metadata", metadata), ("signatures", signatures))}
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, vectors["opcodes"])
        tflite.ModelAddSubgraphs(b, vectors["subgraphs"])
        tflite.ModelAddDescription(b, description)
        tflite.ModelAddBuffers(b, vectors["buffers"])
        tflite.ModelAddMetadata(b, vectors["metadata"])
        tflite.ModelAddSignatureDefs(b, vectors["signatures"])
        b.Finish(tflite.ModelEnd(b), file_identifier=FILE_IDENTIFIER)
        return bytes(b.Output())


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _dtype_name(dtype) -> str:
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in _TENSOR_TYPES:
        raise ValueError(f"unsupported tensor dtype {dtype!r}; use one of {sorted(_TENSOR_TYPES)}")
    return name


def _offset_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _int_vector(b: flatbuffers.Builder, values, dtype=np.int32) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype=dtype).reshape(-1))


def _write_buffer(b: flatbuffers.Builder, data: bytes | None, location: tuple[int, int] | None) -> int:
    vector = None
    if data and location is None:
        b.StartVector(1, len(data), ALIGNMENT)
        b.head -= len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        vector = b.EndVector()
    tflite.BufferStart(b)
    if vector is not None:
        tflite.BufferAddData(b, vector)
    if location is not None:
        tflite.BufferAddOffset(b, location[0])
        tflite.BufferAddSize(b, location[1])
    return tflite.BufferEnd(b)


def _write_quantization(b: flatbuffers.Builder, q: Quantization) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype=np.float32))
    zero_point = _int_vector(b, q.zero_point, np.int64)
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(b, q.quantized_dimension)
    return tflite.QuantizationParametersEnd(b)


def _write_index_vector(b: flatbuffers.Builder, values: Sequence[int]) -> tuple[int, int]:
    """A SparseIndexVector union member in the smallest type that holds ``values`` (as the converter)."""
    top = max(values, default=0)
    for kind, dtype, limit in (("Uint8Vector", np.uint8, 0xFF), ("Uint16Vector", np.uint16, 0xFFFF),
                               ("Int32Vector", np.int32, 0x7FFFFFFF)):
        if top <= limit:
            break
    vector = _int_vector(b, values, dtype)
    getattr(tflite, f"{kind}Start")(b)
    getattr(tflite, f"{kind}AddValues")(b, vector)
    return getattr(tflite.SparseIndexVector, kind), getattr(tflite, f"{kind}End")(b)


def _write_sparsity(b: flatbuffers.Builder, s: Sparsity) -> int:
    dims = []
    for dim in s.dim_metadata:
        fmt = getattr(tflite.DimensionType, dim.format)
        unions = []
        if fmt == tflite.DimensionType.SPARSE_CSR:
            unions = [_write_index_vector(b, dim.segments), _write_index_vector(b, dim.indices)]
        tflite.DimensionMetadataStart(b)
        tflite.DimensionMetadataAddFormat(b, fmt)
        tflite.DimensionMetadataAddDenseSize(b, dim.dense_size)
        if unions:
            tflite.DimensionMetadataAddArraySegmentsType(b, unions[0][0])
            tflite.DimensionMetadataAddArraySegments(b, unions[0][1])
            tflite.DimensionMetadataAddArrayIndicesType(b, unions[1][0])
            tflite.DimensionMetadataAddArrayIndices(b, unions[1][1])
        dims.append(tflite.DimensionMetadataEnd(b))
    traversal = _int_vector(b, s.traversal_order)
    block_map = _int_vector(b, s.block_map) if s.block_map else None
    dim_vector = _offset_vector(b, dims)
    tflite.SparsityParametersStart(b)
    tflite.SparsityParametersAddTraversalOrder(b, traversal)
    if block_map is not None:
        tflite.SparsityParametersAddBlockMap(b, block_map)
    tflite.SparsityParametersAddDimMetadata(b, dim_vector)
    return tflite.SparsityParametersEnd(b)


def _write_tensor(b: flatbuffers.Builder, t: _Tensor) -> int:
    name = b.CreateString(t.name)
    shape = _int_vector(b, t.shape)
    quant = _write_quantization(b, t.quantization) if t.quantization else None
    sparsity = _write_sparsity(b, t.sparsity) if t.sparsity else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, _TENSOR_TYPES[t.dtype])
    tflite.TensorAddBuffer(b, t.buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    tflite.TensorAddIsVariable(b, t.is_variable)
    if sparsity is not None:
        tflite.TensorAddSparsity(b, sparsity)
    return tflite.TensorEnd(b)


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _write_options(b: flatbuffers.Builder, op: str, options: Mapping) -> int:
    cls = _OPTIONS_CLASS[op]
    values = {}
    for key, value in options.items():
        if isinstance(value, str) and key in _OPTION_ENUMS:
            value = getattr(_OPTION_ENUMS[key], value.upper())
        elif isinstance(value, str):
            value = b.CreateString(value)
        elif isinstance(value, (list, tuple, np.ndarray)):
            value = _int_vector(b, value)
        values[key] = value
    getattr(tflite, f"{cls}Start")(b)
    for key, value in values.items():
        getattr(tflite, f"{cls}Add{_camel(key)}")(b, value)
    return getattr(tflite, f"{cls}End")(b)


def _write_operator(b: flatbuffers.Builder, op: _Operator) -> int:
    inputs = _int_vector(b, op.inputs)
    outputs = _int_vector(b, op.outputs)
    options = _write_options(b, op.op, op.options) if op.op in _OPTIONS_CLASS else None
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, op.opcode_index)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, _OPTIONS_CLASS[op.op]))
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)


def _write_subgraph(b: flatbuffers.Builder, sg: Subgraph) -> int:
    tensors = _offset_vector(b, [_write_tensor(b, t) for t in sg.tensors])
    operators = _offset_vector(b, [_write_operator(b, op) for op in sg.operators])
    inputs = _int_vector(b, sg.inputs)
    outputs = _int_vector(b, sg.outputs)
    name = b.CreateString(sg.name)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddOperators(b, operators)
    tflite.SubGraphAddName(b, name)
    return tflite.SubGraphEnd(b)


def _write_opcode(b: flatbuffers.Builder, op: str, version: int) -> int:
    code = getattr(tflite.BuiltinOperator, op)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(
        b, min(code, tflite.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
    tflite.OperatorCodeAddVersion(b, version)
    tflite.OperatorCodeAddBuiltinCode(b, code)
    return tflite.OperatorCodeEnd(b)


def _write_signature(b: flatbuffers.Builder, key: str, subgraph_index: int,
                     inputs: Mapping[str, int], outputs: Mapping[str, int]) -> int:
    def tensor_maps(mapping):
        maps = []
        for name, index in mapping.items():
            name_off = b.CreateString(name)
            tflite.TensorMapStart(b)
            tflite.TensorMapAddName(b, name_off)
            tflite.TensorMapAddTensorIndex(b, index)
            maps.append(tflite.TensorMapEnd(b))
        return _offset_vector(b, maps)

    input_vector = tensor_maps(inputs)
    output_vector = tensor_maps(outputs)
    key_off = b.CreateString(key)
    tflite.SignatureDefStart(b)
    tflite.SignatureDefAddInputs(b, input_vector)
    tflite.SignatureDefAddOutputs(b, output_vector)
    tflite.SignatureDefAddSignatureKey(b, key_off)
    tflite.SignatureDefAddSubgraphIndex(b, subgraph_index)
    return tflite.SignatureDefEnd(b)


# --------------------------------------------------------------------------------------------
# Quantization helpers and numpy reference layers
# --------------------------------------------------------------------------------------------


def quantize_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 codes in [-127, 127] and their float32 scales along ``axis``."""
    others = tuple(d for d in range(weight.ndim) if d != axis)
    amax = np.max(np.abs(weight), axis=others)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    codes = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return codes, scale


def activation_quantization(values: np.ndarray) -> Quantization:
    """Per-tensor asymmetric int8 parameters whose range covers ``values`` and 0 (as calibration does)."""
    lo = min(float(np.min(values)), 0.0)
    hi = max(float(np.max(values)), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return Quantization([scale], [zero_point])


SOFTMAX_INT8_QUANTIZATION = Quantization([1.0 / 256.0], [-128])
"""The output quantization the int8 SOFTMAX kernel requires."""


def image_patches(x: np.ndarray, kh: int, kw: int, stride: int = 1, padding: str = "SAME") -> np.ndarray:
    """Sliding windows of NHWC ``x`` as [N, OH, OW, kh, kw, C], padded the way TFLite pads
    (SAME: total padding ``(out - 1) * stride + k - in``, the smaller half before)."""
    _, h, w, _ = x.shape
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-w // stride)
        ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    elif padding == "VALID":
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    else:
        raise ValueError(f"padding must be 'SAME' or 'VALID', not {padding!r}")
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return windows[:, ::stride, ::stride][:, :oh, :ow].transpose(0, 1, 2, 4, 5, 3)


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "RELU":
        return np.maximum(x, 0)
    if activation == "RELU6":
        return np.clip(x, 0, 6)
    if activation == "NONE":
        return x
    raise ValueError(f"unsupported fused activation {activation!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Conv2D:
    """CONV_2D layer: ``weight`` OHWI, ``bias`` [O]."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1
    padding: str = "SAME"
    activation: str = "NONE"
    name: str = "conv2d"
    op = "CONV_2D"
    quantized_dimension = 0

    def options(self) -> dict:
        return {"padding": self.padding, "stride_w": self.stride, "stride_h": self.stride,
                "fused_activation_function": self.activation}

    def forward(self, x: np.ndarray) -> np.ndarray:
        _, kh, kw, _ = self.weight.shape
        patches = image_patches(x, kh, kw, self.stride, self.padding)
        return _activate(np.einsum("nyxhwc,ohwc->nyxo", patches, self.weight) + self.bias, self.activation)


@dataclasses.dataclass(frozen=True, eq=False)
class DepthwiseConv2D:
    """DEPTHWISE_CONV_2D layer with depth multiplier 1: ``weight`` [1, H, W, C], ``bias`` [C]."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1
    padding: str = "SAME"
    activation: str = "NONE"
    name: str = "depthwise_conv2d"
    op = "DEPTHWISE_CONV_2D"
    quantized_dimension = 3

    def options(self) -> dict:
        return {"padding": self.padding, "stride_w": self.stride, "stride_h": self.stride,
                "depth_multiplier": 1, "fused_activation_function": self.activation}

    def forward(self, x: np.ndarray) -> np.ndarray:
        _, kh, kw, _ = self.weight.shape
        patches = image_patches(x, kh, kw, self.stride, self.padding)
        return _activate(np.einsum("nyxhwc,hwc->nyxc", patches, self.weight[0]) + self.bias, self.activation)


@dataclasses.dataclass(frozen=True, eq=False)
class FullyConnected:
    """FULLY_CONNECTED layer: ``weight`` [O, I], ``bias`` [O]."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "NONE"
    name: str = "dense"
    op = "FULLY_CONNECTED"
    quantized_dimension = 0

    def options(self) -> dict:
        return {"fused_activation_function": self.activation}

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _activate(x.reshape(len(x), -1) @ self.weight.T + self.bias, self.activation)


@dataclasses.dataclass(frozen=True, eq=False)
class Flatten:
    """RESHAPE to [batch, features] (the shape operand is a constant int32 tensor, as the converter writes)."""

    name: str = "flatten"
    op = "RESHAPE"

    def options(self) -> dict:
        return {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)


@dataclasses.dataclass(frozen=True, eq=False)
class Softmax:
    """SOFTMAX over the last axis (beta 1)."""

    name: str = "softmax"
    op = "SOFTMAX"

    def options(self) -> dict:
        return {"beta": 1.0}

    def forward(self, x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


Layer = Conv2D | DepthwiseConv2D | FullyConnected | Flatten | Softmax


def reference_forward(layers: Sequence[Layer], x: np.ndarray) -> np.ndarray:
    """Float numpy reference of a layer stack (what the float32 export computes)."""
    for layer in layers:
        x = layer.forward(x)
    return x


# --------------------------------------------------------------------------------------------
# Sequential export in four weight dtypes
# --------------------------------------------------------------------------------------------


def new_model(description: str = "tflite-cluster test model") -> tuple[ModelBuilder, Subgraph]:
    """A :class:`ModelBuilder` with the standard :data:`METADATA` and an empty ``main`` subgraph."""
    mb = ModelBuilder(description)
    for name, data in METADATA.items():
        mb.add_metadata(name, data)
    return mb, mb.add_subgraph("main")


def _finish(mb: ModelBuilder, sg: Subgraph, inputs: Mapping[str, int], outputs: Mapping[str, int],
            external_buffers: bool = False) -> bytes:
    """Set ``sg``'s inputs/outputs, add the ``serving_default`` signature and serialise."""
    sg.inputs = list(inputs.values())
    sg.outputs = list(outputs.values())
    mb.add_signature(sg, inputs, outputs)
    return mb.build(external_buffers=external_buffers)


def _float_operand(sg: Subgraph, name: str, value: np.ndarray, dtype: str) -> int:
    """A float constant; for ``'float16'`` stored as float16 behind a DEQUANTIZE (as the converter does)."""
    if dtype != "float16":
        return sg.add_constant(name, value.astype(np.float32))
    half = sg.add_constant(name, value.astype(np.float16))
    dequantized = sg.add_tensor(f"{name}/dequantize", value.shape, "float32")
    sg.add_operator("DEQUANTIZE", [half], [dequantized])
    return dequantized


def _layer_operands(sg: Subgraph, layer: Layer, dtype: str, input_scale: float | None,
                    output_shape: tuple[int, ...]) -> list[int]:
    """Constant operands after the data input: the shape of a RESHAPE, or weight and bias."""
    if isinstance(layer, Flatten):
        return [sg.add_constant(f"{layer.name}/shape", np.array(output_shape, dtype=np.int32))]
    if not hasattr(layer, "weight"):
        return []
    name, axis = layer.name, layer.quantized_dimension
    quantized = dtype == "int8" or (dtype == "dynamic_int8" and layer.weight.size >= DYNAMIC_RANGE_MIN_ELEMENTS)
    if not quantized:
        return [_float_operand(sg, f"{name}/weights", layer.weight, dtype),
                _float_operand(sg, f"{name}/bias", layer.bias, dtype)]
    codes, scale = quantize_per_channel(layer.weight, axis)
    zeros = [0] * len(scale)
    weight = sg.add_constant(f"{name}/weights", codes, quantization=Quantization(scale, zeros, axis))
    if dtype == "dynamic_int8":
        return [weight, _float_operand(sg, f"{name}/bias", layer.bias, "float32")]
    bias_scale = (input_scale * scale.astype(np.float64)).astype(np.float32)
    bias_codes = np.round(layer.bias / bias_scale).astype(np.int32)
    bias = sg.add_constant(f"{name}/bias", bias_codes, quantization=Quantization(bias_scale, zeros))
    return [weight, bias]


def sequential_model(layers: Sequence[Layer], input_shape: Sequence[int], dtype: str = "float32", *,
                     calibration: np.ndarray | None = None, description: str = "tflite-cluster test model",
                     external_buffers: bool = False) -> bytes:
    """Export a layer stack as a .tflite model with one input ``'input'`` and one output ``'output'``.

    ``dtype``: ``'float32'``; ``'float16'`` (float16 weights and biases behind DEQUANTIZE ops);
    ``'dynamic_int8'`` (float activations, per-channel int8 weights for weights of at least
    :data:`DYNAMIC_RANGE_MIN_ELEMENTS` elements, consumed directly by the op); ``'int8'``
    (full integer: int8 input/output/activations, per-channel int8 weights, int32 biases with
    scale ``input_scale * weight_scale[c]``). Activation ranges for int8 come from running
    :func:`reference_forward` on ``calibration`` (default: 64 seeded samples uniform in [-1, 1]).
    """
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, not {dtype!r}")
    input_shape = tuple(input_shape)
    if calibration is None:
        calibration = np.random.default_rng(0).uniform(-1, 1, (64, *input_shape[1:]))
    activations = [np.asarray(calibration, dtype=np.float32)]
    for layer in layers:
        activations.append(layer.forward(activations[-1]))
    integer = dtype == "int8"
    activation_type = "int8" if integer else "float32"

    mb, sg = new_model(description)
    quant = activation_quantization(activations[0]) if integer else None
    input_tensor = x = sg.add_tensor("input", input_shape, activation_type, quantization=quant)
    for layer, values in zip(layers, activations[1:]):
        output_shape = (input_shape[0], *values.shape[1:])
        input_scale = quant.scale[0] if integer else None
        if integer and not isinstance(layer, Flatten):  # RESHAPE keeps its input's parameters
            quant = SOFTMAX_INT8_QUANTIZATION if isinstance(layer, Softmax) else activation_quantization(values)
        y = sg.add_tensor(f"{layer.name}/output", output_shape, activation_type, quantization=quant)
        operands = _layer_operands(sg, layer, dtype, input_scale, output_shape)
        options = layer.options()
        if dtype == "dynamic_int8" and isinstance(layer, FullyConnected):
            options["asymmetric_quantize_inputs"] = True
        sg.add_operator(layer.op, [x, *operands], [y], options)
        x = y
    return _finish(mb, sg, {"input": input_tensor}, {"output": x}, external_buffers)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------

CONV_INPUT_SHAPE = (1, 8, 8, 8)
MLP_INPUT_SHAPE = (1, 64)


def _normal(rng: np.random.Generator, shape: Sequence[int], fan_in: int) -> np.ndarray:
    """He-scaled normal weights (float32)."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def conv_layers(seed: int = 0) -> list[Layer]:
    """CONV_2D (OHWI [16,3,3,8], 1152 weights) relu -> DEPTHWISE_CONV_2D ([1,3,3,16], 144 weights:
    the small one) relu -> RESHAPE -> FULLY_CONNECTED ([10,1024]); input [1,8,8,8]."""
    rng = np.random.default_rng(seed)
    return [
        Conv2D(_normal(rng, (16, 3, 3, 8), 72), _bias(rng, 16), activation="RELU", name="conv"),
        DepthwiseConv2D(_normal(rng, (1, 3, 3, 16), 9), _bias(rng, 16), activation="RELU", name="depthwise"),
        Flatten(name="flatten"),
        FullyConnected(_normal(rng, (10, 1024), 1024), _bias(rng, 10), name="dense"),
    ]


def mlp_layers(seed: int = 0) -> list[Layer]:
    """FULLY_CONNECTED [128,64] relu -> FULLY_CONNECTED [10,128]; input [1,64]."""
    rng = np.random.default_rng(seed)
    return [
        FullyConnected(_normal(rng, (128, 64), 64), _bias(rng, 128), activation="RELU", name="dense_1"),
        FullyConnected(_normal(rng, (10, 128), 128), _bias(rng, 10), name="dense_2"),
    ]


def conv_model(dtype: str = "float32", seed: int = 0) -> bytes:
    """:func:`conv_layers` exported in ``dtype`` (see :func:`sequential_model`)."""
    return sequential_model(conv_layers(seed), CONV_INPUT_SHAPE, dtype,
                            description=f"tflite-cluster conv {dtype}")


def mlp_model(dtype: str = "float32", seed: int = 0) -> bytes:
    """:func:`mlp_layers` exported in ``dtype`` (see :func:`sequential_model`)."""
    return sequential_model(mlp_layers(seed), MLP_INPUT_SHAPE, dtype,
                            description=f"tflite-cluster mlp {dtype}")


def external_buffer_model(seed: int = 0) -> bytes:
    """``conv_model('float32')`` with its constant data stored after the FlatBuffer (offset/size)."""
    return sequential_model(conv_layers(seed), CONV_INPUT_SHAPE, "float32",
                            description="tflite-cluster conv float32 external buffers",
                            external_buffers=True)


def transpose_conv_model(seed: int = 0) -> bytes:
    """[1,4,4,16] -> TRANSPOSE_CONV (weights OHWI [8,3,3,16], stride 2, SAME, bias [8]) -> [1,8,8,8].
    Input 0 of TRANSPOSE_CONV is the constant output shape, input 1 the weights."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster transpose conv")
    x = sg.add_tensor("input", (1, 4, 4, 16))
    shape = sg.add_constant("transpose_conv/output_shape", np.array([1, 8, 8, 8], dtype=np.int32))
    w = sg.add_constant("transpose_conv/weights", _normal(rng, (8, 3, 3, 16), 36))
    b = sg.add_constant("transpose_conv/bias", _bias(rng, 8))
    y = sg.add_tensor("transpose_conv/output", (1, 8, 8, 8))
    sg.add_operator("TRANSPOSE_CONV", [shape, w, x, b], [y], {"padding": "SAME", "stride_w": 2, "stride_h": 2})
    return _finish(mb, sg, {"input": x}, {"output": y})


def conv3d_model(seed: int = 0) -> bytes:
    """[1,4,6,6,4] -> CONV_3D (weights DHWIO [3,3,3,4,16], SAME, bias [16]) relu -> [1,4,6,6,16]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster conv3d")
    x = sg.add_tensor("input", (1, 4, 6, 6, 4))
    w = sg.add_constant("conv3d/weights", _normal(rng, (3, 3, 3, 4, 16), 108))
    b = sg.add_constant("conv3d/bias", _bias(rng, 16))
    y = sg.add_tensor("conv3d/output", (1, 4, 6, 6, 16))
    sg.add_operator("CONV_3D", [x, w, b], [y], {"padding": "SAME", "fused_activation_function": "RELU"})
    return _finish(mb, sg, {"input": x}, {"output": y})


def batch_matmul_model(seed: int = 0) -> bytes:
    """[1,4,64] x constant [64,32] -> BATCH_MATMUL -> [1,4,32]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster batch matmul")
    x = sg.add_tensor("input", (1, 4, 64))
    w = sg.add_constant("matmul/rhs", _normal(rng, (64, 32), 64))
    y = sg.add_tensor("matmul/output", (1, 4, 32))
    sg.add_operator("BATCH_MATMUL", [x, w], [y], {"adj_x": False, "adj_y": False})
    return _finish(mb, sg, {"input": x}, {"output": y})


def embedding_model(seed: int = 0) -> bytes:
    """int32 ids [4] (values in [0, 100)) -> EMBEDDING_LOOKUP of a constant float table [100,32] -> [4,32]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster embedding lookup")
    ids = sg.add_tensor("ids", (4,), "int32")
    table = sg.add_constant("embedding/table", rng.standard_normal((100, 32)).astype(np.float32))
    y = sg.add_tensor("embedding/output", (4, 32))
    sg.add_operator("EMBEDDING_LOOKUP", [ids, table], [y])
    return _finish(mb, sg, {"ids": ids}, {"output": y})


def gather_model(seed: int = 0) -> bytes:
    """GATHER (axis 0) of a constant float table [50,64] at int32 indices [6] (values in [0, 50)) -> [6,64]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster gather")
    params = sg.add_constant("gather/params", rng.standard_normal((50, 64)).astype(np.float32))
    indices = sg.add_tensor("indices", (6,), "int32")
    y = sg.add_tensor("gather/output", (6, 64))
    sg.add_operator("GATHER", [params, indices], [y], {"axis": 0})
    return _finish(mb, sg, {"indices": indices}, {"output": y})


def lstm_model(seed: int = 0) -> bytes:
    """[1,5,32] -> UNIDIRECTIONAL_SEQUENCE_LSTM (32 cells, no peephole/projection; eight weight
    matrices [32,32]) -> [1,5,32]. State tensors are variable tensors, zeroed by LiteRT."""
    rng = np.random.default_rng(seed)
    n_input = n_cell = 32
    mb, sg = new_model("tflite-cluster lstm")
    x = sg.add_tensor("input", (1, 5, n_input))
    gates = ("input", "forget", "cell", "output")
    w_in = [sg.add_constant(f"lstm/input_to_{g}_weights", _normal(rng, (n_cell, n_input), 2 * n_input))
            for g in gates]
    w_rec = [sg.add_constant(f"lstm/recurrent_to_{g}_weights", _normal(rng, (n_cell, n_cell), 2 * n_cell))
             for g in gates]
    biases = [sg.add_constant(f"lstm/{g}_gate_bias", (np.ones if g == "forget" else np.zeros)(n_cell, np.float32))
              for g in gates]
    output_state = sg.add_tensor("lstm/output_state", (1, n_cell), is_variable=True)
    cell_state = sg.add_tensor("lstm/cell_state", (1, n_cell), is_variable=True)
    y = sg.add_tensor("lstm/output", (1, 5, n_cell))
    no_peephole, no_projection, no_layer_norm = [-1] * 3, [-1] * 2, [-1] * 4
    inputs = [x, *w_in, *w_rec, *no_peephole, *biases, *no_projection, output_state, cell_state, *no_layer_norm]
    sg.add_operator("UNIDIRECTIONAL_SEQUENCE_LSTM", inputs, [y],
                    {"fused_activation_function": "TANH", "time_major": False})
    return _finish(mb, sg, {"input": x}, {"output": y})


def rnn_model(seed: int = 0) -> bytes:
    """[1,5,32] -> UNIDIRECTIONAL_SEQUENCE_RNN (weights [32,32], recurrent weights [32,32], tanh) -> [1,5,32]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster rnn")
    x = sg.add_tensor("input", (1, 5, 32))
    w = sg.add_constant("rnn/weights", _normal(rng, (32, 32), 64))
    r = sg.add_constant("rnn/recurrent_weights", _normal(rng, (32, 32), 64))
    b = sg.add_constant("rnn/bias", _bias(rng, 32))
    hidden = sg.add_tensor("rnn/hidden_state", (1, 32), is_variable=True)
    y = sg.add_tensor("rnn/output", (1, 5, 32))
    sg.add_operator("UNIDIRECTIONAL_SEQUENCE_RNN", [x, w, r, b, hidden], [y],
                    {"fused_activation_function": "TANH", "time_major": False})
    return _finish(mb, sg, {"input": x}, {"output": y})


def _dense(sg: Subgraph, x: int, weight: int, bias: int, units: int, name: str, activation: str = "NONE") -> int:
    """Append FULLY_CONNECTED(x, weight, bias) and return its [1, units] float output."""
    y = sg.add_tensor(f"{name}/output", (1, units))
    sg.add_operator("FULLY_CONNECTED", [x, weight, bias], [y], {"fused_activation_function": activation})
    return y


def shared_buffer_model(seed: int = 0) -> bytes:
    """[1,64] -> four FULLY_CONNECTED [64,64]. ``dense_a/weights`` and ``dense_b/weights`` are two
    tensors on one buffer; tensor ``dense_cd/weights`` is consumed by both ``dense_c`` and ``dense_d``."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster shared buffers")
    x = sg.add_tensor("input", (1, 64))
    shared = mb.add_buffer(_normal(rng, (64, 64), 64))
    w_a = sg.add_tensor("dense_a/weights", (64, 64), buffer=shared)
    w_b = sg.add_tensor("dense_b/weights", (64, 64), buffer=shared)
    w_cd = sg.add_constant("dense_cd/weights", _normal(rng, (64, 64), 64))
    h = x
    for name, w, activation in (("dense_a", w_a, "RELU"), ("dense_b", w_b, "RELU"),
                                ("dense_c", w_cd, "RELU"), ("dense_d", w_cd, "NONE")):
        h = _dense(sg, h, w, sg.add_constant(f"{name}/bias", _bias(rng, 64)), 64, name, activation)
    return _finish(mb, sg, {"input": x}, {"output": h})


def multi_subgraph_model(seed: int = 0) -> bytes:
    """Weights in three subgraphs. ``main``: [1,32] -> FULLY_CONNECTED [64,32] -> h; IF sum(h) > 0
    then subgraph 1 (FULLY_CONNECTED [16,64]) else subgraph 2 (FULLY_CONNECTED [16,64] -> TANH) -> [1,16]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster multi subgraph")
    x = sg.add_tensor("input", (1, 32))
    h = _dense(sg, x, sg.add_constant("main/dense/weights", _normal(rng, (64, 32), 32)),
               sg.add_constant("main/dense/bias", _bias(rng, 64)), 64, "main/dense")
    total = sg.add_tensor("main/sum", (1,))
    sg.add_operator("SUM", [h, sg.add_constant("main/sum/axis", np.array([1], dtype=np.int32))], [total],
                    {"keep_dims": False})
    cond = sg.add_tensor("main/cond", (1,), "bool")
    sg.add_operator("GREATER", [total, sg.add_constant("main/zero", np.zeros(1, np.float32))], [cond])
    y = sg.add_tensor("main/if/output", (1, 16))
    for name, activation in (("then", None), ("else", "TANH")):
        branch = mb.add_subgraph(name)
        bh = branch.add_tensor("input", (1, 64))
        out = _dense(branch, bh, branch.add_constant(f"{name}/dense/weights", _normal(rng, (16, 64), 64)),
                     branch.add_constant(f"{name}/dense/bias", _bias(rng, 16)), 16, f"{name}/dense")
        if activation:
            activated = branch.add_tensor(f"{name}/{activation.lower()}", (1, 16))
            branch.add_operator(activation, [out], [activated])
            out = activated
        branch.inputs, branch.outputs = [bh], [out]
    sg.add_operator("IF", [cond, h], [y], {"then_subgraph_index": 1, "else_subgraph_index": 2})
    return _finish(mb, sg, {"input": x}, {"output": y})


def streaming_model(seed: int = 0) -> bytes:
    """A streaming net keeping the last 3 input frames in a resource variable (like microWakeWord).

    Subgraph 1 (``init``), run once through CALL_ONCE: VAR_HANDLE ``state`` + ASSIGN_VARIABLE zeros.
    ``main``: frame [1,1,16] -> READ_VARIABLE state [1,3,16] -> CONCATENATION (axis 1) [1,4,16];
    STRIDED_SLICE of the last 3 frames -> ASSIGN_VARIABLE; the window -> FULLY_CONNECTED [32,64]
    relu -> FULLY_CONNECTED [4,32] (the small weight) -> [1,4]. State carries over between invokes.
    """
    rng = np.random.default_rng(seed)
    frames, features = 3, 16
    mb, sg = new_model("tflite-cluster streaming")
    init = mb.add_subgraph("init")
    init_handle = init.add_tensor("state/handle", (), "resource")
    init.add_operator("VAR_HANDLE", [], [init_handle], {"container": "", "shared_name": "state"})
    zeros = init.add_constant("state/zeros", np.zeros((1, frames, features), np.float32))
    init.add_operator("ASSIGN_VARIABLE", [init_handle, zeros], [])

    x = sg.add_tensor("input", (1, 1, features))
    sg.add_operator("CALL_ONCE", [], [], {"init_subgraph_index": init.index})
    handle = sg.add_tensor("state/handle", (), "resource")
    sg.add_operator("VAR_HANDLE", [], [handle], {"container": "", "shared_name": "state"})
    state = sg.add_tensor("state/read", (1, frames, features))
    sg.add_operator("READ_VARIABLE", [handle], [state])
    window = sg.add_tensor("stream/concat", (1, frames + 1, features))
    sg.add_operator("CONCATENATION", [state, x], [window], {"axis": 1})
    new_state = sg.add_tensor("stream/new_state", (1, frames, features))
    slice_args = [sg.add_constant(f"stream/slice/{name}", np.array(value, dtype=np.int32)) for name, value in
                  (("begin", [0, 1, 0]), ("end", [1, frames + 1, features]), ("strides", [1, 1, 1]))]
    sg.add_operator("STRIDED_SLICE", [window, *slice_args], [new_state])
    sg.add_operator("ASSIGN_VARIABLE", [handle, new_state], [])
    h = _dense(sg, window, sg.add_constant("dense_1/weights", _normal(rng, (32, (frames + 1) * features), 64)),
               sg.add_constant("dense_1/bias", _bias(rng, 32)), 32, "dense_1", "RELU")
    y = _dense(sg, h, sg.add_constant("dense_2/weights", _normal(rng, (4, 32), 32)),
               sg.add_constant("dense_2/bias", _bias(rng, 4)), 4, "dense_2")
    return _finish(mb, sg, {"input": x}, {"output": y})


def csr_sparsity(dense: np.ndarray) -> tuple[np.ndarray, Sparsity]:
    """Nonzero values (row-major) and CSR ``Sparsity`` of a 2-D array: dimension 0 DENSE,
    dimension 1 SPARSE_CSR, as the converter writes a pruned weight without blocks."""
    rows, cols = np.nonzero(dense)
    segments = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    sparsity = Sparsity(traversal_order=(0, 1), dim_metadata=(
        DimensionMetadata("DENSE", dense_size=dense.shape[0]),
        DimensionMetadata("SPARSE_CSR", segments=segments.tolist(), indices=cols.tolist())))
    return dense[rows, cols], sparsity


def sparse_model(seed: int = 0) -> bytes:
    """[1,64] -> FULLY_CONNECTED whose weights [32,64] (75 % zeros) are stored CSR-sparse and
    expanded by DENSIFY -> [1,32]."""
    rng = np.random.default_rng(seed)
    mb, sg = new_model("tflite-cluster sparse")
    dense = _normal(rng, (32, 64), 16) * (rng.random((32, 64)) < 0.25)
    values, sparsity = csr_sparsity(dense)
    x = sg.add_tensor("input", (1, 64))
    packed = sg.add_tensor("dense/weights", dense.shape, "float32", buffer=mb.add_buffer(values),
                           sparsity=sparsity)
    weights = sg.add_tensor("dense/weights/densify", dense.shape)
    sg.add_operator("DENSIFY", [packed], [weights])
    y = _dense(sg, x, weights, sg.add_constant("dense/bias", _bias(rng, 32)), 32, "dense")
    return _finish(mb, sg, {"input": x}, {"output": y})


ALL_FACTORIES: dict[str, Callable[[], bytes]] = {
    **{f"conv_{dtype}": (lambda dtype=dtype: conv_model(dtype)) for dtype in WEIGHT_DTYPES},
    **{f"mlp_{dtype}": (lambda dtype=dtype: mlp_model(dtype)) for dtype in WEIGHT_DTYPES},
    "transpose_conv": transpose_conv_model,
    "conv3d": conv3d_model,
    "batch_matmul": batch_matmul_model,
    "embedding": embedding_model,
    "gather": gather_model,
    "lstm": lstm_model,
    "rnn": rnn_model,
    "shared_buffer": shared_buffer_model,
    "multi_subgraph": multi_subgraph_model,
    "streaming": streaming_model,
    "sparse": sparse_model,
    "external_buffer": external_buffer_model,
}
"""Every factory model, by name; each loads and runs in LiteRT (inputs: see :func:`random_input`)."""


def random_input(shape: Sequence[int], dtype, rng: np.random.Generator) -> np.ndarray:
    """A valid random input for a factory model: floats ~ N(0, 1), int8/uint8 over their whole
    range, int32/int64 (ids, indices) in [0, 10), booleans fair."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype in (np.int8, np.uint8):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    if dtype.kind == "i":
        return rng.integers(0, 10, shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    raise ValueError(f"no random input for dtype {dtype}")
