"""Clustering spaces and granularity: stored weights <-> rows the kernels cluster.

* int8 space: the stored integer codes themselves (scales and zero points unchanged).
* float space: real values. float32/float16 as stored; int8/uint8 dequantized with their own
  (per-channel) scales and zero points, and re-quantized afterwards.

Granularity turns a tensor into 2-D rows, one clustering problem per row: the whole tensor, one
output channel, or a group of G consecutive channels (the last group may be smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # the compiled kernel's radix-sort count (optional; np.unique otherwise)
    from ._dp import count32 as _count32
except ImportError:  # pragma: no cover - depends on the build
    _count32 = None

from .config import Granularity, Space

INTEGER_DTYPES = {"int8": (-128, 127), "uint8": (0, 255)}
_SUM_CHUNK = 1 << 20  # values per chunk of error_sums


def distinct_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. float16 is compared as float32 (exact): numpy 2.4's np.unique
    returns duplicates for some large float16 arrays."""
    values = np.asarray(values)
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    return np.unique(values)


def count_distinct(values: np.ndarray) -> int:
    """Number of distinct values (as numbers: -0.0 counts as 0.0; no NaN expected). O(n) for
    8- and 16-bit types (a histogram of the bit patterns) and, with the compiled kernel, for
    4-byte types (a radix sort)."""
    values = np.ascontiguousarray(values)
    if values.dtype in (np.int8, np.uint8):
        return int(np.count_nonzero(np.bincount(values.view(np.uint8).ravel(), minlength=256)))
    if values.dtype in (np.float16, np.int16, np.uint16):
        bits = values.view(np.uint16).ravel()
        hist = np.bincount(bits, minlength=1 << 16)
        if values.dtype == np.float16:
            hist[0] += hist[0x8000]  # -0.0 is 0.0
            hist[0x8000] = 0
        return int(np.count_nonzero(hist))
    if values.dtype in (np.float32, np.int32, np.uint32) and _count32 is not None:
        return int(_count32(values.view(np.uint32), values.dtype == np.float32))
    return int(distinct_values(values).size)


def effective_space(space: Space, dtype: str) -> Space:
    """``auto`` means int8 for integer weights, float otherwise."""
    if space == Space.AUTO:
        return Space.INT8 if dtype in INTEGER_DTYPES else Space.FLOAT
    return space


def _per_channel(values, shape, axis):
    """Broadcast a per-channel vector along ``axis`` of ``shape``."""
    view = [1] * len(shape)
    view[axis] = -1
    return np.asarray(values, dtype=np.float64).reshape(view)


def real_values(stored: np.ndarray, dtype: str, quant) -> np.ndarray:
    """Real (float64) values of stored weights: dequantized when quantized."""
    x = stored.astype(np.float64)
    if dtype in INTEGER_DTYPES and quant is not None:
        if len(quant.scales) > 1:
            scale = _per_channel(quant.scales, stored.shape, quant.axis)
            zp = _per_channel(quant.zero_points or [0] * len(quant.scales), stored.shape, quant.axis)
        else:
            scale, zp = quant.scales[0], (quant.zero_points[0] if quant.zero_points else 0)
        x = (x - zp) * scale
    return x


def error_sums(stored: np.ndarray, new: np.ndarray, dtype: str, quant) -> tuple[float, float]:
    """(sum of squared errors of ``new`` against ``stored``, sum of squares of ``stored``), in
    real values. Float weights are summed in chunks, so no float64 copy of a big tensor is
    made; quantized ones (whose scales follow the tensor's shape) in one piece."""
    if dtype in INTEGER_DTYPES:
        ref = real_values(stored, dtype, quant).ravel()
        err = real_values(new, dtype, quant).ravel()
        err -= ref
        return _dot(err, err), _dot(ref, ref)
    a, b = stored.reshape(-1), new.reshape(-1)
    sse = signal = 0.0
    for i in range(0, a.size, _SUM_CHUNK):
        ref = a[i:i + _SUM_CHUNK].astype(np.float64)
        err = b[i:i + _SUM_CHUNK].astype(np.float64)
        err -= ref
        sse += _dot(err, err)
        signal += _dot(ref, ref)
    return sse, signal


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of 1-D arrays without BLAS: a BLAS call wakes its worker threads, which then
    spin for a while and take cores from the clustering kernels."""
    return float(np.einsum("i,i->", a, b))


def to_space(stored: np.ndarray, dtype: str, quant, space: Space) -> np.ndarray:
    """Values to cluster: the integer codes in int8 space, in their stored type (the kernels
    read 8 to 32-bit codes as they are: no int64 copy); in float space the real values, float32
    weights as they are (the kernels take float32 rows, and every float32 is exact in float64:
    no copy) and the others as float64."""
    if space == Space.INT8:
        return stored if stored.dtype.kind in "iu" else stored.astype(np.int64)
    if dtype == "float32":
        return stored
    return real_values(stored, dtype, quant)


def from_space(values: np.ndarray, dtype: str, quant, space: Space) -> np.ndarray:
    """Clustered values back in the storage dtype (centroids rounded / re-quantized)."""
    if dtype in INTEGER_DTYPES:
        lo, hi = INTEGER_DTYPES[dtype]
        if space == Space.FLOAT and quant is not None:
            if len(quant.scales) > 1:
                scale = _per_channel(quant.scales, values.shape, quant.axis)
                zp = _per_channel(quant.zero_points or [0] * len(quant.scales), values.shape, quant.axis)
            else:
                scale, zp = quant.scales[0], (quant.zero_points[0] if quant.zero_points else 0)
            values = np.round(values / scale) + zp
        return np.clip(np.round(values), lo, hi).astype(dtype)
    return values.astype(dtype)


@dataclass(frozen=True)
class Rows:
    """How a tensor was cut into rows, so the rows can be put back."""

    shape: tuple[int, ...]
    axis: int | None  # channel axis moved to the front, or None for the whole tensor
    group: int  # channels per row (C for tensor granularity on a channel layout)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        """2-D blocks of rows (a second block when the last group is smaller)."""
        if self.axis is None:
            return [x.reshape(1, -1)]
        a = np.moveaxis(x.reshape(self.shape), self.axis, 0)
        channels = a.shape[0]
        flat = a.reshape(channels, -1)
        full = channels // self.group * self.group
        blocks = [flat[:full].reshape(channels // self.group, -1)] if full else []
        if full < channels:
            blocks.append(flat[full:].reshape(1, -1))
        return blocks

    def join(self, blocks: list[np.ndarray]) -> np.ndarray:
        if self.axis is None:
            return blocks[0].reshape(self.shape)
        channels = self.shape[self.axis]
        flat = (blocks[0] if len(blocks) == 1 else
                np.concatenate([b.reshape(-1) for b in blocks])).reshape(channels, -1)
        moved = (channels,) + self.shape[:self.axis] + self.shape[self.axis + 1:]
        return np.ascontiguousarray(np.moveaxis(flat.reshape(moved), 0, self.axis))


def make_rows(shape: tuple[int, ...], granularity: Granularity, axis: int | None,
              group_size: int | None) -> Rows:
    if granularity == Granularity.TENSOR or axis is None or not shape:
        return Rows(tuple(shape), None, 1)
    group = 1 if granularity == Granularity.CHANNEL else min(group_size or 1, shape[axis])
    return Rows(tuple(shape), axis, group)
