"""``linear`` -> 1x1 convolution on an NCHW view.

Restricted TensorRT has no Gemm / MatMul layer; a linear map over the last axis is a 1x1
convolution once that axis is the channel axis. ``x[d0, ..., in]`` is transposed to
``[d0, in, d1, ...]`` and viewed as ``[d0, in, P, 1]`` (P = d1*...), so the first axis stays
the batch; a rank-2 input is just viewed as ``[d0, in, 1, 1]``, and a rank-4 channels-last map
``[B, H, W, C]`` is transposed to ``[B, C, H, W]`` without a reshape. The weight ``[out, in]`` is
reshaped to ``[out, in, 1, 1]`` in the graph (a parameter-only node that ``fold_params``
turns into a constant); the bias stays the conv's bias. The result is reshaped and transposed
back to ``[d0, ..., out]``. ``cleanup_shuffles`` removes the transposes between consecutive maps.
"""

from __future__ import annotations

import math

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "linear_to_conv"


def _lower_linear(node: Node, em: Emitter) -> list[str] | None:
    x, w, *bias = node.inputs
    shape = em.graph.type_of(x).shape
    rank = len(shape)
    if rank < 2:
        return None
    out_features = em.graph.type_of(w).shape[0]
    kernel = em.op("reshape", [w], "kernel", shape=(*em.graph.type_of(w).shape, 1, 1))
    # Channels-first order of the axes: the batch, the features, then the other axes.
    to_nchw = (0, rank - 1, *range(1, rank - 1))
    moved = em.op("transpose", [x], perm=to_nchw) if rank > 2 else x
    spatial = shape[1:-1]
    view = moved if rank == 4 else em.op("reshape", [moved], shape=(shape[0], shape[-1], math.prod(spatial), 1))
    y = em.op("conv", [view, kernel, *bias], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    if rank != 4:
        y = em.op("reshape", [y], shape=(shape[0], out_features, *spatial))
    if rank > 2:
        y = em.op("transpose", [y], perm=(0, *range(2, rank), 1))
    return [y]


PASS = node_pass(RULE, "lower", _lower_linear, __doc__ or "", matches=("linear",), post=ops_absent("linear"))
