"""A static cost model of IR graphs: ops by type, parameter and constant sizes, MACs, activation bytes.

MACs (multiply-accumulates) are counted for the dense ops only, which dominate:

* ``conv``: ``B * Co * Ho * Wo * (Ci / groups) * kh * kw``;
* ``linear``: output elements times the input width; ``matmul``: output elements times the
  contracted length;
* ``attention``: ``B * h * Lq * Lk * (d + dv)`` (logits, then the weighted sum of values);
* ``local_attention``: ``2 * B * C * Ho * Wo * kernel^2`` (the same two products per window).

Elementwise, normalisation, resize and data-movement ops count 0 MACs. Activation bytes are the
sizes of all values computed at run time (every node output except ``const`` nodes, whose
elements are counted as constants), i.e. an upper bound on the memory traffic of writing them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node


@dataclass
class GraphCost:
    """The cost summary of one graph."""

    ops: Counter[str] = field(default_factory=Counter)
    params: int = 0  # elements of trainable parameters
    buffers: int = 0  # elements of non-trainable buffers
    constants: int = 0  # elements held by const nodes
    macs: int = 0
    activation_bytes: int = 0

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())


def node_macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates of one node (0 for the ops outside the dense set; see the module docstring)."""
    out = graph.values[node.outputs[0]]
    if node.op == "conv":
        w = graph.type_of(node.inputs[1])
        return out.numel * w.shape[1] * w.shape[2] * w.shape[3]
    if node.op == "linear":
        return out.numel * graph.type_of(node.inputs[0]).shape[-1]
    if node.op == "matmul":
        return out.numel * graph.type_of(node.inputs[0]).shape[-1]
    if node.op == "attention":
        b, h, lq, d = graph.type_of(node.inputs[0]).shape
        lk, dv = graph.type_of(node.inputs[2]).shape[2:]
        return b * h * lq * lk * (d + dv)
    if node.op == "local_attention":
        return 2 * out.numel * node.attrs["kernel"] ** 2
    return 0


def _bytes(graph: Graph, value: str) -> int:
    t = graph.values[value]
    return t.numel * np.dtype(NP_DTYPES[t.dtype]).itemsize


def graph_cost(graph: Graph) -> GraphCost:
    """Ops by type, parameter/buffer/constant elements, MACs and activation bytes of ``graph``."""
    cost = GraphCost()
    for p in graph.params.values():
        if p.trainable:
            cost.params += p.type.numel
        else:
            cost.buffers += p.type.numel
    for node in graph.nodes:
        cost.ops[node.op] += 1
        cost.macs += node_macs(graph, node)
        if node.op == "const":
            cost.constants += math.prod(np.shape(node.attrs["value"]))
        else:
            cost.activation_bytes += sum(_bytes(graph, o) for o in node.outputs)
    return cost
