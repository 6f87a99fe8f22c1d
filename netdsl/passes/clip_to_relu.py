"""``relu6``, ``hardsigmoid`` and ``clamp`` -> ``x - relu(x - hi) + relu(lo - x)``, Relu and elementwise only.

Restricted mode has no Clip or HardSigmoid layer, while Relu and elementwise Add/Sub/Mul are
allowed. A clamp to ``[lo, hi]`` is ``x - relu(x - hi) + relu(lo - x)`` (a missing bound drops
its term); ``relu6(x)`` is the clamp to ``[0, 6]`` and ``hardsigmoid(x)`` is the clamp of
``x + 3`` to ``[0, 6]`` times ``1/6`` (as ``hardswish_decompose`` writes it).

Error bound (float32): inside ``[lo, hi]`` both Relus are 0 and the result is ``x`` exactly. Above
``hi`` the result is ``x - fl(x - hi)``: exactly ``hi`` while ``hi <= x <= 2 hi`` (Sterbenz), else
within 1.5 ulp of ``max(|x|, |hi|)`` of it (the rounding of ``x - hi``, then of the result); below
``lo`` symmetrically. ``hardsigmoid`` adds the rounding of ``x + 3`` and of the product by
``fl(1/6)``: 2 ulp of the result more. Valid for every finite input.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "clip_to_relu"


def clamp_with_relu(em: Emitter, x: str, lo: float | None, hi: float | None) -> str:
    """``x`` clamped to ``[lo, hi]`` (None: unbounded) with Relu, Sub and Add, exact inside the bounds."""
    y = x
    if hi is not None:
        y = em.op("sub", [y, em.op("relu", [em.op("sub", [x, em.scalar(hi, x)])], "above")])
    if lo is not None:
        y = em.op("add", [y, em.op("relu", [em.op("sub", [em.scalar(lo, x), x])], "below")])
    return y


def _lower_clip(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    if node.op == "relu6":
        return [clamp_with_relu(em, x, 0.0, 6.0)]
    if node.op == "clamp":
        return [clamp_with_relu(em, x, node.attrs.get("min"), node.attrs.get("max"))]
    clipped = clamp_with_relu(em, em.op("add", [x, em.scalar(3.0, x)]), 0.0, 6.0)
    return [em.op("mul", [clipped, em.scalar(1.0 / 6.0, x)])]


CLIPS = ("relu6", "hardsigmoid", "clamp")

PASS = node_pass(RULE, "lower", _lower_clip, __doc__ or "", matches=CLIPS, post=ops_absent(*CLIPS))
