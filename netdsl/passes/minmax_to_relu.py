"""``minimum(a, b)`` -> ``a - relu(a - b)`` and ``maximum(a, b)`` -> ``a + relu(b - a)``.

Restricted mode's Min and Max elementwise layers are not established (the profile allows them
only as an assumption), while Relu, Sub and Add are: ``min(a, b) = a - max(a - b, 0)``. The
operands broadcast as in the original op, so the result has its shape.

Error bound (float32): where ``a`` wins (``a <= b`` for minimum) the Relu is 0 and the result is ``a``
exactly. Where ``b`` wins it is ``a - fl(a - b)``: exactly ``b`` when ``a`` and ``b`` are within a
factor of 2 of each other with the same sign (Sterbenz), else within 1.5 ulp of
``max(|a|, |b|)`` of it. Valid for every finite input.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "minmax_to_relu"


def _lower_minmax(node: Node, em: Emitter) -> list[str] | None:
    a, b = node.inputs
    if node.op == "minimum":
        return [em.op("sub", [a, em.op("relu", [em.op("sub", [a, b])], "excess")])]
    return [em.op("add", [a, em.op("relu", [em.op("sub", [b, a])], "excess")])]


PASS = node_pass(RULE, "lower", _lower_minmax, __doc__ or "", matches=("minimum", "maximum"),
                 post=ops_absent("minimum", "maximum"))
