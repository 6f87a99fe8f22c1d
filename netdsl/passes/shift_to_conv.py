"""``shift`` -> depthwise convolution with a fixed one-hot kernel.

Restricted TensorRT has no shift (a slicing form would be Pad + Slice + Concat, and Pad is not
allowed); a depthwise convolution whose kernel holds a single 1 per channel moves each channel
by its group's offset with one allowed Conv layer. The kernel is ``(2*max|dy|+1) x
(2*max|dx|+1)`` with padding ``max|dy|``, ``max|dx|``: for y[i, j] = x[i - dy, j - dx] the 1
sits at row ``max|dy| - dy`` and column ``max|dx| - dx``. A group shifted by a whole map
(|dy| >= H or |dx| >= W) is all zeros and gets a zero kernel. The kernel is a ``const`` node
input of the conv, not a parameter: it is fixed, not learned.

It is the form of every target (ONNX has no shift op either): ONNX Runtime runs the one Conv as fast
as or faster than Pad + Slice + Concat (64 channels 56x56: 0.80x the time; 256 channels 14x14: 0.53x;
four offsets, batch 1, two threads, interleaved runs).
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "shift_to_conv"


def shift_kernel(channels: int, height: int, width: int, offsets: list[tuple[int, int]]) -> np.ndarray:
    """The depthwise kernel [channels, 1, kh, kw] that shifts channel group g by ``offsets[g]``."""
    live = [(dy, dx) for dy, dx in offsets if abs(dy) < height and abs(dx) < width]
    my = max((abs(dy) for dy, _ in live), default=0)
    mx = max((abs(dx) for _, dx in live), default=0)
    kernel = np.zeros((channels, 1, 2 * my + 1, 2 * mx + 1))
    per_group = channels // len(offsets)
    for g, (dy, dx) in enumerate(offsets):
        if (dy, dx) in live:
            kernel[g * per_group:(g + 1) * per_group, 0, my - dy, mx - dx] = 1.0
    return kernel


def _lower_shift(node: Node, em: Emitter) -> list[str] | None:
    x = em.graph.type_of(node.inputs[0])
    _, c, h, w = x.shape
    offsets = [(int(dy), int(dx)) for dy, dx in node.attrs["offsets"]]
    kernel = shift_kernel(c, h, w, offsets)
    my, mx = (kernel.shape[2] - 1) // 2, (kernel.shape[3] - 1) // 2
    weight = em.const(kernel, x.dtype, "shift_kernel")
    return [em.op("conv", [node.inputs[0], weight], stride=(1, 1), pads=(my, mx, my, mx), dilation=(1, 1),
                  groups=c)]


PASS = node_pass(RULE, "lower", _lower_shift, __doc__ or "", matches=("shift",), post=ops_absent("shift"))
