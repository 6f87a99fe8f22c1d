"""The ONNX forms of ``gelu`` and ``groupnorm`` in ONNX Runtime: the pass the ``onnx`` target runs against the others.

The ONNX emitter writes each IR op as one ONNX op; ``gelu`` (below opset 20) and ``groupnorm`` (with
fewer groups than channels) have no such op, so a pass decomposes them. This measures the choices,
each a single-op graph at the size of a real model's layer, all forms of one op interleaved run by run
in one process (:func:`netdsl.analysis.timing.bench_many`), batch 1:

* ``gelu`` on ``[1, 3136, 384]`` (ConvNeXt-T's first MLP): ``gelu_to_erf`` at opset 17 (Div, Erf, Add,
  Mul, Mul, which ONNX Runtime fuses into one Gelu kernel; the baseline) and the ``Gelu`` op at opset 20.
  The restricted form (``erf_decompose``, ~30 element-wise ops, not a choice for this target) is left
  out: timed in the same round-robin, the form run right after it measured about ten times its time
  without it;
* ``groupnorm`` of one group on ``[1, 64, 56, 56]`` (PoolFormer-S12's first stage):
  ``groupnorm_to_instancenorm`` (Reshape, InstanceNormalization, Reshape, Mul, Add; the baseline) and
  ``groupnorm_decompose`` (means, ``sqrt`` and element-wise ops).

Prints a table (ONNX nodes, the nodes ONNX Runtime runs after its graph optimisations, median latency,
ratio to the baseline with its 95% interval) and, with ``--json OUT``, the same as JSON.

    python benchmarks/onnx_forms.py [--runs 30] [--threads 2] [--json OUT]
    python benchmarks/onnx_forms.py --smoke    # small shapes, two runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from netdsl.analysis.timing import bench_many, session_options
from netdsl.atomic_write import atomic_write_text
from netdsl.backends.onnx_backend import to_onnx
from netdsl.builder import GraphBuilder
from netdsl.initializers import initial_weights
from netdsl.ir import Graph, Init, TensorType
from netdsl.passes.pipeline import run_pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="timed runs per form (default 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    p.add_argument("--smoke", action="store_true", help="small shapes, two runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup = 2, 1
    return args


def _gelu(shape: tuple[int, ...]) -> Graph:
    b = GraphBuilder("gelu")
    b.output(b.op("gelu", [b.input("x", TensorType("f32", shape))]))
    return b.graph


def _groupnorm(shape: tuple[int, ...]) -> Graph:
    b = GraphBuilder("groupnorm")
    x = b.input("x", TensorType("f32", shape))
    affine = [b.param(f"gn.{k}", TensorType("f32", (shape[1],)), Init("ones" if k == "weight" else "zeros"))
              for k in ("weight", "bias")]
    b.output(b.op("groupnorm", [x, *affine], groups=1, eps=1e-5))
    return b.graph


def _form(graph: Graph, passes: list[str], opset: int = 17) -> onnx.ModelProto:
    weights = initial_weights(graph)
    lowered = run_pipeline(graph, "onnx", weights=weights, passes=passes)
    return to_onnx(lowered.graph, lowered.weights or {}, opset)


def optimised_ops(model: onnx.ModelProto) -> str:
    """The op types ONNX Runtime runs for ``model`` after its graph optimisations, with counts."""
    with tempfile.TemporaryDirectory() as folder:
        options = session_options(None)
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        counts = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return ", ".join(f"{n} {op}" if n > 1 else op for op, n in sorted(counts.items()))


def comparisons(smoke: bool) -> dict[str, tuple[str, dict[str, onnx.ModelProto]]]:
    """Per op: (its input shape in words, form name -> ONNX model); the first form is the baseline."""
    gelu = _gelu((1, 16, 8) if smoke else (1, 3136, 384))
    norm = _groupnorm((1, 4, 6, 6) if smoke else (1, 64, 56, 56))
    return {
        "gelu": ("x".join(map(str, gelu.values["x"].shape)), {
            "gelu_to_erf (opset 17)": _form(gelu, ["gelu_to_erf"]),
            "Gelu op (opset 20)": _form(gelu, [], 20),
        }),
        "groupnorm": ("x".join(map(str, norm.values["x"].shape)) + ", 1 group", {
            "groupnorm_to_instancenorm": _form(norm, ["groupnorm_to_instancenorm"]),
            "groupnorm_decompose": _form(norm, ["groupnorm_decompose", "reduce_to_conv", "sqrt_decompose"]),
        }),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=160)
    rows: list[dict[str, Any]] = []
    environment: dict[str, Any] = {}
    for op, (shape, models) in comparisons(args.smoke).items():
        baseline = next(iter(models))
        table = bench_many(models, [1], args.warmup, args.runs, "ort", baseline, progress=False,
                           threads=args.threads, verify=False, console=console)
        environment = table.environment
        for result in table.results:
            timing = result.rows[0]
            model = models[result.name]
            rows.append({"op": op, "shape": shape, "form": result.name, "nodes": len(model.graph.node),
                         "runtime_ops": optimised_ops(model), "median_ms": timing.median_ms,
                         "vs_baseline": timing.latency_vs_baseline, "ci95": timing.ratio_ci95, "error": timing.error})
    out = Table(title=f"ONNX forms in ONNX Runtime (CPU, {args.threads} threads, {args.runs} interleaved runs)")
    for column in ("op", "input", "form", "ONNX nodes", "ONNX Runtime runs", "median ms", "x baseline (95% interval)"):
        out.add_column(column)
    for r in rows:
        ratio = "baseline" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}"
        if r["ci95"] is not None:
            ratio += f" ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})"
        latency = r["error"] or f"{r['median_ms']:.3f}"
        out.add_row(r["op"], r["shape"], r["form"], str(r["nodes"]), r["runtime_ops"], latency, ratio)
    console.print(out)
    if args.json:
        config = {"runs": args.runs, "warmup": args.warmup, "threads": args.threads, "smoke": args.smoke}
        atomic_write_text(args.json, json.dumps({"config": config, "environment": environment, "rows": rows},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
