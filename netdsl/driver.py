"""From command-line arguments to the library pipeline's plain arguments (:mod:`netdsl.api`).

Shared by every command: ``--entry``, ``--set KEY=VALUE``, ``--input NAME=SHAPE``, ``--lib DIR``,
and for the commands that lower a spec ``--weights``, ``--seed``, ``--passes``, ``--print-after``
and ``--opset``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.ir import Graph

if TYPE_CHECKING:
    import onnx

    from netdsl.passes.pipeline import PipelineResult


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The flags every spec-reading command shares."""
    p.add_argument("--entry", metavar="NAME", help="block or model to build (default: the file's last model)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="set a block/model parameter (int, float, true/false, or a comma list like 1,1,1,1)")
    p.add_argument("--input", metavar="NAME=SHAPE", action="append", default=[], dest="inputs",
                   help="bind an input's shape, e.g. x=2x64x14x14")
    p.add_argument("--lib", metavar="DIR", action="append", default=[], type=Path,
                   help="extra folder to search for imports")


def parse_value(text: str) -> Any:
    """A --set value: bool, int, float, or a comma-separated list of ints/floats."""
    t = text.strip()
    if t in ("true", "false"):
        return t == "true"
    if "," in t or t.startswith("["):
        items = [s for s in t.strip("[]").split(",") if s.strip()]
        return [parse_value(s) for s in items]
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["a=1", "b=1,2"]`` -> ``{"a": 1, "b": [1, 2]}``; located errors for bad flags."""
    out: dict[str, Any] = {}
    for s in sets:
        key, eq, val = s.partition("=")
        if not eq or not key.strip() or not val.strip():
            raise NetdslError(Diagnostic(f"--set expects KEY=VALUE, found '{s}'"))
        out[key.strip()] = parse_value(val)
    return out


def parse_inputs(inputs: list[str]) -> dict[str, tuple[int, ...]]:
    """``["x=2x64x14x14"]`` -> ``{"x": (2, 64, 14, 14)}``."""
    out: dict[str, tuple[int, ...]] = {}
    for s in inputs:
        name, eq, shape = s.partition("=")
        try:
            dims = tuple(int(d) for d in shape.lower().replace(",", "x").split("x"))
        except ValueError:
            dims = ()
        if not eq or not name.strip() or not dims or min(dims) < 1:
            raise NetdslError(Diagnostic(f"--input expects NAME=SHAPE like x=2x64x14x14, found '{s}'"))
        out[name.strip()] = dims
    return out


def load_graph(spec: str | Path, entry: str | None = None, sets: list[str] | None = None,
               inputs: list[str] | None = None, lib: list[Path] | None = None) -> Graph:
    """:func:`netdsl.api.load` with command-line style ``--set`` and ``--input`` strings."""
    from netdsl import api

    return api.load(spec, entry, parse_sets(sets or []), parse_inputs(inputs or []), lib)


def graph_from_args(args: argparse.Namespace) -> Graph:
    """:func:`load_graph` with the shared flags of :func:`add_spec_args`."""
    return load_graph(args.spec, args.entry, args.sets, args.inputs, args.lib)


def lower_from_args(args: argparse.Namespace, target: str, graph: Graph | None = None) -> PipelineResult:
    """:func:`netdsl.api.lower` of the spec in ``args`` (unless its ``graph`` is given) with ``--weights``
    or ``--seed``, and ``--passes`` and ``--print-after`` where the command has them."""
    from netdsl import api

    graph = graph_from_args(args) if graph is None else graph
    passes = getattr(args, "passes", None)
    weights = getattr(args, "weights", None)
    if getattr(args, "dtype", "float32") == "float16":
        weights = float16_held_weights(graph, weights, getattr(args, "seed", 0))
    return api.lower(graph, target, weights, getattr(args, "seed", 0), consume_weights=True,
                     passes=[p.strip() for p in passes.split(",") if p.strip()] if passes else None,
                     print_after=getattr(args, "print_after", None))


def onnx_from_args(args: argparse.Namespace, target: str) -> onnx.ModelProto:
    """The ONNX model of the spec in ``args`` lowered for ``target`` (:func:`lower_from_args`, then
    :func:`netdsl.api.emit_onnx` at ``--opset``)."""
    from netdsl import api

    return api.emit_onnx(lower_from_args(args, target), target, getattr(args, "opset", 17))


def float16_held_weights(graph: Graph, path: Path | None, seed: int) -> dict:
    """Weights from ``path`` or the seeded initialisation, held in float16 as they are drawn or loaded
    (:mod:`netdsl.float16_weights`): a float16 model's compile never holds them in float32 all at once."""
    from netdsl import api
    from netdsl.float16_weights import Float16Weights, held
    from netdsl.initializers import initial_weights

    if path is None:
        return Float16Weights.taking(initial_weights(graph, seed, hold=held))
    return Float16Weights.taking(api.read_weights(path, graph))
