"""Pointwise conv before an enlarging resize: ``conv1x1(resize(x))`` -> ``resize(conv1x1(x))``.

A 1x1 convolution (stride 1, no padding, any groups) mixes channels pixel by pixel; a resize
mixes pixels channel by channel, with weights that sum to one (bilinear: ``1 - l`` and ``l``, also
where the source index is clamped at the border) or that pick one pixel (nearest). So the two
commute, bias included: ``W (sum_k a_k x_k) + b = sum_k a_k (W x_k + b)`` when ``sum_k a_k = 1``.
Only rounding differs (float32: a few ulps).

When the resize enlarges the map, the conv gets cheaper on the smaller map
(``Co * Ci/groups * (Ho*Wo - H*W)`` MACs fewer), and the resize then interpolates ``Co`` channels
instead of ``Ci``. A narrowing or equal-width conv (``Co <= Ci``) always moves: both get cheaper.
A widening one moves when its MAC saving outweighs the extra interpolation, costed at
:data:`INTERPOLATION_MACS` MACs per interpolated element: the ``onnx`` target emits such resizes
channels-last, where ONNX Runtime interpolates an element in about the time of 16 MACs of a 1x1
conv (a ratio measured side by side: a 784-channel 14 -> 13 resize against dense 1x1 convs). So CSA's
``q`` projection, 384 -> 784 channels before stage 2's 13 -> 14 resize, moves (8.1 M MACs saved,
the equivalent of 1.3 M spent), while a 16 -> 24 conv before 13 -> 14 stays. In CSA this moves the
``qk`` projection of every block whose map is larger than its ``sr_to`` grid onto the grid (at 224
input: 14x14 instead of 56x56 and 27x27, about 330 M MACs of 4.07 G), stage 3's narrowing ``q``
projection onto its 6x6 map and stage 2's widening one onto its 13x13 map (49 M MACs more).

Only a resize whose output feeds nothing but the conv is moved. Runs after ``fold_batchnorm``, so a
batch norm folded into the conv moves with it.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "conv_before_resize"
INTERPOLATION_MACS = 16  # cost of interpolating one element, in 1x1-conv MACs (see the module docstring)


def is_1x1(em: Emitter, conv: Node) -> bool:
    """A 1x1 conv without padding, at any stride: each output pixel reads one input pixel."""
    return (conv.op == "conv" and tuple(em.graph.type_of(conv.inputs[1]).shape[2:]) == (1, 1)
            and not any(conv.attrs["pads"]))


def is_pointwise(em: Emitter, conv: Node) -> bool:
    """A 1x1 conv without stride or padding: a per-pixel affine map of the channels."""
    return is_1x1(em, conv) and tuple(conv.attrs["stride"]) == (1, 1)


def worth_moving(em: Emitter, conv: Node, resize: Node) -> bool:
    """True when ``resize`` enlarges the map and the conv's MAC saving on the small map exceeds the cost
    of interpolating the channels it adds (none when it does not widen)."""
    _, ci, h, w = em.graph.type_of(resize.inputs[0]).shape
    ho, wo = resize.attrs["sizes"]
    co, ci_per_group = em.graph.type_of(conv.inputs[1]).shape[:2]
    saved = co * ci_per_group * (ho * wo - h * w)
    return ho * wo > h * w and saved > INTERPOLATION_MACS * max(co - ci, 0) * ho * wo


def _move(node: Node, em: Emitter) -> list[str] | None:
    if not is_pointwise(em, node):
        return None
    resize = em.producer(node.inputs[0])
    if resize is None or resize.op != "resize" or not em.used_once(node.inputs[0]):
        return None
    if not worth_moving(em, node, resize):
        return None
    em.absorb(resize)
    mixed = em.op("conv", [resize.inputs[0], *node.inputs[1:]], "pointwise", **node.attrs)
    return [em.op("resize", [mixed], **resize.attrs)]


PASS = node_pass(RULE, "optimize", _move, __doc__ or "", matches=("conv",))
