"""ACmix block latency: the reference module exported by ``torch.onnx`` vs netdsl's compiled ACmix.

Three ONNX models of one ACmix block (same weights) run side by side in ONNX Runtime (CPU), in
one process, interleaved run by run (:func:`netdsl.backends.bench.bench_many`):

a. ``reference``: the reference-style PyTorch module (``tests/reference/torch_modules.py``:
   ``nn.ReflectionPad2d``, ``nn.Unfold``, einsum sums), exported with
   ``torch.onnx.export(dynamo=True)``, or with the TorchScript exporter if that fails (the output
   says which);
b. ``netdsl onnx``: ``specs/acmix.net`` ``ACmix`` compiled for the ``onnx`` target
   (``local_attention`` as the ONNX backend emits it);
c. ``netdsl trt-restricted``: compiled for ``trt-restricted`` (attention lowered to conv,
   elementwise, shuffle, slice, concat and softmax).

Before timing, the three are run on one input and compared with the PyTorch module. Prints a
table of median / p90 latency and the speed-up over the reference; ``--json OUT`` writes the same.

    python benchmarks/acmix_speed.py [--channels 64] [--size 56] [--batch 1] [--runs 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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

from netdsl.atomic_write import atomic_write_text
from netdsl.backends.bench import BenchTable, bench_many
from netdsl.backends.onnx_backend import to_onnx
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference modules live with the tests
from reference.torch_modules import ACmix  # noqa: E402

REFERENCE = "reference"
TARGETS = {"netdsl onnx": "onnx", "netdsl trt-restricted": "trt-restricted"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=64, help="in_planes = out_planes (default 64)")
    p.add_argument("--size", type=int, default=56, help="square map side (default 56)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads (default 1, for stable numbers; 0: ONNX Runtime's default)")
    p.add_argument("--seed", type=int, default=0, help="weights and input seed")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    return p.parse_args(argv)


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


def export_reference(module: torch.nn.Module, x: torch.Tensor) -> tuple[onnx.ModelProto, str]:
    """``module`` exported to ONNX: with the dynamo exporter, else the TorchScript one; returns (model, how)."""
    try:
        # The dynamo exporter narrates its steps on stdout and warns about its own internals.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
        return _nonnegative_perms(program.model_proto), "torch.onnx.export(dynamo=True)"
    except Exception as err:  # noqa: BLE001 - any exporter failure falls back to the other exporter
        print(f"dynamo export failed ({type(err).__name__}: {err}); using the TorchScript exporter")
    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17)
    return _nonnegative_perms(onnx.load_from_string(buffer.getvalue())), "torch.onnx.export(dynamo=False)"


def run_once(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def build_models(args: argparse.Namespace) -> tuple[dict[str, onnx.ModelProto], str, np.ndarray, np.ndarray]:
    """(models by name, how the reference was exported, the check input, the PyTorch output on it)."""
    c, s = args.channels, args.size
    graph = load_graph(REPO / "specs" / "acmix.net", entry="ACmix",
                       sets=[f"in_planes={c}", f"out_planes={c}", f"stride={args.stride}"],
                       inputs=[f"x={args.batch}x{c}x{s}x{s}"])
    weights = initial_weights(graph, args.seed)
    module = ACmix(c, c, stride=args.stride).eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    x = np.random.default_rng(args.seed).standard_normal((args.batch, c, s, s)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
        reference, how = export_reference(module, torch.from_numpy(x))
    models = {REFERENCE: reference}
    for name, target in TARGETS.items():
        lowered = run_pipeline(graph, target, weights)
        models[name] = to_onnx(lowered.graph, lowered.weights or {})
    return models, how, x, expected


def summarise(table: BenchTable, models: dict[str, onnx.ModelProto], errors: dict[str, float]) -> list[dict[str, Any]]:
    """One row per model: latency, speed-up over the reference, ONNX op census, error vs PyTorch."""
    base = table.result(REFERENCE).rows[0].median_ms
    rows = []
    for result in table.results:
        timing = result.rows[0]
        ops = sorted({n.op_type for n in models[result.name].graph.node})
        rows.append({
            "model": result.name,
            "median_ms": timing.median_ms,
            "p90_ms": timing.p90_ms,
            "speedup_vs_reference": base / timing.median_ms if base and timing.median_ms else None,
            "onnx_nodes": len(models[result.name].graph.node),
            "onnx_ops": ops,
            "max_abs_error_vs_torch": errors[result.name],
            "error": timing.error,
        })
    return rows


def render(rows: list[dict[str, Any]], title: str, console: Console) -> None:
    table = Table(title=title)
    for column in ("model", "median ms", "p90 ms", "speed-up vs reference", "ONNX nodes", "max |Δ| vs torch"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        if r["error"]:
            table.add_row(r["model"], f"[red]{r['error']}[/red]", "", "", "", "")
            continue
        table.add_row(r["model"], f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['speedup_vs_reference']:.1f}x",
                      str(r["onnx_nodes"]), f"{r['max_abs_error_vs_torch']:.1e}")
    console.print(table)
    for r in rows:
        console.print(f"ONNX ops of {r['model']}: {', '.join(r['onnx_ops'])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    models, how, x, expected = build_models(args)
    errors = {name: float(np.abs(run_once(model, x) - expected).max()) for name, model in models.items()}
    table = bench_many(models, [args.batch], args.warmup, args.runs, "ort", REFERENCE, progress=True,
                       threads=args.threads or None, verify=False, console=console)
    rows = summarise(table, models, errors)
    config = {"channels": args.channels, "size": args.size, "batch": args.batch, "stride": args.stride,
              "runs": args.runs, "warmup": args.warmup, "reference_export": how}
    title = (f"ACmix {args.channels}ch {args.size}x{args.size} batch {args.batch} stride {args.stride}, ONNX Runtime "
             f"CPU, {args.runs} interleaved runs; reference exported by {how}")
    render(rows, title, console)
    if args.json:
        document = {"config": config, "environment": table.environment, "models": rows}
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
