"""Compile speed: spec -> ONNX with netdsl vs ``torch.onnx.export`` of the same generated module.

Both produce an ONNX file for the same model with the same weights, measured side by side in one
process (interleaved repetitions, median). Prints a table and, with ``--json OUT``, the figures.

    python benchmarks/compile_speed.py --json compile_speed.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings

import torch
from rich.console import Console
from rich.table import Table

from netdsl.backends.onnx_backend import to_onnx
from netdsl.backends.torch_backend import build_module
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import run_pipeline

MODELS = [
    ("convselfattn", "specs/models/convselfattn.net", "convselfattn"),
    ("swin_acmix_tiny", "specs/models/swin_acmix_tiny.net", None),
    ("resnet_acmix", "specs/models/resnet_acmix.net", None),
]


def netdsl_compile(spec: str, entry: str | None) -> bytes:
    """The whole compile: parse, elaborate, initialise weights, run the onnx pipeline, emit, serialise."""
    graph = load_graph(spec, entry)
    result = run_pipeline(graph, "onnx", weights=initial_weights(graph))
    return to_onnx(result.graph, result.weights).SerializeToString()


def torch_export(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The legacy TorchScript exporter of the same module (opset 17)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, opset_version=17, dynamo=False)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    rows = []
    for name, spec, entry in MODELS:
        graph = load_graph(spec, entry)
        module = build_module(graph, initial_weights(graph)).eval()
        example = torch.zeros(graph.values[graph.inputs[0]].shape)
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            t0 = time.perf_counter()
            netdsl_compile(spec, entry)
            t1 = time.perf_counter()
            torch_export(module, example)
            t2 = time.perf_counter()
            ours.append(t1 - t0)
            theirs.append(t2 - t1)
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append({"model": name, "netdsl_s": round(a, 4), "torch_onnx_export_s": round(b, 4),
                     "speedup": round(b / a, 2)})
    table = Table(title="spec -> ONNX (median of interleaved runs)")
    for col in ("model", "netdsl s", "torch.onnx.export s", "speed-up"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['netdsl_s']:.3f}", f"{r['torch_onnx_export_s']:.3f}", f"{r['speedup']:.1f}x")
    Console().print(table)
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
