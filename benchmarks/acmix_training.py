"""ACmix training step: netdsl's generated PyTorch module vs the reference-structure module, eager and compiled.

One ACmix block (same weights in both) trains with SGD on a random input, one step being forward, a
squared-output loss, backward and the optimiser step; ``torch.set_num_threads(--threads)``. Two modules:

a. ``netdsl generated``: ``specs/acmix.net`` ``ACmix`` compiled for the ``torch`` target and built from the
   generated source (:func:`netdsl.backends.torch_backend.build_module`);
b. ``reference (unfold + sum)``: the module with the published ACmix's operator structure
   (``tests/reference/torch_modules.py`` ``ACmix``: reflection pad, ``nn.Unfold``, products summed over the
   head dimension, softmax over the window, weighted sum of the unfolded values).

Each runs eagerly and under plain ``torch.compile(module)`` (unless ``--no-compile``). Reported per row:
median step time, its ratio to the same module's eager step, the compile time (first compiled step minus a
median step) in wall seconds and in CPU seconds, split into this process's own CPU (dynamo, AOTAutograd,
inductor's lowering, scheduling and code generation) and its children's (the C++ compiler building
inductor's kernels), and, eagerly, the tensors the autograd graph saves for backward (count and MiB, each
storage counted once). Prints a table and, with ``--json OUT``, the same as JSON.

``--cold`` measures each module's compile in fresh child processes, twice, each with its own new inductor
cache (``TORCHINDUCTOR_CACHE_DIR``) and temporary directory (where inductor keeps its precompiled header):

- ``empty cache``: nothing built before on the machine, so the compile includes inductor's one-off
  start-up (the CPU capability checks and the precompiled header, built once per cache);
- ``primed cache``: another child first compiles an unrelated two-layer module into that cache, as any
  earlier use of ``torch.compile`` on the machine would; the model's own graphs and kernels are still
  built from nothing. This is the compile a user sees the first time they compile this model.

Each compiled row's ``× eager`` divides by the eager step its own child measured; the table shows the
first child's eager row.

Without ``--cold`` both modules compile in one process, and the second reuses what the first built once
per process (the CPU capability checks, the precompiled header).

    python benchmarks/acmix_training.py [--channels 64] [--size 56] [--batch 8] [--threads 1] [--steps 10]
    python benchmarks/acmix_training.py --cold     # cold compile of each module, in its own process
    python benchmarks/acmix_training.py --smoke    # a 16-channel 14x14 block, eager only, two steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from netdsl.atomic_write import atomic_write_text
from netdsl.backends.torch_backend import build_module
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference modules live with the tests
from reference.torch_modules import ACmix  # noqa: E402

GENERATED = "netdsl generated"
REFERENCE = "reference (unfold + sum)"
SHORT_NAMES = {"generated": GENERATED, "reference": REFERENCE}  # --only's choices
COMPILED = "torch.compile"
EMPTY, PRIMED = "empty cache", "primed cache"
COLD_CACHES = (EMPTY, PRIMED)
# What --cold's primed cache holds before the model compiles: an unrelated conv + ReLU trained one step,
# which builds inductor's CPU capability checks and precompiled header but none of the model's kernels.
PRIMER = ("import torch; m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()); "
          "torch.compile(m)(torch.randn(1, 3, 8, 8)).sum().backward()")
SMOKE = {"channels": 16, "size": 14, "batch": 2, "steps": 2, "warmup": 1, "compile": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=64, help="in_planes = out_planes (default 64)")
    p.add_argument("--size", type=int, default=56, help="square map side (default 56)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (default 2)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    p.add_argument("--cold", action="store_true",
                   help="compile each module in two child processes, each with a new inductor cache and temporary "
                        "directory: one empty, one primed by an unrelated small compile")
    p.add_argument("--only", choices=tuple(SHORT_NAMES), help="measure one module only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="smallest settings (overrides sizes, steps and compile)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    return args


def modules(args: argparse.Namespace) -> dict[str, nn.Module]:
    """The generated and the reference module, holding the same initial weights."""
    c = args.channels
    graph = load_graph(REPO / "specs" / "acmix.net", entry="ACmix",
                       sets=[f"in_planes={c}", f"out_planes={c}", f"stride={args.stride}"],
                       inputs=[f"x={args.batch}x{c}x{args.size}x{args.size}"])
    weights = initial_weights(graph, args.seed)
    generated = build_module(run_pipeline(graph, "torch").graph, weights)
    reference = ACmix(c, c, stride=args.stride)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return {GENERATED: generated, REFERENCE: reference}


def training_step(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                  x: torch.Tensor) -> Callable[[], None]:
    """One SGD step of ``forward`` (the module or its compiled form) on ``x``."""
    optimiser = torch.optim.SGD(module.parameters(), lr=1e-3)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        forward(x).square().mean().backward()
        optimiser.step()

    return step


def saved_for_backward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, float]:
    """(tensors, MiB) the autograd graph of one forward saves for backward; a storage shared by several counts once."""
    storages: dict[int, int] = {}
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward(x).square().mean()
    del loss
    return count, sum(storages.values()) / 2**20


def cpu_seconds() -> tuple[float, float]:
    """(this process's, its finished children's) user + system CPU seconds so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> dict[str, Any]:
    """Wall and CPU seconds of the first step and of each timed step after ``warmup`` more.

    Keys: ``first`` (wall s), ``first_cpu`` and ``first_children_cpu`` (CPU s of this process and of the
    children it reaped meanwhile: inductor runs the C++ compiler as child processes), ``times`` and
    ``cpu_times`` (per timed step).
    """
    cpu0, children0 = cpu_seconds()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    cpu1, children1 = cpu_seconds()
    for _ in range(warmup):
        step()
    times, cpu_times = [], []
    for _ in range(steps):
        cpu_start = cpu_seconds()[0]
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(cpu_seconds()[0] - cpu_start)
    return {"first": first, "first_cpu": cpu1 - cpu0, "first_children_cpu": children1 - children0,
            "times": times, "cpu_times": cpu_times}


def measure(name: str, module: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The eager row of ``module`` and, with compile, its compiled row."""
    rows = []
    count, mib = saved_for_backward(module, x)
    eager = statistics.median(time_steps(training_step(module, module, x), args.warmup, args.steps)["times"])
    rows.append({"module": name, "mode": "eager", "step_ms": 1e3 * eager, "vs_eager": 1.0, "compile_s": None,
                 "compile_cpu_s": None, "compile_children_cpu_s": None, "saved_tensors": count, "saved_mib": mib})
    if args.compile:
        torch._dynamo.reset()  # each module compiles from scratch, not from the other's caches
        compiled = torch.compile(module)
        timed = time_steps(training_step(module, compiled, x), args.warmup, args.steps)
        median = statistics.median(timed["times"])
        rows.append({"module": name, "mode": COMPILED, "step_ms": 1e3 * median, "vs_eager": median / eager,
                     "compile_s": timed["first"] - median,
                     "compile_cpu_s": timed["first_cpu"] - statistics.median(timed["cpu_times"]),
                     "compile_children_cpu_s": timed["first_children_cpu"],
                     "saved_tensors": None, "saved_mib": None})
    return rows


def measure_cold(name: str, argv: list[str], cache: str) -> list[dict[str, Any]]:
    """``name``'s rows measured by a child process with a new inductor cache and temporary directory.

    ``cache`` is one of :data:`COLD_CACHES`: ``empty cache`` leaves the cache empty, ``primed cache`` first
    has another child compile :data:`PRIMER` into it. The compiled row's mode names the cache.
    """
    with tempfile.TemporaryDirectory(prefix="acmix-cold-") as fresh:
        out = Path(fresh) / "rows.json"
        env = {**os.environ, "TMPDIR": fresh, "TORCHINDUCTOR_CACHE_DIR": str(Path(fresh) / "inductor")}
        if cache == PRIMED:
            subprocess.run([sys.executable, "-c", PRIMER], env=env, check=True, stdout=subprocess.DEVNULL)
        child = [sys.executable, __file__, *argv, "--only", name, "--json", str(out)]
        subprocess.run(child, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["rows"]
    for row in rows:
        if row["mode"] == COMPILED:
            row["mode"] = f"{COMPILED}, {cache}"
    return rows


def child_argv(argv: list[str]) -> list[str]:
    """``argv`` without the options :func:`measure_cold` sets itself (--cold, --only, --json)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--only", "--json"):
            skip = True
        elif arg != "--cold" and not arg.startswith(("--only=", "--json=")):
            kept.append(arg)
    return kept


def render(rows: list[dict[str, Any]], title: str, console: Console) -> None:
    table = Table(title=title)
    columns = ("module", "mode", "step ms", "× eager", "compile s", "compile CPU s (own + C++)", "saved for backward")
    for column in columns:
        table.add_column(column, justify="left" if column in ("module", "mode") else "right")
    for r in rows:
        saved = f"{r['saved_tensors']} tensors, {r['saved_mib']:.1f} MiB" if r["saved_tensors"] is not None else ""
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else ""
        compile_cpu = (f"{r['compile_cpu_s']:.1f} + {r['compile_children_cpu_s']:.1f}"
                       if r["compile_cpu_s"] is not None else "")
        table.add_row(r["module"], r["mode"], f"{r['step_ms']:.1f}", f"{r['vs_eager']:.2f}x", compile_s, compile_cpu,
                      saved)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    console = Console(width=160)
    c, s = args.channels, args.size
    x = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((args.batch, c, s, s)).astype(np.float32))
    if args.cold:
        names = [args.only] if args.only else list(SHORT_NAMES)
        kept = child_argv(sys.argv[1:] if argv is None else argv)
        rows = []
        for name in names:
            for cache in COLD_CACHES:  # the eager row once, from the first child
                rows += [row for row in measure_cold(name, kept, cache) if cache == EMPTY or row["mode"] != "eager"]
    else:
        rows = [row for name, module in modules(args).items() if args.only is None or SHORT_NAMES[args.only] == name
                for row in measure(name, module, x, args)]
    title = (f"ACmix {c}ch {s}x{s} batch {args.batch} stride {args.stride}, training step (SGD), "
             f"{args.threads} thread(s), median of {args.steps} steps{', cold compile' if args.cold else ''}, "
             f"load average {os.getloadavg()[0]:.1f}")
    render(rows, title, console)
    if args.json:
        config = {key: getattr(args, key) for key in ("channels", "size", "batch", "stride", "threads", "steps",
                                                      "warmup", "compile", "cold")}
        document = {"config": config, "torch": torch.__version__, "rows": rows}
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
