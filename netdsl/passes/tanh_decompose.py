"""``tanh`` -> ``2 * sigmoid(2x) - 1``.

ONNX Tanh is not in the restricted layer set (no public source), Sigmoid and elementwise ops are
assumed to be (NVIDIA's restricted-mode CSA model uses them). The identity is exact in real
arithmetic; in float32 it differs from tanh by a few ulps of 1 near zero.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "tanh_decompose"


def _decompose_tanh(node: Node, em: Emitter) -> list[str] | None:
    if node.op != "tanh":
        return None
    x = node.inputs[0]
    two = em.scalar(2.0, x)
    gate = em.op("sigmoid", [em.op("mul", [x, two])])
    return [em.op("sub", [em.op("mul", [gate, two]), em.scalar(1.0, x)])]


PASS = node_pass(RULE, "lower", _decompose_tanh, __doc__ or "", post=ops_absent("tanh"))
