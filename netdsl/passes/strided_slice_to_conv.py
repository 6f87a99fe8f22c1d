"""Strided spatial ``slice`` -> unit-step slice + depth-wise 1x1 conv with that stride.

DLA's Slice layer takes only unit steps, but its convolution takes strides 1 to 8. Keeping every
``step``-th row of a map is what a depth-wise 1x1 conv with weight 1, no bias and stride ``step``
does, so ``x[:, :, a:b:s]`` becomes a unit-step slice to the rows the conv needs (none when the
slice starts at 0 and runs to the end) and the conv. The values are copied exactly (``1 * x + 0``).

A slice of the width whose input is a strided slice of the height (read by nothing else) merges
with it into one conv with both strides, so ACmix's strided attention (``q[:, :, ::2, ::2]``)
costs one layer, not two. Only 4-D maps are rewritten (DLA's layers are 2-D), and only steps up
to DLA's stride limit of 8; other slices stay for the coverage report to name.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "strided_slice_to_conv"
MAX_STRIDE = 8  # DLA convolution strides are 1..8 (see profiles/trt-dla.toml, Conv limits)


def _strided_spatial(em: Emitter, node: Node) -> bool:
    """A slice of axis 2 or 3 of a 4-D map with a step the conv can take as its stride."""
    if node.op != "slice" or not 1 < node.attrs["step"] <= MAX_STRIDE:
        return False
    rank = em.graph.type_of(node.inputs[0]).rank
    return rank == 4 and node.attrs["axis"] % rank in (2, 3)


def _merges_into_reader(em: Emitter, node: Node) -> bool:
    """A strided height slice whose only reader is a strided width slice: that reader rewrites both."""
    out = node.outputs[0]
    if node.attrs["axis"] % 4 != 2 or not em.used_once(out):
        return False
    (reader,) = em.readers(out)
    return _strided_spatial(em, reader) and reader.attrs["axis"] % 4 == 3


def _unit_step_cover(em: Emitter, x: str, node: Node) -> tuple[str, int]:
    """``x`` cut (with step 1) so that striding it keeps exactly the slice's rows; and the step.

    No cut is needed when the slice starts at row 0 and the stride would find no row after its last.
    """
    axis = node.attrs["axis"] % 4
    length = em.graph.type_of(x).shape[axis]
    kept = range(*slice(node.attrs["start"], node.attrs["end"], node.attrs["step"]).indices(length))
    first, last = kept[0], kept[-1]
    if first == 0 and last + kept.step >= length:
        return x, kept.step
    return em.op("slice", [x], "rows", axis=axis, start=first, end=last + 1, step=1), kept.step


def _rewrite(node: Node, em: Emitter) -> list[str] | None:
    if not _strided_spatial(em, node) or _merges_into_reader(em, node):
        return None
    strides = [1, 1]
    x = node.inputs[0]
    height = em.producer(x)
    if node.attrs["axis"] % 4 == 3 and height is not None and _strided_spatial(em, height) \
            and _merges_into_reader(em, height):
        em.absorb(height)
        x, strides[0] = _unit_step_cover(em, height.inputs[0], height)
    x, strides[node.attrs["axis"] % 4 - 2] = _unit_step_cover(em, x, node)
    t = em.graph.type_of(x)
    ones = em.const(np.ones((t.shape[1], 1, 1, 1)), t.dtype, "ones")
    return [em.op("conv", [x, ones], "subsample", stride=tuple(strides), pads=(0, 0, 0, 0), dilation=(1, 1),
                  groups=t.shape[1])]


PASS = node_pass(RULE, "lower", _rewrite, __doc__ or "", matches=("slice",))
