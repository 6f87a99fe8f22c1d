"""``attention`` (global or windowed multi-head, optional bias) -> conv, elementwise, shuffle, slice, concat, softmax.

Restricted TensorRT has no MatMul on two activations, no Einsum and no Reduce layer. The op is
decomposed into its two products, the scale, the bias and the softmax, and both products are
lowered by :mod:`netdsl.passes.contraction` (broadcast products summed over the contracted axis
by constant-kernel 1x1 convolutions, cut into chunks so that no piece is much larger than the
attention matrix):

* logits: ``q`` viewed as ``[B·h, d, Lq, 1]`` and ``k`` viewed as ``[B·h, d, 1, Lk]`` contract
  over ``d`` (the conv kernel also applies the scale) -> ``[B, h, Lq, Lk]``; then ``+ bias``
  (broadcast) and softmax over the last axis;
* output: the weights viewed as ``[B·h, Lk, Lq, 1]`` and ``v`` viewed as ``[B·h, Lk, 1, dv]``
  contract over ``Lk`` -> ``[B, h, Lq, dv]``.

Cost: the multiply-adds of the two matrix products; the products are materialised piece by
piece, so the traffic is about ``2·B·h·Lq·Lk·(d + dv)`` elements (each product written and read
once) and the largest piece about the attention matrix ``B·h·Lq·Lk`` (or 4 MiB, whichever is
larger). Exact up to float32 summation order.

A Swin relative-position bias arrives as the optional ``bias`` input, usually a ``gather`` of the
bias table by the index buffer; that gather is left alone here (constant folding turns it into a
constant once the weights are known).
"""

from __future__ import annotations

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.contraction import contract, view
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "lower_attention"
SWAP = (0, 1, 3, 2)


def _lower_attention(node: Node, em: Emitter) -> list[str] | None:
    q, k, v, *bias = node.inputs
    b, h, lq, d = em.graph.type_of(q).shape
    lk, dv = em.graph.type_of(v).shape[2:]

    scores = contract(em, view(em, q, SWAP, (b * h, d, lq, 1)), view(em, k, SWAP, (b * h, d, 1, lk)),
                      float(node.attrs["scale"]))
    logits = em.op("reshape", [scores], "logits", shape=(b, h, lq, lk))
    if bias:
        logits = em.op("add", [logits, bias[0]], "biased")
    weights = em.op("softmax", [logits], "attn", axis=-1)

    out = contract(em, view(em, weights, SWAP, (b * h, lk, lq, 1)), view(em, v, None, (b * h, lk, 1, dv)), 1.0)
    return [em.op("reshape", [out], shape=(b, h, lq, dv))]


PASS = node_pass(RULE, "lower", _lower_attention, __doc__ or "", matches=("attention",), post=ops_absent("attention"))
