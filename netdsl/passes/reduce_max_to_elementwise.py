"""``reduce_max`` / ``reduce_min`` -> a tree of Slice, Sub, Relu and Add (or Sub).

Neither restricted TensorRT nor DLA's GPU-free flows can be relied on for ReduceMax (the
restricted profile rejects every Reduce layer), and there is no max convolution. But
``max(a, b) = a + relu(b - a)`` and ``min(a, b) = a - relu(a - b)`` use only allowed layers.
Along each reduced axis the tensor is halved repeatedly: the first and second halves are
combined elementwise, and an odd last entry is concatenated back, so an axis of length n takes
ceil(log2 n) rounds. The result equals the maximum (minimum) up to one rounding of the
difference (exactly when the first operand wins). Without ``keepdims`` a final reshape drops the
reduced axes.

This is the Reduce-free variant of the max-subtraction in ``softmax_decompose``.
"""

from __future__ import annotations

from collections.abc import Callable

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "reduce_max_to_elementwise"


def _slice(em: Emitter, x: str, axis: int, start: int, end: int) -> str:
    return em.op("slice", [x], "half", axis=axis, start=start, end=end, step=1)


def maximum(em: Emitter, a: str, b: str) -> str:
    """Elementwise ``max(a, b)`` as ``a + relu(b - a)``."""
    return em.op("add", [a, em.op("relu", [em.op("sub", [b, a])])], "max")


def minimum(em: Emitter, a: str, b: str) -> str:
    """Elementwise ``min(a, b)`` as ``a - relu(a - b)``."""
    return em.op("sub", [a, em.op("relu", [em.op("sub", [a, b])])], "min")


def _extreme_along(em: Emitter, x: str, axis: int, pick: Callable[[Emitter, str, str], str]) -> str:
    """``x`` reduced to length 1 along ``axis`` by pairwise ``pick`` (maxima or minima)."""
    n = em.graph.type_of(x).shape[axis]
    while n > 1:
        half = n // 2
        a = _slice(em, x, axis, 0, half)
        b = _slice(em, x, axis, half, 2 * half)
        picked = pick(em, a, b)
        if n % 2:
            picked = em.op("concat", [picked, _slice(em, x, axis, 2 * half, n)], axis=axis)
        x, n = picked, half + n % 2
    return x


PICKS = {"reduce_max": maximum, "reduce_min": minimum}


def _lower_reduce_max(node: Node, em: Emitter) -> list[str] | None:
    pick = PICKS[node.op]
    x = node.inputs[0]
    rank = em.graph.type_of(x).rank
    for axis in sorted({a % rank for a in node.attrs["axes"]}):
        x = _extreme_along(em, x, axis, pick)
    out_shape = em.graph.values[node.outputs[0]].shape
    if em.graph.type_of(x).shape != out_shape:
        x = em.op("reshape", [x], shape=out_shape)
    return [x]


PASS = node_pass(RULE, "lower", _lower_reduce_max, __doc__ or "", post=ops_absent(*PICKS), matches=PICKS)
