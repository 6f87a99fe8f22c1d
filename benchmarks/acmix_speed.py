"""ACmix block latency: the reference's own operator structure, exported by ``torch.onnx``, vs netdsl's compiled ACmix.

Four ONNX models of one ACmix block (same weights) run side by side in ONNX Runtime (CPU), in one
process, interleaved run by run (:func:`netdsl.analysis.timing.bench_many`):

a. ``reference (unfold + sum)``: the baseline, a module with the published ACmix's operator structure
   (``tests/reference/torch_modules.py`` ``ACmix``: ``nn.ReflectionPad2d``, ``nn.Unfold``, products summed over
   the head dimension, softmax over the window, weighted sum of the unfolded values), exported as a user of
   the reference would: ``torch.onnx.export(dynamo=True)``;
b. ``reference, einsum sums``: the same module with both window sums written as ``einsum`` (``ACmixEinsum``),
   exported the same way; a second, slower rendering of the reference, shown for comparison only;
c. ``netdsl onnx``: ``specs/acmix.net`` ``ACmix`` compiled for the ``onnx`` target;
d. ``netdsl trt-restricted``: compiled for ``trt-restricted`` (attention lowered to conv, elementwise,
   shuffle, slice, concat and softmax).

Every combination of ``--threads``, ``--batches`` and ``--strides`` is measured; before timing, each model
runs once on the configuration's input and its largest difference from the PyTorch module is reported,
with its node count and the MB its nodes read and write (:func:`megabytes_moved`).
Prints a table (latency, speed-up over the baseline) and, with ``--json OUT``, the same as JSON.

``--rounds N`` times every configuration N times, round by round (all configurations once, then again), so
that a slow spell of the machine falls on one round of each configuration rather than on all runs of one:
each row then gives the medians over the rounds of the rounds' median latencies and speed-ups, and the
lowest and highest speed-up of a round.

    python benchmarks/acmix_speed.py [--threads 1 2] [--batches 1 8] [--strides 1 2] [--runs 10] [--rounds 3]
        [--json OUT]
    python benchmarks/acmix_speed.py --smoke    # smallest settings: a few runs of a 16-channel 14x14 block
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from netdsl.analysis.timing import BenchTable, bench_many
from netdsl.atomic_write import atomic_write_text
from netdsl.backends.onnx_backend import to_onnx
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference modules live with the tests
from reference.torch_modules import ACmix, ACmixEinsum  # noqa: E402

BASELINE = "reference (unfold + sum)"
REFERENCES: dict[str, type[ACmix]] = {BASELINE: ACmix, "reference, einsum sums": ACmixEinsum}
TARGETS = {"netdsl onnx": "onnx", "netdsl trt-restricted": "trt-restricted"}
SMOKE = {"channels": 16, "size": 14, "batches": [1], "strides": [1], "threads": [1], "warmup": 1, "runs": 2,
         "rounds": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=64, help="in_planes = out_planes (default 64)")
    p.add_argument("--size", type=int, default=56, help="square map side (default 56)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2], help="strides (default 1 2)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="ONNX Runtime intra-op thread counts (default 1 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10, help="interleaved runs per round (default 10)")
    p.add_argument("--rounds", type=int, default=3,
                   help="time every configuration this many times, round by round (default 3)")
    p.add_argument("--seed", type=int, default=0, help="weights and input seed")
    p.add_argument("--smoke", action="store_true",
                   help="smallest settings (overrides the sizes, runs, rounds and threads)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def _nonnegative_perms(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each Transpose's ``perm`` counted from the front. torch 2.13's exporters can write a
    ``permute(0, -1, 1, 2)`` as it is; ONNX allows only axes in [0, rank), and ONNX Runtime 1.32
    refuses such a model. The same permutation, written with non-negative axes."""
    for node in model.graph.node:
        if node.op_type == "Transpose":
            for attr in node.attribute:
                if attr.name == "perm" and any(axis < 0 for axis in attr.ints):
                    rank = len(attr.ints)
                    attr.ints[:] = [axis % rank for axis in attr.ints]
    return model


class _NoTorchvisionNotice(logging.Filter):
    """Drops the dynamo exporter's "torchvision is not installed. Skipping torchvision::nms" lines (one per
    torchvision op, at every export): the benchmarks export no torchvision op. Other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed. Skipping torchvision::")


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_NoTorchvisionNotice())


def export(module: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """``module`` exported to ONNX by ``torch.onnx.export(dynamo=True)``, the exporter's default in this torch."""
    # The dynamo exporter narrates its steps on stdout and warns about its own internals.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    return _nonnegative_perms(program.model_proto)


def megabytes_moved(model: onnx.ModelProto) -> float:
    """MB every node reads and writes, summed over the nodes (weights included): the traffic of running the
    model op by op if nothing stayed in cache, as :mod:`netdsl.traffic` counts it for IR graphs."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    sizes: dict[str, int] = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                             for t in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape") and all(dim.HasField("dim_value") for dim in tensor.shape.dim):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            sizes[info.name] = int(np.prod([dim.dim_value for dim in tensor.shape.dim])) * itemsize
    return sum(sizes.get(name, 0) for node in graph.node for name in [*node.input, *node.output]) / 1e6


def run_once(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def build_models(args: argparse.Namespace, batch: int,
                 stride: int) -> tuple[dict[str, onnx.ModelProto], dict[str, float]]:
    """(the four models by name, each one's largest difference from the PyTorch module on a random input)."""
    c, s = args.channels, args.size
    graph = load_graph(REPO / "specs" / "acmix.net", entry="ACmix",
                       sets=[f"in_planes={c}", f"out_planes={c}", f"stride={stride}"],
                       inputs=[f"x={batch}x{c}x{s}x{s}"])
    weights = initial_weights(graph, args.seed)
    x = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((batch, c, s, s)).astype(np.float32))
    models: dict[str, onnx.ModelProto] = {}
    expected = None
    for name, cls in REFERENCES.items():
        module = cls(c, c, stride=stride).eval()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
        if expected is None:
            with torch.no_grad():
                expected = module(x).numpy()
        models[name] = export(module, x)
    for name, target in TARGETS.items():
        lowered = run_pipeline(graph, target, weights)
        models[name] = to_onnx(lowered.graph, lowered.weights or {})
    errors = {name: float(np.abs(run_once(model, x.numpy()) - expected).max()) for name, model in models.items()}
    return models, errors


def summarise(table: BenchTable, models: dict[str, onnx.ModelProto], errors: dict[str, float],
              config: dict[str, int]) -> list[dict[str, Any]]:
    """One row per model: the configuration, latency, speed-up over the baseline, ONNX node count, error."""
    base = table.result(BASELINE).rows[0].median_ms
    rows = []
    for result in table.results:
        timing = result.rows[0]
        rows.append({
            **config,
            "model": result.name,
            "median_ms": timing.median_ms,
            "p90_ms": timing.p90_ms,
            "speedup_vs_baseline": base / timing.median_ms if base and timing.median_ms else None,
            "onnx_nodes": len(models[result.name].graph.node),
            "mb_moved": megabytes_moved(models[result.name]),
            "max_abs_error_vs_torch": errors[result.name],
            "error": timing.error,
        })
    return rows


def over_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One configuration's rows from the rows of its rounds (same models, same order): median latency, p90 and
    speed-up over the rounds, and the lowest and highest speed-up of a round. A model that failed in any
    round keeps that round's error."""
    rows = []
    for per_round in zip(*rounds, strict=True):
        failed = next((r for r in per_round if r["error"]), None)
        if failed:
            rows.append({**failed, "rounds": len(per_round)})
            continue
        speedups = [r["speedup_vs_baseline"] for r in per_round]
        rows.append({**per_round[0],
                     "median_ms": statistics.median(r["median_ms"] for r in per_round),
                     "p90_ms": statistics.median(r["p90_ms"] for r in per_round),
                     "speedup_vs_baseline": statistics.median(speedups),
                     "speedup_min": min(speedups), "speedup_max": max(speedups), "rounds": len(per_round)})
    return rows


def render(rows: list[dict[str, Any]], title: str, console: Console) -> None:
    table = Table(title=title)
    rounds = max(r["rounds"] for r in rows)
    columns = ("threads", "batch", "stride", "model", "median ms", "p90 ms", "speed-up",
               *(["rounds' range"] if rounds > 1 else []), "ONNX nodes", "MB moved", "max |Δ|")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        config = (str(r["threads"]), str(r["batch"]), str(r["stride"]), r["model"])
        if r["error"]:
            table.add_row(*config, f"[red]{r['error']}[/red]", *[""] * (len(columns) - 5))
            continue
        spread = [f"{r['speedup_min']:.1f}-{r['speedup_max']:.1f}x"] if rounds > 1 else []
        table.add_row(*config, f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['speedup_vs_baseline']:.1f}x",
                      *spread, str(r["onnx_nodes"]), f"{r['mb_moved']:.0f}", f"{r['max_abs_error_vs_torch']:.1e}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=140)  # the table's nine columns, also when the output is not a terminal
    environment: dict[str, Any] = {}
    built = {(batch, stride): build_models(args, batch, stride) for batch in args.batches for stride in args.strides}
    rounds: dict[tuple[int, int, int], list[list[dict[str, Any]]]] = {}
    for _ in range(args.rounds):
        for (batch, stride), (models, errors) in built.items():
            for threads in args.threads:
                table = bench_many(models, [batch], args.warmup, args.runs, "ort", BASELINE, progress=True,
                                   threads=threads, verify=False, console=console)
                environment = table.environment
                config = {"threads": threads, "batch": batch, "stride": stride}
                rounds.setdefault((batch, stride, threads), []).append(summarise(table, models, errors, config))
    rows = [row for per_config in rounds.values() for row in over_rounds(per_config)]
    runs = f"{args.runs} interleaved runs" + (f", medians of {args.rounds} rounds" if args.rounds > 1 else "")
    title = (f"ACmix {args.channels}ch {args.size}x{args.size}, ONNX Runtime CPU, {runs}; "
             f"speed-up over '{BASELINE}' (exported by torch.onnx.export(dynamo=True))")
    render(rows, title, console)
    if args.json:
        config = {"channels": args.channels, "size": args.size, "runs": args.runs, "rounds": args.rounds,
                  "warmup": args.warmup, "baseline": BASELINE, "exporter": "torch.onnx.export(dynamo=True)"}
        document = {"config": config, "environment": environment, "rows": rows}
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
