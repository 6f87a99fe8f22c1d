"""Warnings for lowerings that make an op much bigger: located at the op, with the numbers.

A rewrite replaces one op by new nodes (:class:`netdsl.passes.base.RewriteSize` records both
sides). It is reported when

* **memory**: the largest activation it writes exceeds :data:`MEMORY_FACTOR` (2x) the largest
  activation the op read or wrote, and is larger than :data:`MEMORY_FLOOR` (4 MiB, below which
  a tensor fits the caches and costs little); e.g. an attention lowered as one broadcast product
  of the whole ``[B·h, d, Lq, Lk]`` tensor, ``d`` times the attention matrix;
* **nodes**: it creates more than :data:`NODE_LIMIT` (256) nodes, constants not counted; a
  node costs a kernel launch and a dispatch, whatever its size.

Ops whose rewrite only reshapes or splits them stay below both. A warning does not stop the
command; it names the spec location (with the source line), the rule, and the figures.
"""

from __future__ import annotations

import sys

from netdsl.diagnostics import Diagnostic, render
from netdsl.passes.base import RewriteLog, RewriteSize

MEMORY_FACTOR = 2.0
MEMORY_FLOOR = 4 << 20
NODE_LIMIT = 256


def mib(n: int) -> str:
    """``n`` bytes in MiB with one decimal (three below 0.1 MiB)."""
    v = n / (1 << 20)
    return f"{v:.1f} MiB" if v >= 0.1 else f"{v:.3f} MiB"


def growth_warning(size: RewriteSize) -> Diagnostic | None:
    """The warning for one rewrite, or None when it stays within the thresholds of the module docstring."""
    node = size.node
    grows = size.largest_after > max(MEMORY_FACTOR * size.largest_before, MEMORY_FLOOR)
    many = size.nodes_after > NODE_LIMIT
    if not grows and not many:
        return None
    found = []
    if grows:
        found.append(f"its largest activation from {mib(size.largest_before)} to {mib(size.largest_after)} "
                     f"({size.largest_after / max(size.largest_before, 1):.1f}x, over {MEMORY_FACTOR:g}x)")
    if many:
        found.append(f"one node into {size.nodes_after} (over {NODE_LIMIT})")
    return Diagnostic(f"{size.rule} grows {node.op} '{node.outputs[0]}': " + " and ".join(found), node.provenance.span,
                      chain=node.provenance.chain, severity="warning")


def growth_warnings(log: RewriteLog) -> list[Diagnostic]:
    """The warnings of the rewrites of ``log`` beyond the thresholds, in rewrite order; the rewrites of one
    spec location by one rule (instances of one block) give one warning, which counts the others."""
    first: dict[tuple[str, str], Diagnostic] = {}
    more: dict[tuple[str, str], int] = {}
    for size in log.sizes:
        warning = growth_warning(size)
        if warning is None:
            continue
        key = (size.rule, str(warning.span))
        if key in first:
            more[key] = more.get(key, 0) + 1
        else:
            first[key] = warning
    for key, count in more.items():
        first[key].notes.append(f"{count} more rewrite(s) of this op in other instances of its block")
    return list(first.values())


def print_growth_warnings(log: RewriteLog) -> None:
    """Render the :func:`growth_warnings` of ``log`` on stderr."""
    for warning in growth_warnings(log):
        print(render(warning), file=sys.stderr)
