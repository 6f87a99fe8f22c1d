"""``where`` with a constant mask -> ``a · m + b · (1 - m)`` (Mul, Add; no Select layer).

Restricted TensorRT and DLA have no Select layer (ONNX Where). When the condition is computed by
``const`` nodes alone, its values are known: ``m`` is the 0/1 float constant of ``cond != 0`` and
``1 - m`` is folded too, so the blend costs two Mul and one Add. An all-true (all-false) mask
makes the op an identity of ``a`` (``b``), broadcast to the result's shape if needed.

Semantics guaranteed: the result equals ``where(cond, a, b)`` bit for bit wherever the branch
not selected is finite (``x · 1 = x``, ``y · 0 = ±0``, ``x + ±0 = x`` except that a selected
``-0.0`` may come out as ``+0.0``). Where the unselected branch holds ±inf or NaN the result is
NaN (``inf · 0``): a mask that discards non-finite values (e.g. ``-inf`` logits) must be written
as an additive bias instead. A condition that is a parameter or buffer (values known only with
the weights) is left alone, and the coverage report names it.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Graph, Node
from netdsl.passes.base import ops_absent
from netdsl.passes.known_values import absorb_producer, known_array
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "where_to_blend"


def _broadcast(em: Emitter, x: str, shape: tuple[int, ...]) -> str:
    """``x`` broadcast to ``shape`` by adding zeros (nothing when it already has that shape)."""
    if em.graph.type_of(x).shape == shape:
        return x
    return em.op("add", [x, em.const(np.zeros(shape), em.graph.type_of(x).dtype, "expand")], "expanded")


def _blend(node: Node, em: Emitter) -> list[str] | None:
    cond, a, b = node.inputs
    mask = known_array(em, cond)
    if mask is None:
        return None
    absorb_producer(em, cond)
    out = em.graph.values[node.outputs[0]]
    selected = np.asarray(mask) != 0
    if selected.all() or not selected.any():
        return [_broadcast(em, a if selected.all() else b, out.shape)]
    keep = em.const(selected.astype(np.float64), out.dtype, "mask")
    drop = em.const((~selected).astype(np.float64), out.dtype, "unmask")
    return [em.op("add", [em.op("mul", [a, keep]), em.op("mul", [b, drop])])]


def _mask_unknown(graph: Graph, node: Node) -> bool:
    """A ``where`` this pass leaves: its condition is not a ``const`` node's output."""
    producer = graph.producers().get(node.inputs[0])
    return producer is None or producer.op != "const"


PASS = node_pass(RULE, "lower", _blend, __doc__ or "", matches=("where",),
                 post=ops_absent("where", when="its mask is a constant", kept=_mask_unknown))
