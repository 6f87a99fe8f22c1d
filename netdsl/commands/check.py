"""``netdsl check SPEC``: parse, resolve imports, elaborate and type-check."""

from __future__ import annotations

import argparse

from netdsl.driver import add_spec_args, graph_from_args
from netdsl.verifier import verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="type-check a spec (exit 0 when it is well-formed)")
    p.add_argument("spec", help=".net file")
    add_spec_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    graph = graph_from_args(args)
    verify(graph)
    n_params = sum(p.type.numel for p in graph.params.values() if p.kind == "param")
    outs = ", ".join(f"{o}: {graph.values[o]}" for o in graph.outputs)
    print(f"ok: {graph.name}: {len(graph.nodes)} ops, {n_params:,} parameters -> {outs}")
    return 0
