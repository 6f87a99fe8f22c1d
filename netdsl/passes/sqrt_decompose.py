"""``sqrt`` -> Newton steps of element-wise ops, as many as the input's declared range needs.

ONNX Sqrt (TensorRT's unary kSQRT) is in neither restricted layer set. For a in [lo, hi] (the
node's ``range`` attribute, :func:`netdsl.opdefs.check_valid_range`, else :data:`DEFAULT_RANGE`):

* start: ``y0 = (a + c) / (2 sqrt c)`` with c = sqrt(lo * hi), the range's geometric middle;
  ``y0 / sqrt(a) = cosh(ln(a / c) / 2) >= 1``, largest at both ends of the range;
* steps: ``y <- alpha y + (1 - alpha) a / y``, whose only positive fixed point is sqrt(a).
  alpha = 1/2 is Heron's (Newton's) step, quadratic near the root; a smaller power of two
  divides a far too large y by about 1/alpha per step instead of 2.

The schedule of alphas is derived from the range (:func:`schedule`): the image of the interval
of ``y / sqrt(a)`` under each step is computed exactly (each step is a convex function of y /
sqrt(a)), each step takes the alpha that leaves the narrowest interval, and steps are added until
every a in the range is within 2^-24 relative of its root in exact arithmetic. The default range
1e-12 .. 1e12 takes 7 steps (alphas 1/256, 1/256, 1/2, 1/4, 1/2, 1/2, 1/2) where Heron's step
alone would take 23; ``var + eps`` of a layer norm with eps = 1e-5 and the default upper bound
takes 7 as well, 1e-5 .. 1e4 takes 6.

Error bound (measured through ONNX Runtime 1.32 against float64 sqrt on 2,000,001 log-spaced
float32 inputs): within 0.92 ulp over the default range (0.31 on average), 0.75 ulp over
1e-5 .. 1e12 and 1e-5 .. 1e4. Nodes: 2 for the start, 3 per step, 1 per distinct alpha (26 for
the default range, 22 for 1e-5 .. 1e4); a reciprocal square root adds one Div.

Valid input range: [lo, hi]; the first node carries it
(:data:`netdsl.passes.softmax_exp.INPUT_RANGE`) for the range check of restricted compiles, and a
constant input outside it is a located compile error. Another pass that emits ``sqrt`` on a value
it knows to be bounded (``var + eps`` of a normalisation lies in [eps, ...]) passes the bounds as
the node's ``range`` attribute, ``em.op("sqrt", [v], range=(eps, hi))``, and must run before this
pass. 0 is outside every range (the steps only
approach it by factors of alpha); ``sqrt(var + eps)`` with eps > 0 never meets it.
"""

from __future__ import annotations

import math

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.ir import Node
from netdsl.opdefs import check_valid_range
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass
from netdsl.passes.softmax_exp import INPUT_RANGE

RULE = "sqrt_decompose"

DEFAULT_RANGE = (1e-12, 1e12)
"""The input range a ``sqrt`` without a ``range`` attribute is lowered for."""

TOLERANCE = 2.0**-24
ALPHAS = tuple(2.0**-k for k in range(1, 9))
MAX_STEPS = 64


def _image(low: float, high: float, alpha: float) -> tuple[float, float]:
    """The interval of ``f(u) = alpha u + (1 - alpha) / u`` over ``u`` in [low, high] (f is convex)."""
    def f(u: float) -> float:
        return alpha * u + (1.0 - alpha) / u
    bottom = min(max(math.sqrt((1.0 - alpha) / alpha), low), high)
    return f(bottom), max(f(low), f(high))


def schedule(lo: float, hi: float) -> list[float]:
    """The step alphas that bring every ``a`` in [lo, hi] within :data:`TOLERANCE` of sqrt(a) (module docstring)."""
    low, high = 1.0, math.cosh(math.log(hi / lo) / 4.0)
    steps: list[float] = []
    while max(high - 1.0, 1.0 - low) > TOLERANCE:
        if len(steps) == MAX_STEPS:
            raise ValueError(f"no sqrt schedule of {MAX_STEPS} steps for the range {lo:g} .. {hi:g}")
        alpha = min(ALPHAS, key=lambda a: max(-math.log(_image(low, high, a)[0]), math.log(_image(low, high, a)[1])))
        low, high = _image(low, high, alpha)
        steps.append(alpha)
    return steps


def input_range(node: Node) -> tuple[float, float]:
    """The range a ``sqrt`` (or fractional ``pow``) node is lowered for."""
    return check_valid_range(node.attrs) or DEFAULT_RANGE


def check_constant(em: Emitter, node: Node, lo: float, hi: float) -> None:
    """A located error when the input of ``node`` is a constant with a value outside [lo, hi]."""
    value = em.const_value(node.inputs[0])
    if value is None or value.size == 0:
        return
    bad = value[(value < lo) | (value > hi)]
    if bad.size:
        prov = node.provenance
        raise NetdslError(Diagnostic(
            f"{node.op} of the constant {float(bad.flat[0]):g} is outside the range {lo:g} .. {hi:g} its "
            f"lowering ({RULE}) is exact for", prov.span, chain=prov.chain,
            help="declare the input's range, e.g. sqrt(x, range=[lo, hi]), or compute the constant in the spec"))


def emit_sqrt(em: Emitter, a: str, lo: float, hi: float, op: str) -> str:
    """The Newton form of sqrt(a) for a in [lo, hi]; ``op`` names the lowered op for the range check."""
    c = math.sqrt(lo * hi)
    start = em.op("add", [a, em.scalar(c, a)], **{INPUT_RANGE: (op, lo, hi)})
    y = em.op("mul", [start, em.scalar(0.5 / math.sqrt(c), a)], "y0")
    scaled: dict[float, str] = {}
    for alpha in schedule(lo, hi):
        if alpha not in scaled:
            scaled[alpha] = em.op("mul", [a, em.scalar(1.0 - alpha, a)])
        y = em.op("add", [em.op("mul", [y, em.scalar(alpha, a)]), em.op("div", [scaled[alpha], y])], "y")
    return y


def _decompose_sqrt(node: Node, em: Emitter) -> list[str] | None:
    lo, hi = input_range(node)
    check_constant(em, node, lo, hi)
    return [emit_sqrt(em, node.inputs[0], lo, hi, "sqrt")]


PASS = node_pass(RULE, "lower", _decompose_sqrt, __doc__ or "", matches=("sqrt",), post=ops_absent("sqrt"))
