"""Exponentials from softmax over a pair of lanes: the building block of the exp/erf/gelu lowerings.

The restricted layer sets have no Exp, but they have Softmax, which subtracts the maximum before
its exponential. Over a pair of lanes ``[a, b]`` it returns ``p = [e^a, e^b] / (e^a + e^b)``, so
``p0 / p1 = e^(a - b)`` whatever the sign of ``a - b``: the larger lane gets e^0 and only the
smaller one's exponential can underflow, where the true value is tiny too.

Lanes live on axis 1 of a rank-4 view ``[d0, lanes, m, n]`` of the tensor (:func:`lane_view`):
TensorRT's DLA runs element-wise ops, Softmax and Slice on rank-4 tensors only, concatenates on
the channel axis only and needs every non-batch dimension within 8192 (4096 for the spatial axes
of ``trt-restricted``); :mod:`netdsl.passes.rank4_view` picks the split.
"""

from __future__ import annotations

import math

import numpy as np

from netdsl.passes.rank4_view import DIM_LIMIT, split_extent
from netdsl.passes.rewriter import Emitter

INPUT_RANGE = "input_range"
"""Node attribute ``(op, lo, hi)``: the node's first input must lie in [lo, hi] for the lowering of ``op`` that
created it to hold (NaN passes); :mod:`netdsl.range_check` checks it on calibration inputs."""


def lane_view(em: Emitter, x: str) -> str:
    """``x`` reshaped to ``[d0, 1, m, n]`` with m * n the size of a sample (a no-op reshape is left to
    ``cleanup_shuffles``).

    Every op on the view is element-wise, so any factorisation works; ``m`` stays within half the
    view limit because the erf lowering stacks two lane pairs along it (``[d0, 2, 2m, n]``).
    """
    shape = em.graph.type_of(x).shape
    size = math.prod(shape[1:])
    m, n = split_extent(size, first_limit=DIM_LIMIT // 2) or (size, 1)
    return em.op("reshape", [x], "view", shape=(shape[0] if shape else 1, 1, m, n))


def lane_const(em: Emitter, values: list[float], like: str) -> str:
    """A ``[1, len(values), 1, 1]`` constant that spreads a ``[d0, 1, m, n]`` view over lanes by broadcasting."""
    dtype = em.graph.type_of(like).dtype
    return em.const(np.asarray(values).reshape(1, len(values), 1, 1), dtype, "lanes")


def lane(em: Emitter, x: str, index: int) -> str:
    """Lane ``index`` of a ``[d0, lanes, m, n]`` tensor, as ``[d0, 1, m, n]``."""
    return em.op("slice", [x], f"lane{index}", axis=1, start=index, end=index + 1, step=1)


def pair_ratio(em: Emitter, pair: str) -> str:
    """``e^(a - b)`` of a ``[d0, 2, m, n]`` pair ``[a, b]``, as ``[d0, 1, m, n]``: softmax, then lane 0 / lane 1."""
    p = em.op("softmax", [pair], axis=1)
    return em.op("div", [lane(em, p, 0), lane(em, p, 1)])


def restore(em: Emitter, view: str, like: str) -> str:
    """``view`` reshaped back to the shape of ``like``."""
    return em.op("reshape", [view], shape=em.graph.type_of(like).shape)
