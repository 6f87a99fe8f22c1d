"""Slices before the pointwise conv they read: ``slice(conv1x1(x))`` -> ``conv1x1(slice(x))``.

A 1x1 conv without stride or padding computes each pixel of each image from that pixel alone, so a
slice along the batch or a spatial axis (not the channels) gives the same values taken before the
conv, which then runs on the pixels kept only.

Why: sliding-window attention at stride ``s`` reads its queries at the output positions only
(``q[:, :, ::s, ::s]``, the first thing both of its lowerings do). In ACmix the query projection
``conv1`` also feeds the convolution path, at every pixel; once ``fold_pointwise_into_conv`` has
folded that path into one conv of ``x``, the strided slices are ``conv1``'s only readers, and it runs
on a quarter of the pixels at stride 2 (64 channels, 56x56: 3.2 M multiply-adds instead of 12.8 M).

Only a slice that drops entries, of a conv whose output nothing else reads and which has no more input
channels than output channels, is moved (the slice then copies no more than before: the restricted
attention lowering sums each head's channels by a grouped 1x1 conv, 448 -> 28 channels, before cutting
the frame's rows, and cutting first would copy 16 times more); a repeated sweep moves the next slice
of a chain (rows, then columns) as well. Exact: the same products are summed.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.conv_before_resize import is_pointwise
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "slice_before_conv"


def _move(node: Node, em: Emitter) -> list[str] | None:
    conv = em.producer(node.inputs[0])
    t = em.graph.type_of(node.inputs[0])
    if (conv is None or conv.op != "conv" or t.rank != 4 or node.attrs["axis"] % 4 == 1
            or em.graph.type_of(node.outputs[0]).shape == t.shape or not em.used_once(node.inputs[0])
            or not is_pointwise(em, conv) or em.graph.type_of(conv.inputs[0]).shape[1] > t.shape[1]):
        return None
    em.absorb(conv)
    em.source = conv
    sliced = em.op("slice", [conv.inputs[0]], "sliced", **node.attrs)
    return [em.op("conv", [sliced, *conv.inputs[1:]], **conv.attrs)]


PASS = node_pass(RULE, "optimize", _move, __doc__ or "", matches=("slice",), repeat=True)
