"""Global attention and activation x activation matmul in restricted mode: what the lowering costs.

The non-local block of ``specs/blocks/nonlocal.net`` (embedded Gaussian; 64 channels, 28x28,
inner width 32), written with ``matmul`` + ``softmax`` and with ``attention``, compiled for
``onnx``, ``trt-restricted`` and ``trt-dla``, plus ``trt-restricted`` with the contraction
budget lifted (``unchunked``: each product materialised whole, the form before chunking). For
each: ONNX Runtime latency (CPU, one thread, all models interleaved run by run; median and
fastest run, each with its ratio to the ``onnx`` build of the same spec: on a loaded machine
the long, memory-bound restricted runs are preempted more often, which inflates their median),
the fastest run's CPU time of the thread that ran it (with one intra-op thread ONNX Runtime
computes on the calling thread, so this is the run's latency without the time it was preempted:
the figure that stays put on a shared machine) and its ratio,
ONNX node count, largest activation and peak live activation memory of the ONNX model
(:func:`netdsl.analysis.model_facts.onnx_activation_memory`), and the memory-traffic floor of
the restricted form: the bytes its two products must write and read once
(``2 · 4 · 2 · L² · inner`` at float32, ``L`` the positions). The restricted outputs are checked
against the ``onnx`` build first (max error relative to the output's largest magnitude). Prints
a table and, with ``--json OUT``, writes the rows.

    python benchmarks/global_attention.py [--runs 30] [--size 28] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from netdsl import api
from netdsl.analysis.model_facts import onnx_activation_memory
from netdsl.analysis.timing import session_options
from netdsl.atomic_write import atomic_write_text
from netdsl.passes import contraction

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "blocks" / "nonlocal.net"
ENTRIES = ("nonlocal_matmul", "nonlocal_attention")
TARGETS = ("onnx", "trt-restricted", "trt-dla", "unchunked")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30, help="timed runs per model (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per model (default 3)")
    p.add_argument("--size", type=int, default=28, help="map side (default 28)")
    p.add_argument("--channels", type=int, default=64, help="block width (default 64)")
    p.add_argument("--inner", type=int, default=32, help="inner width of theta/phi/g (default 32)")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    p.add_argument("--smoke", action="store_true", help="smallest settings: a 16-channel 8x8 block, one run")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(runs=1, warmup=0, size=8, channels=16, inner=8)
    return args


def build(entry: str, target: str, args: argparse.Namespace) -> bytes:
    """The ONNX model (serialized) of ``entry`` for ``target`` (``unchunked``: trt-restricted with no budget)."""
    graph = api.load(SPEC, entry, {"channels": args.channels, "size": args.size, "inner": args.inner})
    saved = contraction.MIN_BUDGET
    if target == "unchunked":
        contraction.MIN_BUDGET = 1 << 62
    try:
        result = api.lower(graph, "trt-restricted" if target == "unchunked" else target)
    finally:
        contraction.MIN_BUDGET = saved
    return api.emit_onnx(result, target).SerializeToString()


def traffic_floor(args: argparse.Namespace) -> int:
    """Bytes both products must write and read once at float32: ``2 · 4 · 2 · L² · inner``."""
    positions = args.size * args.size
    return 2 * 4 * 2 * positions * positions * args.inner


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((1, args.channels, args.size, args.size)).astype(np.float32)}
    sessions: dict[tuple[str, str], Any] = {}
    rows: list[dict[str, Any]] = []
    for entry in ENTRIES:
        reference = None
        for target in TARGETS:
            model = build(entry, target, args)
            opts = session_options(1)
            session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            (out,) = session.run(None, feed)
            if reference is None:
                reference = out
            mem = onnx_activation_memory(onnx.load_from_string(model))
            sessions[(entry, target)] = session
            rows.append({"spec": entry, "target": target, "nodes": mem.nodes,
                         "largest_bytes": mem.largest_bytes, "peak_bytes": mem.peak_bytes,
                         "max_rel_error": float(np.abs(out - reference).max() / np.abs(reference).max()),
                         "traffic_floor_bytes": None if target == "onnx" else traffic_floor(args)})
    times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    cpu_times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    for run in range(args.warmup + args.runs):
        for key, session in sessions.items():
            start, cpu_start = time.perf_counter(), time.thread_time()
            session.run(None, feed)
            if run >= args.warmup:
                times[key].append(1e3 * (time.perf_counter() - start))
                cpu_times[key].append(1e3 * (time.thread_time() - cpu_start))
    for row in rows:
        key, onnx_key = (row["spec"], row["target"]), (row["spec"], "onnx")
        mine, onnx_times = times[key], times[onnx_key]
        row["median_ms"], row["min_ms"] = statistics.median(mine), min(mine)
        row["ratio_to_onnx"] = row["median_ms"] / statistics.median(onnx_times)
        row["min_ratio_to_onnx"] = row["min_ms"] / min(onnx_times)
        row["min_cpu_ms"] = min(cpu_times[key])
        row["min_cpu_ratio_to_onnx"] = row["min_cpu_ms"] / min(cpu_times[onnx_key])
    print_table(rows, args)
    if args.json:
        atomic_write_text(args.json, json.dumps({"runs": args.runs, "size": args.size, "channels": args.channels,
                                                 "inner": args.inner, "ort": ort.__version__, "rows": rows},
                                                indent=2) + "\n")
    return 0


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = Table(title=f"Non-local block, {args.channels} channels, {args.size}x{args.size}, inner {args.inner}: "
                        f"ONNX Runtime (CPU, 1 thread), median of {args.runs} interleaved runs", title_justify="left")
    for col in ("spec", "target", "median ms", "x onnx", "min ms", "x onnx (min)", "min CPU ms", "x onnx (CPU)",
                "nodes", "largest MiB", "peak MiB", "floor MiB", "max rel err"):
        table.add_column(col, justify="left" if col in ("spec", "target") else "right")
    mib = 1 << 20
    for r in rows:
        floor = "-" if r["traffic_floor_bytes"] is None else f"{r['traffic_floor_bytes'] / mib:.1f}"
        table.add_row(r["spec"], r["target"], f"{r['median_ms']:.2f}", f"{r['ratio_to_onnx']:.1f}",
                      f"{r['min_ms']:.2f}", f"{r['min_ratio_to_onnx']:.1f}", f"{r['min_cpu_ms']:.2f}",
                      f"{r['min_cpu_ratio_to_onnx']:.1f}", str(r["nodes"]),
                      f"{r['largest_bytes'] / mib:.2f}", f"{r['peak_bytes'] / mib:.2f}", floor,
                      f"{r['max_rel_error']:.1e}")
    Console(width=190, highlight=False).print(table)


if __name__ == "__main__":
    sys.exit(main())
