"""Common-subexpression elimination: nodes with the same op, inputs and attributes are computed once.

Every IR op is pure, so two nodes that agree on op, (already merged) inputs and attributes give
the same values; the later one is dropped and its readers use the earlier one's outputs. Equal
constants (same dtype, shape and bytes) merge too, e.g. the one-hot kernels of several shifts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from netdsl.ir import Graph, Node
from netdsl.passes.base import EVERY_OP, Pass, RewriteLog
from netdsl.passes.rewriter import Emitter, rewrite_nodes

RULE = "cse"


def _frozen(value: Any) -> Any:
    """A hashable stand-in for an attribute value (arrays by dtype, shape and content digest)."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return ("array", str(data.dtype), data.shape, hashlib.sha256(data.tobytes()).hexdigest())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def node_key(node: Node) -> tuple[Any, ...]:
    """What makes two nodes compute the same values: op, inputs and attributes."""
    return node.op, tuple(node.inputs), _frozen(node.attrs)


def _run(graph: Graph, log: RewriteLog) -> Graph:
    seen: dict[tuple[Any, ...], list[str]] = {}

    def merge(node: Node, em: Emitter) -> list[str] | None:
        key = node_key(node)
        if key in seen:
            return seen[key]
        seen[key] = node.outputs
        return None

    return rewrite_nodes(graph, RULE, log, merge, EVERY_OP)


def _post(graph: Graph) -> list[str]:
    first: dict[tuple[Any, ...], str] = {}
    out = []
    for n in graph.nodes:
        key = node_key(n)
        if key in first:
            out.append(f"{n.op} node {n.outputs[0]} repeats {first[key]}")
        first.setdefault(key, n.outputs[0])
    return out


PASS = Pass(RULE, "optimize", _run, (__doc__ or "").strip(), post=_post, matches=EVERY_OP)
