"""Automatic mode: the smallest clustered model whose outputs stay within an SQNR target.

Public API::

    AutoConfig(min_sqnr_db=30.0, ladder=(4, 8, 16, 32, 64, 256), metric="deflate", ...)
    auto_plan(model, config=None, *, inputs=None, progress=None) -> AutoResult
    format_auto(result) -> str                       # the plan and the figures, for people

Goal.  Among models where every candidate weight tensor is either left alone or clustered with
one ``k`` of the ladder (at an allowed granularity), find the smallest under the size metric
whose outputs keep an SQNR of at least ``min_sqnr_db`` against the original on the calibration
inputs (the minimum over outputs, as ``compare`` reports it).

How.  Interpreter runs dominate the cost, so the search runs each candidate model once over all
samples on one fresh LiteRT interpreter, and keeps the number of runs near-linear in the
number of tensors:

1. Options.  Every candidate tensor (one per buffer; tensors sharing a name are decided together)
   gets one option per (granularity, k) of the ladder below its most distinct values per row;
   each keeps its bytes, its squared error on the real weights, and its size under the metric
   (per-tensor estimate: zlib -9 of the tensor's bytes; the ideal palette; or, for Vela,
   ``ceil(log2 d)`` bits a weight plus the palette while the tensor has at most 32 distinct
   codes, a byte a weight above that).  Small tensors and integer codes are clustered with the
   exact kernel right away (:func:`clustering.cluster_weight`, the bytes ``cluster`` writes);
   float tensors over :data:`SCREEN_ELEMENTS` elements are first screened with a fast Lloyd
   estimate, and the exact kernel runs only for the options the search picks.  Large batches
   run in a process pool (``workers``, default: the usable CPUs, at most 4).
2. Sensitivity.  Per tensor and granularity, the model with only that tensor clustered at a
   middle rung is run: output noise / weight squared error is that tensor's gain, and the other
   rungs are predicted as gain x their squared error (interpolating between measured rungs).
3. Allocation.  Output noise powers of different tensors are taken as additive: per output,
   the sum of the per-tensor noise ratios must stay under ``10^(-target/10)``.  A greedy search
   starts from the cheapest option of every tensor, buys the largest noise reduction per byte
   until every output is within budget, then takes back any upgrade the budget no longer needs.
4. Refinement.  Chosen options not measured yet are measured and the allocation is redone.
5. Verification.  The planned model is run end to end.  When the target is missed the budget
   is tightened by the measured / predicted ratio and the allocation redone (backing off the
   most sensitive tensors per byte first); with a large margin it is loosened; the search
   bisects between the two, keeping the smallest plan that passed.
6. Baseline.  One ``k`` for every candidate tensor (each allowed granularity, each rung, also
   leaving tensors under the base config's ``min_elements`` alone) is verified the same way;
   when the best uniform setting meeting the target is smaller (true size) it is taken instead,
   so the result is never larger than it.
7. The final model is made by :func:`clustering.cluster` with the plan written as a config
   (one full-match escaped names rule per weight tensor, ``min_elements`` 0), so
   ``cluster --config plan.json`` replays it byte for byte; it is checked once more with LiteRT
   and measured whole under the metric.

Calibration inputs come from ``inputs`` (an .npz path, a dict or list of arrays, as
``compare`` takes them); without them ``samples`` seeded random samples are drawn
(:func:`compare.random_inputs`) and a warning says real data is better.

Nothing here prints; progress goes to the optional ``progress(done, total, label)`` callback.
"""

from __future__ import annotations

import math
import os
import re
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import model as tfl
from .clustering import ClusterResult, cluster, cluster_weight, load, skip_reason
from .compare import Runner, json_float, random_inputs
from .config import MAX_K, ClusterConfig, Granularity, Settings, Space
from .errors import ConfigError, UnsupportedModelError
from .quant import effective_space, make_rows, real_values, to_space

__all__ = ["AutoConfig", "AutoResult", "PlanEntry", "UniformResult", "auto_plan", "format_auto",
           "DEFAULT_LADDER", "AUTO_METRICS"]

Progress = Callable[[int, int, str], None]

DEFAULT_LADDER = (4, 8, 16, 32, 64, 256)
AUTO_METRICS = ("deflate", "palette", "vela")
TARGETS = ("ethos-u",)
ETHOS_U_MAX_K = 32  # Vela's weight palette holds at most 32 values
_HUGE = 1e30  # noise ratio standing for broken outputs in the allocation
DEFAULT_VELA_CONFIG = "ethos-u55-128"


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class AutoConfig:
    """What the automatic search aims for; frozen and validated.

    * ``min_sqnr_db``: the target, the minimum output SQNR against the original (default 30).
    * ``ladder``: the k values a tensor may take (besides being left alone).
    * ``metric``: ``deflate`` (zlib -9 of the file), ``palette`` (ideal packed size) or ``vela``
      (Vela's encoded NPU weight bytes, int8 models; ``vela_config`` is the accelerator).
    * ``target``: ``None`` or ``"ethos-u"`` (int8 codes, per-tensor codebooks of at most 32
      values with zero kept, metric vela unless ``metric`` is given explicitly).
    * ``granularities``: allowed granularities; default per tensor for Ethos-U, per channel
      otherwise.  Several may be given (the search then picks per tensor).
    * ``base``: the other clustering settings (space, method, seed, preserve_sparsity,
      group_size) and, for the uniform baseline, ``min_elements``.
    * ``samples`` / ``seed``: random calibration samples when no inputs are given.
    * ``max_verify``: end-to-end verification runs of the back-off search.
    * ``refine``: rounds of measuring the chosen options before verifying.
    * ``workers``: processes for large clustering batches (default: usable CPUs, at most 4;
      1 = in this process).  ``num_threads``: LiteRT interpreter threads.
    """

    min_sqnr_db: float = 30.0
    ladder: tuple[int, ...] = DEFAULT_LADDER
    metric: str | None = None
    target: str | None = None
    vela_config: str = DEFAULT_VELA_CONFIG
    granularities: tuple[Granularity, ...] | None = None
    base: ClusterConfig = field(default_factory=ClusterConfig)
    samples: int = 32
    seed: int = 0
    max_verify: int = 8
    refine: int = 2
    uniform_baseline: bool = True
    num_threads: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        t = self.min_sqnr_db
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ConfigError(f"min_sqnr_db: expected a finite number of dB, got {t!r}")
        object.__setattr__(self, "min_sqnr_db", float(t))
        if self.target is not None and self.target not in TARGETS:
            raise ConfigError(f"target {self.target!r} is not one of {', '.join(TARGETS)}")
        metric = self.metric
        if metric is None:
            metric = "vela" if self.target == "ethos-u" else "deflate"
        if metric not in AUTO_METRICS:
            raise ConfigError(f"metric {metric!r} is not one of {', '.join(AUTO_METRICS)}")
        object.__setattr__(self, "metric", metric)
        ladder = tuple(self.ladder)
        if not ladder:
            raise ConfigError("ladder: give at least one k")
        for k in ladder:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
                raise ConfigError(f"ladder: {k!r} is not an integer k in 1..{MAX_K}")
        ladder = tuple(sorted(set(ladder)))
        if self.target == "ethos-u":
            ladder = tuple(k for k in ladder if k <= ETHOS_U_MAX_K)
            if not ladder:
                raise ConfigError(f"ladder: target ethos-u allows k <= {ETHOS_U_MAX_K} only")
        object.__setattr__(self, "ladder", ladder)
        if not isinstance(self.base, ClusterConfig):
            raise ConfigError("base must be a ClusterConfig")
        if self.target == "ethos-u":
            object.__setattr__(self, "base", replace(self.base, space=Space.INT8,
                                                     preserve_sparsity=True))
        grans = self.granularities
        if grans is None:
            grans = (Granularity.TENSOR,) if self.target == "ethos-u" else (Granularity.CHANNEL,)
        try:
            grans = tuple(dict.fromkeys(Granularity(g) for g in grans))
        except ValueError:
            raise ConfigError(f"granularities: {grans!r}: each one of "
                              f"{', '.join(g.value for g in Granularity)}") from None
        if not grans:
            raise ConfigError("granularities: give at least one")
        if Granularity.GROUP in grans and self.base.group_size is None:
            raise ConfigError("granularity 'group' needs group_size in the base config")
        object.__setattr__(self, "granularities", grans)
        for key, low in (("samples", 1), ("max_verify", 1), ("refine", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{key}: expected an integer >= {low}, got {v!r}")
        w = self.workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ConfigError(f"workers: expected an integer >= 1, got {w!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: expected an integer >= 0, got {self.seed!r}")
        if self.metric == "vela":
            from .size import check_vela_config
            check_vela_config(self.vela_config)

    def to_dict(self) -> dict:
        return {"min_sqnr_db": self.min_sqnr_db, "ladder": list(self.ladder),
                "metric": self.metric, "target": self.target,
                "vela_config": self.vela_config if self.metric == "vela" else None,
                "granularities": [g.value for g in self.granularities],
                "samples": self.samples, "seed": self.seed, "max_verify": self.max_verify,
                "refine": self.refine, "uniform_baseline": self.uniform_baseline,
                "workers": self.workers,
                "base": self.base.to_dict()}


# --------------------------------------------------------------------------------------------
# Results


def _db(noise_ratio: float) -> float:
    """SQNR in dB from a noise / signal ratio."""
    if math.isnan(noise_ratio):
        return math.nan
    if noise_ratio <= 0.0:
        return math.inf
    if math.isinf(noise_ratio):
        return -math.inf
    return -10.0 * math.log10(noise_ratio)


def _json_float(x):
    return json_float(x, 4)


@dataclass(frozen=True)
class PlanEntry:
    """The decision for one weight tensor."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    elements: int
    k: int | None  # None: left alone
    granularity: str | None
    size_before: int  # per-tensor size under the metric (estimate)
    size: int
    weight_sqnr_db: float | None  # of the clustered weights; None when left alone
    sqnr_db: float | None  # output SQNR with only this tensor clustered as planned
    measured: bool  # sqnr_db measured (else predicted from a measurement at another k)
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "shape": list(self.shape), "dtype": self.dtype,
                "elements": self.elements, "k": self.k, "granularity": self.granularity,
                "size_before": self.size_before, "size": self.size,
                "weight_sqnr_db": _json_float(self.weight_sqnr_db),
                "sqnr_db": _json_float(self.sqnr_db), "measured": self.measured,
                "reason": self.reason}


@dataclass(frozen=True)
class UniformResult:
    """The best uniform setting (one k for every candidate tensor) meeting the target."""

    k: int
    granularity: str
    min_elements: int
    sqnr_db: float
    size: int  # whole model, measured under the metric

    def to_dict(self) -> dict:
        return {"k": self.k, "granularity": self.granularity, "min_elements": self.min_elements,
                "sqnr_db": _json_float(self.sqnr_db), "size": self.size}


@dataclass(frozen=True)
class AutoResult:
    """What :func:`auto_plan` found. ``result`` is the clustered model (``save`` writes it)."""

    model: str
    result: ClusterResult
    config: ClusterConfig  # the plan: cluster(model, config) replays result.data exactly
    auto: AutoConfig
    plan: tuple[PlanEntry, ...]
    sqnr_db: float  # final minimum output SQNR against the original
    outputs_sqnr_db: tuple[float, ...]
    metric: str
    size: int  # final model, measured under the metric
    original_size: int
    uniform: UniformResult | None
    chosen: str  # "plan" or "uniform" (the uniform baseline was smaller)
    inputs: str
    samples: int
    runs: int  # interpreter runs over all samples
    seconds: float
    warnings: tuple[str, ...]
    uniform_unverified: int = 0  # uniform settings screened out without a run

    @property
    def data(self) -> bytes:
        return self.result.data

    @property
    def met(self) -> bool:
        return self.sqnr_db >= self.auto.min_sqnr_db

    def save(self, path, *, overwrite: bool = False, mode: int | None = None) -> None:
        self.result.save(path, overwrite=overwrite, mode=mode)

    def plan_dict(self) -> dict:
        """The plan as a config file (``cluster --config`` replays it exactly)."""
        return self.config.to_dict()

    def to_dict(self) -> dict:
        return {
            "model": self.model, "target_sqnr_db": self.auto.min_sqnr_db,
            "sqnr_db": _json_float(self.sqnr_db),
            "outputs_sqnr_db": [_json_float(x) for x in self.outputs_sqnr_db],
            "met": self.met, "metric": self.metric,
            "vela_config": self.auto.vela_config if self.metric == "vela" else None,
            "size": self.size, "original_size": self.original_size,
            "ratio": self.size / self.original_size if self.original_size else None,
            "uniform": self.uniform.to_dict() if self.uniform else None, "chosen": self.chosen,
            "uniform_unverified": self.uniform_unverified,
            "inputs": self.inputs, "samples": self.samples, "runs": self.runs,
            "seconds": round(self.seconds, 3), "warnings": list(self.warnings),
            "auto": self.auto.to_dict(), "plan": [p.to_dict() for p in self.plan],
            "config": self.config.to_dict(), "report": self.result.report.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# Sizes per tensor (estimates that add up; the final figure is measured on the whole file)


def _deflate_bytes(raw: bytes) -> int:
    return len(zlib.compress(raw, 9))


def _distinct(raw: bytes, itemsize: int) -> int:
    if not raw:
        return 0
    return int(np.unique(np.frombuffer(raw, dtype=f"<u{itemsize}")).size)


def _palette_bytes(raw: bytes, itemsize: int) -> int:
    """As size.py counts a tensor: n x ceil(log2 d) bits + d values, at most the raw size."""
    n = len(raw) // itemsize
    d = _distinct(raw, itemsize)
    bits = n * math.ceil(math.log2(d)) if d > 1 else 0
    return min(math.ceil(bits / 8) + d * itemsize, len(raw))


def _vela_bytes(raw: bytes, itemsize: int) -> int:
    """Vela's weight stream, roughly: one palette of <= 32 values per tensor (FACTS)."""
    n = len(raw) // itemsize
    d = _distinct(raw, itemsize)
    if d > 32:
        return len(raw)
    bits = max(1, math.ceil(math.log2(d))) if d > 1 else 1
    return min(math.ceil(n * bits / 8) + d, len(raw))


def _tensor_cost(metric: str, raw: bytes, itemsize: int) -> int:
    if metric == "deflate":
        return _deflate_bytes(raw)
    if metric == "palette":
        return _palette_bytes(raw, itemsize)
    return _vela_bytes(raw, itemsize)


def _model_size(metric: str, data: bytes, vela_config: str) -> int:
    """The whole model under the metric (measured)."""
    from . import size as sz
    if metric == "deflate":
        return sz.deflate_size(data)
    if metric == "palette":
        return sz.measure(data).palette
    return sz.run_vela(data, vela_config).encoded_weights


# --------------------------------------------------------------------------------------------
# Search state


@dataclass
class _Option:
    granularity: Granularity | None  # None: left alone
    k: int | None
    changes: dict[int, bytes]  # file offset -> new bytes (the weights of the unit that change)
    sse: float  # squared error of the real weight values
    cost: int  # per-tensor size estimate under the metric
    exact: bool = True  # bytes from the exact kernel (else from the fast screening estimate)
    measured: np.ndarray | None = None  # per-output noise ratio with only this option applied


@dataclass(eq=False)  # identity: units are keys of dicts
class _Unit:
    weights: list  # WeightTensor, decided together (shared names)
    names: list[str]
    options: list[_Option]  # options[0] is "left alone"
    energy: float  # sum of squared real weight values
    reason: str = ""
    screened: bool = False  # options start as estimates (large float tensors)
    anchors: list = field(default_factory=list)  # every measurement: _Anchor


@dataclass(frozen=True)
class _Anchor:
    """One measurement of a unit: output noise of a clustering with this weight error.
    Kept when a screening estimate is replaced by the exact option (a gain stays a gain)."""

    granularity: Granularity
    sse: float
    measured: np.ndarray


def _union_units(weights: Sequence[tfl.WeightTensor]) -> list[list[int]]:
    """Groups of weight indices that share a name (a names rule cannot tell them apart)."""
    parent = list(range(len(weights)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, w in enumerate(weights):
        for name in [w.name] + [a[2] for a in w.aliases]:
            if name in owner:
                parent[find(i)] = find(owner[name])
            else:
                owner[name] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(weights)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


class _Evaluator:
    """Runs candidate models on the calibration inputs; counts runs."""

    def __init__(self, data: bytes, label: str, inputs, samples: int, seed: int,
                 num_threads: int | None) -> None:
        self.data = data
        self.label = label
        self.num_threads = num_threads
        self.reference = Runner(data, name=label, num_threads=num_threads)
        self.warnings: list[str] = []
        if inputs is None:
            arrays = random_inputs(self.reference, samples=samples, seed=seed)
            self.source = f"random (seed {seed})"
            self.warnings.append(
                f"no calibration inputs given: using {samples} seeded random samples; real "
                f"inputs (--inputs FILE.npz) give a much better measure of what clustering costs")
        else:
            self.source = str(inputs) if isinstance(inputs, (str, bytes)) or hasattr(
                inputs, "__fspath__") else "given arrays"
            arrays = inputs
        self.arrays, lead, self.source = self.reference._prepare(arrays, self.source)
        self.samples = math.prod(lead)
        self.ref = self.reference.run(self.arrays, source=self.source)
        for out, y in zip(self.reference.outputs, self.ref):
            if not np.all(np.isfinite(y)):
                raise UnsupportedModelError(label, f"output {out.name!r} of the original model "
                                                   f"is not finite on the calibration inputs")
        self.signal = np.array([float(np.sum(y * y)) for y in self.ref])
        self.runs = 1

    def noise(self, data: bytes) -> np.ndarray:
        """Per-output noise ratio sum((y - ref)^2) / sum(ref^2) of ``data`` (inf when broken)."""
        runner = Runner(data, name=f"{self.label} (candidate)", num_threads=self.num_threads)
        outs = runner.run(self.arrays, source=self.source)
        self.runs += 1
        ratios = np.empty(len(outs))
        for j, (y, r) in enumerate(zip(outs, self.ref)):
            with np.errstate(all="ignore"):
                err = float(np.sum((y - r) ** 2))
            if not math.isfinite(err):
                ratios[j] = math.inf
            elif err == 0.0:
                ratios[j] = 0.0
            elif self.signal[j] == 0.0:
                ratios[j] = math.inf
            else:
                ratios[j] = err / self.signal[j]
        return ratios


def _patched(data: bytes, changes: Mapping[int, bytes]) -> bytes:
    return bytes(tfl.patch(data, changes)) if changes else data


# --------------------------------------------------------------------------------------------
# Clustering the options: exact kernel, fast screening estimate, optional process pool


#: Float weight tensors above this many elements are screened with a fast estimate first; the
#: exact kernel then runs only for the options the search picks (and uniform settings it checks).
SCREEN_ELEMENTS = 16384
#: Below this much kernel work (elements x k, summed over a batch) the batch runs in-process.
POOL_WORK = 20_000_000


def _estimate_rows(rows, k, *, integer=False, iterations=8, **_ignored) -> np.ndarray:
    """A fast stand-in for :func:`kmeans.snap_rows` used only to screen options: Lloyd
    iterations vectorised over rows (one global ``searchsorted``), started from the point
    density of an optimal high-resolution quantizer (centroid density ~ value density^(1/3),
    estimated from the gaps between sorted values).  Near the optimum for k well below the row
    length (within ~15 % of its squared error on 648 Gaussian values up to k = 64); its bytes
    are never written to a model."""
    x = np.asarray(rows, dtype=np.float64)
    r, n = x.shape
    if n == 0 or r == 0:
        return x.copy()
    kk = max(1, min(int(k), n))
    srt = np.sort(x, axis=1)
    lo = srt[:, :1]
    span = srt[:, -1:] - lo
    span = np.where(span > 0, span, 1.0)
    base = np.arange(r)[:, None]
    offs = 2.0 * base  # row r lives in [2r, 2r + 1] once normalised: one sorted global axis
    if n > 1:
        cum = np.concatenate([np.zeros((r, 1)), np.cumsum(np.diff(srt, axis=1) ** (2.0 / 3.0),
                                                          axis=1)], axis=1)
        total = np.where(cum[:, -1:] > 0, cum[:, -1:], 1.0)
        cum = cum / total + offs
        t = (np.arange(kk) + 0.5)[None, :] / kk + offs
        pos = np.clip(np.searchsorted(cum.ravel(), t.ravel()).reshape(r, kk) - base * n, 1, n - 1)
        c0 = np.take_along_axis(cum, pos - 1, axis=1)
        c1 = np.take_along_axis(cum, pos, axis=1)
        f = np.where(c1 > c0, (t - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0)
        v0 = np.take_along_axis(srt, pos - 1, axis=1)
        c = v0 + f * (np.take_along_axis(srt, pos, axis=1) - v0)
    else:
        c = srt[:, :1]
    gx = ((x - lo) / span + offs).ravel()
    labels = None
    for step in range(iterations + 1):
        mids = (((c[:, 1:] + c[:, :-1]) / 2 - lo) / span + offs).ravel()
        labels = np.searchsorted(mids, gx).reshape(r, n) - base * (kk - 1)
        if step == iterations:
            break
        flat = (labels + base * kk).ravel()
        sums = np.bincount(flat, weights=x.ravel(), minlength=r * kk).reshape(r, kk)
        counts = np.bincount(flat, minlength=r * kk).reshape(r, kk)
        c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c), axis=1)
    out = np.take_along_axis(c, labels, axis=1)
    return np.floor(out + 0.5) if integer else out


def _max_distinct(data, w: tfl.WeightTensor, s: Settings, base: ClusterConfig) -> int:
    """Most distinct values in one row (tensor, channel or group) under ``s``: a k at least
    this large leaves the weight exact."""
    stored = tfl.read_array(data, w)
    space = effective_space(s.space, w.dtype)
    if w.sparse or s.granularity == Granularity.TENSOR or w.channel_axis() is None:
        rows = make_rows(stored.shape, Granularity.TENSOR, None, None)
    else:
        rows = make_rows(stored.shape, s.granularity, w.channel_axis(),
                         s.group_size or base.group_size)
    values = to_space(stored, w.dtype, w.quantization, space)
    most = 0
    for block in rows.split(values):
        srt = np.sort(block, axis=1)
        if srt.shape[1]:
            most = max(most, int(((srt[:, 1:] != srt[:, :-1]).sum(axis=1) + 1).max()))
    return most


def _itemsize(w: tfl.WeightTensor) -> int:
    try:
        return w.numpy_dtype.itemsize
    except UnsupportedModelError:
        return 1


def _settings_for(base: ClusterConfig, g: Granularity, k: int) -> Settings:
    s = base.global_settings()
    return replace(s, k=k, granularity=g, min_elements=0)


def _compute_option(data, ws, base: ClusterConfig, g: Granularity, k: int, metric: str,
                    estimate: bool):
    """One option of a unit: (option or None when nothing changes, reason when impossible)."""
    changes, sse, cost = {}, 0.0, 0
    s = _settings_for(base, g, k)
    for w in ws:
        o = w.data_offset
        try:
            new = cluster_weight(data, w, s, base, snap=_estimate_rows if estimate else None)
        except UnsupportedModelError as exc:
            return None, f"{g.value}: {exc.message}"
        raw = new.tobytes()
        original = bytes(data[o:o + w.nbytes])
        if raw != original:
            changes[o] = raw
            ref = real_values(tfl.read_array(data, w), w.dtype, w.quantization)
            err = real_values(new, w.dtype, w.quantization) - ref
            sse += float(np.sum(err * err))
        cost += _tensor_cost(metric, raw, _itemsize(w))
    if not changes:
        return None, None
    return _Option(g, k, changes, sse, cost, exact=not estimate), None


_WORKER: dict[str, Any] = {}


def _worker_init(data: bytes, base: dict, metric: str) -> None:
    _WORKER.update(data=data, base=ClusterConfig.from_dict(base), metric=metric)


def _worker_option(task):
    ws, g, k, estimate = task
    return _compute_option(_WORKER["data"], ws, _WORKER["base"], Granularity(g), k,
                           _WORKER["metric"], estimate)


class _Workers:
    """Computes options, in a process pool (spawned once, on demand) when a batch is large."""

    def __init__(self, data: bytes, base: ClusterConfig, metric: str, workers: int) -> None:
        self.data, self.base, self.metric, self.workers = data, base, metric, workers
        self._pool = None

    def run(self, tasks: list, progress: Progress | None = None, label: str = "clustering"):
        """``tasks``: (weights, granularity, k, estimate); returns their results in order."""
        work = sum(sum(w.elements for w in ws) * (8 if est else k) for ws, g, k, est in tasks)
        total = len(tasks)
        if self.workers <= 1 or total < 2 or work < POOL_WORK:
            out = []
            for n, (ws, g, k, est) in enumerate(tasks):
                if progress:
                    progress(n, total, f"{label} {ws[0].name} k={k}")
                out.append(_compute_option(self.data, ws, self.base, g, k, self.metric, est))
            if progress:
                progress(total, total, label)
            return out
        if self._pool is None:
            # The platform's default start method, as `cluster --jobs` (fork on Linux: workers
            # only run numpy and zlib, never LiteRT).
            from concurrent.futures import ProcessPoolExecutor
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, initializer=_worker_init,
                initargs=(self.data, self.base.to_dict(), self.metric))
        order = sorted(range(total), key=lambda i: -sum(w.elements for w in tasks[i][0])
                       * (8 if tasks[i][3] else tasks[i][2]))
        futures = {i: self._pool.submit(_worker_option, (tasks[i][0], tasks[i][1].value,
                                                         tasks[i][2], tasks[i][3]))
                   for i in order}
        out = [None] * total
        for n, i in enumerate(order):
            if progress:
                progress(n, total, f"{label} {tasks[i][0][0].name} k={tasks[i][2]}")
            out[i] = futures[i].result()
        if progress:
            progress(total, total, label)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _build_units(data: bytes, info: tfl.ModelInfo, config: AutoConfig, workers: _Workers,
                 progress: Progress | None) -> list[_Unit]:
    base = config.base
    units: list[_Unit] = []
    tasks, owners = [], []
    for group in _union_units(info.weights):
        ws = [info.weights[i] for i in group]
        names = list(dict.fromkeys(nm for w in ws for nm in [w.name] + [a[2] for a in w.aliases]))
        energy, reason = 0.0, ""
        for w in ws:
            why = skip_reason(w, _settings_for(base, config.granularities[0], config.ladder[0]), [])
            if why is not None:
                reason = f"not clusterable: {why}"
                break
            stored = tfl.read_array(data, w)
            if w.dtype in ("float32", "float16") and not np.all(np.isfinite(stored)):
                reason = "not clusterable: NaN or Inf weights"
                break
            energy += float(np.sum(real_values(stored, w.dtype, w.quantization) ** 2))
        if config.metric == "vela" and not reason and any(w.dtype != "int8" for w in ws):
            reason = "not clusterable for Vela: weights are not int8"
        cost0 = sum(_tensor_cost(config.metric, bytes(data[w.data_offset:w.data_offset + w.nbytes]),
                                 _itemsize(w)) for w in ws)
        unit = _Unit(weights=ws, names=names, options=[_Option(None, None, {}, 0.0, cost0)],
                     energy=energy, reason=reason)
        units.append(unit)
        if reason:
            continue
        float_space = any(effective_space(base.space, w.dtype) == Space.FLOAT for w in ws)
        unit.screened = float_space and sum(w.elements for w in ws) > SCREEN_ELEMENTS
        for g in config.granularities:
            try:
                most = max(_max_distinct(data, w, _settings_for(base, g, 1), base) for w in ws)
            except UnsupportedModelError:
                most = None  # no channel axis: the task reports why
            for k in config.ladder:
                if most is not None and k >= most:
                    break  # exact at this k and above
                tasks.append((ws, g, k, unit.screened))
                owners.append(unit)
    for unit, (opt, why) in zip(owners, workers.run(tasks, progress)):
        if opt is not None:
            unit.options.append(opt)
        elif why and not unit.reason:
            unit.reason = why
    for unit in units:
        if len(unit.options) > 1:
            unit.reason = ""
        elif not unit.reason:
            unit.reason = "exact at every k of the ladder"
    return units


def _make_exact(units_options: list[tuple[_Unit, int]], workers: _Workers,
                progress: Progress | None) -> int:
    """Replace screening estimates by the exact kernel's options; returns how many changed."""
    todo = [(u, i) for u, i in dict.fromkeys(units_options) if not u.options[i].exact]
    if not todo:
        return 0
    tasks = [(u.weights, u.options[i].granularity, u.options[i].k, False) for u, i in todo]
    for (u, i), (opt, _why) in zip(todo, workers.run(tasks, progress, "exact")):
        old = u.options[i]
        if opt is None:  # exact at this k after all: the same bytes as leaving it alone
            opt = _Option(old.granularity, old.k, {}, 0.0, u.options[0].cost, exact=True,
                          measured=None)
        u.options[i] = opt
    return len(todo)


# --------------------------------------------------------------------------------------------
# Prediction and allocation


def _predict(unit: _Unit, i: int, n_out: int) -> np.ndarray | None:
    """Predicted per-output noise ratio of option ``i``: measured, or scaled from the
    measurements of the unit (same granularity first) nearest in squared error, interpolating
    log noise against log squared error between the two around it."""
    opt = unit.options[i]
    if opt.granularity is None:
        return np.zeros(n_out)
    if opt.measured is not None:
        return opt.measured
    same = [a for a in unit.anchors if a.granularity == opt.granularity]
    pool = same or unit.anchors
    if not pool:
        return None
    lo = [o for o in pool if o.sse <= opt.sse]
    hi = [o for o in pool if o.sse > opt.sse]
    if lo and hi:  # interpolate log noise against log squared error
        a = max(lo, key=lambda o: o.sse)
        b = min(hi, key=lambda o: o.sse)
        t = (math.log(opt.sse) - math.log(a.sse)) / (math.log(b.sse) - math.log(a.sse))
        with np.errstate(all="ignore"):
            la, lb = np.log(a.measured), np.log(b.measured)
            out = np.exp(la + t * (lb - la))
        return np.where(np.isnan(out), np.maximum(a.measured, b.measured), out)
    near = max(lo, key=lambda o: o.sse) if lo else min(hi, key=lambda o: o.sse)
    with np.errstate(all="ignore"):
        return near.measured * (opt.sse / near.sse)


def _allocate(costs: list[np.ndarray], noise: list[np.ndarray], budget: float) -> list[int]:
    """Pick one option per unit: minimal total cost with sum of noise <= budget per output.

    Greedy: start from each unit's cheapest option; while an output is over budget, take the
    change with the largest reduction of the excess (noise over budget, summed over outputs)
    per added byte (the excess falls at every step, so it ends); then downgrade wherever the
    budget allows, largest saving first.
    """
    n_units = len(costs)
    choice = []
    for c, e in zip(costs, noise):
        order = np.lexsort((e.sum(axis=1), c))
        choice.append(int(order[0]))
    total = sum(e[i] for e, i in zip(noise, choice)) if n_units else np.zeros(0)

    def excess(t: np.ndarray) -> np.ndarray:
        """How far over budget, summed over outputs (last axis), in budgets."""
        return np.maximum(t - budget, 0.0).sum(axis=-1) / budget

    guard = 0
    while n_units and np.any(total > budget):
        guard += 1
        if guard > 100000:  # pragma: no cover - the excess falls at every step
            break
        current = float(excess(total))
        best, best_ratio = None, 0.0
        for u in range(n_units):
            c, e, i = costs[u], noise[u], choice[u]
            gain = current - excess(total - e[i] + e)
            if not np.any(gain > 0):
                continue
            ratio = np.where(gain > 0, gain / np.maximum(c - c[i], 1e-9), -np.inf)
            j = int(np.argmax(ratio))
            if ratio[j] > best_ratio:
                best, best_ratio = (u, j), float(ratio[j])
        if best is None:
            break  # pragma: no cover - an option without noise always lowers the excess
        u, j = best
        total = total - noise[u][choice[u]] + noise[u][j]
        choice[u] = j
    # Take back what the budget no longer needs.
    if n_units and np.all(total <= budget):
        while True:
            best, best_saving = None, 0
            for u in range(n_units):
                c, e, i = costs[u], noise[u], choice[u]
                for j in np.flatnonzero(c < c[i]):
                    new_total = total - e[i] + e[j]
                    if np.all(new_total <= budget) and c[i] - c[j] > best_saving:
                        best, best_saving = (u, int(j)), int(c[i] - c[j])
            if best is None:
                break
            u, j = best
            total = total - noise[u][choice[u]] + noise[u][j]
            choice[u] = j
    return choice


# --------------------------------------------------------------------------------------------
# The search


def _plan_config(base: ClusterConfig, weights: Sequence[tfl.WeightTensor], units: list[_Unit],
                 choice: Sequence[int]) -> ClusterConfig:
    """The plan as a config: one full-match names rule per weight name, in model order."""
    decided: dict[str, dict] = {}
    for unit, i in zip(units, choice):
        opt = unit.options[i]
        for name in unit.names:
            if opt.granularity is None:
                decided[name] = {"skip": True}
            else:
                decided[name] = {"k": opt.k, "granularity": opt.granularity.value,
                                 "min_elements": 0}
    rules = []
    seen = set()
    for w in weights:
        for name in [w.name] + [a[2] for a in w.aliases]:
            if name in seen:
                continue
            seen.add(name)
            rules.append({"regex": re.escape(name), **decided.get(name, {"skip": True})})
    d = base.to_dict()
    d.update(min_elements=0, op_types={}, names=rules)
    return ClusterConfig.from_dict(d)


def _weight_sqnr(energy: float, sse: float) -> float | None:
    if sse == 0:
        return None
    return 10 * math.log10(energy / sse) if energy > 0 else -math.inf


def auto_plan(model, config: AutoConfig | None = None, *, inputs=None,
              progress: Progress | None = None) -> AutoResult:
    """Search per-tensor clustering settings for ``model`` (path or bytes); see the module doc.

    ``inputs``: calibration inputs (an .npz path, a dict keyed by input name, a list in input
    order); ``None`` draws ``config.samples`` seeded random samples.  Raises the typed errors
    of :mod:`errors` (``MissingExtraError`` without ai-edge-litert).
    """
    start = time.perf_counter()
    config = config or AutoConfig()
    data, label = load(model)
    info = tfl.parse(data, label)
    ev = _Evaluator(data, label, inputs, config.samples, config.seed, config.num_threads)
    workers = _Workers(data, config.base, config.metric, config.workers or _default_workers())
    try:
        return _search(data, label, info, config, ev, workers, progress, start)
    finally:
        workers.close()


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def _search(data, label, info, config: AutoConfig, ev: _Evaluator, workers: _Workers,
            progress: Progress | None, start: float) -> AutoResult:
    warnings = list(ev.warnings)
    n_out = len(ev.ref)
    budget = 10.0 ** (-config.min_sqnr_db / 10.0)

    # 1. Options.
    units = _build_units(data, info, config, workers, progress)
    live = [u for u in units if len(u.options) > 1]
    if config.metric == "vela" and not live:
        raise UnsupportedModelError(label, "metric vela: the model has no int8 weight tensor "
                                           "to cluster (Vela sizes full-integer int8 models)")

    def measure_all(pairs: list[tuple[_Unit, int]], what: str) -> None:
        pairs = [(u, i) for u, i in dict.fromkeys(pairs) if u.options[i].measured is None
                 and u.options[i].granularity is not None]
        for n, (u, i) in enumerate(pairs):
            if progress:
                progress(n, len(pairs), f"{what} {u.names[0]}")
            opt = u.options[i]
            opt.measured = ev.noise(_patched(data, opt.changes)) if opt.changes else np.zeros(n_out)
            if opt.sse > 0:
                u.anchors.append(_Anchor(opt.granularity, opt.sse, opt.measured))
        if progress and pairs:
            progress(len(pairs), len(pairs), what)

    # 2. Sensitivity: one middle rung per unit and granularity.
    todo = []
    for u in live:
        for g in config.granularities:
            idx = [i for i, o in enumerate(u.options) if o.granularity == g]
            if idx:
                todo.append((u, idx[(len(idx) - 1) // 2]))
    measure_all(todo, "sensitivity")

    def costs() -> list[np.ndarray]:
        return [np.array([o.cost for o in u.options], dtype=np.float64) for u in live]

    def predictions() -> list[np.ndarray]:
        out = []
        for u in live:
            rows = []
            for i in range(len(u.options)):
                p = _predict(u, i, n_out)
                rows.append(np.full(n_out, _HUGE) if p is None else p)
            # Broken outputs count as a huge finite noise, so sums stay ordered.
            out.append(np.minimum(np.nan_to_num(np.array(rows), nan=_HUGE, posinf=_HUGE), _HUGE))
        return out

    def allocate(scale: float) -> list[int]:
        return _allocate(costs(), predictions(), budget * scale)

    def exact(ch: Sequence[int]) -> None:
        _make_exact([(u, i) for u, i in zip(live, ch) if u.options[i].granularity is not None],
                    workers, progress)

    # 4. Refinement: measure the chosen options (screening estimates or exact: a measurement
    # near the chosen rung is what the prediction needs), then allocate again.  The exact
    # kernel runs at verification, only for the options of plans actually verified.
    choice = allocate(1.0)
    for _ in range(config.refine):
        pending = [(u, i) for u, i in zip(live, choice)
                   if u.options[i].granularity is not None and u.options[i].measured is None]
        if not pending:
            break
        measure_all(pending, "refining")
        choice = allocate(1.0)

    # 5. Verification with back-off (bisection on the budget scale).
    tried: dict[tuple[int, ...], np.ndarray] = {}

    def verify(ch: Sequence[int]) -> np.ndarray:
        exact(ch)
        key = tuple(ch)
        if key not in tried:
            changes = {}
            for u, i in zip(live, ch):
                changes.update(u.options[i].changes)
            tried[key] = ev.noise(_patched(data, changes)) if changes else np.zeros(n_out)
        return tried[key]

    def est_cost(ch: Sequence[int]) -> float:
        return float(sum(u.options[i].cost for u, i in zip(live, ch)))

    best: tuple[float, list[int], np.ndarray] | None = None
    lo_pass, hi_fail = None, None  # budget scales known to pass / to fail
    scale, runs_used = 1.0, 0
    for _ in range(64):
        choice = allocate(scale)
        if tuple(choice) not in tried:
            if runs_used >= config.max_verify and best is not None:
                break
            if runs_used >= config.max_verify + 8 or scale < 1e-12:
                break  # give up: every tensor left alone below
            runs_used += 1
            if progress:
                progress(min(runs_used, config.max_verify), config.max_verify, "verifying")
        e = verify(choice)
        worst = float(np.max(e)) if n_out else 0.0
        passed = worst <= budget
        if passed:
            if best is None or est_cost(choice) < best[0]:
                best = (est_cost(choice), list(choice), e)
            lo_pass = scale if lo_pass is None else max(lo_pass, scale)
        else:
            hi_fail = scale if hi_fail is None else min(hi_fail, scale)
        if lo_pass is not None and hi_fail is not None:
            if hi_fail / lo_pass < 1.25:
                break
            scale = math.sqrt(lo_pass * hi_fail)
        elif passed:
            if worst > 0.8 * budget or scale > 1e6:
                break  # close to the target already, or nothing left to gain
            scale *= min(8.0, 0.9 * budget / max(worst, budget * 1e-3))
        else:
            ratio = worst / budget if math.isfinite(worst) else 16.0
            scale *= max(1.0 / 16.0, min(0.9, 0.9 / ratio))
    if progress:
        progress(config.max_verify, config.max_verify, "verifying")
    if best is None:
        choice = [0] * len(live)
        warnings.append("no clustered plan met the target; every tensor is left alone")
        best = (est_cost(choice), choice, np.zeros(n_out))
    choice = best[1]
    measure_all([(u, i) for u, i in zip(live, choice)], "measuring")  # for the report

    # 6. Uniform baseline.
    uniform, uniform_choice, unverified = None, None, 0
    if config.uniform_baseline and live:
        uniform, uniform_choice, unverified = _uniform_baseline(
            live, config, budget, verify, est_cost(choice), predictions, progress, data)

    def final(ch):
        cfg = _plan_config(config.base, info.weights, units, _full_choice(units, live, ch))
        pre = {}
        for u, i in zip(live, ch):
            if u.options[i].granularity is None:
                continue
            for w in u.weights:
                raw = u.options[i].changes.get(w.data_offset)
                pre[w.buffer] = (tfl.read_array(data, w) if raw is None else
                                 np.frombuffer(raw, dtype=w.numpy_dtype).reshape(w.shape))
        return cfg, cluster(data, cfg, precomputed=pre)

    plan_cfg, result = final(choice)
    size = _model_size(config.metric, result.data, config.vela_config)
    chosen = "plan"
    if uniform is not None and uniform.size < size:
        chosen, choice = "uniform", uniform_choice
        plan_cfg, result = final(choice)
        size = uniform.size
        measure_all([(u, i) for u, i in zip(live, choice)], "measuring")
    changes = {}
    for u, i in zip(live, choice):
        changes.update(u.options[i].changes)
    if result.data == _patched(data, changes):
        final_noise = verify(choice)  # the bytes verified above
    else:  # pragma: no cover - cluster() with the plan writes the same bytes
        final_noise = ev.noise(result.data)
    outputs_db = tuple(_db(float(x)) for x in final_noise)
    sqnr = min(outputs_db) if outputs_db else math.inf
    if sqnr < config.min_sqnr_db:  # pragma: no cover - only plans that passed are kept
        warnings.append(f"the final model reaches {sqnr:.2f} dB, under the {config.min_sqnr_db:g} "
                        f"dB target")
    original_size = _model_size(config.metric, data, config.vela_config)

    plan = _plan_entries(units, _full_choice(units, live, choice), n_out)
    return AutoResult(model=label, result=result, config=plan_cfg, auto=config, plan=plan,
                      sqnr_db=sqnr, outputs_sqnr_db=outputs_db, metric=config.metric, size=size,
                      original_size=original_size, uniform=uniform, chosen=chosen,
                      inputs=ev.source, samples=ev.samples, runs=ev.runs,
                      seconds=time.perf_counter() - start, warnings=tuple(warnings),
                      uniform_unverified=unverified)


def _full_choice(units: list[_Unit], live: list[_Unit], choice: Sequence[int]) -> list[int]:
    by_id = {id(u): i for u, i in zip(live, choice)}
    return [by_id.get(id(u), 0) for u in units]


def _uniform_baseline(live, config, budget, verify, plan_cost, predictions, progress, data):
    """Verify one k for every unit (per granularity; also with small tensors left alone).

    Returns (the passing setting smallest under the metric, measured; its choice vector; how
    many settings were not verified).  Settings whose options are still screening estimates
    are verified only when the estimate is not clearly larger than the plan (10 %) and the
    predicted noise is not far over budget (6 dB); all others are verified.
    """
    variants = []
    for g in config.granularities:
        for me in sorted({0, config.base.min_elements}):
            for k in config.ladder:
                ch = []
                for u in live:
                    idx = 0
                    if all(w.elements >= me for w in u.weights):
                        for i, o in enumerate(u.options):
                            if o.granularity == g and o.k == k:
                                idx = i
                    ch.append(idx)
                variants.append((g, me, k, ch))
    seen, skipped = {}, 0
    noise = None
    total = len(variants)
    for n, (g, me, k, ch) in enumerate(variants):
        if progress:
            progress(n, total, f"uniform {g.value} k={k}")
        key = tuple(ch)
        if key in seen:
            continue
        if not all(u.options[i].exact for u, i in zip(live, ch)):
            noise = noise if noise is not None else predictions()
            est = float(sum(u.options[i].cost for u, i in zip(live, ch)))
            predicted = float(np.max(sum(p[i] for p, i in zip(noise, ch))))
            if est > 1.1 * plan_cost or predicted > 4.0 * budget:
                skipped += 1
                continue
        e = verify(ch)
        seen[key] = (g, me, k, ch, e) if float(np.max(e)) <= budget else None
    if progress:
        progress(total, total, "uniform")
    passing = [v for v in seen.values() if v is not None]
    if not passing:
        return None, None, skipped
    if config.metric == "vela":  # one Vela run: the best by estimate
        passing = [min(passing, key=lambda p: sum(u.options[i].cost for u, i in zip(live, p[3])))]
    best = None
    for g, me, k, ch, e in passing:
        changes = {}
        for u, i in zip(live, ch):
            changes.update(u.options[i].changes)
        size = _model_size(config.metric, _patched(data, changes), config.vela_config)
        if best is None or size < best[0].size:
            best = (UniformResult(k, g.value, me, _db(float(np.max(e))), size), ch)
    return best[0], best[1], skipped


def _plan_entries(units: list[_Unit], choice: Sequence[int], n_out: int) -> tuple[PlanEntry, ...]:
    entries = []
    for u, i in zip(units, choice):
        opt = u.options[i]
        base_cost = u.options[0].cost
        if opt.granularity is None:
            if u.reason:
                reason = u.reason
            else:
                reason = "left alone: every k of the ladder costs more accuracy than it saves"
            sqnr, measured = None, True
        else:
            reason = "clustered"
            p = _predict(u, i, n_out)
            sqnr = _db(float(np.max(p))) if p is not None and len(p) else math.inf
            measured = opt.measured is not None
        w = u.weights[0]
        entries.append(PlanEntry(
            name=" | ".join(u.names), op=",".join(dict.fromkeys(t for w2 in u.weights
                                                               for t in w2.op_types)),
            shape=tuple(w.shape), dtype=w.dtype, elements=sum(w2.elements for w2 in u.weights),
            k=opt.k, granularity=opt.granularity.value if opt.granularity else None,
            size_before=int(base_cost), size=int(opt.cost),
            weight_sqnr_db=_weight_sqnr(u.energy, opt.sse) if opt.granularity else None,
            sqnr_db=sqnr, measured=measured, reason=reason))
    return tuple(entries)


# --------------------------------------------------------------------------------------------
# Rendering


def _fmt_db(x: float | None) -> str:
    if x is None:
        return "exact"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.1f}"


def _short(name: str, width: int = 44) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def format_auto(r: AutoResult) -> str:
    """The plan per tensor and the final figures, as plain text."""
    headers = ["tensor", "op", "elements", "k", "gran.", "size before", "size", "weight dB",
               "output dB"]
    rows = []
    for p in r.plan:
        rows.append([_short(p.name), p.op, f"{p.elements:,}", "-" if p.k is None else str(p.k),
                     p.granularity or "-", f"{p.size_before:,}", f"{p.size:,}",
                     _fmt_db(p.weight_sqnr_db),
                     (_fmt_db(p.sqnr_db) + ("" if p.measured else "~")) if p.k is not None
                     else ("-" if p.reason.startswith("left alone") else p.reason)])
    right = {2, 3, 5, 6, 7}
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows]
    metric = (f"vela {r.auto.vela_config} encoded weights" if r.metric == "vela"
              else r.metric)
    clustered = sum(1 for p in r.plan if p.k is not None)
    ratio = f" ({r.size / r.original_size:.3f}x)" if r.original_size else ""
    lines += [
        "",
        "sizes per tensor are estimates under the metric; output dB: SQNR of the outputs with "
        "only that tensor clustered (~ predicted from its sensitivity at another k)",
        f"clustered {clustered} of {len(r.plan)} weight tensors; inputs: {r.inputs}, "
        f"{r.samples} sample(s)",
        f"SQNR {_fmt_db(r.sqnr_db)} dB (target {r.auto.min_sqnr_db:g} dB, "
        f"{'met' if r.met else 'MISSED'}); size ({metric}) {r.original_size:,} -> {r.size:,} B"
        f"{ratio}",
    ]
    if r.uniform is not None:
        u = r.uniform
        lines.append(f"best uniform setting meeting the target: k={u.k} per {u.granularity}"
                     + (f" (tensors under {u.min_elements:,} elements left alone)"
                        if u.min_elements else "")
                     + f", {_fmt_db(u.sqnr_db)} dB, {u.size:,} B"
                     + ("; it was smaller, so it is the result" if r.chosen == "uniform" else "")
                     + (f" ({r.uniform_unverified} estimated clearly larger than the plan or far "
                        f"below the target were not run)" if r.uniform_unverified else ""))
    else:
        lines.append("no uniform setting of the ladder meets the target"
                     + (f" among those verified ({r.uniform_unverified} estimated clearly larger "
                        f"than the plan or far below the target were not run)"
                        if r.uniform_unverified else ""))
    lines.append(f"{r.runs} interpreter runs, {r.seconds:.1f} s")
    return "\n".join(lines)
