"""``netdsl show SPEC --ir``: print the typed IR (every value with its concrete type)."""

from __future__ import annotations

import argparse

from netdsl.driver import add_spec_args, graph_from_args
from netdsl.printer import format_graph
from netdsl.verifier import verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print the typed IR of a spec")
    p.add_argument("spec", help=".net file")
    p.add_argument("--ir", action="store_true", help="print the IR text (the default view)")
    p.add_argument("--no-locations", action="store_true", help="omit the spec locations of nodes")
    add_spec_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    graph = graph_from_args(args)
    verify(graph)
    print(format_graph(graph, locations=not args.no_locations), end="")
    return 0
