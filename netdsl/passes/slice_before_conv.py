"""Slices of a 1x1 conv's output taken before it, or as its stride: ``slice(conv1x1(x))`` -> ``conv1x1(slice(x))``.

A 1x1 conv without padding computes each output pixel of each image from one input pixel, so a slice
along the batch axis, or along a spatial axis the conv does not stride, gives the same values taken
before the conv, which then runs on the pixels kept only. A slice of every ``s``-th pixel from the
first to the last on a spatial axis is the conv at ``s`` times its stride on that axis: no slice at
all, the conv reads the pixels it needs.

Why: sliding-window attention at stride ``s`` reads its queries at the output positions only
(``q[:, :, ::s, ::s]``, the first thing both of its lowerings do). In ACmix the query projection
``conv1`` also feeds the convolution path, at every pixel; once ``fold_pointwise_into_conv`` has
folded that path into one conv of ``x``, the strided slices are ``conv1``'s only readers, and it runs
on a quarter of the pixels at stride 2 (64 channels, 56x56: 3.2 M multiply-adds instead of 12.8 M),
as a stride-2 conv of ``x`` (the two strided slices of the 56x56 map that it replaces took about 0.12
ms of the block's ~5 ms at two threads in ONNX Runtime).

Only a slice that drops entries, of a conv whose output nothing else reads, is moved; one that does not
become a stride also needs a conv with no more input channels than output channels (the slice then
copies no more than before: the restricted attention lowering sums each head's channels by a grouped
1x1 conv, 448 -> 28 channels, before cutting the frame's rows, and cutting first would copy 16 times
more). A repeated sweep moves the next slice of a chain (rows, then columns) as well. Exact: the same
products are summed.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.conv_before_resize import is_1x1
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "slice_before_conv"


def _folds_into_stride(node: Node, em: Emitter) -> bool:
    """A slice of every ``step``-th pixel from the first on a spatial axis, to the last such pixel."""
    a = node.attrs
    axis = a["axis"] % 4
    size = em.graph.type_of(node.inputs[0]).shape[axis]
    start = slice(a["start"], a["end"], a["step"]).indices(size)[0]
    kept = em.graph.type_of(node.outputs[0]).shape[axis]
    return axis >= 2 and a["step"] > 1 and start == 0 and kept == (size - 1) // a["step"] + 1


def _move(node: Node, em: Emitter) -> list[str] | None:
    conv = em.producer(node.inputs[0])
    t = em.graph.type_of(node.inputs[0])
    axis = node.attrs["axis"] % 4
    if (conv is None or t.rank != 4 or axis == 1 or not em.used_once(node.inputs[0]) or not is_1x1(em, conv)
            or em.graph.type_of(node.outputs[0]).shape == t.shape):
        return None
    attrs = conv.attrs
    folds = _folds_into_stride(node, em)
    if folds:
        stride = list(attrs["stride"])
        stride[axis - 2] *= node.attrs["step"]
        attrs = {**attrs, "stride": tuple(stride)}
    elif (axis >= 2 and attrs["stride"][axis - 2] != 1) or em.graph.type_of(conv.inputs[0]).shape[1] > t.shape[1]:
        return None
    em.absorb(conv)
    em.source = conv
    x = conv.inputs[0] if folds else em.op("slice", [conv.inputs[0]], "sliced", **node.attrs)
    return [em.op("conv", [x, *conv.inputs[1:]], **attrs)]


PASS = node_pass(RULE, "optimize", _move, __doc__ or "", matches=("slice",), repeat=True)
