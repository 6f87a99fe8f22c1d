"""Resize that shrinks by whole factors -> depthwise conv with a fixed kernel: ``resize(x, 1/k)`` -> ``conv(x)``.

A resize from ``L = k * Lo`` to ``Lo`` pixels along an axis (``scale`` = 1/k) samples, for output
``d``, the source position ``src = (d + 0.5) * k - 0.5 = k*d + (k - 1)/2`` (linear, half-pixel), never
clamped: for odd ``k`` that is the single pixel ``k*d + (k-1)/2``; for even ``k`` it is the mean of the
pixels ``k*d + k/2 - 1`` and ``k*d + k/2``. Nearest takes pixel ``k*d``. Each is a fixed window at a
fixed offset, repeated with stride ``k``: a depthwise convolution (stride ``k``, no padding) whose kernel
per axis has ``k//2 + 1`` taps (``k//2 + 1`` covers the offset; leading taps are zero) holding 1 or two
halves (linear) or a single 1 at tap 0 (nearest, kernel 1); the 2-D kernel is the outer product of the
two axes' taps, the same for every channel. The kernel is a ``const`` node: fixed, not learned.

Why: ONNX Runtime's CPU layout transformer runs convolutions in its blocked channel layout (NCHWc)
but not a downscaling Resize, so it reorders the map out of and back into that layout around every
such Resize; the conv stays in the blocked layout. In CSA at 224 input this rewrites the three
56 -> 14 resizes of the first stage (k = 4) and drops their six layout reorders: about 0.4% of the
model's single-threaded time (per-node minimum kernel times, interleaved with the original).
Restricted targets gain too: a conv is allowed where a shrinking resize is not (``trt-dla``).

Resizes whose factor is not the inverse of a whole number (e.g. CSA's 27 -> 14), and enlarging ones,
stay.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "downscale_to_conv"

# A factor counts as 1/k when scale * k is 1 to within float64 rounding of the division sr / L.
_FACTOR_TOLERANCE = 1e-9


def whole_factor(length: int, out_length: int, scale: float) -> int | None:
    """``k`` when a resize of ``length`` pixels by ``scale`` shrinks by exactly ``k`` (``length == k *
    out_length`` and ``scale == 1/k``), else None."""
    if out_length < 1 or length % out_length:
        return None
    k = length // out_length
    return k if abs(scale * k - 1.0) <= _FACTOR_TOLERANCE else None


def axis_taps(k: int, mode: str) -> np.ndarray:
    """The per-axis kernel taps that sample like a resize shrinking by ``k`` (``mode`` linear or nearest)."""
    if mode == "nearest":
        return np.ones(1)
    taps = np.zeros(k // 2 + 1)
    if k % 2:
        taps[-1] = 1.0
    else:
        taps[-2:] = 0.5
    return taps


def downscale_as_conv(node: Node, em: Emitter) -> list[str] | None:
    """The depth-wise conv replacing resize ``node`` if it shrinks by whole factors, else None."""
    x = em.graph.type_of(node.inputs[0])
    _, channels, h, w = x.shape
    (ho, wo), (sh, sw) = node.attrs["sizes"], node.attrs["scales"]
    kh, kw = whole_factor(h, ho, sh), whole_factor(w, wo, sw)
    if kh is None or kw is None or kh * kw == 1:
        return None
    mode = node.attrs["mode"]
    kernel = np.outer(axis_taps(kh, mode), axis_taps(kw, mode))
    weight = em.const(np.broadcast_to(kernel, (channels, 1, *kernel.shape)), x.dtype, "downscale_kernel")
    return [em.op("conv", [node.inputs[0], weight], stride=(kh, kw), pads=(0, 0, 0, 0), dilation=(1, 1),
                  groups=channels)]


PASS = node_pass(RULE, "optimize", downscale_as_conv, __doc__ or "", matches=("resize",))
