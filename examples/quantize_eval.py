"""FP32 vs INT8 (post-training quantization) accuracy of the small CSA, ACmix and conv classifiers on digits.

    python examples/quantize_eval.py --runs runs/digits --methods entropy minmax percentile

For each model of ``specs/models/small.net``: train it on the digits (examples/train.py; or reuse
``RUNS/<model>/model.safetensors`` when ``--runs`` holds one, trained by train.py with its default
seed, so that the test split here is the one it never saw), compile it for ``trt-restricted``
(batch norms folded, every op in the restricted layer set) at batch ``--batch``, quantize that
ONNX model to INT8 Q/DQ with each calibration method on the first ``--samples`` training images
(:mod:`netdsl.analysis.quantize`, as ``netdsl quantize`` does), check the Q/DQ model against
the ``trt-restricted`` profile, and measure FP32 and INT8 test accuracy with ONNX Runtime.
Prints one row per model and method: accuracies, the drop in points, how often the INT8 model
predicts what the FP32 one does, and the profile's verdict.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table
from train import MODEL_FILE, ImageData, TrainConfig, load_digits_split, make_console, train

from netdsl.analysis.quantize import METHODS, quantize_int8, run_batched
from netdsl.backends.onnx_backend import save_onnx, to_onnx
from netdsl.backends.weights_io import load_weights
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.driver import load_graph
from netdsl.passes.pipeline import run_pipeline

SPEC = Path(__file__).resolve().parents[1] / "specs" / "models" / "small.net"
MODELS = ("csa_small", "acmix_small", "conv_small")


@dataclass
class Row:
    """One model quantized with one method, measured on the test set."""

    model: str
    parameters: int
    method: str
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float
    coverage: str


def checkpoint(entry: str, runs: Path, epochs: int, console: Console) -> Path:
    """``runs/<entry>/model.safetensors``, trained on the digits first if it is not there."""
    path = runs / entry / MODEL_FILE
    if not path.is_file():
        train(TrainConfig(spec=SPEC, entry=entry, epochs=epochs, out=runs / entry), console=console)
    return path


def compile_restricted(entry: str, weights_path: Path, batch: int, out: Path) -> tuple[Path, int]:
    """The trained model lowered for trt-restricted at ``batch``, as ONNX; and its parameter count."""
    graph = load_graph(SPEC, entry, inputs=[f"x={batch}x1x32x32"])
    lowered = run_pipeline(graph, "trt-restricted", weights=load_weights(weights_path, graph))
    save_onnx(to_onnx(lowered.graph, lowered.weights), out)
    return out, sum(p.type.numel for p in graph.params.values() if p.kind == "param")


def accuracy(model: Path, data: ImageData) -> tuple[float, np.ndarray]:
    """Test accuracy of an ONNX model in ONNX Runtime, and its predictions."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    predictions = run_batched(session, data.x_test).argmax(1)
    return float(np.mean(predictions == data.y_test)), predictions


def evaluate_model(entry: str, weights_path: Path, data: ImageData, methods: Sequence[str], samples: int, batch: int,
                   work: Path) -> list[Row]:
    """FP32 and INT8 accuracy of one trained model, one row per calibration method."""
    fp32, parameters = compile_restricted(entry, weights_path, batch, work / f"{entry}.onnx")
    fp32_accuracy, fp32_predictions = accuracy(fp32, data)
    profile = load_profile("trt-restricted")
    rows = []
    for method in methods:
        int8 = quantize_int8(fp32, data.x_train[:samples], work / f"{entry}.{method}.int8.onnx", method).output
        int8_accuracy, int8_predictions = accuracy(int8, data)
        report = check_coverage(onnx.load(str(int8)), profile)
        verdict = f"{report.covered_count}/{report.total} covered" + ("" if report.covered else " (NOT deployable)")
        rows.append(Row(entry, parameters, method, fp32_accuracy, int8_accuracy,
                        float(np.mean(int8_predictions == fp32_predictions)), verdict))
    return rows


def rows_table(rows: Sequence[Row], samples: int) -> Table:
    """The accuracy table."""
    table = Table(title=f"digits test set, INT8 Q/DQ (per-tensor, symmetric), {samples} calibration images")
    for column in ("model", "parameters", "calibration", "FP32 acc", "INT8 acc", "drop", "same prediction",
                   "trt-restricted"):
        table.add_column(column, justify="left" if column in ("model", "calibration", "trt-restricted") else "right")
    for r in rows:
        table.add_row(r.model, f"{r.parameters:,}", r.method, f"{r.fp32_accuracy:.2%}", f"{r.int8_accuracy:.2%}",
                      f"{100 * (r.fp32_accuracy - r.int8_accuracy):+.2f} pt", f"{r.agreement:.1%}", r.coverage)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Train or reuse the three classifiers, quantize them, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["entropy"])
    p.add_argument("--samples", type=int, default=500, help="calibration images (default 500)")
    p.add_argument("--batch", type=int, default=10, help="batch of the compiled models (default 10)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs when a model has no checkpoint yet")
    p.add_argument("--runs", type=Path, help="checkpoint folder to reuse and fill (default: a temporary one)")
    args = p.parse_args(argv)
    console = make_console()
    data = load_digits_split((1, 32, 32), seed=TrainConfig.seed)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="netdsl-quantize-") as scratch:
        work = Path(scratch)
        runs = args.runs or work / "runs"
        for entry in args.models:
            weights_path = checkpoint(entry, runs, args.epochs, console)
            console.print(f"{entry}: quantizing with {', '.join(args.methods)} ...")
            rows += evaluate_model(entry, weights_path, data, args.methods, args.samples, args.batch, work)
    console.print(rows_table(rows, args.samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
