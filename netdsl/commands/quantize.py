"""``netdsl quantize MODEL.onnx --calib DATA -o Q.onnx``: INT8 post-training quantization to Q/DQ form.

Calibrates activation ranges on DATA (a ``.npy``/``.npz`` array of model inputs, or a folder of
images resized to the model input, grey or RGB as its channels say, scaled to [0, 1]) with the
entropy, min-max or percentile method, and writes a QuantizeLinear/DequantizeLinear model with
per-tensor symmetric INT8 scales (zero points 0, as TensorRT requires); see
:mod:`netdsl.analysis.quantize`. The result is then checked against a TensorRT profile
(``trt-restricted`` by default). Exit status 0 when every node is covered; 2 on bad input, or
when some node of the written model is not covered by the profile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netdsl.coverage.profile import BUNDLED_PROFILES
from netdsl.diagnostics import Diagnostic, NetdslError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``netdsl quantize``."""
    p = sub.add_parser("quantize", help="INT8 post-training quantization of an ONNX model (Q/DQ, for TensorRT)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="float ONNX model with one static input")
    p.add_argument("--calib", type=Path, required=True, metavar="DATA",
                   help=".npy/.npz of model inputs, or a folder of images")
    p.add_argument("--method", choices=("entropy", "minmax", "percentile"), default="entropy",
                   help="calibration method (default entropy)")
    p.add_argument("--samples", type=int, default=500, help="calibration samples to use, the first ones (default 500)")
    p.add_argument("--percentile", type=float, default=99.999,
                   help="percentile of |activation| kept by --method percentile (default 99.999)")
    p.add_argument("--profile", default="trt-restricted",
                   help=f"TensorRT profile to check the result against ({', '.join(BUNDLED_PROFILES)} or a TOML file)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the quantized .onnx model")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Quantize, write the model, report the coverage of the Q/DQ model."""
    import onnx

    from netdsl.analysis.onnx_input import OnnxFileError, load_onnx_file
    from netdsl.analysis.quantize import QuantizeError, load_calibration_data, model_input, quantize_int8
    from netdsl.coverage.checker import check_coverage
    from netdsl.coverage.profile import ProfileError, load_profile

    if not args.output.absolute().parent.is_dir():
        raise NetdslError(Diagnostic(f"{args.output}: the folder {args.output.absolute().parent} does not exist"))
    try:
        profile = load_profile(args.profile)
    except ProfileError as err:
        raise NetdslError(Diagnostic(str(err))) from None
    try:
        model = load_onnx_file(args.model)
    except OnnxFileError as err:
        raise NetdslError(Diagnostic(str(err))) from None
    try:
        spec = model_input(model)
        data = load_calibration_data(args.calib, spec, args.samples)
        result = quantize_int8(args.model, data, args.output, args.method, args.percentile)
    except QuantizeError as err:
        raise NetdslError(Diagnostic(str(err))) from None
    print(f"wrote {result.output}: {result.quantize_nodes} QuantizeLinear, {result.dequantize_nodes} DequantizeLinear; "
          f"{result.method} calibration on {result.samples} samples ({result.batches} batches of {spec.batch})")
    if result.samples < args.samples:
        print(f"note: {args.samples} samples were asked for, {result.samples} were used "
              f"(the data holds {len(data)}; the model runs batches of {spec.batch})")
    report = check_coverage(onnx.load(str(result.output)), profile)
    assumed = f", {report.assumed_count} of them on assumptions" if report.assumed_count else ""
    if report.covered:
        print(f"coverage ({profile.name}): {report.total}/{report.total} nodes covered{assumed}")
        return 0
    raise NetdslError(Diagnostic(
        f"{report.uncovered_count} of {report.total} nodes of the quantized model are not allowed by profile "
        f"'{profile.name}' (the model was written to {result.output})", None,
        notes=report.violation_lines()))
