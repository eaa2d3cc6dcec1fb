"""Command line: ``tflite-cluster VERB ...``, thin over the public API.

``main(argv) -> int`` maps typed errors to exit codes: 0 success, 1 a check failed (--strict,
a gate), 2 an error (one line on stderr naming the file and the problem, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import __version__, kmeans
from .clustering import ClusterReport, cluster
from .config import ClusterConfig, Granularity, Init, Method, Space, load_config
from .errors import ClusterError, ConfigError, InputFileError, OutputError
from .fileio import read_bytes, write_atomic
from .inspection import inspect

PROG = "tflite-cluster"


class UsageError(Exception):
    """Bad command-line arguments (exit 2, one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit code 2 via main()
        raise UsageError(f"{self.prog}: {message}")


# --- small formatting helpers -------------------------------------------------------------

def _table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _sqnr(v) -> str:
    if v is None:
        return "exact"
    return "-inf" if math.isinf(v) else f"{v:.1f}"


def _dump_json(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False)


class _ProgressBar:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, done: int, total: int, name: str) -> None:
        if not self.enabled or total == 0:
            return
        width = 30
        filled = width * done // total
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                         f"{_short(name, 40):40}{end}")
        sys.stderr.flush()


# --- cluster ------------------------------------------------------------------------------

def _add_cluster(sub) -> None:
    p = sub.add_parser("cluster", help="cluster the weights of a .tflite model")
    p.add_argument("model", nargs="+",
                   help="input .tflite file(s), or folder(s) of them (then -o names a folder)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", help="output .tflite file (a folder for several inputs)")
    out.add_argument("--in-place", action="store_true", help="replace the input (atomically)")
    p.add_argument("-k", "--clusters", type=int, dest="k", help="distinct values per tensor/channel/group (default 16)")
    p.add_argument("--granularity", choices=[g.value for g in Granularity], help="default: channel")
    p.add_argument("--group-size", type=int, help="channels per group for --granularity group")
    p.add_argument("--space", choices=[s.value for s in Space], help="default: auto")
    p.add_argument("--method", choices=[m.value for m in Method], help="default: optimal (exact)")
    p.add_argument("--init", choices=[i.value for i in Init], help="initialisation for --method kmeans")
    p.add_argument("--seed", type=int, help="seed for --method kmeans (default 0)")
    p.add_argument("--preserve-sparsity", action="store_true", default=None,
                   help="exact zeros stay zero and zero is one of the k values")
    p.add_argument("--min-elements", type=int, help="skip tensors smaller than this (default 1024)")
    p.add_argument("--tolerance", type=float,
                   help="optimal method: rows of more than 16,384 float values may be solved on a "
                        "fine grid when that is proven within this relative gap of the optimal "
                        "SSE (default 1e-4, at most 1e-3; 0: always exact); the report gives each "
                        "tensor's certified gap")
    p.add_argument("--config", help="JSON config file (flags override its global settings)")
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--force", action="store_true", help="overwrite existing output/report files")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 (writing nothing) if a rule matches nothing or a selected tensor is skipped")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("-j", "--jobs", type=int,
                   help="processes for several models (default: the number of cores)")
    p.add_argument("--target", choices=["ethos-u"],
                   help="preset for a deployment target; ethos-u: Vela pre-pass (int8 codes, one "
                        "codebook of k <= 32 codes per tensor, zero kept, small tensors left alone); "
                        "explicit flags and --config override it")
    p.add_argument("--vela-report", metavar="CONFIG",
                   help="compile with Vela (e.g. ethos-u55-128) before and after; print the "
                        "encoded weight bytes side by side")
    auto = p.add_argument_group("automatic mode (--auto)")
    auto.add_argument("--auto", action="store_true",
                      help="choose k (or none) per tensor: the smallest model whose outputs keep "
                           "--min-sqnr against the original on the calibration inputs (LiteRT)")
    auto.add_argument("--min-sqnr", type=float, metavar="DB", help="target output SQNR (default 30)")
    auto.add_argument("--inputs", metavar="FILE.npz",
                      help="calibration inputs (one array per model input, samples first); "
                           "default: seeded random samples (real data is better)")
    auto.add_argument("--metric", choices=["deflate", "palette", "vela"],
                      help="size to minimise (default deflate; vela with --target ethos-u)")
    auto.add_argument("--samples", type=int, metavar="N",
                      help="random calibration samples without --inputs (default 32)")
    auto.add_argument("--ladder", metavar="K,K,...",
                      help="k values to choose from (default 4,8,16,32,64,256; <= 32 for ethos-u)")
    auto.add_argument("--granularities", metavar="G,G",
                      help="granularities the search may pick per tensor, e.g. channel,tensor "
                           "(default tensor for --target ethos-u, else channel)")
    auto.add_argument("--save-plan", metavar="FILE.json",
                      help="write the plan as a config file that cluster --config replays exactly")
    p.set_defaults(run=_run_cluster)


def _config_from_args(args) -> ClusterConfig:
    base = load_config(args.config) if args.config else ClusterConfig()
    return base.with_overrides(
        k=args.k, granularity=args.granularity, group_size=args.group_size, space=args.space,
        method=args.method, init=args.init, seed=args.seed, preserve_sparsity=args.preserve_sparsity,
        min_elements=args.min_elements, tolerance=args.tolerance)


def format_cluster_report(report: ClusterReport) -> str:
    rows = []
    for t in report.tensors:
        after = str(t.unique_after) if t.skipped is None else "-"
        rows.append([_short(t.name), t.op, "x".join(map(str, t.shape)), t.dtype, str(t.unique_before),
                     after, _sqnr(t.sqnr_db) if t.skipped is None else f"skipped: {t.skipped}"])
    table = _table(["tensor", "op", "shape", "dtype", "unique", "after", "SQNR dB"], rows, {4, 5})
    done = report.clustered
    changed = sum(1 for t in done if t.sqnr_db is not None)
    weights = sum(t.elements for t in done)
    finite = [t.sqnr_db for t in done if t.sqnr_db is not None]
    lines = [table, "",
             f"clustered {len(done)} of {len(report.tensors)} weight tensors ({weights:,} weights, "
             f"{changed} changed), skipped {len(report.tensors) - len(done)}; "
             f"min SQNR {_sqnr(min(finite)) if finite else 'exact'} dB; {report.seconds:.2f} s"]
    gaps = [t.optimality_gap for t in done if t.optimality_gap]
    if gaps:
        lines.append(f"{len(gaps)} tensor(s) solved on a fine grid, proven within {max(gaps):.1e} "
                     "of the optimal SSE (--tolerance 0 solves them exactly)")
    lines += [f"warning: {p}" for p in report.problems]
    return "\n".join(lines)


def _target_preset(args):
    """The --target preset, with --config and explicit flags on top of it."""
    from .targets import preset as make_preset
    overrides = {}
    if args.config:
        load_config(args.config)  # validates the file, with errors that name it
        overrides = json.loads(Path(args.config).read_text(encoding="utf-8"))
    flags = dict(granularity=args.granularity, group_size=args.group_size, space=args.space,
                 method=args.method, init=args.init, seed=args.seed,
                 preserve_sparsity=args.preserve_sparsity, min_elements=args.min_elements,
                 tolerance=args.tolerance)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    k = args.k if args.k is not None else overrides.get("k")
    overrides.pop("k", None)
    return make_preset(args.target, args.model, k, overrides)


def format_target_preset(p) -> str:
    rows = [[_short(c.name), c.op, f"{c.elements:,}", f"{100 * c.share:.1f}",
             f"cluster k={c.k}" if c.action == "cluster" else "leave alone", c.reason]
            for c in p.choices]
    table = _table(["tensor", "op", "elements", "% bytes", "choice", "why"], rows, {2, 3})
    return "\n".join([p.summary(), table])


def _vela_compare(before: bytes, after: bytes, config: str, label: str) -> str:
    from .size import run_vela
    a = run_vela(before, config, label=label)
    b = run_vela(after, config, label=f"{label} (clustered)")

    def ratio(x, y):
        return f"{y / x:.3f}x" if x else "-"

    rows = [["original weights", f"{a.original_weights:,}", f"{b.original_weights:,}",
             ratio(a.original_weights, b.original_weights)],
            ["encoded weights", f"{a.encoded_weights:,}", f"{b.encoded_weights:,}",
             ratio(a.encoded_weights, b.encoded_weights)],
            ["ops left on the CPU", str(a.cpu_ops), str(b.cpu_ops), ""]]
    return (f"Vela {config} (--optimise Size, {a.system_config}), {label}:\n"
            + _table(["bytes", "before", "after", "after/before"], rows, {1, 2, 3}))


def _batch_inputs(names: list[str]) -> list[Path]:
    """The models named on the command line, folders expanded to their *.tflite files."""
    models = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.tflite") if p.is_file())
            if not found:
                raise InputFileError(path, "folder holds no .tflite files")
            models += found
        else:
            models.append(path)
    if len({p.resolve() for p in models}) != len(models):
        raise UsageError(f"{PROG} cluster: a model is named twice")
    return models


def _cluster_one(src: Path, dest: Path, config: dict, in_place: bool, force: bool,
                 strict: bool) -> dict:
    """Cluster and write one model of a batch (runs in a worker process). Never raises."""
    try:
        result = cluster(src, ClusterConfig.from_dict(config))
        report = result.report
        if strict and report.problems:
            return {"model": str(src), "code": 1, "report": report.to_dict(),
                    "message": f"{src}: --strict: {'; '.join(report.problems)}; nothing written"}
        mode = os.stat(src).st_mode if in_place else None
        result.save(dest, overwrite=in_place or force, mode=mode)
        done = report.clustered
        finite = [t.sqnr_db for t in done if t.sqnr_db is not None]
        return {"model": str(src), "code": 0, "report": report.to_dict(),
                "message": f"-> {dest}: clustered {len(done)} of {len(report.tensors)} weight tensors, "
                           f"min SQNR {_sqnr(min(finite)) if finite else 'exact'} dB, "
                           f"{report.seconds:.2f} s"}
    except ClusterError as exc:
        return {"model": str(src), "code": 2, "report": None, "message": str(exc)}
    except Exception as exc:  # a bug in one model must not stop the others
        return {"model": str(src), "code": 2, "report": None,
                "message": f"{src}: internal error: {type(exc).__name__}: {exc}"}


def _run_batch(args) -> int:
    """Several models: each clustered and written atomically, spread over processes; a failure
    in one is reported without stopping the others."""
    for flag, value in (("--auto", args.auto), ("--target", args.target),
                        ("--vela-report", args.vela_report)):
        if value:
            raise UsageError(f"{PROG} cluster: {flag} takes one model at a time")
    models = _batch_inputs(args.model)
    config = _config_from_args(args)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"{PROG} cluster: --jobs must be at least 1")
    if args.in_place:
        dests = models
    else:
        folder = Path(args.output)
        if folder.exists() and not folder.is_dir():
            raise OutputError(folder, "is not a folder (several models need -o FOLDER)")
        folder.mkdir(parents=True, exist_ok=True)
        dests = [folder / m.name for m in models]
        if len(set(dests)) != len(dests):
            raise UsageError(f"{PROG} cluster: two inputs share a file name; they would collide in {folder}")
    if args.report:
        _check_output_free(args.report, args.force)
    jobs = min(args.jobs or os.cpu_count() or 1, len(models))
    work = [(m, d, config.to_dict(), args.in_place, args.force, args.strict) for m, d in zip(models, dests)]
    if jobs == 1:
        results = [_cluster_one(*w) for w in work]
    else:
        from concurrent.futures import ProcessPoolExecutor
        share = max(1, (os.cpu_count() or 1) // jobs)  # the kernel's threads per worker
        with ProcessPoolExecutor(max_workers=jobs, initializer=kmeans.set_threads,
                                 initargs=(share,)) as pool:
            results = list(pool.map(_cluster_one, *zip(*work)))
    for r in results:
        if r["code"] == 0 and not args.quiet:
            print(f"ok    {r['model']} {r['message']}")
        elif r["code"] != 0:
            print(f"FAIL  {r['message']}", file=sys.stderr)
    if args.report:
        doc = {"models": [{"model": r["model"], "exit": r["code"], "error": None if r["code"] == 0 else r["message"],
                           "report": r["report"]} for r in results]}
        write_atomic(args.report, (_dump_json(doc) + "\n").encode(), overwrite=args.force)
    failed = sum(r["code"] == 2 for r in results)
    strict = sum(r["code"] == 1 for r in results)
    if not args.quiet:
        print(f"{len(results) - failed - strict} of {len(results)} models written"
              + (f", {failed} failed" if failed else "") + (f", {strict} failed --strict" if strict else ""))
    return 2 if failed else (1 if strict else 0)


def _run_cluster(args) -> int:
    if len(args.model) > 1 or Path(args.model[0]).is_dir():
        return _run_batch(args)
    args.model = args.model[0]
    if args.jobs is not None:
        raise UsageError(f"{PROG} cluster: --jobs is for several models")
    if args.auto:
        return _run_auto(args)
    only_auto = [flag for flag, value in (("--min-sqnr", args.min_sqnr), ("--inputs", args.inputs),
                                          ("--metric", args.metric), ("--samples", args.samples),
                                          ("--ladder", args.ladder), ("--save-plan", args.save_plan),
                                          ("--granularities", args.granularities))
                 if value is not None]
    if only_auto:
        raise UsageError(f"{PROG} cluster: {', '.join(only_auto)} need(s) --auto")
    preset = None
    if args.vela_report:
        from .size import check_vela_config, vela_command
        check_vela_config(args.vela_report)
        vela_command()  # MissingExtraError before any work
    if args.target:
        preset = _target_preset(args)
        config = preset.config
        if not args.quiet:
            print(format_target_preset(preset) + "\n")
            for w in preset.warnings:
                print(f"warning: {w}", file=sys.stderr)
    else:
        config = _config_from_args(args)
    src = Path(args.model)
    dest = src if args.in_place else Path(args.output)
    if not args.in_place:
        _check_output_free(dest, args.force)
    _check_output_free(args.report, args.force)
    result = cluster(src, config, progress=_ProgressBar(not args.quiet))
    if not args.quiet:
        print(format_cluster_report(result.report))
    doc = result.report.to_dict()
    if preset is not None:
        doc["target"] = preset.to_dict()
    return _finish_cluster(args, src, dest, result, result.report, doc)


def _finish_cluster(args, src: Path, dest: Path, model, report: ClusterReport, doc: dict,
                    plan: dict | None = None) -> int:
    """The common end of ``cluster`` and ``cluster --auto``: the --strict gate, the Vela
    comparison, then the model, plan and report written atomically."""
    if args.strict and report.problems:
        print(f"{PROG}: {src}: --strict: {len(report.problems)} problem(s); nothing written",
              file=sys.stderr)
        return 1
    vela_text = None
    if args.vela_report:
        vela_text = _vela_compare(read_bytes(src), model.data, args.vela_report, str(src))
    if args.in_place:
        model.save(src, overwrite=True, mode=os.stat(src).st_mode)
    else:
        model.save(dest, overwrite=args.force)
    if plan is not None:
        write_atomic(args.save_plan, (_dump_json(plan) + "\n").encode(), overwrite=args.force)
    if args.report:
        write_atomic(args.report, (_dump_json(doc) + "\n").encode(), overwrite=args.force)
    if not args.quiet:
        print(f"wrote {dest} ({report.size:,} bytes)" + (f"; plan {args.save_plan}" if plan else ""))
    if vela_text is not None:
        print("\n" + vela_text)
    return 0


def _parse_ladder(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UsageError(f"{PROG} cluster: --ladder {text!r}: expected k values like 4,8,16") from None
    if not ks:
        raise UsageError(f"{PROG} cluster: --ladder {text!r}: expected k values like 4,8,16")
    return ks


def _check_output_free(path, force: bool) -> None:
    if path and Path(path).exists() and not force:
        raise OutputError(path, "already exists (use --force to overwrite)")


def _run_auto(args) -> int:
    from .auto import AutoConfig, auto_plan, format_auto
    if args.k is not None:
        raise UsageError(f"{PROG} cluster: --auto chooses k per tensor itself; give the choices "
                         f"with --ladder instead of -k")
    base = load_config(args.config) if args.config else ClusterConfig()
    if base.names or base.op_types:
        raise UsageError(f"{PROG} cluster: --auto decides every tensor itself; {args.config} has "
                         f"names/op_types rules, which it would ignore (keep only global settings)")
    base = base.with_overrides(group_size=args.group_size, space=args.space, method=args.method,
                               init=args.init, seed=args.seed,
                               preserve_sparsity=args.preserve_sparsity,
                               min_elements=args.min_elements, tolerance=args.tolerance)
    if args.samples is not None and args.inputs:
        raise UsageError(f"{PROG} cluster: --samples applies to random inputs; --inputs gives them all")
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"{PROG} cluster: --samples must be at least 1")
    if args.min_sqnr is not None and not math.isfinite(args.min_sqnr):
        raise UsageError(f"{PROG} cluster: --min-sqnr must be a finite number of dB")
    kwargs = dict(target=args.target, metric=args.metric, base=base)
    if args.min_sqnr is not None:
        kwargs["min_sqnr_db"] = args.min_sqnr
    if args.samples is not None:
        kwargs["samples"] = args.samples
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.ladder is not None:
        kwargs["ladder"] = _parse_ladder(args.ladder)
    if args.granularity is not None and args.granularities is not None:
        raise UsageError(f"{PROG} cluster: give --granularity or --granularities, not both")
    if args.granularity is not None:
        kwargs["granularities"] = (args.granularity,)
    if args.granularities is not None:
        kwargs["granularities"] = tuple(g for g in args.granularities.replace(" ", "").split(",")
                                        if g)
    if args.vela_report:
        kwargs["vela_config"] = args.vela_report
    auto_config = AutoConfig(**kwargs)
    if auto_config.metric == "vela" or args.vela_report:
        from .size import vela_command
        vela_command()  # MissingExtraError before any work
    src = Path(args.model)
    dest = src if args.in_place else Path(args.output)
    if not args.in_place:
        _check_output_free(dest, args.force)
    _check_output_free(args.report, args.force)
    _check_output_free(args.save_plan, args.force)
    found = auto_plan(src, auto_config, inputs=args.inputs, progress=_ProgressBar(not args.quiet))
    for w in found.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    if not args.quiet:
        print(format_auto(found))
    plan = found.plan_dict() if args.save_plan else None
    return _finish_cluster(args, src, dest, found, found.result.report, found.to_dict(), plan)


# --- compare ------------------------------------------------------------------------------

def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="run two models with LiteRT on the same inputs and "
                                       "compare their outputs (SQNR, differences, top-1)")
    p.add_argument("model_a", metavar="A", help="reference .tflite file")
    p.add_argument("model_b", metavar="B", help=".tflite file compared against A")
    p.add_argument("--inputs", metavar="FILE.npz",
                   help="one array per model input, keyed by input name or arr_0, arr_1, ... in "
                        "input order; first axis = samples (default: seeded random samples)")
    p.add_argument("--samples", type=int, metavar="N", help="random samples (default 32)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the random samples (default 0)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="exit 1 when the minimum SQNR over the outputs is below DB")
    p.set_defaults(run=_run_compare)


def _run_compare(args) -> int:
    from .compare import compare, format_compare, format_db
    if args.inputs and (args.samples is not None or args.seed is not None):
        raise UsageError(f"{PROG} compare: --samples and --seed apply to random inputs, "
                         f"not to --inputs")
    samples = 32 if args.samples is None else args.samples
    seed = 0 if args.seed is None else args.seed
    if samples < 1:
        raise UsageError(f"{PROG} compare: --samples must be at least 1")
    if seed < 0:
        raise UsageError(f"{PROG} compare: --seed must be 0 or more")
    if args.min_sqnr is not None and math.isnan(args.min_sqnr):
        raise UsageError(f"{PROG} compare: --min-sqnr must be a number of dB")
    report = compare(args.model_a, args.model_b, inputs=args.inputs, samples=samples, seed=seed)
    worst = report.min_sqnr_db
    ok = args.min_sqnr is None or (not math.isnan(worst) and worst >= args.min_sqnr)
    if args.json:
        doc = report.to_dict()
        if args.min_sqnr is not None:
            doc["gate"] = {"min_sqnr_db": args.min_sqnr, "passed": ok}
        print(_dump_json(doc))
    else:
        print(format_compare(report))
        if args.min_sqnr is not None:
            print(f"{'ok' if ok else 'FAIL'}: min SQNR {format_db(worst)} dB "
                  f"{'>=' if ok else '<'} {args.min_sqnr:g} dB")
    return 0 if ok else 1


# --- inspect ------------------------------------------------------------------------------

def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list candidate weight tensors and what cluster would do")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", help="JSON config file to judge clusterability with")
    p.add_argument("--min-elements", type=int)
    p.set_defaults(run=_run_inspect)


def _quant_text(q) -> str:
    if q is None:
        return "-"
    if len(q["scales"]) > 1:
        return f"per-channel({len(q['scales'])}, axis {q['quantized_dimension']})"
    return "per-tensor"


def _run_inspect(args) -> int:
    config = load_config(args.config) if args.config else ClusterConfig()
    config = config.with_overrides(min_elements=args.min_elements)
    result = inspect(args.model, config)
    if args.json:
        print(_dump_json(result.to_dict()))
        return 0
    rows = [[str(t.subgraph), str(t.tensor), _short(t.name, 40), ",".join(dict.fromkeys(o["op"] for o in t.ops)),
             "x".join(map(str, t.shape)), t.dtype, _quant_text(t.quantization), str(t.unique),
             "-" if t.max_unique_per_channel is None else str(t.max_unique_per_channel),
             f"{100 * t.zeros:.1f}", f"{t.bytes:,}", "yes" if t.clusterable else f"no: {t.reason}"]
            for t in result.tensors]
    print(_table(["sg", "t", "tensor", "op", "shape", "dtype", "quant", "unique", "max/ch", "zeros%",
                  "bytes", "cluster"], rows, {0, 1, 7, 8, 9, 10}))
    n = sum(t.clusterable for t in result.tensors)
    print(f"\n{result.model}: {result.size:,} bytes, {result.subgraphs} subgraph(s), "
          f"{len(result.tensors)} candidate weight tensors, {n} clustered by default")
    return 0


# --- size ---------------------------------------------------------------------------------

def _add_size(sub) -> None:
    p = sub.add_parser("size", help="measured sizes: file, zlib -9, ideal palette, entropy, Vela")
    p.add_argument("models", nargs="+", metavar="MODEL", help=".tflite files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--vela", metavar="CONFIG",
                   help="also compile with Vela for this accelerator (e.g. ethos-u55-128)")
    p.add_argument("--tensors", action="store_true", help="also list every weight tensor")
    p.set_defaults(run=_run_size)


def _run_size(args) -> int:
    from .size import check_vela_config, format_bytes as fb, measure
    if args.vela:
        check_vela_config(args.vela)
    sizes = [measure(m, vela=args.vela) for m in args.models]
    if args.json:
        print(_dump_json({"models": [s.to_dict() for s in sizes]}))
        return 0
    headers = ["model", "file", "deflate", "weights", "weights deflate", "palette", "entropy"]
    if args.vela:
        headers += ["vela original", "vela encoded", "ratio", "cpu ops"]
    rows = []
    for s in sizes:
        row = [_short(s.model), fb(s.file), fb(s.deflate), fb(s.weights), fb(s.weights_deflate),
               fb(s.palette), fb(s.entropy)]
        if s.vela is not None:
            ratio = s.vela.ratio
            row += [fb(s.vela.original_weights), fb(s.vela.encoded_weights),
                    "-" if ratio is None else f"{ratio:.3f}", str(s.vela.cpu_ops)]
        rows.append(row)
    print(_table(headers, rows, set(range(1, len(headers)))))
    if args.tensors:
        for s in sizes:
            trows = [[_short(t.name, 40), t.op, "x".join(map(str, t.shape)), t.dtype,
                      "-" if t.distinct is None else str(t.distinct), fb(t.file), fb(t.deflate),
                      fb(t.palette), fb(t.entropy)] for t in s.tensors]
            print(f"\n{s.model}: {len(s.tensors)} weight tensors")
            print(_table(["tensor", "op", "shape", "dtype", "distinct", "bytes", "deflate", "palette",
                          "entropy"], trows, {4, 5, 6, 7, 8}))
    print("\nbytes; deflate = zlib -9; palette = weights packed as ceil(log2 distinct)-bit indices "
          "+ their distinct values; entropy = the entropy-coding bound"
          + ("; vela = Vela --optimise Size weight bytes (NPU ops)" if args.vela else ""))
    return 0


# --- budget -------------------------------------------------------------------------------

def _add_budget(sub) -> None:
    from .size import METRICS
    p = sub.add_parser("budget", help="CI gate: exit 1 when a model is over its size budget")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=".tflite files (with --budgets: default every file its globs match)")
    p.add_argument("--max", metavar="SIZE", help="budget: bytes or e.g. 300KB, 1.5MiB")
    p.add_argument("--metric", choices=METRICS,
                   help="what to measure (default file; vela when --vela is given)")
    p.add_argument("--vela", metavar="CONFIG", help="Vela accelerator config for --metric vela")
    p.add_argument("--budgets", metavar="FILE", help="JSON or TOML file mapping path globs to "
                                                      "{max, metric, vela}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_budget)


def _budget_line(v) -> str:
    pct = (100.0 * abs(v.margin) / v.budget) if v.budget else math.inf
    metric = f"vela {v.vela} encoded weights" if v.metric == "vela" else v.metric
    where = "within" if v.within else "OVER"
    tail = f"; {v.cpu_ops} op(s) left on the CPU" if v.cpu_ops else ""
    return (f"{'ok  ' if v.within else 'FAIL'} {v.model}: {metric} {v.measured:,} B {where} budget "
            f"{v.budget:,} B (margin {v.margin:+,} B, {pct:.1f} % {'left' if v.within else 'over'}){tail}")


def _run_budget(args) -> int:
    from .budget import Budget, load_budgets, verdict
    from .size import measure
    if args.budgets:
        if args.max is not None:
            raise UsageError(f"{PROG} budget: --max and --budgets exclude each other")
        pairs = load_budgets(args.budgets).assign(args.models or None, metric=args.metric,
                                                  vela=args.vela)
    else:
        if not args.models:
            raise UsageError(f"{PROG} budget: give MODEL(s) and --max, or --budgets FILE")
        if args.max is None:
            raise UsageError(f"{PROG} budget: --max SIZE is required without --budgets")
        metric = args.metric or ("vela" if args.vela else "file")
        if args.vela and metric != "vela":
            raise UsageError(f"{PROG} budget: --vela applies to --metric vela only")
        try:
            budget = Budget(args.max, metric, args.vela)
        except ConfigError as exc:
            raise UsageError(f"{PROG} budget: {exc}") from None
        pairs = [(m, budget) for m in args.models]
    cache = {}
    verdicts = []
    for m, b in pairs:
        key = (m, b.vela if b.metric == "vela" else None)
        if key not in cache:
            cache[key] = measure(m, vela=key[1])
        verdicts.append(verdict(cache[key], b))
    ok = all(v.within for v in verdicts)
    if args.json:
        print(_dump_json({"within": ok, "models": [v.to_dict() for v in verdicts]}))
    else:
        for v in verdicts:
            print(_budget_line(v))
    return 0 if ok else 1


# --- entry point --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Post-training weight clustering of .tflite models.")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {__version__} (exact kernel: {kmeans.kernel()})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_cluster(sub)
    _add_inspect(sub)
    _add_size(sub)
    _add_budget(sub)
    _add_compare(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UsageError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"{PROG}: error: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # a bug: still one line and exit 2, unless debugging
        if os.environ.get("TFLITE_CLUSTER_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (set TFLITE_CLUSTER_DEBUG=1 "
              f"for a traceback, and please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
