"""Look before configuring: every candidate weight tensor and what ``cluster`` would do with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import model as tfl
from .clustering import open_model, resolve_all, skip_reason
from .config import ClusterConfig
from .quant import count_distinct


@dataclass(frozen=True)
class TensorInfo:
    subgraph: int
    tensor: int
    buffer: int
    name: str
    ops: list
    dtype: str
    shape: list
    elements: int
    quantization: dict | None
    unique: int
    max_unique_per_channel: int | None
    zeros: float
    bytes: int
    external: bool
    sparse: bool
    shared_with: list
    clusterable: bool
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Inspection:
    model: str
    size: int
    subgraphs: int
    tensors: tuple[TensorInfo, ...]

    def to_dict(self) -> dict:
        return {"model": self.model, "size": self.size, "subgraphs": self.subgraphs,
                "tensors": [t.to_dict() for t in self.tensors]}


def _max_unique_per_channel(values: np.ndarray, axis: int | None) -> int | None:
    if axis is None or values.ndim == 0:
        return None
    rows = np.sort(np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1), axis=1)
    if rows.shape[1] == 0:
        return 0
    return int(((rows[:, 1:] != rows[:, :-1]).sum(axis=1) + 1).max())


def inspect(model, config: ClusterConfig | None = None) -> Inspection:
    """Every candidate weight tensor of ``model`` (path or bytes) and whether ``config``
    (default settings when None) would cluster it, and why not."""
    config = config or ClusterConfig()
    data, label = open_model(model)
    info = tfl.parse(data, label)
    resolved, _ = resolve_all(info, config)
    out = []
    for w, s, applied in resolved:
        stored = tfl.read_array(data, w)
        reason = skip_reason(w, s, applied)
        out.append(TensorInfo(
            subgraph=w.subgraph, tensor=w.tensor, buffer=w.buffer, name=w.name,
            ops=[u.to_dict() for u in w.uses], dtype=w.dtype, shape=list(w.shape),
            elements=w.elements,
            quantization=w.quantization.to_dict() if w.quantization else None,
            unique=count_distinct(stored),
            max_unique_per_channel=None if w.sparse else _max_unique_per_channel(stored, w.channel_axis()),
            zeros=float(np.mean(stored == 0)) if stored.size else 0.0, bytes=w.nbytes,
            external=w.external, sparse=w.sparse,
            shared_with=[{"subgraph": a, "tensor": b, "name": n} for a, b, n in w.aliases],
            clusterable=reason is None, reason=reason))
    return Inspection(label, info.size, info.subgraphs, tuple(out))
