"""Shuffle cleanup: drop data movement that does nothing, merge chains that do one thing.

* ``identity``, a ``reshape`` to the same shape, a ``transpose`` by the identity permutation, a
  ``slice`` of a whole axis, a one-input ``concat`` and a one-piece ``split`` are their input;
* a ``transpose`` that only moves axes of length 1 keeps the element order: it is a reshape;
* ``reshape(reshape(x))`` is one reshape of ``x`` (row-major reshapes compose);
* ``transpose(transpose(x, p), q)`` is ``transpose(x, r)`` with ``r[i] = p[q[i]]``, or ``x``.

Lowerings leave such chains behind (e.g. attention split into heads and merged back). The
inner node of a merged chain goes when nothing else reads it. A graph output that would become
another graph output, input or parameter keeps its copy (an ONNX output needs its own name).
"""

from __future__ import annotations

from netdsl.ir import Graph, Node
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "cleanup_shuffles"


def is_noop(graph: Graph, node: Node) -> bool:
    """True when ``node`` returns its input unchanged."""
    if not node.inputs:
        return False
    x = graph.type_of(node.inputs[0])
    a = node.attrs
    if node.op == "identity":
        return True
    if node.op == "reshape":
        return tuple(a["shape"]) == x.shape
    if node.op == "transpose":
        return list(a["perm"]) == list(range(x.rank))
    if node.op == "slice":
        return a["step"] == 1 and slice(a["start"], a["end"]).indices(x.shape[a["axis"]])[:2] == (
            0, x.shape[a["axis"]])
    if node.op in ("concat", "split"):
        return len(node.inputs) == 1 and len(node.outputs) == 1
    return False


def can_alias(g: Graph, node: Node, value: str) -> bool:
    """Whether ``node``'s output may simply become ``value`` (see the module docstring)."""
    return node.outputs[0] not in g.outputs or not (value in g.inputs or value in g.outputs or g.is_param(value))


def keeps_layout(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """True when transposing ``shape`` by ``perm`` keeps the row-major element order (only length-1 axes move)."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _as_reshape(graph: Graph, node: Node) -> Node:
    """``node`` as a reshape if it is a transpose that keeps the element order, else ``node``."""
    if node.op != "transpose" or not keeps_layout(graph.type_of(node.inputs[0]).shape, tuple(node.attrs["perm"])):
        return node
    return Node("reshape", node.inputs, node.outputs, {"shape": graph.values[node.outputs[0]].shape})


def _merge_chain(node: Node, em: Emitter) -> Node | None:
    """``node`` re-expressed on the inner node's input when both are reshapes or both transposes."""
    inner = em.producer(node.inputs[0]) if node.op in ("reshape", "transpose") else None
    if inner is None or inner.op != node.op:
        return None
    em.absorb(inner)
    if node.op == "reshape":
        return Node("reshape", [inner.inputs[0]], node.outputs, {"shape": tuple(node.attrs["shape"])})
    perm = tuple(inner.attrs["perm"][q] for q in node.attrs["perm"])
    return Node("transpose", [inner.inputs[0]], node.outputs, {"perm": perm})


def _cleanup(node: Node, em: Emitter) -> list[str] | None:
    current = _as_reshape(em.graph, node)
    current = _merge_chain(current, em) or current
    if is_noop(em.graph, current) and can_alias(em.graph, node, current.inputs[0]):
        return [current.inputs[0]]
    if current is node:
        return None
    return [em.op(current.op, current.inputs, **current.attrs)]


def _post(graph: Graph) -> list[str]:
    producers = graph.producers()
    out = []
    for n in graph.nodes:
        inner = producers.get(n.inputs[0]) if n.inputs else None
        if n.op in ("reshape", "transpose") and inner is not None and inner.op == n.op:
            out.append(f"{n.op} node {n.outputs[0]} follows another {n.op}")
        elif _as_reshape(graph, n) is not n:
            out.append(f"transpose node {n.outputs[0]} only moves axes of length 1")
        elif is_noop(graph, n) and can_alias(graph, n, n.inputs[0]):
            out.append(f"{n.op} node {n.outputs[0]} does nothing")
    return out


PASS = node_pass(RULE, "cleanup", _cleanup, __doc__ or "", post=_post,
                 matches=("identity", "reshape", "transpose", "slice", "concat", "split"), repeat=True)
