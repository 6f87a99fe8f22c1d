"""``unfold`` (im2col) -> group convolution with a fixed one-hot kernel.

Sliding windows have no TensorRT layer; the parser-free form is one Slice per window tap plus a
Concat. A group convolution with ``groups = C`` and ``kh*kw`` output maps per input channel,
where output map ``c*kh*kw + u*kw + v`` has a single 1 at tap ``(u, v)``, computes exactly
``y[b, c*kh*kw + u*kw + v, i, j] = xpad[b, c, i*sh + u*dh, j*sw + v*dw]`` (the unfold layout of
:mod:`netdsl.opdefs`) with one Conv that keeps the unfold's stride, padding and dilation.

It is the form of every target (ONNX has no unfold op either): ONNX Runtime runs the one Conv faster
than one strided Slice per tap, a Concat and the Reshape/Transpose to the unfold layout (3x3 windows,
64 channels 56x56: 1.2 ms against 40 ms; 256 channels 14x14: 0.78x the time; batch 1, two threads,
interleaved runs).
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "unfold_to_conv"


def unfold_kernel(channels: int, kh: int, kw: int) -> np.ndarray:
    """The group-conv kernel [channels*kh*kw, 1, kh, kw]: output map c*kh*kw + u*kw + v picks tap (u, v)."""
    taps = np.eye(kh * kw).reshape(kh * kw, 1, kh, kw)
    return np.tile(taps, (channels, 1, 1, 1))


def _lower_unfold(node: Node, em: Emitter) -> list[str] | None:
    x = em.graph.type_of(node.inputs[0])
    kh, kw = node.attrs["kernel"]
    weight = em.const(unfold_kernel(x.shape[1], kh, kw), x.dtype, "unfold_kernel")
    return [em.op("conv", [node.inputs[0], weight], stride=tuple(node.attrs["stride"]),
                  pads=tuple(node.attrs["pads"]), dilation=tuple(node.attrs.get("dilation", (1, 1))),
                  groups=x.shape[1])]


PASS = node_pass(RULE, "lower", _lower_unfold, __doc__ or "", matches=("unfold",), post=ops_absent("unfold"))
