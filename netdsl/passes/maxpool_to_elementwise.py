"""``maxpool`` -> edge padding, strided slices and pairwise maxima ``a + relu(b - a)``.

Restricted TensorRT is not known to allow MaxPool (only a safe-plugin sample shows it), but Slice,
Sub, Relu and Add are assumed allowed. Max pooling with window k x k and stride s is the
elementwise maximum of its k*k taps, tap (u, v) being the strided slice
``xpad[:, :, u::s, v::s]`` cut to the output size. Padding never wins a max; instead of -inf
(which would give inf - inf in the subtraction) the map is padded by repeating its edge: with
padding <= k - 1 every window that reaches into the padding also holds the edge pixel it
repeats, so the maximum is unchanged. The padding is a ``pad`` node (mode ``edge``) for
``pad_to_slice_concat`` to lower. Windows with larger padding are left alone.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.reduce_max_to_elementwise import maximum
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "maxpool_to_elementwise"


def _edge_padding_is_exact(node: Node) -> bool:
    (kh, kw), (pt, pl, pb, pr) = node.attrs["kernel"], node.attrs["pads"]
    return max(pt, pb) <= kh - 1 and max(pl, pr) <= kw - 1


def _lower_maxpool(node: Node, em: Emitter) -> list[str] | None:
    if not _edge_padding_is_exact(node):
        return None
    x = node.inputs[0]
    if any(node.attrs["pads"]):
        x = em.op("pad", [x], pads=tuple(node.attrs["pads"]), mode="edge")
    (kh, kw), (sh, sw) = node.attrs["kernel"], node.attrs["stride"]
    _, _, ho, wo = em.graph.values[node.outputs[0]].shape
    result = None
    for u in range(kh):
        rows = em.op("slice", [x], "tap", axis=2, start=u, end=u + (ho - 1) * sh + 1, step=sh)
        for v in range(kw):
            tap = em.op("slice", [rows], "tap", axis=3, start=v, end=v + (wo - 1) * sw + 1, step=sw)
            result = tap if result is None else maximum(em, result, tap)
    assert result is not None
    return [result]


PASS = node_pass(RULE, "lower", _lower_maxpool, __doc__ or "", post=ops_absent("maxpool"),
                 matches=("maxpool",))
