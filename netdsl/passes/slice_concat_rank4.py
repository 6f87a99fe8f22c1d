"""``slice``, ``split`` and ``concat`` along an axis DLA refuses -> the same op along axis 1 of a rank-4 view.

DLA slices and splits rank-4 tensors only and never along the first (batch) axis, and
concatenates along the channel axis only (the third from the end; ``trt-dla.toml``). Any of
these ops along axis ``k`` of a shape ``[d0, ..., dn]`` is the same op along axis 1 of the
row-major view ``[P, K, A1, A2]``: P the axes before ``k`` merged (the view's batch), K = dk and
A1 * A2 the axes after it (one axis, or two when longer than DLA's 8192; ``rank4_view.axis_view``).
So a token-sequence split ``[B, T, 3C] -> 3 x [B, T, C]`` becomes a channel split of
``[B*T, 3C, 1, 1]``, a concat of rows of ``[N, C, H, W]`` a channel concat of ``[N*C, H, W, 1]``
and a slice of the batch axis a slice of ``[1, N, ...]``. The views are free and exact, unlike
the transposes of ``concat_to_channels``, which still takes the concats with no such view (P
above DLA's batch limit of 4096). Slices with a step other than 1 are left to
``strided_slice_to_conv``.
"""

from __future__ import annotations

from netdsl.ir import Graph, Node
from netdsl.passes.rank4_view import axis_view, view_as
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "slice_concat_rank4"
OPS = ("slice", "split", "concat")


def _refused(graph: Graph, node: Node) -> bool:
    """A slice (unit step), split or concat DLA does not take as it is."""
    if node.op == "slice" and node.attrs["step"] != 1:
        return False
    shape = graph.type_of(node.inputs[0]).shape
    axis = node.attrs["axis"] % len(shape)
    if len(shape) != 4:
        return True
    if node.op == "concat":
        return axis != 1
    return axis == 0 and graph.type_of(node.outputs[0]).shape != shape


def _views(graph: Graph, node: Node) -> list[tuple[int, ...]] | None:
    """The rank-4 view of each input of ``node`` with the op's axis as axis 1, when the op needs and has one.

    A rank-4 input with a single channel, and size 1 between it and the axis, swaps its axis with the
    channel axis (a view that keeps the other axes as they are, so a map read by several such concats is
    not re-laid out for each).
    """
    if not _refused(graph, node):
        return None
    shapes = [graph.type_of(x).shape for x in node.inputs]
    axis = node.attrs["axis"] % len(shapes[0])
    # Swapping the single channel with the axis is a reshape only while the axes between them are 1 too.
    between = range(min(axis, 1) + 1, max(axis, 1))
    if len(shapes[0]) == 4 and shapes[0][1] == 1 and all(shapes[0][i] == 1 for i in between):
        perm = [0, 1, 2, 3]
        perm[1], perm[axis] = axis, 1
        return [tuple(s[i] for i in perm) for s in shapes]
    view = axis_view(shapes[0], axis)
    return None if view is None else [(view[0], s[axis], *view[2:]) for s in shapes]


def _to_axis1(node: Node, em: Emitter) -> list[str] | None:
    views = _views(em.graph, node)
    if views is None:
        return None
    inputs = [view_as(em, x, view) for x, view in zip(node.inputs, views, strict=True)]
    outs = em.op_multi(node.op, inputs, None, **{**node.attrs, "axis": 1})
    return [view_as(em, y, em.graph.values[old].shape) for y, old in zip(outs, node.outputs, strict=True)]


def _post(graph: Graph) -> list[str]:
    return [f"{n.op} {n.outputs[0]} is not along axis 1 of a rank-4 view" for n in graph.nodes
            if n.op in OPS and _views(graph, n) is not None]


PASS = node_pass(RULE, "lower", _to_axis1, __doc__ or "", post=_post, matches=OPS)
