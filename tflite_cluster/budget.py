"""The size-budget gate: is each model within its budget under a chosen metric?

Public API::

    Budget(max, metric="file", vela=None)        # one budget, validated
    load_budgets(path) -> BudgetFile              # a JSON or TOML file of glob -> budget
    BudgetFile.assign(models=None, metric=, vela=) -> [(path, Budget)]
    check(model, budget) -> Verdict               # measure and compare

A budget file maps path globs (relative to the file's folder; ``**`` matches folders) to
budgets::

    # budgets.toml
    ["models/*.tflite"]
    max = "300KB"
    metric = "deflate"

    ["models/npu/*.tflite"]
    max = "120KiB"
    metric = "vela"
    vela = "ethos-u55-128"

(or the same as a JSON object). ``max`` is bytes or a size with a unit (see
:func:`size.parse_size`); ``metric`` is one of file, deflate, palette, entropy, vela (default:
the caller's default, else file); ``vela`` is the accelerator config the vela metric compiles
for. When several globs match a model the last one wins. A glob that matches no file is an
error, so a typo or a renamed model cannot pass the gate silently. ``.toml`` files are read as
TOML (Python 3.11's tomllib, or the tomli package on 3.10), every other file as JSON.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, InputFileError
from .size import METRICS, ModelSize, check_vela_config, measure, parse_size


@dataclass(frozen=True)
class Budget:
    max: int
    metric: str = "file"
    vela: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "max", parse_size(self.max))
        if self.metric not in METRICS:
            raise ConfigError(f"metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.vela is not None:
            check_vela_config(self.vela)
        if self.metric == "vela" and self.vela is None:
            raise ConfigError("metric vela needs a Vela accelerator config (e.g. ethos-u55-128)")

    def to_dict(self) -> dict:
        return {"max": self.max, "metric": self.metric, "vela": self.vela}


@dataclass(frozen=True)
class Verdict:
    model: str
    metric: str
    measured: int
    budget: int
    vela: str | None = None
    cpu_ops: int | None = None  # ops Vela left on the CPU (vela metric only)

    @property
    def within(self) -> bool:
        """Equal to the budget counts as within."""
        return self.measured <= self.budget

    @property
    def margin(self) -> int:
        """Bytes left (negative when over)."""
        return self.budget - self.measured

    def to_dict(self) -> dict:
        return {"model": self.model, "metric": self.metric, "measured": self.measured,
                "budget": self.budget, "margin": self.margin, "within": self.within,
                "vela": self.vela, "cpu_ops": self.cpu_ops}


def verdict(size: ModelSize, budget: Budget) -> Verdict:
    """Compare an already measured model with ``budget``."""
    return Verdict(model=size.model, metric=budget.metric, measured=size.metric(budget.metric),
                   budget=budget.max, vela=budget.vela if budget.metric == "vela" else None,
                   cpu_ops=size.vela.cpu_ops if budget.metric == "vela" and size.vela else None)


def check(model, budget: Budget) -> Verdict:
    """Measure ``model`` (path or bytes) under ``budget.metric`` and compare."""
    size = measure(model, vela=budget.vela if budget.metric == "vela" else None)
    return verdict(size, budget)


_ENTRY_KEYS = ("max", "metric", "vela")


@dataclass(frozen=True)
class BudgetRule:
    pattern: str
    max: int
    metric: str | None
    vela: str | None


@dataclass(frozen=True)
class BudgetFile:
    path: Path
    rules: tuple[BudgetRule, ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def _matches(self, rule: BudgetRule) -> set[Path]:
        found = glob.glob(rule.pattern, root_dir=self.root, recursive=True)
        return {Path(os.path.normpath(self.root / f)).resolve() for f in found
                if (self.root / f).is_file()}

    def _budget(self, rule: BudgetRule, metric: str | None, vela: str | None) -> Budget:
        try:
            return Budget(rule.max, rule.metric or metric or "file", rule.vela or vela)
        except ConfigError as exc:
            raise InputFileError(self.path, f"{rule.pattern!r}: {exc}") from None

    def assign(self, models: list[str] | None = None, *, metric: str | None = None,
               vela: str | None = None) -> list[tuple[str, Budget]]:
        """(model path, budget) pairs: the given ``models``, or every file the globs match.

        ``metric`` and ``vela`` fill in entries that do not set them. The last matching glob
        wins. A given model no glob matches, or a glob that matches no file, is an error.
        """
        matches = [(rule, self._matches(rule)) for rule in self.rules]
        for rule, files in matches:
            if not files:
                raise InputFileError(self.path, f"pattern {rule.pattern!r} matches no file "
                                                f"(globs are relative to {self.root})")
        if models is None:
            ordered: dict[Path, BudgetRule] = {}
            for rule, files in matches:
                for f in sorted(files):
                    ordered[f] = rule  # a later rule replaces an earlier one
            out = []
            for f in sorted(ordered):
                try:
                    shown = str(f.relative_to(Path.cwd()))
                except ValueError:
                    shown = str(f)
                out.append((shown, self._budget(ordered[f], metric, vela)))
            return out
        out = []
        for m in models:
            target = Path(m).resolve()
            rule = None
            for r, files in matches:
                if target in files:
                    rule = r
            if rule is None:
                raise InputFileError(m, f"no budget in {self.path} matches this model")
            out.append((m, self._budget(rule, metric, vela)))
        return out


def _read_toml(path: Path, text: str) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise InputFileError(path, "TOML budget files need Python 3.11+ or the tomli "
                                       "package; install tomli or write the budgets as JSON") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(path, f"budget file is not valid TOML: {exc}") from None


def load_budgets(path: str | Path) -> BudgetFile:
    """Read and validate a budget file; every problem is an :class:`InputFileError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise InputFileError(path, "is a folder, not a budget file") from None
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read budget file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputFileError(path, "budget file is not UTF-8 text") from None
    if path.suffix.lower() == ".toml":
        data = _read_toml(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, f"budget file is not valid JSON: {exc.msg} at line "
                                       f"{exc.lineno}") from None
    if not isinstance(data, Mapping):
        raise InputFileError(path, "budget file must map path globs to budgets, e.g. "
                                   "{\"models/*.tflite\": {\"max\": \"300KB\"}}")
    if not data:
        raise InputFileError(path, "budget file holds no budgets")
    rules = []
    for pattern, entry in data.items():
        if not isinstance(entry, Mapping):
            raise InputFileError(path, f"{pattern!r}: expected a table/object with \"max\", "
                                       f"got {entry!r}")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        if unknown:
            raise InputFileError(path, f"{pattern!r}: unknown key(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(_ENTRY_KEYS)}")
        if "max" not in entry:
            raise InputFileError(path, f"{pattern!r}: missing \"max\"")
        metric, vela = entry.get("metric"), entry.get("vela")
        for key, value in (("metric", metric), ("vela", vela)):
            if value is not None and not isinstance(value, str):
                raise InputFileError(path, f"{pattern!r}: {key} must be a string, got {value!r}")
        try:
            limit = parse_size(entry["max"])
            if metric is not None and metric not in METRICS:
                raise ConfigError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
            if vela is not None:
                check_vela_config(vela)
        except ConfigError as exc:
            raise InputFileError(path, f"{pattern!r}: {exc}") from None
        rules.append(BudgetRule(pattern, limit, metric, vela))
    return BudgetFile(path, tuple(rules))
