"""Configuration: frozen dataclasses validated at construction, str Enums for modes.

A :class:`ClusterConfig` holds global settings, per-op-type rules and per-tensor-name rules
(regular expressions, full match). Precedence: name > op type > global; among name rules the
last one that matches wins. A rule may be ``skip``. ``from_dict`` rejects unknown keys and
``to_dict`` round-trips, so the effective config can be written into every report and replayed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, InputFileError
from .kmeans import MAX_TOLERANCE


class Granularity(str, Enum):
    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


class Space(str, Enum):
    AUTO = "auto"
    INT8 = "int8"
    FLOAT = "float"


class Method(str, Enum):
    OPTIMAL = "optimal"
    KMEANS = "kmeans"


class Init(str, Enum):
    LINEAR = "linear"
    KMEANS_PP = "kmeans++"
    DENSITY = "density"
    RANDOM = "random"


MAX_K = 65536


def _enum(cls, value, key):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None


def _int(value, key, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{key}: {value} is out of range (must be {bound})")
    return value


def _tolerance(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not 0 <= value <= MAX_TOLERANCE:
        raise ConfigError(f"{key}: {value} is out of range (must be in 0..{MAX_TOLERANCE})")
    return float(value)


def _bool(value, key):
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Settings a rule may override. ``None`` means "inherit from the level above"."""

    k: int | None = None
    granularity: Granularity | None = None
    group_size: int | None = None
    space: Space | None = None
    method: Method | None = None
    init: Init | None = None
    preserve_sparsity: bool | None = None
    min_elements: int | None = None
    tolerance: float | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        conv = {
            "k": lambda v: _int(v, "k", 1, MAX_K),
            "granularity": lambda v: _enum(Granularity, v, "granularity"),
            "group_size": lambda v: _int(v, "group_size", 1),
            "space": lambda v: _enum(Space, v, "space"),
            "method": lambda v: _enum(Method, v, "method"),
            "init": lambda v: _enum(Init, v, "init"),
            "preserve_sparsity": lambda v: _bool(v, "preserve_sparsity"),
            "min_elements": lambda v: _int(v, "min_elements", 0),
            "tolerance": lambda v: _tolerance(v, "tolerance"),
        }
        for key, fn in conv.items():
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, fn(value))
        _bool(self.skip, "skip")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "Settings":
        if data == "skip" or data is None:
            return cls(skip=True)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected an object or \"skip\", got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "skip":
                if v:
                    out["skip"] = True
            elif v is not None:
                out[f.name] = v.value if isinstance(v, Enum) else v
        return out

    def over(self, base: "Settings") -> "Settings":
        """These settings on top of ``base``."""
        if self.skip:
            return replace(base, skip=True)
        changes = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name != "skip" and getattr(self, f.name) is not None}
        return replace(base, **changes)


@dataclass(frozen=True)
class NameRule:
    regex: str
    settings: Settings

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_pattern", re.compile(self.regex))
        except re.error as exc:
            raise ConfigError(f"names: bad regular expression {self.regex!r}: {exc}") from None

    def matches(self, name: str) -> bool:
        return self._pattern.fullmatch(name) is not None


_GLOBAL_DEFAULTS = dict(k=16, granularity=Granularity.CHANNEL, group_size=None, space=Space.AUTO,
                        method=Method.OPTIMAL, init=Init.KMEANS_PP, preserve_sparsity=False,
                        min_elements=1024, tolerance=1e-4)


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that decides what ``cluster`` does. Frozen and validated."""

    k: int = 16
    granularity: Granularity = Granularity.CHANNEL
    group_size: int | None = None
    space: Space = Space.AUTO
    method: Method = Method.OPTIMAL
    init: Init = Init.KMEANS_PP
    seed: int = 0
    preserve_sparsity: bool = False
    min_elements: int = 1024
    tolerance: float = 1e-4
    op_types: Mapping[str, Settings] = field(default_factory=dict)
    names: tuple[NameRule, ...] = ()

    def __post_init__(self) -> None:
        g = Settings(**{key: getattr(self, key) for key in _GLOBAL_DEFAULTS})
        for key in _GLOBAL_DEFAULTS:
            object.__setattr__(self, key, getattr(g, key))
        _int(self.seed, "seed", 0, 2**32 - 1)
        ops = {}
        for op, s in dict(self.op_types).items():
            if not isinstance(op, str) or not re.fullmatch(r"[A-Z0-9_]+", op):
                raise ConfigError(f"op_types: {op!r} is not an op type name like CONV_2D")
            ops[op] = s if isinstance(s, Settings) else Settings.from_dict(s, f"op_types.{op}")
        object.__setattr__(self, "op_types", ops)
        object.__setattr__(self, "names", tuple(self.names))
        for rule in [self.global_settings(), *ops.values(), *(r.settings for r in self.names)]:
            if rule.granularity == Granularity.GROUP and rule.group_size is None \
                    and self.group_size is None:
                raise ConfigError("granularity 'group' needs group_size")

    def global_settings(self) -> Settings:
        return Settings(**{key: getattr(self, key) for key in _GLOBAL_DEFAULTS})

    def resolve(self, name: str, op_types: tuple[str, ...]) -> tuple[Settings, list[str]]:
        """Effective settings for a tensor, and the rules that applied (for the report)."""
        eff = self.global_settings()
        applied = []
        op_rules = {op: self.op_types[op] for op in op_types if op in self.op_types}
        if len({repr(s) for s in op_rules.values()}) > 1:
            raise ConfigError(f"tensor '{name}' is used by ops {', '.join(op_rules)} whose op_types "
                              f"rules disagree; add a names rule for it")
        if op_rules:
            op, rule = next(iter(op_rules.items()))
            eff = rule.over(eff)
            applied.append(f"op_types.{op}")
        matched = [(i, rule) for i, rule in enumerate(self.names) if rule.matches(name)]
        if matched:
            i, rule = matched[-1]
            eff = rule.settings.over(eff)
            applied.append(f"names[{i}]")
        return eff, applied

    # --- (de)serialisation -------------------------------------------------------------
    _TOP_KEYS = tuple(_GLOBAL_DEFAULTS) + ("seed", "op_types", "names")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClusterConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls._TOP_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(cls._TOP_KEYS)}")
        kwargs = {k: v for k, v in data.items() if k not in ("op_types", "names")}
        ops = data.get("op_types", {})
        if not isinstance(ops, Mapping):
            raise ConfigError("op_types must be an object mapping op type to settings")
        kwargs["op_types"] = {op: Settings.from_dict(s, f"op_types.{op}") for op, s in ops.items()}
        names = data.get("names", [])
        if not isinstance(names, list):
            raise ConfigError("names must be a list of {\"regex\": ..., settings...}")
        rules = []
        for i, item in enumerate(names):
            if not isinstance(item, Mapping) or not isinstance(item.get("regex"), str):
                raise ConfigError(f"names[{i}]: expected an object with a \"regex\" string")
            rest = {k: v for k, v in item.items() if k != "regex"}
            rules.append(NameRule(item["regex"], Settings.from_dict(rest, f"names[{i}]")))
        kwargs["names"] = tuple(rules)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ConfigError(str(exc)) from None

    def to_dict(self) -> dict:
        out = {key: (getattr(self, key).value if isinstance(getattr(self, key), Enum)
                     else getattr(self, key)) for key in _GLOBAL_DEFAULTS}
        out["seed"] = self.seed
        out["op_types"] = {op: (s.to_dict() if not s.skip else "skip") for op, s in self.op_types.items()}
        out["names"] = [dict(regex=r.regex, **r.settings.to_dict()) for r in self.names]
        return out

    def with_overrides(self, **changes) -> "ClusterConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path) -> ClusterConfig:
    """Read a JSON config file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputFileError(path, f"cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputFileError(path, "config is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"config is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        return ClusterConfig.from_dict(data)
    except ConfigError as exc:
        raise InputFileError(path, f"bad config: {exc}") from None
