"""``netdsl check SPEC``: parse, resolve imports, then check every block of the file and of its imports.

Every block's names are resolved (:mod:`netdsl.resolve`), used by the entry or not; the entry is
elaborated and type-checked, and so is every other block or model that can be built on its own
(all parameters defaulted, every input dim given). A file of blocks with no model and no
``--entry`` (a library such as ``specs/models/common.net``) is checked the same way, without an entry.
"""

from __future__ import annotations

import argparse

from netdsl.driver import add_spec_args, parse_inputs, parse_sets
from netdsl.elaborate import elaborate_program
from netdsl.loader import load_program
from netdsl.resolve import resolve_program, standalone
from netdsl.verifier import verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="type-check a spec and every block it defines or imports (0: well-formed)")
    p.add_argument("spec", help=".net file")
    add_spec_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    program = load_program(args.spec, args.lib)
    library = args.entry is None and not any(b.kind == "model" for b in program.main.blocks) \
        and len(program.main.blocks) > 1
    entry = None if library else program.entry(args.entry)
    summary = ""
    if entry is not None:
        graph = elaborate_program(program, entry.name, parse_sets(args.sets), parse_inputs(args.inputs))
        verify(graph)
        n_params = sum(p.type.numel for p in graph.params.values() if p.kind == "param")
        outs = ", ".join(f"{o}: {graph.values[o]}" for o in graph.outputs)
        summary = f"{graph.name}: {len(graph.nodes)} ops, {n_params:,} parameters -> {outs}; "
    resolve_program(program)  # after the entry, whose errors come with their instantiation chain
    others = [b for sf in program.files for b in sf.blocks if b is not entry and standalone(b)]
    for block in others:
        verify(elaborate_program(program, block.name))
    n_blocks = sum(len(sf.blocks) for sf in program.files)
    print(f"ok: {summary}{n_blocks} blocks resolved, {len(others) + (entry is not None)} type-checked")
    return 0
