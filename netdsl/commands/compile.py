"""``netdsl compile SPEC --target T -o OUT``: lower a spec and emit ONNX or a PyTorch module.

Targets: ``onnx`` (ONNX for ONNX Runtime), ``torch`` (a standalone PyTorch module source),
``trt``, ``trt-restricted`` and ``trt-dla`` (ONNX lowered to the profile's layer set, validated
against it, written only when every node is covered). Outputs are written atomically: a
failure never leaves a partial or stale file behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.driver import add_spec_args, graph_from_args

if TYPE_CHECKING:
    import onnx

    from netdsl.passes.pipeline import PipelineResult

TARGETS = ("onnx", "torch", "trt", "trt-restricted", "trt-dla")
TRT_TARGETS = ("trt", "trt-restricted", "trt-dla")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a spec to ONNX, PyTorch or a TensorRT-ready ONNX")
    p.add_argument("spec", help=".net file")
    p.add_argument("--target", choices=TARGETS, default="onnx")
    p.add_argument("-o", "--output", type=Path, help="output file (.onnx, or .py for --target torch)")
    p.add_argument("--weights", type=Path, help="weights to load by name (.safetensors, .npz, .pt, .pth)")
    p.add_argument("--seed", type=int, default=0, help="seed of the default initialisation (default 0)")
    p.add_argument("--opset", type=int, default=17, choices=range(17, 22), metavar="{17..21}",
                   help="ONNX opset (default 17)")
    p.add_argument("--profile", help="TensorRT profile name or file (default: the target's)")
    p.add_argument("--passes", help="comma-separated passes to run instead of the target's pipeline")
    p.add_argument("--print-after", metavar="PASS", help="print the IR after this pass")
    p.add_argument("--precision", choices=("fp16", "int8", "fp32"), default="fp16",
                   help="precision in the printed trtexec command")
    add_spec_args(p)
    p.set_defaults(run=run)


def load_weights_or_init(graph: object, path: Path | None, seed: int) -> dict:
    """Weights from ``path`` (matched by name, checked) or the seeded default initialisation."""
    from netdsl.initializers import initial_weights

    if path is None:
        return initial_weights(graph, seed)  # type: ignore[arg-type]
    from netdsl.backends.weights_io import WeightsError, load_weights

    try:
        return load_weights(path, graph)  # type: ignore[arg-type]
    except WeightsError as err:
        raise NetdslError(Diagnostic(str(err))) from None


def lower(args: argparse.Namespace, target: str) -> PipelineResult:
    """Elaborate the spec, load weights and run the target's pass pipeline."""
    from netdsl.passes.pipeline import run_pipeline

    graph = graph_from_args(args)
    weights = load_weights_or_init(graph, getattr(args, "weights", None), getattr(args, "seed", 0))
    passes = [p.strip() for p in args.passes.split(",") if p.strip()] if getattr(args, "passes", None) else None
    return run_pipeline(graph, target, weights=weights, passes=passes, print_after=getattr(args, "print_after", None))


def compile_to_onnx(args: argparse.Namespace, target: str) -> onnx.ModelProto:
    """The ONNX model of the spec in ``args`` lowered for ``target`` (the shared spec flags,
    ``--weights``/``--seed``, and optionally ``--passes``/``--opset``)."""
    from netdsl.backends.onnx_backend import to_onnx

    result = lower(args, target)
    return to_onnx(result.graph, result.weights, opset=getattr(args, "opset", 17))


def run(args: argparse.Namespace) -> int:
    if args.output is None:
        raise NetdslError(Diagnostic("compile needs an output file: -o OUT"))
    target = args.target
    result = lower(args, target)
    if target == "torch":
        from netdsl.backends.torch_backend import write_source

        write_source(result.graph, args.output)
        print(f"wrote {args.output} (class {result.graph.name}, {len(result.graph.params)} parameters and buffers)")
        return 0

    from netdsl.backends.onnx_backend import save_onnx, to_onnx

    model = to_onnx(result.graph, result.weights, opset=args.opset)
    if target in TRT_TARGETS:
        from rich.console import Console

        from netdsl.backends.trt_coverage import check_coverage, render_coverage
        from netdsl.backends.trt_engine import trtexec_command
        from netdsl.profile import ProfileError, load_profile

        try:
            profile = load_profile(args.profile or target)
        except ProfileError as err:
            raise NetdslError(Diagnostic(str(err))) from None
        report = check_coverage(model, profile)
        console = Console(stderr=False, width=160)
        render_coverage(report, console)
        if not report.covered:
            raise NetdslError(Diagnostic(
                f"{report.uncovered_count} of {report.total} nodes and {len(report.graph_violations)} graph-level "
                f"rule(s) are not allowed by profile '{profile.name}'; nothing was written", None,
                notes=report.violation_lines()))
        save_onnx(model, args.output)
        print(f"wrote {args.output} ({report.total}/{report.total} nodes covered by '{profile.name}')")
        print("build the engine on the target with:")
        print("  " + trtexec_command(args.output, profile.flow or profile.name, args.precision))
        return 0
    save_onnx(model, args.output)
    print(f"wrote {args.output} ({len(model.graph.node)} nodes, opset {args.opset})")
    return 0
