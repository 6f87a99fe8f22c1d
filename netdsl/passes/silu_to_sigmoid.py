"""``silu`` -> ``x * sigmoid(x)``, for every ONNX target.

ONNX has no SiLU (Swish) op in the opsets netdsl emits; the op's definition ``x * sigmoid(x)`` is
written as ``sigmoid`` and ``mul``, ops every ONNX target has (the restricted TensorRT profiles
included). Exact: the op's definition itself.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "silu_to_sigmoid"


def _to_sigmoid(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    return [em.op("mul", [x, em.op("sigmoid", [x])])]


PASS = node_pass(RULE, "lower", _to_sigmoid, __doc__ or "", matches=("silu",), post=ops_absent("silu"))
