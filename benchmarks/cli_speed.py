"""Command-line wall time: ``netdsl check`` and ``netdsl compile`` against ``python -c "import numpy"``.

Each command runs as a fresh process, interleaved with the others run by run, and its median wall
time is divided by the median of ``python -c "import numpy"`` (what a Python tool built on numpy
costs to start; ``netdsl check`` itself imports no numpy). Targets: ``check`` at most 1.5x,
``compile --target trt-restricted`` at most 3x. Then each command runs once more under
``python -X importtime``, which gives the time spent importing modules, the largest imports, and the
share of the spec parser (``netdsl.parser``).
Prints a table and, with ``--json OUT``, the same as JSON.

    python benchmarks/cli_speed.py [--runs 15] [--spec specs/csa.net] [--json OUT]
    python benchmarks/cli_speed.py --smoke    # two runs each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from netdsl.atomic_write import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
BASELINE = "python -c 'import numpy'"
TARGETS = {"netdsl check": 1.5, "netdsl compile --target trt-restricted": 3.0}
TOP_IMPORTS = 5
# Bytecode caches on, as in a user's install: without them every netdsl module is compiled from source at each start.
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, default=REPO / "specs" / "csa.net", help="spec to check and compile")
    p.add_argument("--runs", type=int, default=15, help="timed runs of each command (default 15)")
    p.add_argument("--smoke", action="store_true", help="smallest settings: two runs of each command")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs = 2
    return args


def commands(spec: Path, out_dir: Path) -> dict[str, list[str]]:
    """The timed commands by label: the baseline first, then the netdsl commands with their targets."""
    netdsl = [sys.executable, "-m", "netdsl.cli"]
    return {
        BASELINE: [sys.executable, "-c", "import numpy"],
        "netdsl check": [*netdsl, "check", str(spec)],
        "netdsl compile --target trt-restricted": [*netdsl, "compile", str(spec), "--target", "trt-restricted",
                                                   "-o", str(out_dir / "out.onnx")],
    }


def wall_time(argv: list[str]) -> float:
    """Seconds from start to exit of ``argv``; a failing command is an error (a benchmark of a failure is none)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def import_profile(argv: list[str]) -> dict[str, Any]:
    """Import time of one run of ``argv`` under ``-X importtime``: total, largest top-level imports, the parser's."""
    run = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], check=True, capture_output=True, text=True, env=ENV)
    top: dict[str, float] = {}
    parser_s = 0.0
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        seconds = int(cumulative) / 1e6
        if not name[1:].startswith(" "):  # a top-level import (nested ones are indented)
            top[name.strip()] = seconds
        if name.strip() == "netdsl.parser":
            parser_s = seconds
    largest = sorted(top.items(), key=lambda item: -item[1])[:TOP_IMPORTS]
    return {"import_s": sum(top.values()), "parser_import_s": parser_s, "largest_imports": dict(largest)}


def measure(cmds: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """``runs`` wall times of each command, interleaved (one of each per round, after one untimed round)."""
    for argv in cmds.values():
        wall_time(argv)  # warm the file cache and write the bytecode caches
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            times[name].append(wall_time(argv))
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as out_dir:
        cmds = commands(args.spec, Path(out_dir))
        times = measure(cmds, args.runs)
        imports = {name: import_profile(argv) for name, argv in cmds.items()}
    base = statistics.median(times[BASELINE])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append({"command": name, "median_s": median, "ratio_vs_import_numpy": median / base,
                     "target_ratio": TARGETS.get(name), **imports[name]})
    table = Table(title=f"{args.spec.name}: wall time of fresh processes, median of {args.runs} interleaved runs")
    for column in ("command", "median s", "× import numpy", "target", "imports s", "parser import s",
                   "largest imports (s)"):
        table.add_column(column, justify="left" if column in ("command", "largest imports (s)") else "right")
    for r in rows:
        target = f"≤ {r['target_ratio']}x" if r["target_ratio"] else ""
        largest = ", ".join(f"{name} {s:.3f}" for name, s in r["largest_imports"].items())
        table.add_row(r["command"], f"{r['median_s']:.3f}", f"{r['ratio_vs_import_numpy']:.2f}x", target,
                      f"{r['import_s']:.3f}", f"{r['parser_import_s']:.3f}", largest)
    console.print(table)
    if args.json:
        document = {"config": {"spec": str(args.spec), "runs": args.runs, "python": sys.version.split()[0]},
                    "rows": rows}
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
