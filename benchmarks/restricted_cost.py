"""What restricted mode costs each architecture: the CSA blog's four models, ``onnx`` against ``trt-restricted``.

``convselfattn`` (CSA), ConvNeXt-T, Swin-T and CvT-13 (``specs/models/``) are each compiled for the
``onnx`` target and for ``trt-restricted`` with the same seed-0 weights. Per model and target:

* ONNX Runtime latency (CPU) at each ``--batch``, all models and both targets interleaved run by
  run in one process (:func:`netdsl.analysis.timing.bench_many`, each spec compiled with its batch
  bound), and the ratio restricted / onnx per batch with its 95% bootstrap interval, rounds
  resampled together (:func:`netdsl.analysis.timing.ratio_interval`);
* ONNX node count, peak live activation memory and largest activation of the batch-1 ONNX model
  as ONNX Runtime receives it (:func:`netdsl.analysis.model_facts.onnx_activation_memory`), and coverage under
  the ``trt-restricted`` profile;
* how far the restricted model's output is from the ``onnx`` one's on a random input (largest
  difference relative to the output's largest magnitude), checked before timing.

Prints a table; ``--json OUT`` writes the rows. Small settings smoke-run in well under a minute:

    python benchmarks/restricted_cost.py [--models convselfattn,convnext_tiny,swin_tiny,cvt13] [--batch 1,8]
        [--runs 20] [--warmup 3] [--size 224] [--threads N] [--set KEY=VALUE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from netdsl import api
from netdsl.analysis.model_facts import onnx_activation_memory
from netdsl.analysis.timing import PerBatchModel, bench_many, ratio_interval, session_options
from netdsl.atomic_write import atomic_write_text
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.driver import load_graph

REPO = Path(__file__).resolve().parents[1]
MODELS = ("convselfattn", "convnext_tiny", "swin_tiny", "cvt13")
TARGETS = ("onnx", "trt-restricted")
MIB = 1 << 20
SMOKE_SETS = ["depths=[1,1,1]", "dims=[16,48,96]"]
"""CvT-13's parameters in the smoke run: one narrow block per stage (drawing the full model's weights for each of
its four compiles would take most of the run)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"specs in specs/models/ (default {','.join(MODELS)})")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per model, target and batch (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per model, target and batch (default 3)")
    p.add_argument("--size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="set a parameter of every model (as `netdsl compile --set`; repeatable)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the rows as JSON")
    p.add_argument("--smoke", action="store_true",
                   help="smallest settings: CvT-13 with one narrow block per stage at 64x64, batch 1, one run")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(models="cvt13", size=64, batch="1", runs=1, warmup=0, threads=1,
                          sets=args.sets + SMOKE_SETS)
    return args


def compiled(model: str, target: str, batch: int, args: argparse.Namespace) -> onnx.ModelProto:
    """Spec ``model`` with the ``--set`` parameters compiled for ``target``, its input bound to ``batch`` x 3 x
    ``--size`` x ``--size``."""
    graph = load_graph(REPO / "specs" / "models" / f"{model}.net", sets=args.sets,
                       inputs=[f"x={batch}x3x{args.size}x{args.size}"])
    return api.to_onnx(graph, target)


def _run(model: onnx.ModelProto, x: np.ndarray, threads: int | None) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return out


def static_rows(models: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Node count, memory, coverage and output agreement of every model and target at batch 1."""
    profile = load_profile("trt-restricted")
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    rows = []
    for model in models:
        reference = None
        for target in TARGETS:
            built = compiled(model, target, 1, args)
            out = _run(built, x, args.threads)
            reference = out if reference is None else reference
            memory = onnx_activation_memory(built)
            report = check_coverage(built, profile)
            rows.append({"model": model, "target": target, "nodes": memory.nodes, "peak_bytes": memory.peak_bytes,
                         "largest_bytes": memory.largest_bytes, "covered": report.covered_count,
                         "total": report.total, "refused_ops": sorted({n.op for n in report.violations()}),
                         "max_rel_error": float(np.abs(out - reference).max() / np.abs(reference).max())})
    return rows


def timed_rows(rows: list[dict[str, Any]], batches: list[int], args: argparse.Namespace) -> None:
    """Add each row's median latency per batch and, on restricted rows, the ratio to ``onnx`` with its interval."""
    def builder(model: str, target: str) -> PerBatchModel:
        return PerBatchModel(lambda batch: compiled(model, target, batch, args))

    names = {f"{r['model']}/{r['target']}": r for r in rows}
    table = bench_many({name: builder(r["model"], r["target"]) for name, r in names.items()}, batches,
                       args.warmup, args.runs, threads=args.threads, verify=False)
    for name, row in names.items():
        row["batches"] = {}
        base = table.result(f"{row['model']}/onnx")
        for timing in table.result(name).rows:
            entry: dict[str, Any] = {"median_ms": timing.median_ms, "error": timing.error}
            ref = base.row(timing.batch)
            if row["target"] != "onnx" and timing.median_ms and ref is not None and ref.median_ms:
                entry["ratio_to_onnx"] = timing.median_ms / ref.median_ms
                entry["ratio_ci95"] = ratio_interval(timing.times_ms, ref.times_ms)
            row["batches"][timing.batch] = entry


def render(rows: list[dict[str, Any]], batches: list[int], args: argparse.Namespace) -> None:
    table = Table(title=f"Restricted mode's cost, ONNX Runtime {ort.__version__} (CPU), {args.size}x{args.size}, "
                        f"median of {args.runs} interleaved runs", title_justify="left")
    columns = ["model", "target", "nodes", "peak MiB", "largest MiB", "covered", "max rel err"]
    for batch in batches:
        columns += [f"b{batch} ms", f"b{batch} x onnx (95%)"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "target") else "right")
    for r in rows:
        cells = [r["model"], r["target"], str(r["nodes"]), f"{r['peak_bytes'] / MIB:.1f}",
                 f"{r['largest_bytes'] / MIB:.1f}", f"{r['covered']}/{r['total']}", f"{r['max_rel_error']:.1e}"]
        for batch in batches:
            b = r["batches"][batch]
            cells.append("-" if b["median_ms"] is None else f"{b['median_ms']:.2f}")
            if "ratio_to_onnx" in b:
                low, high = b["ratio_ci95"]
                cells.append(f"{b['ratio_to_onnx']:.2f} ({low:.2f}-{high:.2f})")
            else:
                cells.append("-")
        table.add_row(*cells)
    Console(width=200, highlight=False).print(table)
    for r in rows:
        if r["refused_ops"]:
            print(f"{r['model']}/{r['target']}: trt-restricted refuses {', '.join(r['refused_ops'])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    unknown = [m for m in models if not (REPO / "specs" / "models" / f"{m}.net").is_file()]
    if unknown or not batches or args.runs < 1:
        print(f"unknown model(s) {', '.join(unknown) or '-'}, or no batch sizes or runs", file=sys.stderr)
        return 2
    rows = static_rows(models, args)
    timed_rows(rows, batches, args)
    render(rows, batches, args)
    if args.json:
        settings = {"batches": batches, "runs": args.runs, "warmup": args.warmup, "size": args.size, "sets": args.sets,
                    "threads": args.threads, "onnxruntime": ort.__version__}
        atomic_write_text(args.json, json.dumps({**settings, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
