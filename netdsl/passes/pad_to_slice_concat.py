"""``pad`` -> Slice + Concat (reflect, edge), zeros + Concat, or the next conv's own padding.

Restricted TensorRT has no Pad layer (the parser maps ONNX Pad to a fill/reflect/clamp Slice,
which is not allowed), but Slice and Concat are. Per spatial axis:

* ``reflect`` (mirror without repeating the edge, index -k -> k): rows ``t, t-1, ..., 1`` are cut
  one by one (slices have positive steps), then concatenated before the map, and rows
  ``n-2, ..., n-1-b`` after it; the width is padded the same way on the result, which gives the
  corners exactly as a 2-D reflection does;
* ``edge``: the first / last row is cut once and concatenated ``t`` / ``b`` times;
* ``zero``: when the padded map feeds only the data input of a ``conv``, the padding is added
  to that conv's own zero padding and the pad disappears; otherwise zeros constants are
  concatenated.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "pad_to_slice_concat"


def _folds_into_conv(pad: Node, em: Emitter) -> bool:
    """A zero pad whose only reader is a conv's data input (so the conv can pad instead)."""
    out = pad.outputs[0]
    if pad.attrs["mode"] != "zero" or not em.used_once(out):
        return False
    (reader,) = em.readers(out)
    return reader.op == "conv" and reader.inputs[0] == out


def _row(em: Emitter, x: str, axis: int, index: int) -> str:
    return em.op("slice", [x], "row", axis=axis, start=index, end=index + 1, step=1)


def pad_axis(em: Emitter, x: str, axis: int, before: int, after: int, mode: str) -> str:
    """``x`` padded by ``before``/``after`` along ``axis`` with ``mode``, built from slices and a concat."""
    if before == 0 and after == 0:
        return x
    t = em.graph.type_of(x)
    n = t.shape[axis]
    if mode == "reflect":
        head = [_row(em, x, axis, k) for k in range(before, 0, -1)]
        tail = [_row(em, x, axis, n - 1 - k) for k in range(1, after + 1)]
    elif mode == "edge":
        head = [_row(em, x, axis, 0)] * before if before else []
        tail = [_row(em, x, axis, n - 1)] * after if after else []
    else:
        head = [_zeros(em, t.shape, t.dtype, axis, before)] if before else []
        tail = [_zeros(em, t.shape, t.dtype, axis, after)] if after else []
    return em.op("concat", [*head, x, *tail], axis=axis)


def _zeros(em: Emitter, shape: tuple[int, ...], dtype: str, axis: int, length: int) -> str:
    block = list(shape)
    block[axis] = length
    return em.const(np.zeros(block), dtype, "zeros")


def _lower_pad(node: Node, em: Emitter) -> list[str] | None:
    if node.op == "conv":
        return _fold_into_conv(node, em)
    if _folds_into_conv(node, em):
        return None
    top, left, bottom, right = node.attrs["pads"]
    mode = node.attrs["mode"]
    rows = pad_axis(em, node.inputs[0], 2, top, bottom, mode)
    return [pad_axis(em, rows, 3, left, right, mode)]


def _fold_into_conv(conv: Node, em: Emitter) -> list[str] | None:
    pad = em.producer(conv.inputs[0])
    if pad is None or pad.op != "pad" or not _folds_into_conv(pad, em):
        return None
    pads = tuple(int(a) + int(b) for a, b in zip(conv.attrs["pads"], pad.attrs["pads"]))
    em.absorb(pad)
    return [em.op("conv", [pad.inputs[0], *conv.inputs[1:]], **{**conv.attrs, "pads": pads})]


PASS = node_pass(RULE, "lower", _lower_pad, __doc__ or "", post=ops_absent("pad"), matches=("pad", "conv"))
