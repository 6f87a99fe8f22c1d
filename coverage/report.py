"""The coverage report: per-node verdicts and graph-level violations, their counts per evidence level, JSON,
and the table ``netdsl compile`` and ``netdsl coverage`` print.

The default table is plain text written here: it is on the path of every TensorRT ``netdsl compile``, and
rich's import and layout cost about as much as the rest of the command's own work. The ``--wide`` table
(folded cells) is rich's (:mod:`netdsl.coverage.wide_table`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

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
    def verdict(self) -> str:
        """``covered``, ``assumed`` (covered by an assumed rule) or ``uncovered``."""
        return "uncovered" if not self.covered else "assumed" if self.assumed else "covered"

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

_MARKS = {"uncovered": ("✗", "31"), "assumed": ("~", "33"), "covered": ("✓", "32")}
"""Each verdict's mark and its ANSI colour (red, yellow, green), used when the output is a terminal."""
_GAP = "  "
"""Between two columns of the compact table."""


def _paint(text: str, colour: str, on: bool) -> str:
    """``text`` in an ANSI colour (``"31"``, ``"2"`` for dim, ...) when ``on``."""
    return f"\033[{colour}m{text}\033[0m" if on else text


def _explanation(n: NodeCoverage) -> str:
    """The node's reasons and suggested rewrite as one text (empty for a covered node)."""
    text = "; ".join(n.reasons)
    return f"{text} (rewrite: {n.rewrite})" if text and n.rewrite else text


def _is_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def render_coverage(report: CoverageReport, out: TextIO | None = None, violations_only: bool = False,
                    wide: bool = False) -> None:
    """Print the per-node table (all nodes, or only the uncovered ones) and the summary on ``out`` (stdout).

    The default table has one line per node and fits :data:`TABLE_WIDTH` columns (fewer on a narrower
    terminal): op, TensorRT layer, verdict, evidence level and spec location, with each distinct reason and
    rewrite as a numbered footnote below it. ``wide`` prints every column in full (node names, reasons,
    rewrites), folded. Verdicts are coloured on a terminal."""
    out = sys.stdout if out is None else out
    colour = _is_terminal(out) and "NO_COLOR" not in os.environ
    nodes = [n for n in report.nodes if not (violations_only and n.covered)]
    title = f"TensorRT coverage: {report.model} under profile '{report.profile}'"
    if wide:
        # rich folds the wide table's long cells; only --wide pays for importing it.
        from netdsl.coverage.wide_table import render_wide

        render_wide(nodes, out, title)
    else:
        width = min(TABLE_WIDTH, shutil.get_terminal_size().columns) if _is_terminal(out) else TABLE_WIDTH
        _render_compact(nodes, out, title, width, colour)
    for v in report.graph_violations:
        detail = _paint(f"({v.check}; {', '.join(v.sources)})", "2", colour)
        print(f"{_paint('✗ graph:', '31', colour)} {v.message} {detail}", file=out)
    if report.shape_inference_error:
        print(f"{_paint('shape inference failed:', '33', colour)} {report.shape_inference_error}", file=out)
    print(summary_line(report, colour), file=out)


def assumed_rule_notes(report: CoverageReport, profile: Profile) -> list[str]:
    """One line per assumed op rule the model's covered nodes rely on: the op, its node count, the assumption."""
    lines = []
    for op, count in report.assumed_rules().items():
        rule = profile.rule_for(op)
        why = f": {rule.assumption}" if rule is not None and rule.assumption else ""
        lines.append(f"{op} ({count} node{'s' * (count != 1)}) is allowed by assumption{why}")
    return lines


def summary_line(report: CoverageReport, colour: bool = False) -> str:
    """``18/18 nodes covered: 5 confirmed, 13 evidenced, 0 assumed; 0 graph-level violation(s)``."""
    levels = ", ".join(f"{count} {level}" for level, count in report.level_counts.items())
    head = _paint(f"{report.covered_count}/{report.total} nodes covered", "32" if report.covered else "31", colour)
    return f"{head}: {levels}; {len(report.graph_violations)} graph-level violation(s)"


def _short_location(location: str | None) -> str:
    """``file.net:12:9`` without the folders (the wide table and the JSON keep the full path)."""
    return os.path.basename(location) if location else ""


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


def _render_compact(nodes: list[NodeCoverage], out: TextIO, title: str, width: int, colour: bool) -> None:
    notes: dict[str, int] = {}
    rows = []
    for n in nodes:
        text = _explanation(n)
        ref = f"[{notes.setdefault(text, len(notes) + 1)}]" if text else ""
        rows.append([str(n.index), n.op, n.layer, _MARKS[n.verdict][0], n.level, _short_location(n.location), ref])
    headers = ["#", "op", "TensorRT layer", "", "level", "spec location", "note"]
    widths = [max([len(r[k]) for r in rows] + [len(h)]) for k, h in enumerate(headers)]
    widths[1] = min(widths[1], 22)
    # The layer, then the location, give way (ellipsis) until the line fits; the short columns keep their width.
    for k, least in ((2, 12), (5, 13)):
        excess = sum(widths) + len(_GAP) * (len(widths) - 1) - width
        if excess > 0:
            widths[k] = max(least, widths[k] - excess)
    print(title, file=out)
    print(file=out)
    cells = [h.rjust(w) if k == 0 else h.ljust(w) for k, (h, w) in enumerate(zip(headers, widths))]
    print(_GAP.join(cells).rstrip(), file=out)
    print("─" * (sum(widths) + len(_GAP) * (len(widths) - 1)), file=out)
    for row, n in zip(rows, nodes):
        cells = [_fit(c, w) for c, w in zip(row, widths)]
        cells = [cells[0].rjust(widths[0])] + [c.ljust(w) for c, w in zip(cells[1:], widths[1:])]
        cells[3] = _paint(cells[3], _MARKS[n.verdict][1], colour)
        print(_GAP.join(cells).rstrip(), file=out)
    print(file=out)
    for text, number in notes.items():
        print(textwrap.fill(f"[{number}] {text}", width, break_long_words=False, break_on_hyphens=False), file=out)
