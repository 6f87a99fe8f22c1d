"""Programmatic construction of typed IR graphs, with type inference on every op.

The elaborator builds graphs through this class; passes and tests use it too::

    b = GraphBuilder("G")
    x = b.input("x", TensorType("f32", (1, 8, 4, 4)))
    w = b.param("c.weight", TensorType("f32", (8, 8, 1, 1)), Init("uniform_fan_in", (("fan_in", 8),)))
    y = b.op("conv", [x, w], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    b.output(y)
    graph = b.graph
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netdsl.ir import Graph, Init, Node, Parameter, Provenance, TensorType
from netdsl.opdefs import infer_types


def typed_node(graph: Graph, op: str, inputs: Sequence[str], attrs: dict[str, Any], provenance: Provenance,
               hints: Sequence[str | None] | None = None, prefix: str = "") -> Node:
    """The node ``op(inputs) {attrs}``, its outputs fresh values of ``graph`` typed by :mod:`netdsl.opdefs`.

    Output k is named after ``prefix`` + ``hints[k]`` (the op name when there is no hint). The
    caller places the node (the builder appends it, a rewrite collects it); raises OpTypeError on
    bad types, before anything is added to ``graph``.
    """
    out_types = infer_types(op, [graph.type_of(i) for i in inputs], attrs)
    outs = []
    for k, t in enumerate(out_types):
        hint = hints[k] if hints and k < len(hints) and hints[k] else op
        name = graph.fresh_name(prefix + hint)
        graph.values[name] = t
        outs.append(name)
    return Node(op, list(inputs), outs, dict(attrs), provenance)


class GraphBuilder:
    """Appends typed nodes to a :class:`Graph`; op types are inferred via :mod:`netdsl.opdefs`."""

    def __init__(self, name: str):
        self.graph = Graph(name)

    def input(self, name: str, type_: TensorType) -> str:
        """Declare a graph input."""
        self.graph.values[name] = type_
        self.graph.inputs.append(name)
        return name

    def param(self, name: str, type_: TensorType, init: Init, kind: str = "param",
              provenance: Provenance | None = None) -> str:
        """Declare a parameter (or buffer) by its full hierarchical name."""
        if name in self.graph.params or name in self.graph.values:
            raise ValueError(f"duplicate parameter name {name!r}")
        self.graph.params[name] = Parameter(name, type_, init, kind, provenance or Provenance())
        return name

    def op(self, op: str, inputs: list[str], provenance: Provenance | None = None, name: str | None = None,
           **attrs: Any) -> str:
        """Append ``op`` and return its (single) output name."""
        return self.op_multi(op, inputs, provenance, [name] if name else None, **attrs)[0]

    def op_multi(self, op: str, inputs: list[str], provenance: Provenance | None = None,
                 names: list[str] | None = None, **attrs: Any) -> list[str]:
        """Append ``op`` and return all its output names (raises OpTypeError on bad types)."""
        node = typed_node(self.graph, op, inputs, attrs, provenance or Provenance(), names)
        self.graph.nodes.append(node)
        return node.outputs

    def output(self, name: str) -> None:
        """Mark a value as a graph output."""
        self.graph.outputs.append(name)
