"""``netdsl compile SPEC --target T -o OUT``: lower a spec and emit ONNX or a PyTorch module.

Targets: ``onnx`` (ONNX for ONNX Runtime), ``torch`` (a standalone PyTorch module source),
``trt``, ``trt-restricted`` and ``trt-dla`` (ONNX lowered to the profile's layer set, validated
against it, written only when every node is covered). Outputs are written atomically: a
failure never leaves a partial or stale file behind.

``--dtype float16`` writes float16 weights and activations (:mod:`netdsl.backends.onnx_float16`)
after the float16 range check (:mod:`netdsl.range_check`): the lowered graph runs on calibration
inputs in netdsl's interpreter, in float32 and in float16 storage, and a value beyond float16 is
a located error (exit 2, nothing written). For ``trt-restricted`` and ``trt-dla``, the same
calibration run checks that the input of every range-limited lowering (``sqrt_decompose``'s
Newton steps, ``exp_decompose``'s finite inputs) stays inside the range it is exact for.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.driver import add_spec_args, lower_from_args
from netdsl.growth import print_growth_warnings
from netdsl.range_check import DEFAULT_SAMPLES

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from netdsl.coverage.profile import Profile
    from netdsl.coverage.report import CoverageReport
    from netdsl.ir import Graph
    from netdsl.passes.pipeline import PipelineResult
    from netdsl.range_check import CalibrationBatches, RangeReport

TARGETS = ("onnx", "torch", "trt", "trt-restricted", "trt-dla")
TRT_TARGETS = ("trt", "trt-restricted", "trt-dla")
DTYPES = ("float32", "float16")
RANGE_CHECKED_TARGETS = ("trt-restricted", "trt-dla")
"""Targets whose lowerings may be exact only on an input range, checked on calibration inputs."""


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
    p.add_argument("--strict", action="store_true",
                   help="TensorRT targets: refuse a model that relies on an assumed profile rule (list them)")
    p.add_argument("--wide", action="store_true",
                   help="TensorRT targets: print every column of the coverage table in full (node names, reasons)")
    p.add_argument("--precision", choices=("fp16", "int8", "fp32"), default="fp16",
                   help="precision in the printed trtexec command")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="element type of the ONNX model's weights and activations (default float32); float16 "
                        "keeps the graph inputs and outputs float32 with a Cast at each boundary (see --io-dtype) "
                        "and first checks every value's range on calibration inputs in netdsl's float16 interpreter")
    p.add_argument("--io-dtype", choices=DTYPES,
                   help="with --dtype float16: element type of the graph inputs and outputs (default float32, "
                        "with Casts; float16 when the TensorRT profile allows no Cast, as trt-restricted and trt-dla)")
    p.add_argument("--calib", type=Path, metavar="DATA",
                   help="inputs for the range checks (float16, and restricted lowerings' input ranges): .npy/.npz of "
                        "model inputs or a folder of images "
                        "(default: seeded standard-normal inputs)")
    p.add_argument("--calib-samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"samples of the range checks (default {DEFAULT_SAMPLES})")
    p.add_argument("--no-range-check", action="store_true",
                   help="write the model without the range checks (float16 values above 65504 become Inf, "
                        "inputs outside a restricted lowering's range give wrong numbers)")
    add_spec_args(p)
    p.set_defaults(run=run)


def check_dtype_flags(args: argparse.Namespace) -> None:
    """Flags of the float16 path that make no sense without it (or for the torch target) are user errors."""
    if args.dtype == "float16" and args.target == "torch":
        raise NetdslError(Diagnostic("--dtype float16 applies to the ONNX targets",
                                     help="cast the generated PyTorch module with .half() instead"))
    if args.dtype == "float32":
        calibrated = args.target in RANGE_CHECKED_TARGETS
        given = [flag for flag, value, applies in (("--io-dtype", args.io_dtype, False),
                                                   ("--calib", args.calib, calibrated),
                                                   ("--no-range-check", args.no_range_check, calibrated))
                 if value and not applies]
        if given:
            raise NetdslError(Diagnostic(f"{', '.join(given)} only apply with --dtype float16"
                                         + ("" if "--io-dtype" in given else " or a restricted target: "
                                            + ", ".join(RANGE_CHECKED_TARGETS))))
    if args.calib_samples < 1:
        raise NetdslError(Diagnostic(f"--calib-samples must be positive, found {args.calib_samples}"))


def io_dtype(args: argparse.Namespace, profile: Profile | None) -> str:
    """The float16 model's I/O element type: ``--io-dtype``, else float32 unless the profile allows no Cast."""
    if args.io_dtype:
        return args.io_dtype
    cast = profile.rule_for("Cast") if profile is not None else None
    return "float16" if profile is not None and (cast is None or not cast.allowed) else "float32"


def calibration_data(args: argparse.Namespace, graph: Graph) -> np.ndarray | None:
    """The ``--calib`` samples for the graph's single input (None without ``--calib``)."""
    if args.calib is None:
        return None
    from netdsl.analysis.quantize import ModelInput, QuantizeError, load_calibration_data

    if len(graph.inputs) != 1:
        raise NetdslError(Diagnostic(f"--calib feeds a graph with one input; this one has "
                                     f"{len(graph.inputs)}: {', '.join(graph.inputs)}"))
    name = graph.inputs[0]
    try:
        return load_calibration_data(args.calib, ModelInput(name, graph.values[name].shape), args.calib_samples)
    except QuantizeError as err:
        raise NetdslError(Diagnostic(str(err))) from None


def check_ranges(args: argparse.Namespace, result: PipelineResult) -> None:
    """The range checks of the lowered graph on calibration inputs (a located NetdslError), or the
    ``--no-range-check`` warning: float16 values with ``--dtype float16``, and the inputs of range-limited
    lowerings (e.g. ``sqrt_decompose``) for the restricted targets."""
    import sys

    from netdsl.range_check import calibration_batches, range_limited_nodes

    if args.no_range_check:
        if args.dtype == "float16":
            print("warning: --no-range-check: the float16 model is written unchecked; a value above 65504 becomes Inf",
                  file=sys.stderr)
        if args.target in RANGE_CHECKED_TARGETS:
            print("warning: --no-range-check: the input ranges of the lowerings are not checked; an input outside "
                  "a lowering's range gives a wrong number", file=sys.stderr)
        return
    limited_inputs = args.target in RANGE_CHECKED_TARGETS and bool(range_limited_nodes(result.graph))
    if args.dtype != "float16" and not limited_inputs:
        return  # nothing to observe: no calibration inputs are drawn (or read from --calib)
    try:
        batches = calibration_batches(result.graph, args.calib_samples, args.seed,
                                      calibration_data(args, result.graph))
    except ValueError as err:
        raise NetdslError(Diagnostic(str(err))) from None
    run_range_checks(result, batches, limited_inputs, args.dtype == "float16")


def run_range_checks(result: PipelineResult, batches: CalibrationBatches, limited_inputs: bool, float16: bool) -> None:
    """The input-range and float16 checks on ``batches`` under a transient progress bar on stderr (a large model's
    check takes minutes), then their summary lines."""
    from rich.console import Console
    from rich.progress import Progress

    from netdsl.range_check import check_float16, check_input_ranges

    # One interpreter run per batch for the input ranges, two for float16 (float32 and float16 storage).
    runs = len(batches) * (int(limited_inputs) + 2 * int(float16))
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:  # no stray lines in pipes
        task = bar.add_task("range check on the calibration inputs", total=runs)
        run_done = partial(bar.advance, task)
        limited = check_input_ranges(result.graph, result.weights or {}, batches, run_done) if limited_inputs else []
        report = check_float16(result.graph, result.weights or {}, batches, run_done) if float16 else None
    if limited:
        print(f"input range check: {len(limited)} range-limited lowering(s) within range on the calibration inputs")
    if report is not None:
        print_float16_range(report)


def print_float16_range(report: RangeReport) -> None:
    """The float16 range check's summary line: the largest magnitude and where it is."""
    from netdsl.range_check import FLOAT16_MAX

    peak = report.peak()
    if peak is not None:
        print(f"float16 range check: {report.samples} samples, largest |x| {peak.max_abs:.6g} at "
              f"'{peak.value}' ({peak.node.op}), {100 * peak.max_abs / FLOAT16_MAX:.2g}% of {FLOAT16_MAX:g}")


def target_profile(args: argparse.Namespace) -> Profile:
    """The TensorRT profile of ``--profile`` or of the target."""
    from netdsl.coverage.profile import ProfileError, load_profile

    try:
        return load_profile(args.profile or args.target)
    except ProfileError as err:
        raise NetdslError(Diagnostic(str(err))) from None


def refuse_assumed(report: CoverageReport, profile: Profile, strict: bool) -> None:
    """With ``--strict``, a located refusal listing the assumed rules the model relies on."""
    from netdsl.coverage.report import assumed_rule_notes

    notes = assumed_rule_notes(report, profile)
    if strict and notes:
        raise NetdslError(Diagnostic(
            f"--strict: {report.assumed_count} of {report.total} nodes are allowed only by {len(notes)} assumed "
            f"rule(s) of profile '{profile.name}'; nothing was written", None, notes=notes,
            help="rewrite those ops into confirmed or evidenced ones, or drop --strict to accept the assumptions"))


def run(args: argparse.Namespace) -> int:
    if args.output is None:
        raise NetdslError(Diagnostic("compile needs an output file: -o OUT"))
    from netdsl.allocator import release_freed_arrays

    release_freed_arrays()
    check_dtype_flags(args)
    target = args.target
    result = lower_from_args(args, target)
    print_growth_warnings(result.log)
    if target == "torch":
        from netdsl.backends.torch_backend import write_source

        write_source(result.graph, args.output)
        print(f"wrote {args.output} (class {result.graph.name}, {len(result.graph.params)} parameters and buffers)")
        return 0

    profile = target_profile(args) if target in TRT_TARGETS else None
    if args.dtype == "float16" or target in RANGE_CHECKED_TARGETS:
        check_ranges(args, result)
    model, payloads = emit_onnx_parts(result, target, args)
    if profile is not None:
        from netdsl.backends.trtexec import trtexec_command
        from netdsl.coverage.checker import check_coverage
        from netdsl.coverage.report import render_coverage

        report = check_coverage(model, profile)
        render_coverage(report, wide=args.wide)
        if not report.covered:
            raise NetdslError(Diagnostic(
                f"{report.uncovered_count} of {report.total} nodes and {len(report.graph_violations)} graph-level "
                f"rule(s) are not allowed by profile '{profile.name}'; nothing was written", None,
                notes=report.violation_lines()))
        refuse_assumed(report, profile, args.strict)
    from netdsl.backends.onnx_stream import write_onnx_parts

    write_onnx_parts(model, payloads, args.output)
    dtype_note = f", float16 with {io_dtype(args, profile)} inputs and outputs" if args.dtype == "float16" else ""
    if profile is not None:
        print(f"wrote {args.output} ({report.total}/{report.total} nodes covered by '{profile.name}'{dtype_note})")
        print("build the engine on the target with:")
        print("  " + trtexec_command(args.output, profile.flow or profile.name, args.precision))
        return 0
    print(f"wrote {args.output} ({len(model.graph.node)} nodes, opset {args.opset}{dtype_note})")
    return 0


def emit_onnx_parts(result: PipelineResult, target: str, args: argparse.Namespace) -> tuple[onnx.ModelProto, dict]:
    """The model to write and its large initializers' arrays (see :func:`netdsl.api.emit_onnx_parts`).

    A float32 model keeps the pipeline's weight arrays as they are, so each weight is held once. A
    float16 model takes them over (``result.weights`` is emptied) and converts them one by one, so
    each float32 array is freed once its float16 one exists.
    """
    from netdsl import api

    model, payloads = api.emit_onnx_parts(result, target, args.opset, held_float16=args.dtype == "float16")
    if args.dtype == "float32":
        return model, payloads
    from netdsl.backends.onnx_float16 import Float16Error, to_float16

    if result.weights is not None:
        result.weights.clear()  # the payloads are now the only holders of the float32 arrays
    profile = target_profile(args) if target in TRT_TARGETS else None
    try:
        return to_float16(model, io_dtype(args, profile), payloads), payloads
    except Float16Error as err:  # reached with --no-range-check: a weight beyond float16
        raise NetdslError(Diagnostic(f"{err}; nothing was written")) from None
