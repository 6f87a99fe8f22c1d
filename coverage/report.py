"""The coverage report: per-node verdicts and graph-level violations, their counts per evidence level, JSON,
and the rich tables ``netdsl compile`` and ``netdsl coverage`` print."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from netdsl.coverage.profile import LEVELS, Profile

# --------------------------------------------------------------------------- report data


@dataclass
class NodeCoverage:
    """The verdict on one node."""

    index: int
    name: str
    op: str
    layer: str
    status: str  # the rule's status, or "unlisted"
    level: str  # the rule's evidence level (confirmed, evidenced, assumed), or "unlisted"
    covered: bool
    assumed: bool  # covered only because the profile assumes the op is allowed
    reasons: list[str] = field(default_factory=list)
    rewrite: str | None = None
    location: str | None = None  # spec span "file:line:col"
    block: str | None = None  # netdsl block path
    rules: list[str] = field(default_factory=list)  # netdsl rewrite rules that produced the node
    doc: str | None = None  # the node's doc_string
    sources: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """Best human location: spec span (and block), else doc string, else node name."""
        if self.location:
            return f"{self.location} ({self.block})" if self.block else self.location
        if self.doc:
            return self.doc.splitlines()[0]
        return self.block or self.name


@dataclass
class GraphViolation:
    """A whole-model rule broken by a graph input (no node to blame)."""

    check: str
    tensor: str
    message: str
    sources: list[str] = field(default_factory=list)


@dataclass
class CoverageReport:
    """Coverage of a model under a profile."""

    profile: str
    profile_path: str
    model: str
    nodes: list[NodeCoverage]
    graph_violations: list[GraphViolation]
    sources: dict[str, str]
    shape_inference_error: str | None = None

    @property
    def total(self) -> int:
        """Number of nodes checked."""
        return len(self.nodes)

    @property
    def covered_count(self) -> int:
        """Nodes the profile allows with every limit met."""
        return sum(n.covered for n in self.nodes)

    @property
    def uncovered_count(self) -> int:
        """Nodes that break a rule."""
        return self.total - self.covered_count

    @property
    def level_counts(self) -> dict[str, int]:
        """Covered nodes per evidence level of their rule (every level of :data:`LEVELS`, strongest first)."""
        counts = dict.fromkeys(LEVELS, 0)
        for n in self.nodes:
            if n.covered:
                counts[n.level] += 1
        return counts

    @property
    def assumed_count(self) -> int:
        """Covered nodes that rest on an assumption (rule status ``unknown``)."""
        return self.level_counts["assumed"]

    def assumed_rules(self) -> dict[str, int]:
        """The assumed op rules the covered nodes rely on, with how many nodes use each."""
        rules: dict[str, int] = {}
        for n in self.nodes:
            if n.covered and n.level == "assumed":
                rules[n.op] = rules.get(n.op, 0) + 1
        return rules

    @property
    def covered(self) -> bool:
        """Every node covered and no graph-level violation: the model fits the profile."""
        return self.uncovered_count == 0 and not self.graph_violations

    def violations(self) -> list[NodeCoverage]:
        """The nodes that are not covered, in graph order."""
        return [n for n in self.nodes if not n.covered]

    def violation_lines(self) -> list[str]:
        """One line per uncovered node (location, op, reasons, rewrite) and per graph-level violation."""
        lines = []
        for n in self.violations():
            line = f"{n.where}: {n.op} '{n.name}': {'; '.join(n.reasons)}"
            lines.append(f"{line} (rewrite: {n.rewrite})" if n.rewrite else line)
        lines += [f"graph: {v.message}" for v in self.graph_violations]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: summary, per-node verdicts, graph-level violations, source URLs."""
        return {
            "profile": self.profile,
            "profile_path": self.profile_path,
            "model": self.model,
            "summary": {
                "covered": self.covered_count,
                "total": self.total,
                "uncovered": self.uncovered_count,
                "assumed": self.assumed_count,
                "levels": self.level_counts,
                "graph_violations": len(self.graph_violations),
                "ok": self.covered,
            },
            "shape_inference_error": self.shape_inference_error,
            "nodes": [asdict(n) for n in self.nodes],
            "graph_violations": [asdict(v) for v in self.graph_violations],
            "sources": self.sources,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


# --------------------------------------------------------------------------- rendering


TABLE_WIDTH = 100
"""Columns of the default coverage table: one line per node, long texts as numbered footnotes."""

_MARKS = {"uncovered": "[red]✗[/red]", "assumed": "[yellow]~[/yellow]", "covered": "[green]✓[/green]"}


def _mark(n: NodeCoverage) -> str:
    return _MARKS["uncovered" if not n.covered else "assumed" if n.assumed else "covered"]


def _explanation(n: NodeCoverage) -> str:
    """The node's reasons and suggested rewrite as one text (empty for a covered node)."""
    text = "; ".join(n.reasons)
    return f"{text} (rewrite: {n.rewrite})" if text and n.rewrite else text


def render_coverage(report: CoverageReport, console: Console, violations_only: bool = False,
                    wide: bool = False) -> None:
    """Print the per-node table (all nodes, or only the uncovered ones) and the summary.

    The default table has one line per node and fits :data:`TABLE_WIDTH` columns: op, TensorRT layer,
    verdict, evidence level and spec location, with each distinct reason and rewrite as a numbered
    footnote below it. ``wide`` prints every column in full (node names, reasons, rewrites), folded."""
    nodes = [n for n in report.nodes if not (violations_only and n.covered)]
    title = escape(f"TensorRT coverage: {report.model} under profile '{report.profile}'")
    if wide:
        _render_wide(nodes, console, title)
    else:
        _render_compact(nodes, console, title)
    for v in report.graph_violations:
        detail = escape(f"({v.check}; {', '.join(v.sources)})")
        console.print(f"[red]✗ graph:[/red] {escape(v.message)} [dim]{detail}[/dim]")
    if report.shape_inference_error:
        console.print(f"[yellow]shape inference failed:[/yellow] {escape(report.shape_inference_error)}")
    console.print(summary_line(report, markup=True))


def assumed_rule_notes(report: CoverageReport, profile: Profile) -> list[str]:
    """One line per assumed op rule the model's covered nodes rely on: the op, its node count, the assumption."""
    lines = []
    for op, count in report.assumed_rules().items():
        rule = profile.rule_for(op)
        why = f": {rule.assumption}" if rule is not None and rule.assumption else ""
        lines.append(f"{op} ({count} node{'s' * (count != 1)}) is allowed by assumption{why}")
    return lines


def coverage_console(wide: bool) -> Console:
    """The console the table is printed on: :data:`TABLE_WIDTH` columns (less on a narrower terminal), or 160
    folded columns for ``wide``."""
    terminal = Console()
    if wide:
        return terminal if terminal.is_terminal else Console(width=160)
    return Console(width=min(TABLE_WIDTH, terminal.width) if terminal.is_terminal else TABLE_WIDTH)


def summary_line(report: CoverageReport, markup: bool = False) -> str:
    """``18/18 nodes covered: 5 confirmed, 13 evidenced, 0 assumed; 0 graph-level violation(s)``."""
    levels = ", ".join(f"{count} {level}" for level, count in report.level_counts.items())
    head = f"{report.covered_count}/{report.total} nodes covered"
    if markup:
        colour = "green" if report.covered else "red"
        head = f"[{colour}]{head}[/{colour}]"
    return f"{head}: {levels}; {len(report.graph_violations)} graph-level violation(s)"


def _short_location(location: str | None) -> str:
    """``file.net:12:9`` without the folders (the wide table and the JSON keep the full path)."""
    return os.path.basename(location) if location else ""


def _render_compact(nodes: list[NodeCoverage], console: Console, title: str) -> None:
    notes: dict[str, int] = {}
    rows = []
    for n in nodes:
        text = _explanation(n)
        ref = f"[{notes.setdefault(text, len(notes) + 1)}]" if text else ""
        rows.append((str(n.index), n.op, n.layer, n.level, _short_location(n.location), ref))
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    # Short columns keep their full width; the layer and the location give way (ellipsis) to fit the line.
    headers = ("#", "op", "TensorRT layer", "level", "spec location", "note")
    widths = [max([len(r[k]) for r in rows] + [len(h)]) for k, h in enumerate(headers)]
    widths[1] = min(widths[1], 22)
    # The layer takes what the other columns and the mark leave of the line: each of the 7 columns is padded by a
    # space on both sides but the outer ones, and separated by a space (the box's blank rule), edges included.
    layer_width = max(12, TABLE_WIDTH - (sum(widths) - widths[2]) - 1 - (2 * 7 - 2) - 8)
    table.add_column("#", no_wrap=True, min_width=widths[0], justify="right")
    table.add_column("op", no_wrap=True, min_width=widths[1], overflow="ellipsis")
    table.add_column("TensorRT layer", no_wrap=True, max_width=layer_width, overflow="ellipsis")
    table.add_column("", no_wrap=True, min_width=1)
    table.add_column("level", no_wrap=True, min_width=widths[3])
    table.add_column("spec location", no_wrap=True, overflow="ellipsis")
    table.add_column("note", no_wrap=True, min_width=widths[5])
    for (index, op, layer, level, location, ref), n in zip(rows, nodes):
        table.add_row(index, escape(op), escape(layer), _mark(n), level, escape(location), escape(ref))
    console.print(table)
    for text, number in notes.items():
        console.print(escape(f"[{number}] {text}"), soft_wrap=False)


def _render_wide(nodes: list[NodeCoverage], console: Console, title: str) -> None:
    table = Table(title=title)
    for column in ("#", "node", "op", "TensorRT layer", "", "level", "reason", "spec location", "suggested rewrite"):
        table.add_column(column, overflow="fold")
    for n in nodes:
        reason = "\n".join(n.reasons) if n.reasons else ("allowed by assumption" if n.assumed else "")
        where = n.where if n.location or n.doc else ""
        cells = (str(n.index), n.name, n.op, n.layer)
        table.add_row(*(escape(c) for c in cells), _mark(n), n.level,
                      *(escape(c) for c in (reason, where, n.rewrite or "")))
    console.print(table)
