"""``attention`` (global or windowed multi-head, optional bias) -> conv, elementwise, shuffle, softmax.

Restricted TensorRT has no MatMul on two activations, no Einsum and no Reduce layer. Both matrix
products of ``softmax(scale·q·kᵀ + bias)·v`` are therefore written as a broadcast product followed
by a sum done by a 1x1 convolution with a constant kernel, the summed axis being moved to the
channel axis of a ``[B·h, ·, ·, ·]`` view:

* logits: ``q`` viewed as ``[B·h, d, Lq, 1]`` times ``k`` viewed as ``[B·h, d, 1, Lk]`` gives
  ``[B·h, d, Lq, Lk]``; a conv with kernel ``scale·ones[1, d, 1, 1]`` sums ``d`` (and applies the
  scale) -> ``[B, h, Lq, Lk]``; then ``+ bias`` (broadcast) and softmax over the last axis;
* output: the weights viewed as ``[B·h, Lk, Lq, 1]`` times ``v`` viewed as ``[B·h, Lk, 1, dv]``
  gives ``[B·h, Lk, Lq, dv]``; a conv with kernel ``ones[1, Lk, 1, 1]`` sums ``Lk`` -> ``[B, h, Lq, dv]``.

Cost: the multiply-adds are those of the two matrix products, but the products are materialised:
``B·h·Lq·Lk·d`` and ``B·h·Lq·Lk·dv`` elements, ``d`` (resp. ``dv``) times the logit tensor, so the
lowering is memory-bound. For window attention that is acceptable: Swin-T's first stage (64
windows of 49 tokens per image, 3 heads, ``d = 32``) materialises 14.8 M floats (59 MB) per image
and product. For global attention over a large map it grows as ``L²·d``; the lowering is meant
for the restricted targets, which have no matrix-product layer, and the other targets keep the op.

A Swin relative-position bias arrives as the optional ``bias`` input, usually a ``gather`` of the
bias table by the index buffer; that gather is left alone here (constant folding turns it into a
constant once the weights are known).
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "lower_attention"


def _channel_sum(em: Emitter, x: str, scale: float) -> str:
    """``scale ·`` the sum over axis 1 of the 4-D ``x``, by a 1x1 conv with a constant kernel: [N, 1, H, W]."""
    t = em.graph.type_of(x)
    kernel = em.const(np.full((1, t.shape[1], 1, 1), scale), t.dtype, "ones")
    return em.op("conv", [x, kernel], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)


def _view(em: Emitter, x: str, perm: tuple[int, int, int, int] | None, shape: tuple[int, ...]) -> str:
    """``x`` (optionally transposed by ``perm``) reshaped to ``shape``."""
    moved = em.op("transpose", [x], perm=perm) if perm else x
    return em.op("reshape", [moved], shape=shape)


def _lower_attention(node: Node, em: Emitter) -> list[str] | None:
    if node.op != "attention":
        return None
    q, k, v, *bias = node.inputs
    b, h, lq, d = em.graph.type_of(q).shape
    lk, dv = em.graph.type_of(v).shape[2:]
    swap = (0, 1, 3, 2)

    products = em.op("mul", [_view(em, q, swap, (b * h, d, lq, 1)), _view(em, k, swap, (b * h, d, 1, lk))])
    logits = em.op("reshape", [_channel_sum(em, products, float(node.attrs["scale"]))], "logits",
                   shape=(b, h, lq, lk))
    if bias:
        logits = em.op("add", [logits, bias[0]], "biased")
    weights = em.op("softmax", [logits], "attn", axis=-1)

    weighted = em.op("mul", [_view(em, weights, swap, (b * h, lk, lq, 1)), _view(em, v, None, (b * h, lk, 1, dv))])
    return [em.op("reshape", [_channel_sum(em, weighted, 1.0)], shape=(b, h, lq, dv))]


PASS = node_pass(RULE, "lower", _lower_attention, __doc__ or "", post=ops_absent("attention"))
