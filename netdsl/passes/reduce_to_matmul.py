"""Mean or sum over leading axes as a matrix product: ``reduce_mean(x, axes)`` -> ``ones/R @ x``.

ONNX Runtime's CPU reductions are fast over the innermost axes (the mean over H and W of an NCHW
map) but slow over axes that have a large kept block after them, and slowest at batch 1: the mean
over H and W of ConvNeXt's channels-last 1 x 7 x 7 x 3072 map, over the 3136 positions of a
1 x 3136 x 96 token map and over the channels of a 1 x 96 x 56 x 56 map each took 7-29x as long as
the same reduction as a matrix product with a constant row, ``[1, R] @ x.reshape(P, R, T)``
(single thread, ONNX Runtime 1.32, side by side; no case measured was slower).
So, for the ``onnx`` target, a ``reduce_mean`` or ``reduce_sum`` whose
reduced axes are one contiguous run followed by kept axes of more than one element becomes a
reshape to ``[P, R, T]`` (P kept elements before the run, R reduced, T after it), a ``matmul``
with the row ``1/R`` (mean) or ``1`` (sum), and a reshape to the result's shape. Only rounding
differs (the mean multiplies by 1/R instead of dividing by R).
"""

from __future__ import annotations

import math

import numpy as np

from netdsl.ir import Graph, Node
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "reduce_to_matmul"
REDUCTIONS = ("reduce_mean", "reduce_sum")


def _leading_run(graph: Graph, node: Node) -> tuple[int, int, int] | None:
    """(P, R, T) when ``node`` reduces one contiguous run of its input's axes with more than one element after it."""
    shape = graph.type_of(node.inputs[0]).shape
    axes = sorted({a % len(shape) for a in node.attrs["axes"]})
    if not axes or axes != list(range(axes[0], axes[-1] + 1)):
        return None
    first, last = axes[0], axes[-1]
    after = math.prod(shape[last + 1:])
    return (math.prod(shape[:first]), math.prod(shape[first:last + 1]), after) if after > 1 else None


def _as_matmul(node: Node, em: Emitter) -> list[str] | None:
    run = _leading_run(em.graph, node)
    if run is None:
        return None
    p, r, after = run
    x = node.inputs[0]
    row = em.const(np.full((1, r), 1.0 / r if node.op == "reduce_mean" else 1.0), em.graph.type_of(x).dtype, "ones")
    product = em.op("matmul", [row, em.op("reshape", [x], shape=(p, r, after))])
    return [em.op("reshape", [product], shape=em.graph.type_of(node.outputs[0]).shape)]


def _post(graph: Graph) -> list[str]:
    """Reductions still over a leading run of axes (there should be none)."""
    return [f"{node.op} over {list(node.attrs['axes'])} of {graph.type_of(node.inputs[0])} is left"
            for node in graph.nodes if node.op in REDUCTIONS and _leading_run(graph, node) is not None]


PASS = node_pass(RULE, "optimize", _as_matmul, __doc__ or "", post=_post, matches=REDUCTIONS)
