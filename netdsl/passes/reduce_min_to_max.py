"""``reduce_min(x)`` -> ``-reduce_max(-x)``, the negations as multiplications by the constant -1.

DLA runs ReduceMax (over C, H and W) but has no ReduceMin layer and no Neg (``trt-dla.toml``);
its elementwise Mul takes rank-4 tensors. So the input is viewed as rank 4 when it has another
rank (reshapes are free), negated by a Mul, reduced by ``reduce_max`` over the same axes of the
view, negated back and reshaped to the result. Exact: negation only flips the sign bit. A
minimum over the batch axis, or over axes that no rank-4 view keeps apart, is left alone.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.rank4_view import DLA_DIM_LIMIT, rank4
from netdsl.passes.reduce_to_conv import runs
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "reduce_min_to_max"


def _reduced_view(shape: tuple[int, ...], axes: set[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A rank-4 view of ``shape`` and its reduced axes (never the first), or None if the runs do not fit in one."""
    merged = runs(shape, axes)
    if merged and merged[0][1]:  # a leading 1 keeps the reduced runs off the batch axis
        merged.insert(0, (1, False))
    view = rank4([e for e, _ in merged], whole=len(merged), limit=DLA_DIM_LIMIT)
    if view is None:
        return None
    return view, tuple(i for i, (_, reduced) in enumerate(merged) if reduced)


def _lower_reduce_min(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    t = em.graph.type_of(x)
    view = _reduced_view(t.shape, {a % t.rank for a in node.attrs["axes"]})
    if view is None:
        return None
    shape, axes = view
    if not axes:  # only length-1 axes reduced
        return [em.op("reshape", [x], shape=em.graph.values[node.outputs[0]].shape)]
    if shape != t.shape:
        x = em.op("reshape", [x], "view", shape=shape)
    minus_one = em.scalar(-1.0, x)
    peak = em.op("reduce_max", [em.op("mul", [x, minus_one], "negated")], "max", axes=axes, keepdims=True)
    y = em.op("mul", [peak, minus_one], "min")
    out_shape = em.graph.values[node.outputs[0]].shape
    return [y if em.graph.type_of(y).shape == out_shape else em.op("reshape", [y], shape=out_shape)]


PASS = node_pass(RULE, "lower", _lower_reduce_min, __doc__ or "", matches=("reduce_min",))
