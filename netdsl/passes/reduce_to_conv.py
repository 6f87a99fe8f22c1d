"""``reduce_sum`` / ``reduce_mean`` -> convolutions with constant-ones kernels.

Restricted TensorRT has no Reduce layer, but a convolution whose kernel is all ones sums what it
covers (scaled by 1/n for a mean). On an NCHW map (batch not reduced):

* channels: a 1x1 conv with kernel ``ones[1, C, 1, 1]`` gives ``[B, 1, H, W]``;
* height and/or width: a depthwise conv (``groups = C``) with kernel ``ones[C, 1, kh, kw]``,
  ``kh = H`` when the height is reduced (else 1), likewise ``kw``;
* channels and space: the channel conv, then the spatial one.

Any other tensor (another rank, or the batch axis reduced) is transposed so that the reduced
axes come first, viewed as ``[1, R, P, 1]`` (R reduced, P kept elements), summed by a 1x1 conv
with kernel ``ones[1, R, 1, 1]`` and reshaped to the result. Without ``keepdims`` a final
reshape drops the reduced axes.
"""

from __future__ import annotations

import math

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "reduce_to_conv"
REDUCTIONS = ("reduce_sum", "reduce_mean")


def _conv(em: Emitter, x: str, kernel: np.ndarray, groups: int) -> str:
    weight = em.const(kernel, em.graph.type_of(x).dtype, "ones")
    return em.op("conv", [x, weight], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=groups)


def _sum_channels(em: Emitter, x: str, mean: bool) -> str:
    c = em.graph.type_of(x).shape[1]
    return _conv(em, x, np.full((1, c, 1, 1), 1.0 / c if mean else 1.0), 1)


def _sum_space(em: Emitter, x: str, axes: list[int], mean: bool) -> str:
    _, c, h, w = em.graph.type_of(x).shape
    kh, kw = (h if 2 in axes else 1), (w if 3 in axes else 1)
    return _conv(em, x, np.full((c, 1, kh, kw), 1.0 / (kh * kw) if mean else 1.0), c)


def _sum_general(em: Emitter, x: str, axes: list[int], mean: bool) -> str:
    shape = em.graph.type_of(x).shape
    kept = [a for a in range(len(shape)) if a not in axes]
    perm = axes + kept
    if perm != sorted(perm):
        x = em.op("transpose", [x], perm=tuple(perm))
    r = math.prod(shape[a] for a in axes)
    p = math.prod(shape[a] for a in kept)
    view = em.op("reshape", [x], shape=(1, r, p, 1))
    return _conv(em, view, np.full((1, r, 1, 1), 1.0 / r if mean else 1.0), 1)


def _lower_reduce(node: Node, em: Emitter) -> list[str] | None:
    if node.op not in REDUCTIONS:
        return None
    x = node.inputs[0]
    t = em.graph.type_of(x)
    axes = sorted({a % t.rank for a in node.attrs["axes"]})
    mean = node.op == "reduce_mean"
    if not axes:
        return [x]
    if t.rank == 4 and 0 not in axes:
        y = _sum_channels(em, x, mean) if 1 in axes else x
        if 2 in axes or 3 in axes:
            y = _sum_space(em, y, axes, mean)
    else:
        y = _sum_general(em, x, axes, mean)
    out_shape = em.graph.values[node.outputs[0]].shape
    if em.graph.type_of(y).shape != out_shape:
        y = em.op("reshape", [y], shape=out_shape)
    return [y]


PASS = node_pass(RULE, "lower", _lower_reduce, __doc__ or "", post=ops_absent(*REDUCTIONS))
