"""The CSA study's model comparison: CSA (``convselfattn``) against ConvNeXt-T, Swin-T and CvT-13.

1. **Comparison** (the blog's Table 1 and Figure 6): runs ``netdsl bench`` on the four specs of
   ``specs/models/`` compiled for the ``onnx`` target, in ONNX Runtime (CPU), all models in one
   process and interleaved run by run, at batch 1/4/8/16. The table gives per model its
   parameters, MACs and bytes per frame, its TensorRT coverage (``trt-restricted``, ``trt-dla``)
   and per batch the median latency and its ratio to the baseline (ConvNeXt-T); ``--plot`` draws
   latency against batch size.
2. **Profile** (``--profile``): each model compiled at batch 1 runs under ONNX Runtime's profiler
   (runs interleaved across models; profiles go to a temporary folder), and the kernel time is
   summed per op type *as ONNX Runtime executes it* (after its own fusions: e.g. ``QuickGelu`` is a
   fused swish, ``Conv`` includes the batch norms and activations it absorbed), printed as the top
   op types of each model.

``--onnx FILE`` adds ONNX models (e.g. an earlier build of one of the specs) to both parts, named by
their file stem. ``--timm MODEL`` adds timm's own model of that name exported by ``torch.onnx.export``
(batch 1 only; needs timm) as ``MODEL_timm_export``. ``--torch-export MODEL`` adds PyTorch's own
export (``torch.onnx.export``) of the module netdsl generates for that spec, with the same seeded
weights, as ``MODEL_torch_export``: a check that netdsl's emission of a baseline is at least as fast as
the usual way to get it into ONNX Runtime (the two agree on an input first; the largest difference is
printed). Both parts print tables; ``--json OUT`` writes ``{"comparison": ..., "profile": ...}``.

    python benchmarks/model_comparison.py [--batch 1,4,8,16] [--runs 50] [--profile] [--no-comparison]
        [--onnx FILE ...] [--torch-export MODEL ...] [--timm MODEL ...] [--set KEY=VALUE ...] [--json OUT]
        [--plot OUT.png]
    python benchmarks/model_comparison.py --smoke    # CSA and ConvNeXt-T, one block per stage, batch 1, one run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from netdsl import api
from netdsl.analysis.timing import session_options
from netdsl.atomic_write import atomic_write_text
from netdsl.cli import main as netdsl_main
from netdsl.driver import load_graph

REPO = Path(__file__).resolve().parents[1]
MODELS = ("convselfattn", "convnext_tiny", "swin_tiny", "cvt13")
BASELINE = "convnext_tiny"
SMOKE_SETS = ["depths=[1,1,1,1]", "dims=[16,32,64,128]"]
"""Parameters of both smoke models (CSA and ConvNeXt-T share them): one narrow block per stage, so the smoke run
goes through every step in seconds (the full models' weights alone take most of a minute to draw)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated specs in specs/models/ (default {','.join(MODELS)})")
    p.add_argument("--onnx", type=Path, action="append", default=[], metavar="FILE",
                   help="an extra ONNX model to compare and profile (repeatable)")
    p.add_argument("--torch-export", action="append", default=[], metavar="MODEL",
                   help="also compare torch.onnx.export of the module generated for this spec (repeatable)")
    p.add_argument("--timm", action="append", default=[], metavar="MODEL",
                   help="also compare torch.onnx.export of timm's own model of this name at batch 1 (repeatable; "
                        "needs timm)")
    p.add_argument("--baseline", default=BASELINE, help=f"model the ratios refer to (default {BASELINE})")
    p.add_argument("--batch", default="1,4,8,16", help="batch sizes of the comparison (default 1,4,8,16)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model and batch (default 10)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and batch (default 50)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--profile", action="store_true", help="also profile each model at batch 1 by op type")
    p.add_argument("--profile-runs", type=int, default=20, help="profiled runs per model (default 20)")
    p.add_argument("--top", type=int, default=12, help="op types listed per model in the profile (default 12)")
    p.add_argument("--no-comparison", action="store_true", help="only the profile (with --profile)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="also save the latency-vs-batch plot")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="set a parameter of every spec model (as `netdsl compile --set`; repeatable)")
    p.add_argument("--smoke", action="store_true",
                   help="smallest settings: the CSA model and its baseline with one narrow block per stage, batch 1, "
                        "one run, a short profile")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(models=f"convselfattn,{BASELINE}", batch="1", warmup=0, runs=1, profile=True,
                          profile_runs=2, sets=args.sets + SMOKE_SETS)
    return args


def spec_path(model: str) -> Path:
    return REPO / "specs" / "models" / f"{model}.net"


def run_comparison(args: argparse.Namespace, models: list[str]) -> dict[str, Any]:
    """``netdsl bench`` over the specs and ``--onnx`` files; returns its JSON (the command prints the table)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "comparison.json"
        paths = [*(str(spec_path(m)) for m in models), *(str(f) for f in args.onnx)]
        argv = ["bench", *paths, "--batch", args.batch, "--baseline", args.baseline,
                "--warmup", str(args.warmup), "--runs", str(args.runs), "--json", str(out)]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        for assignment in args.sets:
            argv += ["--set", assignment]
        if args.plot:
            argv += ["--plot", str(args.plot)]
        code = netdsl_main(argv)
        if not out.is_file():
            raise SystemExit(code or 2)
        return json.loads(out.read_text())


def _session(model_bytes: bytes, profile_dir: str, threads: int | None) -> ort.InferenceSession:
    """A profiling session with the benchmark's options (no spinning between interleaved runs)."""
    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _op_times(profile_file: str) -> tuple[dict[str, dict[str, float]], int]:
    """Per op type: kernel ms per run and node count, from an ONNX Runtime profile, leaving out the first
    (warm-up) run; also the number of runs counted."""
    events = json.loads(Path(profile_file).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e["name"] == "model_run")
    warm_up_end = runs[0][1]
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > warm_up_end:
            op = event["args"]["op_name"]
            per_op[op] += event["dur"] / 1000.0
            nodes[op].add(event["name"])
    timed = len(runs) - 1
    return {op: {"ms": ms / timed, "nodes": len(nodes[op])} for op, ms in per_op.items()}, timed


def compile_spec(model: str, sets: list[str]) -> onnx.ModelProto:
    """Spec ``model`` with parameters ``sets`` compiled for ``onnx`` as ``bench`` compiles it (default batch of 1,
    seed-0 weights)."""
    return api.to_onnx(load_graph(spec_path(model), sets=sets), "onnx")


def compiled_models(models: list[str], onnx_files: list[Path], sets: list[str]) -> dict[str, onnx.ModelProto]:
    """The specs compiled for ``onnx`` (with their default batch of 1), then the ONNX files, by name."""
    compiled = {model: compile_spec(model, sets) for model in models}
    for path in onnx_files:
        compiled[path.stem] = onnx.load(str(path))
    return compiled


def profile_models(models: dict[str, onnx.ModelProto], runs: int, threads: int | None) -> dict[str, Any]:
    """Kernel time per op type of each model, its runs interleaved with the other models' runs."""
    sessions, feeds = {}, {}
    names = list(models)
    wall: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as profile_dir:
        for name, model in models.items():
            sessions[name] = _session(model.SerializeToString(), profile_dir, threads)
            first = sessions[name].get_inputs()[0]
            feeds[name] = {first.name: np.random.default_rng(0).standard_normal(first.shape).astype(np.float32)}
            sessions[name].run(None, feeds[name])  # warm-up: left out of the profile
        for r in range(runs):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                sessions[name].run(None, feeds[name])
                wall[name].append((time.perf_counter() - start) * 1000.0)
        result = {}
        for name in names:
            ops, timed = _op_times(sessions[name].end_profiling())
            result[name] = {"wall_median_ms": float(np.median(wall[name])), "runs": timed,
                            "kernel_ms": sum(v["ms"] for v in ops.values()), "ops": ops}
    return result


def render_profile(profile: dict[str, Any], top: int, console: Console) -> None:
    """One table per model: the ``top`` op types by kernel time, with their share and node count."""
    for model, data in profile.items():
        table = Table(title=f"{model}: kernel time by op type, batch 1")
        for column in ("op type", "ms / run", "share", "nodes"):
            table.add_column(column, justify="left" if column == "op type" else "right")
        ranked = sorted(data["ops"].items(), key=lambda item: -item[1]["ms"])
        for op, figures in ranked[:top]:
            table.add_row(op, f"{figures['ms']:.2f}", f"{100 * figures['ms'] / data['kernel_ms']:.1f}%",
                          str(figures["nodes"]))
        if len(ranked) > top:
            rest = sum(f["ms"] for _, f in ranked[top:])
            table.add_row(f"({len(ranked) - top} more)", f"{rest:.2f}", f"{100 * rest / data['kernel_ms']:.1f}%", "")
        console.print(table)
        console.print(f"{model}: {data['kernel_ms']:.1f} ms in kernels per run, wall median "
                      f"{data['wall_median_ms']:.1f} ms while profiling, {data['runs']} runs")


def ratio_lines(comparison: dict[str, Any]) -> list[str]:
    """``model / baseline at batch b: r (95% interval lo-hi)`` for every model and batch with a ratio."""
    lines = []
    for model in comparison["models"]:
        for row in model["rows"]:
            if model["name"] != comparison["baseline"] and row["latency_vs_baseline"] is not None:
                interval = row.get("ratio_ci95")
                lines.append(f"{model['name']} / {comparison['baseline']} at batch {row['batch']}: "
                             f"{row['latency_vs_baseline']:.3f}"
                             + (f" (95% interval {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""))
    return lines


def torch_export(model: str, folder: Path, sets: list[str]) -> Path:
    """``torch.onnx.export`` of the module generated for spec ``model`` (seed-0 weights, as ``bench`` compiles it),
    written to ``folder``; prints how far its output is from netdsl's emission on a random input."""
    import torch
    from acmix_speed import export, run_once

    from netdsl.backends.torch_backend import build_module
    from netdsl.initializers import initial_weights

    graph = load_graph(spec_path(model), sets=sets)
    module = build_module(graph, initial_weights(graph, seed=0)).eval()
    x = np.random.default_rng(0).standard_normal(graph.values[graph.inputs[0]].shape).astype(np.float32)
    exported = export(module, torch.from_numpy(x))
    ours = compile_spec(model, sets)
    outputs = [run_once(m, x) for m in (exported, ours)]  # the exporters name the input differently
    difference = np.abs(outputs[0] - outputs[1]).max()
    print(f"{model}: torch.onnx.export vs netdsl, largest output difference {difference:.2e}")
    path = folder / f"{model}_torch_export.onnx"
    onnx.save(exported, str(path))
    return path


def timm_export(model: str, folder: Path) -> Path:
    """timm's own ``model`` (``timm.create_model``, its default initialisation, eval mode) exported by
    ``torch.onnx.export`` at batch 1 and 224x224, written to ``folder``: the model as a timm user runs it in ONNX
    Runtime. timm is not part of the dev set-up (see docs/models.md); without it this exits with status 2."""
    import torch
    from acmix_speed import export
    from reference.torchvision_stand_in import import_timm

    try:
        timm, _ = import_timm()
    except ImportError:
        print("--timm needs timm: pip install --no-deps timm==1.0.31 pyyaml", file=sys.stderr)
        raise SystemExit(2) from None
    if not timm.is_model(model):
        print(f"--timm {model}: timm {timm.__version__} has no model of that name", file=sys.stderr)
        raise SystemExit(2)
    torch.manual_seed(0)
    module = timm.create_model(model, pretrained=False).eval()
    path = folder / f"{model}_timm_export.onnx"
    onnx.save(export(module, torch.randn(1, 3, 224, 224)), str(path))
    print(f"{model}: timm {timm.__version__}, exported by torch.onnx.export")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models + args.torch_export if not spec_path(m).is_file()]
    missing += [str(f) for f in args.onnx if not f.is_file()]
    names = (models + [f.stem for f in args.onnx] + [f"{m}_torch_export" for m in args.torch_export]
             + [f"{m}_timm_export" for m in args.timm])
    if missing or args.baseline not in names or len(set(names)) != len(names):
        print(f"unknown model(s) {', '.join(missing) or '-'}, baseline '{args.baseline}' not among {names}, "
              "or two models with one name (rename an --onnx file)", file=sys.stderr)
        return 2
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as exports:
        args.onnx += [torch_export(model, Path(exports), args.sets) for model in args.torch_export]
        args.onnx += [timm_export(model, Path(exports)) for model in args.timm]
        return compare_and_profile(args, models, console)


def compare_and_profile(args: argparse.Namespace, models: list[str], console: Console) -> int:
    """The comparison and/or profile the arguments ask for, printed and optionally written as JSON."""
    results: dict[str, Any] = {}
    if not args.no_comparison:
        results["comparison"] = run_comparison(args, models)
        for line in ratio_lines(results["comparison"]):
            console.print(line)
    if args.profile:
        compiled = compiled_models(models, args.onnx, args.sets)
        results["profile"] = profile_models(compiled, args.profile_runs, args.threads)
        render_profile(results["profile"], args.top, console)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
