"""Channels-last layout planning of the ``onnx`` target, and the NHWC lowerings of the ops it plans.

ONNX Runtime interpolates channels-last several times faster than channels-first, so the ``onnx``
target emits each linear resize other than a whole-factor upsample on NHWC tensors and keeps that
layout through the rotations and elementwise ops that read its result (an elementwise op's other
inputs are transposed to NHWC). A value goes back to NCHW only where something else reads it.
Transposes next to convs cost nothing (ONNX Runtime folds them into its blocked-layout reorders);
elsewhere they are copies. Each such Transpose has a Reshape to the same shape on its NHWC side,
which keeps ONNX Runtime's transpose optimizer from cancelling or moving it.

Why regions rather than single resizes, from per-node kernel times of CSA at 224 input: in stage 2
the path resize -> q * rot(q) -> resize back, with each resize channels-last on its own, spent about
2.5 times as long in Transposes per block (back to NCHW after the first resize, the rotation's, to
NHWC before the second) as it does as one region (the rotation's Transpose and row Gather); in stage
1 the up-resize, its sigmoid and the product with ``v`` run channels-last with no Transpose at all,
and the whole model got faster. Whole-factor upsamples stay channels-first: as regions too (stage
0's 14 -> 56) the model got slower. The TensorRT targets keep single Resize layers (no plan).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from netdsl.backends.onnx_builder import EMPTY, OnnxGraphBuilder, OnnxTensor
from netdsl.backends.onnx_ops import BINARY, UNARY, resize_factors_and_attrs, whole_upsample
from netdsl.ir import Graph, Node

_CHANNELS_LAST_ELEMENTWISE = frozenset(UNARY) | frozenset(BINARY)


def _channels_last_resize(node: Node, in_shape: Sequence[int]) -> bool:
    """A linear resize that is not a whole-factor upsample on both axes (those are fast channels-first)."""
    (h, w), (ho, wo) = in_shape[2:], node.attrs["sizes"]
    return node.attrs["mode"] == "linear" and not (whole_upsample(h, ho) and whole_upsample(w, wo))


@dataclass(frozen=True, slots=True)
class ChannelsLastPlan:
    """Which IR values are emitted channels-last, and which of them are also read channels-first."""

    values: frozenset[str] = frozenset()
    channels_first_read: frozenset[str] = frozenset()

    @staticmethod
    def of(graph: Graph) -> ChannelsLastPlan:
        """Channels-last: the outputs of channels-last resizes, then of every rotation of a channels-last
        value and of every elementwise op on rank-4 inputs of which one or more are channels-last. Read
        channels-first: by any other node, or as a graph output."""
        values: set[str] = set()
        for node in graph.nodes:
            if node.op == "resize":
                takes = _channels_last_resize(node, graph.type_of(node.inputs[0]).shape)
            elif node.op == "rotate":
                takes = node.inputs[0] in values
            else:
                takes = (node.op in _CHANNELS_LAST_ELEMENTWISE and not values.isdisjoint(node.inputs)
                         and all(graph.type_of(name).rank == 4 for name in node.inputs))
            if takes:
                values.add(node.outputs[0])
        read = {name for name in graph.outputs if name in values}
        for node in graph.nodes:
            if node.outputs[0] not in values:
                read.update(name for name in node.inputs if name in values)
        return ChannelsLastPlan(frozenset(values), frozenset(read))

    def lower(self, em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
        """Emit ``node``, one of :attr:`values`, on channels-last tensors, then its channels-first output if
        anything reads it: the bound method ``plan.lower`` is a :data:`~netdsl.backends.onnx_builder.Lowering`."""
        (name,), (y,) = node.outputs, ys
        b, c, h, w = em.type_of(name).shape
        em.nhwc[name] = _CHANNELS_LAST_LOWERINGS[node.op](em, node)
        if name in self.channels_first_read:
            # The same-shape Reshape keeps ONNX Runtime's transpose optimizer from moving this Transpose
            # (see the module docstring).
            em.transpose(em.reshape(em.nhwc[name], (b, h, w, c)), (0, 3, 1, 2), out=y)


def _resize_nhwc(em: OnnxGraphBuilder, node: Node) -> OnnxTensor:
    # The factors are unchanged, so the sizes and the values are too.
    fh, fw, attrs = resize_factors_and_attrs(node, em.type_of(node.inputs[0]).shape)
    scales = em.const([1.0, fh, fw, 1.0], np.float32)
    return em.emit("Resize", [em.channels_last(node.inputs[0]), EMPTY, scales], attrs)


def _rotate_nhwc(em: OnnxGraphBuilder, node: Node) -> OnnxTensor:
    # With P = h*w positions and S = P channels per head, the NHWC tensor is x[b, p, n, s]; the
    # rotation (see the channels-first lowering) is y[b, p, n, s] = x[b, s, n, p]. ONNX Runtime
    # runs that single permutation element by element (slow at CSA's 196 x 4 x 196), so it is a 2-D
    # transpose z[b, n*P + p, s] = x[b, s, n, p], then a Gather of whole rows of S: y row p*heads + n
    # is z row n*P + p (a second Transpose would be merged into the first by ONNX Runtime).
    b, c, h, w = em.type_of(node.inputs[0]).shape
    heads, positions = node.attrs["heads"], h * w
    rows = em.transpose(em.reshape(em.channels_last(node.inputs[0]), (b, positions, c)), (0, 2, 1))
    order = np.arange(c).reshape(heads, positions).T.reshape(-1)
    return em.reshape(em.emit("Gather", [rows, em.const(order)], {"axis": 1}), (b, h, w, c))


def _elementwise_nhwc(em: OnnxGraphBuilder, node: Node) -> OnnxTensor:
    # All inputs are rank 4, so their NHWC forms broadcast as their NCHW forms do.
    return em.emit(UNARY.get(node.op) or BINARY[node.op], [em.channels_last(i) for i in node.inputs])


# IR op -> its channels-last lowering: it returns the NHWC output; the plan says which ops qualify.
_CHANNELS_LAST_LOWERINGS: dict[str, Callable[[OnnxGraphBuilder, Node], OnnxTensor]] = {
    "resize": _resize_nhwc,
    "rotate": _rotate_nhwc,
    **{op: _elementwise_nhwc for op in _CHANNELS_LAST_ELEMENTWISE},
}
