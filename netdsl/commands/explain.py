"""``netdsl explain SPEC --target T``: which rule rewrote which spec line into what, and what it cost.

Runs the target's pass pipeline (or ``--passes``) on the spec, then prints the rewrite log
(rule, spec location and source line, the op replaced, the ops it became; repeated block
instances folded into one row with a count) and a cost table before vs after lowering: nodes,
parameters, buffers, constants, MACs and activation bytes (see :mod:`netdsl.cost`), the node
count, peak live activation memory and largest activation after each pass (:mod:`netdsl.memory`),
and the op counts by type. A rewrite that grows an op beyond the thresholds of
:mod:`netdsl.growth` prints a located warning on stderr. The seeded default weights are used: what
a pass rewrites does not depend on weight values.
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter

from rich.console import Console
from rich.table import Table

from netdsl.cost import GraphCost, graph_cost
from netdsl.diagnostics import SourceCache
from netdsl.driver import add_spec_args, graph_from_args
from netdsl.growth import print_growth_warnings
from netdsl.initializers import initial_weights
from netdsl.memory import MemoryFigures, memory_figures
from netdsl.passes.base import RewriteLog
from netdsl.passes.pipeline import PIPELINES, run_pipeline


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="show how a target's passes rewrite a spec, and the cost before/after")
    p.add_argument("spec", help=".net file")
    p.add_argument("--target", choices=tuple(PIPELINES), default="trt-restricted",
                   help="target whose pipeline to run (default trt-restricted)")
    p.add_argument("--passes", help="comma-separated passes to run instead of the target's pipeline")
    add_spec_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    graph = graph_from_args(args)
    passes = [p.strip() for p in args.passes.split(",") if p.strip()] if args.passes else None
    steps = [("(as written)", memory_figures(graph))]
    result = run_pipeline(graph, args.target, weights=initial_weights(graph), passes=passes,
                          after_pass=lambda name, g: steps.append((name, memory_figures(g))))
    console = Console(width=shutil.get_terminal_size((160, 24)).columns, highlight=False)
    console.print(f"[bold]{graph.name}[/bold] for target [bold]{args.target}[/bold]: "
                  f"passes {', '.join(result.passes) or '(none)'}")
    console.print(rewrite_table(result.log))
    before, after = graph_cost(graph), graph_cost(result.graph)
    console.print(cost_table(before, after))
    console.print(memory_table(steps))
    console.print(ops_table(before, after))
    print_growth_warnings(result.log)
    return 0


def memory_table(steps: list[tuple[str, MemoryFigures]]) -> Table:
    """Nodes, peak live activation memory and largest activation as written and after each pass that changes
    one of them (see :mod:`netdsl.memory`)."""
    table = Table(title="Activation memory after each pass that changes it (peak live set, largest tensor)",
                  title_justify="left")
    for col in ("after pass", "nodes", "peak memory", "largest tensor", "largest value"):
        table.add_column(col, justify="left" if col in ("after pass", "largest value") else "right")
    previous = None
    for name, mem in steps:
        figures = (mem.nodes, mem.peak_bytes, mem.largest_bytes)
        if figures != previous:  # passes that change none of the figures are left out
            table.add_row(name, f"{mem.nodes:,}", _human_bytes(mem.peak_bytes), _human_bytes(mem.largest_bytes),
                          mem.largest)
        previous = figures
    return table


def _source_line(where: str) -> str:
    """The spec line a ``file:line:col`` location points at, or '' when unknown."""
    path, _, rest = where.rpartition(":")
    path, _, line = path.rpartition(":")
    if not path or not line.isdigit() or not rest.isdigit():
        return ""
    return (SourceCache.line(path, int(line)) or "").strip()


def _ops_summary(ops: list[str]) -> str:
    """``['slice', 'slice', 'concat']`` -> ``'2x slice, concat'``; nothing -> ``'-'``."""
    counts = Counter(ops)
    return ", ".join(f"{n}x {op}" if n > 1 else op for op, n in counts.items()) or "-"


def rewrite_table(log: RewriteLog) -> Table:
    """One row per distinct (rule, location, replaced op, new ops), with how often it happened."""
    rows = Counter((rule, where, old, _ops_summary(new)) for rule, where, old, new in log.entries)
    table = Table(title=f"Rewrites ({len(log.entries)})", title_justify="left")
    for col in ("rule", "spec location", "source", "replaced", "into", "times"):
        table.add_column(col, justify="right" if col == "times" else "left")
    for (rule, where, old, new), times in rows.items():
        table.add_row(rule, where, _source_line(where), old, new, str(times))
    return table


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _change(before: int, after: int) -> str:
    if before == after:
        return "="
    if before == 0:
        return "new"
    return f"{100.0 * (after - before) / before:+.1f}%"


def cost_table(before: GraphCost, after: GraphCost) -> Table:
    """Nodes, parameters, buffers, constants, MACs and activation bytes before vs after."""
    table = Table(title="Cost before vs after lowering", title_justify="left")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    metrics = [
        ("nodes", before.nodes, after.nodes, None),
        ("parameters (elements)", before.params, after.params, None),
        ("buffers (elements)", before.buffers, after.buffers, None),
        ("constants (elements)", before.constants, after.constants, None),
        ("MACs", before.macs, after.macs, None),
        ("activation bytes", before.activation_bytes, after.activation_bytes, _human_bytes),
    ]
    for name, b, a, fmt in metrics:
        show = fmt or (lambda v: f"{v:,}")
        table.add_row(name, show(b), show(a), _change(b, a))
    return table


def ops_table(before: GraphCost, after: GraphCost) -> Table:
    """Node counts by op type before vs after."""
    table = Table(title="Ops by type", title_justify="left")
    for col in ("op", "before", "after"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for op in sorted(set(before.ops) | set(after.ops)):
        table.add_row(op, str(before.ops.get(op, 0)), str(after.ops.get(op, 0)))
    return table
