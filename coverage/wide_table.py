"""The ``--wide`` coverage table: every column in full (node names, reasons, rewrites), long cells folded by rich."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from netdsl.coverage.report import NodeCoverage

WIDE_WIDTH = 160
"""Columns of the wide table when the output is not a terminal (files, pipes, CI logs)."""
_MARKS = {"uncovered": "[red]✗[/red]", "assumed": "[yellow]~[/yellow]", "covered": "[green]✓[/green]"}


def render_wide(nodes: list[NodeCoverage], out: TextIO, title: str) -> None:
    """Print the wide table of ``nodes`` under ``title`` on ``out`` (the terminal's width, else 160 columns)."""
    console = Console(file=out)
    if not console.is_terminal:
        console = Console(file=out, width=WIDE_WIDTH)
    table = Table(title=escape(title))
    for column in ("#", "node", "op", "TensorRT layer", "", "level", "reason", "spec location", "suggested rewrite"):
        table.add_column(column, overflow="fold")
    for n in nodes:
        reason = "\n".join(n.reasons) if n.reasons else ("allowed by assumption" if n.assumed else "")
        where = n.where if n.location or n.doc else ""
        cells = (str(n.index), n.name, n.op, n.layer)
        table.add_row(*(escape(c) for c in cells), _MARKS[n.verdict], n.level,
                      *(escape(c) for c in (reason, where, n.rewrite or "")))
    console.print(table)
