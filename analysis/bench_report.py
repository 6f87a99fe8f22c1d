"""The benchmark's output: a rich table of latencies, ratios, sizes and coverage, and a latency-vs-batch plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from netdsl.atomic_write import atomic_paths

if TYPE_CHECKING:
    from netdsl.analysis.model_facts import CoverageSummary
from netdsl.analysis.timing import BenchResult, BenchTable, size_fields


def _ms(value: float) -> str:
    return f"{value:.4g}"


def _count(value: int | None) -> str:
    """``72``, ``41.6k``, ``27.64M``, ``4.07G``; ``-`` when unknown."""
    if value is None:
        return "-"
    for scale, unit, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if value >= scale:
            return f"{value / scale:.{digits}f}{unit}"
    return str(value)


def _coverage_cell(summary: CoverageSummary | None) -> str:
    if summary is None:
        return "-"
    colour = "green" if summary.deployable else "red"
    return f"[{colour}]{escape(summary.text)}[/{colour}]"


def render_bench(table: BenchTable, console: Console) -> None:
    """Print one row per model: its size and coverage (when known), then per batch the median and p90
    latency, images/s and the ratio to the baseline; then why each model a profile refuses is refused."""
    title = f"latency, backend {table.backend} ({table.runs} runs after {table.warmup} warm-up, interleaved)"
    if table.baseline:
        title += (f"; x = median latency / {table.baseline}'s at the same batch, with its 95% bootstrap interval "
                  "over paired runs")
    rich_table = Table(title=escape(title))
    rich_table.add_column("model")
    with_size = any(r.size is not None for r in table.results)
    profiles = list(dict.fromkeys(p for r in table.results for p in r.coverage))
    if with_size:
        for column in ("params", "MACs/frame", "bytes/frame"):
            rich_table.add_column(column, justify="right")
    for profile in profiles:
        rich_table.add_column(escape(profile), justify="right")
    for batch in table.batches:
        rich_table.add_column(f"batch {batch}", justify="right")
    for result in table.results:
        cells = []
        if with_size:
            size = size_fields(result.size)
            macs, compiled = _count(size["macs"]), _count(size["macs_compiled"])
            if size["macs_compiled"] is not None and compiled != macs:  # only a difference the table shows
                macs += f"\n{compiled} compiled"
            cells += [_count(size["params"]), macs, _count(size["bytes_per_frame"])]
        cells += [_coverage_cell(result.coverage.get(profile)) for profile in profiles]
        for batch in table.batches:
            row = result.row(batch)
            if row is None or row.error:
                cells.append(f"[red]{escape(row.error if row else 'not run')}[/red]")
                continue
            cell = f"{_ms(row.median_ms)} ms\np90 {_ms(row.p90_ms)}\n{row.images_per_s:.1f} img/s"
            if row.latency_vs_baseline is not None and result.name != table.baseline:
                cell += f"\n{row.latency_vs_baseline:.2f}x"
                if row.ratio_ci95 is not None:
                    cell += f"\n({row.ratio_ci95[0]:.2f}-{row.ratio_ci95[1]:.2f})"
            cells.append(cell)
        name = f"{result.name} (baseline)" if result.name == table.baseline else result.name
        rich_table.add_row(escape(name), *cells)
    console.print(rich_table)
    _render_refusals(table, console)


def _render_refusals(table: BenchTable, console: Console) -> None:
    """Per model and profile that is not 100%: which nodes are refused and why."""
    for result in table.results:
        for profile, summary in result.coverage.items():
            if summary.error is not None:
                console.print(f"[red]{escape(result.name)}: not checked under {escape(profile)}:[/red] "
                              f"{escape(summary.error)}")
            elif not summary.deployable:
                console.print(f"[red]{escape(result.name)} is not deployable under {escape(profile)}:[/red] "
                              f"{summary.total - summary.covered} of {summary.total} nodes refused")
                for line in summary.reason_lines():
                    console.print(f"  {escape(line)}")


def _plot_label(result: BenchResult, baseline: str | None) -> str:
    """The model's name, marked as the baseline, with its coverage per profile."""
    label = f"{result.name} (baseline)" if result.name == baseline else result.name
    coverage = ", ".join(f"{profile} {summary.text}" for profile, summary in result.coverage.items())
    return f"{label}; {coverage}" if coverage else label


def plot_bench(table: BenchTable, path: str | Path) -> None:
    """Save a latency-vs-batch plot (one line per model, median with p90 whiskers; the legend gives each
    model's coverage per profile) as an image.

    Uses a bare matplotlib Figure (Agg canvas), leaving pyplot's global backend alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for result in table.results:
        rows = [r for r in result.rows if r.median_ms is not None and r.p90_ms is not None]
        if not rows:
            continue
        spread = [r.p90_ms - r.median_ms for r in rows]
        ax.errorbar([r.batch for r in rows], [r.median_ms for r in rows], yerr=[[0] * len(rows), spread],
                    marker="o", capsize=3, label=_plot_label(result, table.baseline))
    ax.set_xscale("log", base=2)
    ax.set_xticks(table.batches, [str(b) for b in table.batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"latency vs batch ({table.backend})")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_paths(path) as (staged,):
        fig.savefig(staged)
