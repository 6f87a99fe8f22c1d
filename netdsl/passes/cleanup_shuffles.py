"""Shuffle cleanup: drop data movement that does nothing, merge chains that do one thing.

* ``identity``, a ``reshape`` to the same shape, a ``transpose`` by the identity permutation, a
  ``slice`` of a whole axis, a one-input ``concat`` and a one-piece ``split`` are their input;
* a ``transpose`` that only moves axes of length 1 keeps the element order: it is a reshape;
* ``reshape(reshape(x))`` is one reshape of ``x`` (row-major reshapes compose);
* ``transpose(transpose(x, p), q)`` is ``transpose(x, r)`` with ``r[i] = p[q[i]]``, or ``x``;
* a ``concat`` of adjacent pieces of one value along the concat axis (unit-step slices, in order) is
  one slice of it, or the value; also when every piece is reshaped alike, splitting only that axis
  (the axes before it unchanged, the same axes after it): then it is the slice, reshaped. So
  ``concat([q.reshape(B, h, d, HW), k.reshape(...), v.reshape(...)], 1)`` of the channel slices
  ``q, k, v`` of one merged projection (``merge_sibling_convs``; ACmix's ``fc`` input) is a view of that
  projection, not a copy.

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


def _slice_piece(em: Emitter, value: str) -> tuple[Node | None, Node] | None:
    """(the reshape of ``value``, if any, and the unit-step slice under it), or None."""
    node = em.producer(value)
    reshape = node if node is not None and node.op == "reshape" else None
    if reshape is not None:
        node = em.producer(reshape.inputs[0])
    if node is None or node.op != "slice" or node.attrs["step"] != 1:
        return None
    return reshape, node


def _joined_slices(node: Node, em: Emitter) -> list[str] | None:
    """A concat of adjacent slices of one value (see the module docstring) as one slice, reshaped if they were."""
    g = em.graph
    pieces = [_slice_piece(em, name) for name in node.inputs]
    if len(pieces) < 2 or any(p is None for p in pieces):
        return None
    source = pieces[0][1].inputs[0]
    shape = g.type_of(source).shape
    axis = pieces[0][1].attrs["axis"] % len(shape)
    bounds = []
    for reshape, piece in pieces:
        start, end, _ = slice(piece.attrs["start"], piece.attrs["end"]).indices(shape[axis])
        if piece.inputs[0] != source or piece.attrs["axis"] % len(shape) != axis or (reshape is None) != (
                pieces[0][0] is None):
            return None
        bounds.append((start, end))
    if any(end != start for (_, end), (start, _) in zip(bounds, bounds[1:])):
        return None
    out_shape = g.type_of(node.outputs[0]).shape
    if node.attrs["axis"] % len(out_shape) != axis:
        return None
    reshaped = pieces[0][0] is not None
    if reshaped:  # each reshape keeps the axes before ``axis`` and has the same axes after it
        views = [g.type_of(r.outputs[0]).shape for r, _ in pieces]
        if not all(v[:axis] == shape[:axis] and v[axis + 1:] == views[0][axis + 1:] for v in views):
            return None
    whole = bounds[0][0] == 0 and bounds[-1][1] == shape[axis]
    if whole and not reshaped and not can_alias(g, node, source):
        return None
    for reshape, piece in pieces:
        em.absorb(piece)
        if reshape is not None:
            em.absorb(reshape)
    value = source if whole else em.op("slice", [source], axis=axis, start=bounds[0][0], end=bounds[-1][1], step=1)
    return [em.op("reshape", [value], shape=out_shape)] if reshaped else [value]


def _cleanup(node: Node, em: Emitter) -> list[str] | None:
    joined = _joined_slices(node, em) if node.op == "concat" else None
    if joined is not None:
        return joined
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
