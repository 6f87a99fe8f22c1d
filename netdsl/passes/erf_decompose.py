"""``erf`` and exact ``gelu`` -> Relu, Softmax and element-wise ops, within 1e-6 of erf for every float32.

ONNX Erf and Gelu are in neither restricted layer set. For u >= 0 the complementary error
function is written ``erfc(u) = P(t) e^(-u^2)`` with ``t = 1 / (1 + p u)`` and
``P(t) = 1 - (1 - t) S(t)``, S a polynomial of degree 4 (:data:`S_COEFFICIENTS`). p and S come
from a weighted minimax fit (Lawson's iteration on a dense Chebyshev grid of t, weight
``(1 - t) e^(-u^2)``, i.e. the error in erfc itself) over u in [0, 10]; the fitted form is within
2.7e-8 of erfc in exact arithmetic (tests/test_pass_math.py re-measures it). ``P(1) = 1``
holds exactly in floating point (``1 - t`` is 0 at u = 0), so erfc(0) = 1 exactly.

Both signs at once: the input is spread over two lanes ``[x, -x]`` (one broadcasting Mul),
``u = relu(lane)`` is 0 in the lane of the other sign, and

* ``erf(x) = Q_b - Q_a`` with ``Q = P(t) e^(-u^2)`` of lanes a (x) and b (-x): for x >= 0 that is
  ``1 - erfc(x)``, for x < 0 ``erfc(-x) - 1``; x = 0 gives 0 exactly, |x| >= 4 gives ±1 exactly;
* ``gelu(x) = x * (0.5 + Q_b - Q_a)`` with the lanes scaled by 1/sqrt(2) and Q halved (S and
  the 1 of P scaled by 1/2, exact): ``x * Phi(x)`` where ``Phi(x) = 1 - erfc(x/sqrt 2)/2`` for
  x >= 0 and ``erfc(-x/sqrt 2)/2`` for x < 0; a Phi below 3e-8 rounds to 0 exactly (no residue
  that a large |x| would multiply).

``e^(-u^2)`` comes from a softmax over the pair ``[-u^2, relu(-u^2)]`` (the second lane is 0,
and stays 0 when u is infinite; :mod:`netdsl.passes.softmax_exp`), which is exact to a few
ulps and underflows to 0 where e^(-u^2) is below the float32 range, so ±inf, huge, tiny and
subnormal inputs all work. NaN propagates.

Error bound (measured through ONNX Runtime 1.32 against float64 ``math.erf`` on 4,291,066
float32 inputs: every 997th bit pattern from 0 through the subnormals and normals to inf, of
either sign): erf within 2.8e-7 absolute (largest near |x| = 0.0044, where ``1 - erfc`` rounds),
gelu within 1.1e-7 * max(1, |x|) absolute. Valid input range: all float32. Nodes (compute, beside
the view reshapes and constants): erf 27, gelu 29.
"""

from __future__ import annotations

import math

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass
from netdsl.passes.softmax_exp import lane, lane_const, lane_view, pair_ratio, restore

RULE = "erf_decompose"

P = 0.445
"""The scale of u in ``t = 1 / (1 + p u)``."""

S_COEFFICIENTS = (0.9855753348119309, 0.8632610486101736, 0.1384293250810747, 0.8197825520907336,
                  -0.27136880413714126)
"""S(t) = sum c_i t^i, lowest degree first."""


def scaled_erfc(em: Emitter, lanes: str, gain: float) -> str:
    """``gain * erfc(relu(lanes))`` element-wise, for a ``[d0, 2, m, n]`` lane tensor (see the module docstring)."""
    u = em.op("relu", [lanes])
    k = em.scalar(1.0 / P, u)
    t = em.op("div", [k, em.op("add", [u, k])], "t")
    s = em.scalar(gain * S_COEFFICIENTS[-1], u)
    for c in reversed(S_COEFFICIENTS[:-1]):
        s = em.op("add", [em.op("mul", [s, t]), em.scalar(gain * c, u)])
    one_minus_t = em.op("sub", [em.scalar(1.0, u), t])
    poly = em.op("sub", [em.scalar(gain, u), em.op("mul", [one_minus_t, s])], "P")
    neg_square = em.op("mul", [em.op("mul", [u, u]), em.scalar(-1.0, u)])
    # [-u^2, 0] with the 0 taken from relu(-u^2): 0 for every u, also infinite ones (u * 0 would be NaN).
    shape = em.graph.type_of(u).shape
    pair = em.op("concat", [neg_square, em.op("relu", [neg_square])], axis=1)
    pair = em.op("reshape", [pair], shape=(shape[0], 2, 2 * shape[2], shape[3]))
    gauss = em.op("reshape", [pair_ratio(em, pair)], "gauss", shape=shape)
    return em.op("mul", [poly, gauss], "erfc")


def _lanes(em: Emitter, x: str, scale: float) -> tuple[str, str]:
    """The view of ``x`` and the lanes ``[scale x, -scale x]``."""
    view = lane_view(em, x)
    return view, em.op("mul", [view, lane_const(em, [scale, -scale], x)])


def _decompose(node: Node, em: Emitter) -> list[str] | None:
    if node.op == "erf":
        x = node.inputs[0]
        _, lanes = _lanes(em, x, 1.0)
        q = scaled_erfc(em, lanes, 1.0)
        return [restore(em, em.op("sub", [lane(em, q, 1), lane(em, q, 0)]), x)]
    x = node.inputs[0]  # a gelu
    view, lanes = _lanes(em, x, 1.0 / math.sqrt(2.0))
    q = scaled_erfc(em, lanes, 0.5)
    phi = em.op("add", [em.op("sub", [lane(em, q, 1), lane(em, q, 0)]), em.scalar(0.5, view)], "phi")
    return [restore(em, em.op("mul", [view, phi]), x)]


PASS = node_pass(RULE, "lower", _decompose, __doc__ or "", post=ops_absent("erf", "gelu"),
                 matches=("erf", "gelu"))
