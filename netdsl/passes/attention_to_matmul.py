"""``attention`` (global or windowed multi-head, optional bias) -> two ``matmul`` and a ``softmax``, for runtimes
with MatMul.

ONNX has no attention op below opset 23, and standard TensorRT builds it from matrix products; the
op's definition is ``softmax(scale * q @ kᵀ + bias) @ v`` over the last axis, and this pass writes it
so: ``transpose(k)`` (the last two axes), ``matmul``, ``mul`` by the scale, ``add`` of the bias if
there is one, ``softmax`` over the last axis, ``matmul`` with ``v``; emitted to ONNX, Transpose,
MatMul, Mul, (Add,) Softmax, MatMul. The restricted TensorRT targets, which have no product of two
activations, use ``lower_attention`` instead. Exact: the operations of the op's definition, in its order.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "attention_to_matmul"


def _to_matmul(node: Node, em: Emitter) -> list[str] | None:
    q, k, v, *bias = node.inputs
    keys = em.op("transpose", [k], "keys_t", perm=(0, 1, 3, 2))
    scale = em.const(float(node.attrs["scale"]), em.graph.type_of(q).dtype, "scale")
    logits = em.op("mul", [em.op("matmul", [q, keys]), scale], "logits")
    if bias:
        logits = em.op("add", [logits, bias[0]], "biased")
    return [em.op("matmul", [em.op("softmax", [logits], "attn", axis=-1), v])]


PASS = node_pass(RULE, "lower", _to_matmul, __doc__ or "", matches=("attention",), post=ops_absent("attention"))
