"""Presets that build a :class:`ClusterConfig` for a deployment target.

``ethos_u_preset(model, k=16, overrides=None) -> TargetPreset`` is the pre-pass before Arm's
Vela compiler. Vela stores each weight tensor with one palette of at most 32 values (see
FACTS: it is the per-TENSOR count of distinct int8 codes that shrinks its output; per-channel
clustering leaves it almost unchanged). So the preset sets:

* ``space int8``: cluster the stored codes; scales, zero points and biases stay as they are;
* ``granularity tensor``, ``k`` codes per tensor (default 16, at most 32: Vela's palette);
* ``preserve_sparsity``: zero stays representable (exact zeros stay zero);
* ``min_elements 0``: the preset picks its tensors itself, per tensor, with name rules; every
  op type is included (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ...).

Which tensors. A per-tensor codebook costs accuracy mostly on small tensors (a 3x3 depthwise
kernel has 9 weights per channel: per-channel int8 leaves it exact, one 16-value codebook for
the whole tensor does not), and small tensors hold few bytes. Each int8 weight tensor is:

* left alone when it already has at most k distinct codes (Vela's palette holds it exactly);
* left alone when it is *small*: the smallest tensors, in ascending order, while together they
  hold at most ``small_share`` (10 %) of the int8 weight bytes, and only those under
  ``small_elements`` (10,000) elements. Per-channel clustering would not help them: Vela's size
  depends on the per-tensor count, which per-channel codebooks do not bound;
* clustered per tensor at ``k`` otherwise.

Measured on the wake-word model in ../shared (tools/vela_goal.py; feature SQNR on random input
streams): leaving the small tensors alone bought 0.6-2.8 dB for +0.04-0.06x of Vela's bytes
at k=8..16, about what raising k for every tensor buys at the same size on that model (on the
int8 MobileNetV2 of FACTS it was the whole accuracy difference: 97.1 % -> 98.0 % top-1).
Giving the first weight layer more codes (its errors were the largest when tensors were
clustered one at a time) was tried and dropped: no better than raising k at the same size.

Every choice comes with its reason (:attr:`TargetPreset.choices`). Warnings: float activations
(Vela runs those ops on the CPU, where clustering saves nothing), non-zero weight zero points
(Vela encodes ``code - zero_point``; zero stays representable in code space only), no int8
weights at all.

``overrides`` is a config dict in :meth:`ClusterConfig.from_dict` form (from ``--config`` and
explicit flags): its top-level keys replace the preset's, its ``op_types`` are added, and its
``names`` rules come after the preset's (so they win). The resulting ``k`` values are checked:
above 32 is a :class:`ConfigError`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from . import model as tfl
from .clustering import load
from .config import ClusterConfig
from .errors import ConfigError

ETHOS_U_MAX_K = 32  # Vela's palette holds at most 32 values
ETHOS_U_DEFAULT_K = 16
SMALL_ELEMENTS = 10_000
SMALL_SHARE = 0.10
TARGETS = ("ethos-u",)


@dataclass(frozen=True)
class TensorChoice:
    name: str
    op: str
    shape: list
    elements: int
    share: float  # of the int8 weight bytes
    distinct: int  # per-tensor distinct codes
    max_per_channel: int | None  # most distinct codes in one output channel
    action: str  # "cluster" or "leave"
    k: int | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TargetPreset:
    target: str
    config: ClusterConfig
    settings: dict  # what the preset set globally
    choices: tuple[TensorChoice, ...]
    warnings: tuple[str, ...]

    def summary(self) -> str:
        """One line: what the preset set."""
        s = self.settings
        left = [c for c in self.choices if c.action == "leave"]
        done = [c for c in self.choices if c.action == "cluster"]
        share = sum(c.share for c in done)
        return (f"target {self.target}: space {s['space']}, granularity {s['granularity']}, k {s['k']} "
                f"(max {ETHOS_U_MAX_K}), zero representable (preserve_sparsity), all weight ops; "
                f"clustering {len(done)} of {len(self.choices)} int8 weight tensors "
                f"({100 * share:.1f} % of their bytes), leaving {len(left)} alone")

    def to_dict(self) -> dict:
        return {"target": self.target, "settings": self.settings,
                "choices": [c.to_dict() for c in self.choices], "warnings": list(self.warnings)}


def _max_per_channel(values: np.ndarray, axis: int | None) -> int | None:
    if axis is None or values.ndim == 0 or values.size == 0:
        return None
    rows = np.sort(np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1), axis=1)
    return int(((rows[:, 1:] != rows[:, :-1]).sum(axis=1) + 1).max())


def _float_activation_ops(data, label) -> list[str]:
    """Ops (other than DEQUANTIZE) writing float tensors: Vela leaves them on the CPU."""
    found = {}
    for op in tfl.operators(data, label):
        if op.op_type == "DEQUANTIZE":
            continue
        if any(d in ("float32", "float16", "float64") for d in op.output_dtypes):
            found[op.op_type] = found.get(op.op_type, 0) + 1
    return [f"{name} x{n}" if n > 1 else name for name, n in found.items()]


def _merge(preset: dict, overrides: Mapping[str, Any] | None) -> dict:
    out = dict(preset)
    if not overrides:
        return out
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a config object, got {type(overrides).__name__}")
    for key, value in overrides.items():
        if key == "op_types":
            if not isinstance(value, Mapping):
                raise ConfigError("op_types must be an object mapping op type to settings")
            out["op_types"] = {**out.get("op_types", {}), **value}
        elif key == "names":
            if not isinstance(value, list):
                raise ConfigError("names must be a list of {\"regex\": ..., settings...}")
            out["names"] = list(out.get("names", [])) + list(value)
        else:
            out[key] = value
    return out


def _check_k(config: ClusterConfig) -> None:
    ks = [("k", config.k)]
    ks += [(f"op_types.{op}.k", s.k) for op, s in config.op_types.items() if s.k is not None]
    ks += [(f"names[{i}] ({r.regex!r}).k", r.settings.k) for i, r in enumerate(config.names)
           if r.settings.k is not None]
    for where, k in ks:
        if k > ETHOS_U_MAX_K:
            raise ConfigError(f"{where} = {k}: target ethos-u allows at most {ETHOS_U_MAX_K} "
                              f"codes per tensor (Vela's weight palette holds 32 values)")


def ethos_u_preset(model, k: int | None = None, overrides: Mapping[str, Any] | None = None, *,
                   small_elements: int = SMALL_ELEMENTS, small_share: float = SMALL_SHARE
                   ) -> TargetPreset:
    """The Vela pre-pass config for ``model`` (path or bytes); see the module documentation."""
    k = ETHOS_U_DEFAULT_K if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k: expected a positive integer, got {k!r}")
    if k > ETHOS_U_MAX_K:
        raise ConfigError(f"k = {k}: target ethos-u allows at most {ETHOS_U_MAX_K} codes per tensor "
                          f"(Vela's weight palette holds 32 values)")
    data, label = load(model)
    info = tfl.parse(data, label)
    warnings = []
    floats = _float_activation_ops(data, label)
    if floats:
        warnings.append(f"the model has float activations ({', '.join(floats)}): Vela runs these "
                        f"ops on the CPU, where a smaller weight palette saves nothing; the preset "
                        f"is for full-integer int8 models")
    nonzero = [w.name for w in info.weights if w.dtype in ("int8", "uint8") and w.quantization
               and any(z != 0 for z in w.quantization.zero_points)]
    if nonzero:
        warnings.append(f"{len(nonzero)} weight tensor(s) have non-zero zero points (e.g. "
                        f"'{nonzero[0]}'): Vela encodes code - zero_point, and the preset keeps "
                        f"code 0 representable, not the real value 0")

    int8 = [w for w in info.weights if w.dtype == "int8" and not w.sparse]
    total = sum(w.nbytes for w in int8)
    if not int8:
        warnings.append("the model has no int8 weight tensors: the preset clusters nothing")
    stats = {}
    for w in int8:
        values = tfl.read_array(data, w)
        stats[w.buffer] = (int(np.unique(values).size), _max_per_channel(values, w.channel_axis()))

    # The small tensors left alone: ascending by size, within the byte allowance.
    leave_small = set()
    used = 0
    for w in sorted(int8, key=lambda w: (w.elements, w.subgraph, w.tensor)):
        if w.elements >= small_elements or used + w.nbytes > small_share * total:
            break
        if stats[w.buffer][0] <= k:
            continue  # exact anyway; does not use the allowance
        used += w.nbytes
        leave_small.add(w.buffer)

    choices = []
    rules = []
    for w in info.weights:
        if w.dtype != "int8" or w.sparse:
            continue  # not the preset's business; cluster() reports why it skips them
        distinct, per_channel = stats[w.buffer]
        share = w.nbytes / total if total else 0.0
        if distinct <= k:
            action, reason = "leave", f"already {distinct} <= {k} distinct codes: Vela's palette holds it exactly"
        elif w.buffer in leave_small:
            exact = (f"; per-channel clustering would leave it exact too ({per_channel} codes per "
                     f"channel at most) but would not shrink Vela's per-tensor palette"
                     if per_channel is not None and per_channel <= k else "")
            action, reason = "leave", (
                f"small: {w.elements:,} elements, {100 * share:.1f} % of the weight bytes; a "
                f"{k}-code per-tensor codebook would cost accuracy for few bytes{exact}")
        else:
            action, reason = "cluster", (f"{w.elements:,} elements, {100 * share:.1f} % of the weight "
                                         f"bytes: one {k}-code palette for the tensor")
        choices.append(TensorChoice(name=w.name, op=",".join(w.op_types), shape=list(w.shape),
                                    elements=w.elements, share=share, distinct=distinct,
                                    max_per_channel=per_channel, action=action,
                                    k=k if action == "cluster" else None, reason=reason))
        if action == "leave":
            for name in [w.name] + [a[2] for a in w.aliases]:
                rules.append({"regex": re.escape(name), "skip": True})

    left_names = {r["regex"] for r in rules if r.get("skip")}
    for i, c in enumerate(choices):  # two tensors with one name: a skip rule would catch both
        if c.action == "cluster" and re.escape(c.name) in left_names:
            choices[i] = TensorChoice(**{**c.to_dict(), "action": "leave", "k": None,
                                         "reason": "shares its name with a tensor left alone"})

    settings = {"k": k, "granularity": "tensor", "space": "int8", "preserve_sparsity": True,
                "min_elements": 0}
    config_dict = _merge({**settings, "names": rules}, overrides)
    config = ClusterConfig.from_dict(config_dict)
    _check_k(config)
    return TargetPreset(target="ethos-u", config=config, settings=settings, choices=tuple(choices),
                        warnings=tuple(warnings))


def preset(target: str, model, k: int | None = None, overrides: Mapping[str, Any] | None = None
           ) -> TargetPreset:
    """The preset for ``target`` (one of :data:`TARGETS`)."""
    if target == "ethos-u":
        return ethos_u_preset(model, k, overrides)
    raise ConfigError(f"target {target!r} is not one of {', '.join(TARGETS)}")
