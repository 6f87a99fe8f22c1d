"""``softmax`` -> ``exp(x - max) / sum(exp(x - max))`` with explicit reductions.

For a profile that has Exp but no Softmax layer. The subtraction of the maximum is kept: it is
what keeps ``exp`` from overflowing for large logits, so the decomposition is as stable as the
op. The maximum and the sum are ``reduce_max`` / ``reduce_sum`` nodes (``keepdims``); where
Reduce layers are not allowed either, run ``reduce_max_to_elementwise`` (pairwise maxima with
Relu) and ``reduce_to_conv`` (constant-ones convolutions) after this pass.

Not in the bundled TensorRT pipelines: restricted mode is assumed to have Softmax but not Exp,
and DLA has Softmax (Orin) but no Exp, so there the op is better left alone.
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "softmax_decompose"


def _decompose_softmax(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    axes = (node.attrs["axis"] % em.graph.type_of(x).rank,)
    peak = em.op("reduce_max", [x], "max", axes=axes, keepdims=True)
    e = em.op("exp", [em.op("sub", [x, peak], "shifted")])
    total = em.op("reduce_sum", [e], "sum", axes=axes, keepdims=True)
    return [em.op("div", [e, total])]


PASS = node_pass(RULE, "lower", _decompose_softmax, __doc__ or "", matches=("softmax",), post=ops_absent("softmax"))
