"""``exp`` -> softmax over a pair of lanes: ``e^x = (p0 / p1)^2`` with ``p = softmax([x/4, -x/4])``.

ONNX Exp (TensorRT's unary kEXP) is in neither restricted layer set; Softmax, Mul, Div, Slice and
Reshape are. ``p0 / p1 = e^(x/4 + x/4) = e^(x/2)`` (:mod:`netdsl.passes.softmax_exp`) and one
product squares it. Halving first keeps the smaller softmax lane at or above e^-44.4, a normal
float32, up to the largest x whose e^x is finite (88.72): without it the lane is subnormal above
x = 87.3 and runtimes that flush subnormals to zero (ONNX Runtime's exponential does) return Inf
for e^x up to 3.4e38. Scaling by 1/4 and -1/4 is exact, so ``p0 / p1`` sees x itself.

Error bound (measured through ONNX Runtime 1.32 against float64 exp, 2,000,001 float32 inputs
evenly spread over [-103, 88.72]): at most 5.3 ulp (relative 3.7e-7) where e^x is a normal
float32, 0.7 ulp on average; where e^x is subnormal (x < -87.3) the result is within 1.4e-45 of
it; above 88.72 it is Inf, as e^x is in float32. Valid input range: all finite floats. ``x = ±inf``
gives NaN (the softmax subtracts an infinite maximum from itself), so the node reading x carries
the input range (:data:`netdsl.passes.softmax_exp.INPUT_RANGE`) and the range check of a
restricted compile refuses calibration inputs that reach an infinite x. NaN propagates.
Nodes: 6 compute nodes (Mul, Softmax, 2 Slice, Div, Mul) and the view reshapes.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass
from netdsl.passes.softmax_exp import INPUT_RANGE, lane_const, lane_view, pair_ratio, restore

RULE = "exp_decompose"

FINITE = float(np.finfo(np.float32).max)


def _decompose_exp(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    view = lane_view(em, x)
    pair = em.op("mul", [view, lane_const(em, [0.25, -0.25], x)], **{INPUT_RANGE: ("exp", -FINITE, FINITE)})
    half = pair_ratio(em, pair)
    return [restore(em, em.op("mul", [half, half]), x)]


PASS = node_pass(RULE, "lower", _decompose_exp, __doc__ or "", matches=("exp",), post=ops_absent("exp"))
