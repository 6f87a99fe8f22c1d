"""``neg`` -> ``x * -1``.

ONNX Neg is an IUnaryLayer op with no rule in the restricted profiles (not even DLA runs it through
TensorRT 8.6), while elementwise Mul is allowed. Multiplying by -1 flips the sign bit only, so the
rewrite is exact for every float, infinities, signed zeros and NaN included.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "neg_to_mul"


def _neg_to_mul(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    return [em.op("mul", [x, em.scalar(-1.0, x)])]


PASS = node_pass(RULE, "lower", _neg_to_mul, __doc__ or "", matches=("neg",), post=ops_absent("neg"))
