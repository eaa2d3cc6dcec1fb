"""The main job: select weights, cluster each buffer once, patch them into a copy of the model.

``cluster(model, config)`` reads the model (path or bytes), resolves the settings of every
candidate weight, clusters the selected ones with the kernels in :mod:`kmeans`, writes the
snapped values into a same-length copy of the file, re-parses that copy, and returns a
:class:`ClusterResult` with the new bytes and a :class:`ClusterReport`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import kmeans, model as tfl
from .config import ClusterConfig, Granularity, Settings, Space
from .errors import ConfigError, InvalidModelError, UnsupportedModelError
from .fileio import Patches, map_file, release_pages, write_atomic
from .quant import count_distinct, effective_space, error_sums, from_space, make_rows, to_space

Progress = Callable[[int, int, str], None]

# Skip reasons that are a deliberate choice; every other skip of a selected tensor is a
# problem that --strict turns into a failure.
_DELIBERATE = ("skipped by config", "fewer than min_elements")


@dataclass(frozen=True)
class TensorReport:
    name: str
    subgraph: int
    tensor: int
    buffer: int
    op: str
    ops: list
    dtype: str
    shape: list
    elements: int
    clusters: int | None
    granularity: str | None
    space: str | None
    method: str | None
    unique_before: int
    unique_after: int
    mse: float | None
    sqnr_db: float | None  # None when nothing changed (lossless)
    skipped: str | None
    rules: list = field(default_factory=list)
    shared_with: list = field(default_factory=list)
    note: str | None = None
    # optimal method: 0.0 when solved exactly, else the certified bound on the relative excess
    # of the SSE over the optimum (at most the tolerance); None when not recorded (other
    # methods, weights the automatic search computed)
    optimality_gap: float | None = None

    @property
    def problem(self) -> bool:
        """A selected tensor that was skipped for a reason other than the user's choice."""
        return self.skipped is not None and not self.skipped.startswith(_DELIBERATE)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClusterReport:
    model: str
    config: dict
    tensors: tuple[TensorReport, ...]
    unmatched_rules: tuple[str, ...]
    size: int
    seconds: float

    @property
    def clustered(self) -> tuple[TensorReport, ...]:
        return tuple(t for t in self.tensors if t.skipped is None)

    @property
    def problems(self) -> tuple[str, ...]:
        """Findings --strict turns into a failure."""
        out = [f"rule {r} matched no tensor" for r in self.unmatched_rules]
        out += [f"tensor '{t.name}' skipped: {t.skipped}" for t in self.tensors if t.problem]
        return tuple(out)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "config": self.config,
            "size": self.size,
            "seconds": round(self.seconds, 6),
            "unmatched_rules": list(self.unmatched_rules),
            "tensors": [t.to_dict() for t in self.tensors],
        }


class ClusterResult:
    """The clustered model: the input plus patches, and the report.

    ``data`` builds the new model's bytes on first use; ``save`` streams the input into the
    output file and writes the patches over it, so a multi-GB model is never held in memory.
    """

    def __init__(self, source, label: str, patches: Patches, report: ClusterReport) -> None:
        self._source = source  # bytes, or the input's Path
        self._label = label
        self._patches = patches
        self.report = report
        self._data: bytes | None = None

    def _verify(self, data) -> None:
        tfl.parse(data, f"{self._label} (clustered)")

    @property
    def data(self) -> bytes:
        if self._data is None:
            src = self._source.read_bytes() if isinstance(self._source, Path) else self._source
            out = self._patches.apply(src) if len(self._patches) else src
            self._verify(out)
            self._data = out
        return self._data

    def save(self, path: str | Path, *, overwrite: bool = False, mode: int | None = None) -> None:
        """Write the model atomically (temp file in the target folder, fsync, re-parse, rename)."""
        if self._data is not None or not isinstance(self._source, Path):
            write_atomic(path, self.data, overwrite=overwrite, mode=mode)
        else:
            write_atomic(path, source=self._source, patches=self._patches, overwrite=overwrite,
                         mode=mode, verify=self._verify)


def open_model(model) -> tuple[object, str]:
    """Model bytes (memory-mapped read-only for a path) and a label for messages."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), "<bytes>"
    if isinstance(model, (str, Path)):
        return map_file(model), str(model)
    raise TypeError(f"model must be a path or bytes, not {type(model).__name__}")


def load(model) -> tuple[bytes, str]:
    """Model bytes (read into memory) and a label for messages."""
    data, label = open_model(model)
    return bytes(data), label


def skip_reason(w: tfl.WeightTensor, s: Settings, applied: list[str]) -> str | None:
    if s.skip:
        return f"skipped by config ({', '.join(applied) or 'global'})"
    if w.dtype not in tfl.CLUSTERABLE_DTYPES:
        return f"dtype {w.dtype} is not clusterable"
    if w.elements < s.min_elements and not w.sparse:
        return f"fewer than min_elements ({w.elements} < {s.min_elements})"
    if effective_space(s.space, w.dtype) == Space.INT8 and w.dtype not in ("int8", "uint8"):
        return f"space int8 needs integer weights, this tensor is {w.dtype}"
    if w.dtype in ("int8", "uint8") and effective_space(s.space, w.dtype) == Space.FLOAT \
            and w.quantization is None:
        return "space float needs quantization scales, this integer tensor has none"
    return None


def resolve_all(info: tfl.ModelInfo, config: ClusterConfig):
    """Settings per weight (checked across shared buffers) and the rules that matched nothing."""
    used = set()
    resolved = []
    for w in info.weights:
        s, applied = config.resolve(w.name, w.op_types)
        for _sg, _t, alias in w.aliases:
            s2, applied2 = config.resolve(alias, w.op_types)
            if s2 != s:
                raise ConfigError(f"buffer {w.buffer} is shared by tensors '{w.name}' and '{alias}' "
                                  f"whose configs conflict")
            applied = list(dict.fromkeys(applied + applied2))
        used.update(applied)
        resolved.append((w, s, applied))
    rules = [f"op_types.{op}" for op in config.op_types] + [f"names[{i}]" for i in range(len(config.names))]
    unmatched = tuple(r if r.startswith("op_types") else f"{r} ({config.names[int(r[6:-1])].regex!r})"
                      for r in rules if r not in used)
    return resolved, unmatched


def _cluster_tensor(stored, w: tfl.WeightTensor, s: Settings, config: ClusterConfig, snap=None):
    """Cluster one weight; returns (new stored array, note). ``snap``: kernel (default
    :func:`kmeans.snap_rows`)."""
    snap = snap or kmeans.snap_rows
    space = effective_space(s.space, w.dtype)
    note = None
    if w.sparse:
        granularity, axis = Granularity.TENSOR, None
        if s.granularity != Granularity.TENSOR:
            note = "sparse tensor: clustered per tensor over its stored values"
    else:
        granularity = s.granularity
        axis = w.channel_axis()
        if axis is None and granularity != Granularity.TENSOR:
            raise UnsupportedModelError(w.name, "no single output-channel axis (used by ops with "
                                                "different layouts); use granularity tensor")
    rows = make_rows(stored.shape, granularity, axis, s.group_size or config.group_size)
    values = to_space(stored, w.dtype, w.quantization, space)
    gap = 0.0
    blocks = []
    for block in rows.split(values):
        info = {}
        try:
            blocks.append(snap(block, s.k, method=s.method.value, integer=space == Space.INT8,
                               zero_fixed=s.preserve_sparsity, init=s.init.value,
                               seed=config.seed, tolerance=s.tolerance, info=info))
        except kmeans.ProblemTooLarge as exc:
            raise UnsupportedModelError(w.name, f"{exc}") from None
        gap = max(gap, info.get("gap", 0.0))
    snapped = rows.join(blocks)
    if gap > 0:
        msg = (f"within {gap:.2e} of the optimal SSE (certified bound; solved on a fine grid "
               f"of its values, tolerance {s.tolerance:g})")
        note = f"{note}; {msg}" if note else msg
    return from_space(snapped, w.dtype, w.quantization, space), note, gap


def cluster_weight(data, w: tfl.WeightTensor, settings: Settings,
                   config: ClusterConfig | None = None, *, snap=None) -> np.ndarray:
    """One weight of ``data`` clustered with resolved ``settings``, as :func:`cluster` would do it.

    Returns the new stored array (the weight's dtype and shape; flat for sparse weights), the
    exact bytes ``cluster`` writes for this weight under a config resolving to ``settings``
    (``config`` gives the global seed and group size). For callers that try many settings on
    one weight without re-running the pipeline (the automatic search). Raises
    :class:`UnsupportedModelError` when ``cluster`` would skip the weight, naming the reason.
    ``snap`` replaces the kernel :func:`kmeans.snap_rows` (same signature), e.g. with a fast
    estimate; the result is then not what ``cluster`` writes.
    """
    config = config or ClusterConfig()
    reason = skip_reason(w, settings, [])
    if reason is not None:
        raise UnsupportedModelError(w.name, reason)
    stored = tfl.read_array(data, w)
    if w.dtype in ("float32", "float16") and not np.all(np.isfinite(stored)):
        raise InvalidModelError(w.name, "has NaN or Inf weights; cannot cluster it")
    return _cluster_tensor(stored, w, settings, config, snap)[0]


def cluster(model, config: ClusterConfig | None = None, *, progress: Progress | None = None,
            precomputed=None) -> ClusterResult:
    """Cluster the weights of ``model`` (a path or the model's bytes) under ``config``.

    ``precomputed``: optional mapping buffer index -> the weight's new stored array, made by
    :func:`cluster_weight` under the settings ``config`` resolves for it (the automatic search
    passes what it already computed); used instead of clustering that weight again.
    """
    start = time.perf_counter()
    config = config or ClusterConfig()
    data, label = open_model(model)
    info = tfl.parse(data, label)
    resolved, unmatched = resolve_all(info, config)

    patches = Patches()
    reports = []
    plan = [(w, s, applied, skip_reason(w, s, applied)) for w, s, applied in resolved]

    def given(w):
        """The weight's new array when the caller computed it already, else None."""
        return None if precomputed is None or w.sparse else precomputed.get(w.buffer)

    # the weights to cluster, computed ahead on worker threads and taken in order below
    todo = [(w, s) for w, s, _, skipped in plan if skipped is None and given(w) is None]
    ahead = kmeans.map_ahead(
        lambda job: _cluster_tensor(tfl.read_array(data, job[0]), job[0], job[1], config),
        todo, sizes=[w.elements for w, _ in todo])
    try:
        _cluster_all(data, label, plan, given, ahead, patches, reports, progress)
    finally:
        ahead.close()

    report = ClusterReport(model=label, config=config.to_dict(), tensors=tuple(reports),
                           unmatched_rules=unmatched, size=info.size,
                           seconds=time.perf_counter() - start)
    source = Path(model) if isinstance(model, (str, Path)) else data
    return ClusterResult(source, label, patches, report)


def _cluster_all(data, label, plan, given, ahead, patches, reports, progress):
    """The body of :func:`cluster`: every weight of ``plan`` checked, clustered (the next result
    of ``ahead``, or given), patched and reported, in order."""
    for i, (w, s, applied, skipped) in enumerate(plan):
        if progress:
            progress(i, len(plan), w.name)
        stored = tfl.read_array(data, w)
        if skipped is None and w.dtype in ("float32", "float16") and not np.all(np.isfinite(stored)):
            raise InvalidModelError(label, f"tensor '{w.name}' (subgraph {w.subgraph}, tensor "
                                           f"{w.tensor}) has NaN or Inf weights; cannot cluster it")
        before = count_distinct(stored)
        common = dict(name=w.name, subgraph=w.subgraph, tensor=w.tensor, buffer=w.buffer,
                      op=w.uses[0].op_type, ops=[u.to_dict() for u in w.uses], dtype=w.dtype,
                      shape=list(w.shape), elements=w.elements, unique_before=before, rules=applied,
                      shared_with=[{"subgraph": a, "tensor": b, "name": n} for a, b, n in w.aliases])
        if skipped is not None:
            reports.append(TensorReport(clusters=None, granularity=None, space=None, method=None,
                                        unique_after=before, mse=None, sqnr_db=None, skipped=skipped,
                                        **common))
            continue
        try:
            new = given(w)
            if new is not None:
                note, gap = None, None
            else:
                new, note, gap = next(ahead).result()
        except UnsupportedModelError as exc:
            reports.append(TensorReport(clusters=None, granularity=None, space=None, method=None,
                                        unique_after=before, mse=None, sqnr_db=None,
                                        skipped=exc.message, **common))
            continue
        new = np.ascontiguousarray(new)
        raw = new.reshape(-1).view(np.uint8)
        if not np.array_equal(raw, np.ascontiguousarray(stored).reshape(-1).view(np.uint8)):
            patches.add(w.data_offset, raw)
        sse, signal = error_sums(stored, new, w.dtype, w.quantization)
        sqnr = None if sse == 0 else (10 * math.log10(signal / sse) if signal > 0 else -math.inf)
        reports.append(TensorReport(
            clusters=s.k, granularity=("tensor" if w.sparse else s.granularity.value),
            space=effective_space(s.space, w.dtype).value, method=s.method.value,
            unique_after=count_distinct(new), mse=sse / max(w.elements, 1), sqnr_db=sqnr,
            skipped=None, note=note,
            optimality_gap=(gap if s.method.value == "optimal" else None), **common))
        del stored, new, raw
        release_pages(data, w.data_offset, w.nbytes)
    if progress:
        progress(len(plan), len(plan), "")
