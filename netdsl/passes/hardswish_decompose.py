"""``hardswish`` -> ``x * (relu(x + 3) - relu(x - 3)) / 6``.

ONNX HardSwish (and the Clip it is often written with) is not in the restricted layer set, while
Relu and elementwise Add/Sub/Mul are: ``clip(x + 3, 0, 6) = relu(x + 3) - relu(x - 3)``. The
constants are one-element tensors of the input's rank, so every elementwise layer sees equal ranks.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "hardswish_decompose"


def _decompose_hardswish(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    three = em.scalar(3.0, x)
    upper = em.op("relu", [em.op("add", [x, three])])
    lower = em.op("relu", [em.op("sub", [x, three])])
    gate = em.op("mul", [em.op("sub", [upper, lower], "clip"), em.scalar(1.0 / 6.0, x)])
    return [em.op("mul", [x, gate])]


PASS = node_pass(RULE, "lower", _decompose_hardswish, __doc__ or "", matches=("hardswish",),
                 post=ops_absent("hardswish"))
