"""Compile speed: spec -> ONNX with netdsl vs ``torch.onnx.export`` of the same generated module.

Both produce an ONNX file for the same model with the same weights, measured side by side in one
process (interleaved repetitions, median). The netdsl compile is also split into its stages
(load = parse + elaborate, init = default weights, passes = the onnx pipeline, emit = ModelProto,
serialise = bytes), and ``check`` times what ``netdsl check`` does (parse, elaborate, verify).
Prints a table and, with ``--json OUT``, the figures.

    python benchmarks/compile_speed.py --json compile_speed.json
    python benchmarks/compile_speed.py --models convselfattn,swin_acmix_tiny --repeats 5
    python benchmarks/compile_speed.py --smoke    # one repeat of a single ACmix block
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
from netdsl.verifier import verify

MODELS = [
    ("convselfattn", "specs/models/convselfattn.net", "convselfattn"),
    ("swin_acmix_tiny", "specs/models/swin_acmix_tiny.net", None),
    ("resnet_acmix", "specs/models/resnet_acmix.net", None),
]
SMOKE_MODEL = ("acmix_demo", "specs/acmix.net", "acmix_demo")  # one 14x14 block: seconds, not minutes
STAGES = ("load", "init", "passes", "emit", "serialise")


def netdsl_compile(spec: str, entry: str | None) -> dict[str, float]:
    """The whole compile: parse, elaborate, initialise weights, run the onnx pipeline, emit, serialise.

    Returns the seconds each stage took, by the names in :data:`STAGES`.
    """
    marks = [time.perf_counter()]
    graph = load_graph(spec, entry)
    marks.append(time.perf_counter())
    weights = initial_weights(graph)
    marks.append(time.perf_counter())
    result = run_pipeline(graph, "onnx", weights=weights)
    marks.append(time.perf_counter())
    model = to_onnx(result.graph, result.weights)
    marks.append(time.perf_counter())
    model.SerializeToString()
    marks.append(time.perf_counter())
    return {stage: end - start for stage, start, end in zip(STAGES, marks[:-1], marks[1:], strict=True)}


def netdsl_check(spec: str, entry: str | None) -> float:
    """Seconds for what ``netdsl check`` does in process: parse, elaborate and verify the typed graph."""
    start = time.perf_counter()
    verify(load_graph(spec, entry))
    return time.perf_counter() - start


def torch_export(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The legacy TorchScript exporter of the same module (opset 17)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, opset_version=17, dynamo=False)
    return buf.getvalue()


def measure(spec: str, entry: str | None, repeats: int) -> dict[str, float]:
    """Median seconds of the netdsl compile, each of its stages, ``check`` and the exporter."""
    graph = load_graph(spec, entry)
    module = build_module(graph, initial_weights(graph)).eval()
    example = torch.zeros(graph.values[graph.inputs[0]].shape)
    runs: dict[str, list[float]] = {key: [] for key in ("netdsl", *STAGES, "check", "torch")}
    for _ in range(repeats):  # interleaved, so all see the same machine load
        stages = netdsl_compile(spec, entry)
        runs["netdsl"].append(sum(stages.values()))
        for stage, seconds in stages.items():
            runs[stage].append(seconds)
        runs["check"].append(netdsl_check(spec, entry))
        start = time.perf_counter()
        torch_export(module, example)
        runs["torch"].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", help="comma-separated model names to run (default: all of "
                        + ", ".join(name for name, _, _ in MODELS) + ")")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--smoke", action="store_true", help=f"smallest settings: one repeat of {SMOKE_MODEL[0]}")
    args = parser.parse_args()
    models = [SMOKE_MODEL] if args.smoke else MODELS
    repeats = 1 if args.smoke else args.repeats
    chosen = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else [n for n, _, _ in models]
    unknown = sorted(set(chosen) - {name for name, _, _ in models})
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    rows = []
    for name, spec, entry in models:
        if name not in chosen:
            continue
        t = measure(spec, entry, repeats)
        rows.append({"model": name, "netdsl_s": round(t["netdsl"], 4), "torch_onnx_export_s": round(t["torch"], 4),
                     "speedup": round(t["torch"] / t["netdsl"], 2), "check_s": round(t["check"], 4),
                     **{f"{stage}_s": round(t[stage], 4) for stage in STAGES}})
    table = Table(title="spec -> ONNX (median of interleaved runs; stage columns are medians of each stage)")
    columns = ("model", "netdsl s", "torch.onnx.export s", "speed-up", "check s", *(f"{s} s" for s in STAGES))
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['netdsl_s']:.3f}", f"{r['torch_onnx_export_s']:.3f}", f"{r['speedup']:.1f}x",
                      f"{r['check_s']:.3f}", *(f"{r[f'{stage}_s']:.3f}" for stage in STAGES))
    Console(width=160).print(table)
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
