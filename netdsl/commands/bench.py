"""``netdsl bench SPEC|MODEL.onnx [more ...] --batch 1,4,8,16``: side-by-side latency table.

All models run in one process, interleaved run by run, so ratios to ``--baseline`` are fair.
Backends: ``ort`` (ONNX Runtime, CPU), ``trt`` (TensorRT engines; where TensorRT or a GPU is
missing this says so and measures with ONNX Runtime instead) and ``torch`` (PyTorch modules
generated from specs). Fixed-batch ONNX models are re-batched and verified against the original.

Beside the latencies, each model gets its parameters, MACs and bytes moved per frame (from
``netdsl stats`` for specs, from the ONNX graph for ONNX files; for a spec whose passes change its
MACs, the MACs as compiled too) and, per ``--coverage`` profile,
its TensorRT coverage: ``100%`` when every node is allowed, else covered/total nodes, with the
refused nodes grouped by op and reason. A spec is compiled for the profile's target for this; an
ONNX file is checked as it is.
Exit status 0 when every model was measured at every batch size, 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from netdsl.commands.coverage import add_model_input_args, load_model_input, wide_console
from netdsl.coverage.profile import BUNDLED_PROFILES
from netdsl.diagnostics import Diagnostic, NetdslError, render

DEFAULT_COVERAGE = "trt-restricted,trt-dla"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``netdsl bench``."""
    p = subparsers.add_parser("bench", help="benchmark models side by side at several batch sizes",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="SPEC|MODEL.onnx", help=".net specs or ONNX models")
    p.add_argument("--batch", default="1,4,8,16", help="comma-separated batch sizes (default 1,4,8,16)")
    p.add_argument("--backend", choices=("ort", "trt", "torch"), default="ort", help="runtime (default ort)")
    p.add_argument("--baseline", metavar="NAME",
                   help="model the ratios refer to (its name in the table: the file name without suffix)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model and batch (default 10)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and batch (default 50)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "qdq"), default="fp16",
                   help="TensorRT precision for --backend trt (default fp16)")
    p.add_argument("--target", default="onnx", choices=("onnx", "trt", "trt-restricted", "trt-dla"),
                   help="compile target for specs (default onnx)")
    p.add_argument("--no-verify", action="store_true", help="do not check re-batched models against the original")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="also save a latency-vs-batch plot")
    p.add_argument("--coverage", default=DEFAULT_COVERAGE, metavar="PROFILES",
                   help=f"comma-separated TensorRT profiles (names or TOML files) to check each model against, "
                        f"or 'none' (default {DEFAULT_COVERAGE})")
    p.add_argument("--no-size", action="store_true", help="do not compute parameters, MACs and bytes per frame")
    add_model_input_args(p)
    p.set_defaults(run=run)


def parse_batches(text: str) -> list[int]:
    """``"1,4,8,16"`` -> ``[1, 4, 8, 16]``; a located error for anything else."""
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or len(set(batches)) != len(batches):
        raise NetdslError(Diagnostic(f"--batch expects distinct positive integers like 1,4,8,16, found '{text}'"))
    return batches


def model_names(paths: list[str]) -> list[str]:
    """Display names: the file stem, made unique with the suffix (``m.net``, ``m.onnx``) or else the
    parent folder, then a counter."""
    stems = [Path(p).stem for p in paths]
    file_names = [Path(p).name for p in paths]
    names: list[str] = []
    for path, stem, file_name in zip(paths, stems, file_names, strict=True):
        if stems.count(stem) == 1:
            base = stem
        elif file_names.count(file_name) == 1:
            base = file_name
        else:
            base = f"{Path(path).parent.name}/{stem}"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def _spec_args(path: str, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with ``spec`` set to ``path``, for the spec-reading helpers."""
    return argparse.Namespace(**{**vars(args), "spec": Path(path)})


def _torch_model(path: str, args: argparse.Namespace) -> Any:
    """A spec as a PyTorch module (with the spec's weights) and its per-sample input shape."""
    if Path(path).suffix == ".onnx":
        raise NetdslError(Diagnostic(f"{path}: --backend torch runs .net specs; ONNX models run with ort or trt"))
    from netdsl.analysis.timing import TorchModel
    from netdsl.backends.torch_backend import build_module
    from netdsl.driver import lower_from_args

    result = lower_from_args(_spec_args(path, args), "torch")
    graph = result.graph
    if len(graph.inputs) != 1:
        raise NetdslError(Diagnostic(f"{path}: the torch benchmark feeds one input, the model has {graph.inputs}"))
    return TorchModel(build_module(graph, result.weights), graph.values[graph.inputs[0]].shape[1:])


def _onnx_model(path: str, args: argparse.Namespace) -> Any:
    """An ONNX file as it is; a spec as a :class:`PerBatchModel` compiled with its input's batch
    bound to each batch size (specs need no re-batching, and keep batch-dependent semantics such as
    squeeze() exact)."""
    model = load_model_input(path, args, args.target)
    if Path(path).suffix == ".onnx":
        return model
    from netdsl.analysis.timing import PerBatchModel

    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        return model  # several inputs: fall back to re-batching the compiled model
    name = inputs[0].name
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    others = [binding for binding in args.inputs if binding.partition("=")[0].strip() != name]

    def build(batch: int) -> Any:
        if batch == dims[0]:
            return model
        shape = "x".join(str(d) for d in [batch, *dims[1:]])
        return load_model_input(path, argparse.Namespace(**{**vars(args), "inputs": [*others, f"{name}={shape}"]}),
                                args.target)

    return PerBatchModel(build)


def parse_profiles(text: str) -> list[Any]:
    """The profiles of ``--coverage`` (``none`` or empty: no coverage column); a located error for a bad one."""
    from netdsl.coverage.profile import ProfileError, load_profile

    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["none"]:
        return []
    try:
        return [load_profile(name) for name in dict.fromkeys(names)]
    except ProfileError as err:
        raise NetdslError(Diagnostic(f"--coverage: {err}")) from None


def model_size(path: str, args: argparse.Namespace, onnx_model: Any = None) -> Any:
    """A spec's :class:`ModelSize` from :func:`netdsl.traffic.graph_stats` (as ``netdsl stats`` shows it),
    with the MACs of its graph after the benchmarked target's passes beside; an ONNX file's from its
    graph (``onnx_model``, the file already loaded)."""
    from netdsl.analysis.model_facts import ModelSize, onnx_size

    if onnx_model is not None:
        return onnx_size(onnx_model)
    from netdsl.driver import graph_from_args, lower_from_args
    from netdsl.traffic import graph_stats

    spec_args = _spec_args(path, args)
    graph = graph_from_args(spec_args)
    totals = graph_stats(graph).to_json()
    target = "torch" if args.backend == "torch" else args.target
    compiled = graph_stats(lower_from_args(spec_args, target, graph).graph).to_json()
    return ModelSize(totals["params"], totals["macs"], totals["bytes_per_frame"], compiled["macs"])


def model_coverage(path: str, args: argparse.Namespace, profile: Any, onnx_model: Any = None) -> Any:
    """The :class:`CoverageSummary` of a model under ``profile``: a spec compiled for the profile's target
    (``trt-restricted`` for a profile file), an ONNX file (``onnx_model``, already loaded) as it is. A
    spec that does not compile for that target gets a summary with the error instead of stopping the
    benchmark."""
    from netdsl.analysis.model_facts import CoverageSummary, summarize_coverage
    from netdsl.coverage.checker import check_coverage

    model = onnx_model
    if model is None:
        target = profile.name if profile.name in BUNDLED_PROFILES else "trt-restricted"
        try:
            model = load_model_input(path, args, target)
        except NetdslError as err:
            where = f"{err.diag.span}: " if err.diag.span else ""
            return CoverageSummary(profile.name, error=where + err.diag.message)
    return summarize_coverage(check_coverage(model, profile))


def model_facts(paths: dict[str, str], loaded: dict[str, Any], args: argparse.Namespace, profiles: list[Any],
                console: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Per model name: its size (None with ``--no-size``) and its coverage summary per profile.

    ``loaded`` holds the models as the benchmark loaded them; ONNX files are taken from there."""
    facts = {}
    for name, path in paths.items():
        onnx_model = loaded[name] if Path(path).suffix == ".onnx" else None
        with console.status(f"{name}: size and coverage"):
            size = None if args.no_size else model_size(path, args, onnx_model)
            facts[name] = (size, {p.name: model_coverage(path, args, p, onnx_model) for p in profiles})
    return facts


def _backend(requested: str, console: Any) -> str:
    from rich.markup import escape

    if requested != "trt":
        return requested
    from netdsl.backends.trt_engine import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as err:
        console.print(f"[yellow]TensorRT is not usable here: {escape(str(err))}.[/yellow] "
                      "Benchmarking with ONNX Runtime instead.")
        return "ort"
    return "trt"


def run(args: argparse.Namespace) -> int:
    """Benchmark; 0 when every model was measured at every batch size, 2 otherwise."""
    from rich.markup import escape

    from netdsl.analysis.bench_report import plot_bench, render_bench
    from netdsl.analysis.timing import bench_many

    console = wide_console()
    try:
        batches = parse_batches(args.batch)
        names = model_names(args.models)
        if args.baseline is not None and args.baseline not in names:
            raise NetdslError(Diagnostic(f"--baseline '{args.baseline}' is not one of the models: {', '.join(names)}"))
        backend = _backend(args.backend, console)
        if backend == "torch":
            models = {n: _torch_model(p, args) for n, p in zip(names, args.models, strict=True)}
        else:
            models = {n: _onnx_model(p, args) for n, p in zip(names, args.models, strict=True)}
        if args.warmup < 0 or args.runs < 1:
            raise NetdslError(Diagnostic("--warmup must be >= 0 and --runs >= 1"))
        facts = model_facts(dict(zip(names, args.models, strict=True)), models, args, parse_profiles(args.coverage),
                            console)
    except NetdslError as err:
        print(render(err.diag), file=sys.stderr)
        return 2
    table = bench_many(models, batches, args.warmup, args.runs, backend, args.baseline, progress=True,
                       threads=args.threads, verify=not args.no_verify, precision=args.precision, console=console)
    for name, (size, coverage) in facts.items():
        table.result(name).size, table.result(name).coverage = size, coverage
    render_bench(table, console)
    if args.json is not None:
        from netdsl.atomic_write import atomic_write_text

        atomic_write_text(args.json, table.to_json() + "\n")
    if args.plot is not None:
        plot_bench(table, args.plot)
    failed = [f"{r.name} at batch {row.batch}" for r in table.results for row in r.rows if row.error]
    if failed:
        console.print("[red]not measured:[/red] " + escape(", ".join(failed)))
    return 2 if failed else 0
