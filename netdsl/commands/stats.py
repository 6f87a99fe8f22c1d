"""``netdsl stats SPEC``: parameters, MACs, activation memory and memory traffic per frame, per block."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from netdsl.driver import add_spec_args, graph_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="parameters, MACs and memory traffic per frame, per block and total")
    p.add_argument("spec", help=".net file")
    p.add_argument("--depth", type=int, default=2, help="block-path segments to group by (default 2)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    add_spec_args(p)
    p.set_defaults(run=run)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from netdsl.atomic_write import atomic_write_text
    from netdsl.traffic import graph_stats

    graph = graph_from_args(args)
    stats = graph_stats(graph, args.depth)
    data = stats.to_json()
    table = Table(title=f"{graph.name} (per frame; batch {stats.batch})")
    for col in ("block", "params", "MMACs", "activations MB", "traffic MB"):
        table.add_column(col, justify="left" if col == "block" else "right")
    for b in data["blocks"]:
        table.add_row(b["name"], f"{b['params']:,}", _mb(b["macs"]), _mb(b["activation_bytes"]),
                      _mb(b["bytes_per_frame"]))
    table.add_row("total", f"{data['params']:,}", _mb(data["macs"]), _mb(data["activation_bytes"]),
                  _mb(data["bytes_per_frame"]), style="bold")
    Console(width=120).print(table)
    print(f"params: {data['params']:,}  MACs/frame: {data['macs']:,}  bytes/frame: {data['bytes_per_frame']:,}")
    if args.json:
        atomic_write_text(args.json, json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
