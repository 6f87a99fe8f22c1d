"""Average pooling before per-pixel affine ops: ``avgpool(conv1x1(x))`` -> ``conv1x1(avgpool(x))``.

An average pool without padding, and a mean over H and W (``reduce_mean`` over axes 2 and 3
keeping them), compute every output pixel as a combination of input pixels whose weights sum to
one. A per-pixel affine map of the channels therefore commutes with them, bias included:
``W (sum_k a_k x_k) + b = sum_k a_k (W x_k + b)``. Such maps are a 1x1 conv (stride 1, no padding,
any groups), a batch norm, and a product or sum with a tensor that is constant over H and W (a
layer scale, a bias); a sum of two maps pools term by term. So the pool moves up through residual
sums, layer scales and pointwise convs, and those convs run on the pooled map. CSA's classifier
pools the last 6x6 map (AvgPool2d(6)), so the last block's ``mlp`` conv (2304 -> 768 channels)
runs on one pixel instead of 36: 63.7 M MACs fewer of 3.68 G at 224x224.

The pool moves only through values nothing else reads (otherwise the full map would still be
computed, and the op twice), only when it shrinks the map, and only when at least one conv ends up
on the pooled map (moving it through sums alone saves nothing). Where it stops, each branch gets
its own copy of the pool. Only rounding differs (float32: a few ulps).
"""

from __future__ import annotations

from netdsl.ir import Node, TensorType
from netdsl.passes.conv_before_resize import is_pointwise
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "pool_before_conv"


def _is_shrinking_mean(em: Emitter, node: Node) -> bool:
    """An average pool without padding, or a mean over H and W keeping them, that makes the map smaller."""
    if node.op == "avgpool":
        if any(node.attrs["pads"]):
            return False
    elif node.op != "reduce_mean" or tuple(sorted(node.attrs["axes"])) != (2, 3) or not node.attrs["keepdims"]:
        return False
    x = em.graph.type_of(node.inputs[0])
    y = em.graph.type_of(node.outputs[0])
    return x.rank == 4 and y.shape[2] * y.shape[3] < x.shape[2] * x.shape[3]


def _constant_over_map(t: TensorType, out: TensorType) -> bool:
    """True when ``t`` broadcasts against the NCHW ``out`` with size 1 (or no axis) at H and W."""
    shape = (1,) * (out.rank - t.rank) + tuple(t.shape)
    return shape[-2:] == (1, 1)


def _pooled_operands(em: Emitter, node: Node) -> list[bool] | None:
    """Which inputs of ``node`` the pool moves onto (the rest pass unchanged), or None if it cannot move through."""
    if node.op == "conv" and is_pointwise(em, node) or node.op == "batchnorm":
        return [True] + [False] * (len(node.inputs) - 1)
    if node.op not in ("add", "mul"):
        return None
    out = em.graph.type_of(node.outputs[0])
    roles = []
    for value in node.inputs:
        t = em.graph.type_of(value)
        if t.shape == out.shape:
            roles.append(True)
        elif _constant_over_map(t, out):
            roles.append(False)
        else:
            return None
    # A product of two maps is not the product of their means.
    return roles if node.op == "add" or sum(roles) == 1 else None


def _through(em: Emitter, value: str) -> tuple[Node, list[bool]] | None:
    """The node computing ``value`` if the pool can move above it, with its operands to pool."""
    node = em.producer(value)
    if node is None or not em.used_once(value):
        return None
    roles = _pooled_operands(em, node)
    return None if roles is None else (node, roles)


def _reaches_conv(em: Emitter, value: str) -> bool:
    """True when moving the pool above ``value`` puts at least one conv on the pooled map."""
    step = _through(em, value)
    if step is None:
        return False
    node, roles = step
    return node.op == "conv" or any(_reaches_conv(em, v) for v, pooled in zip(node.inputs, roles) if pooled)


def _pooled(em: Emitter, pool: Node, value: str) -> str:
    """``value`` as if computed on the pooled map: the ops above it re-emitted on pooled operands."""
    step = _through(em, value)
    if step is None:
        return em.op(pool.op, [value], "pooled", **pool.attrs)
    node, roles = step
    em.absorb(node)
    inputs = [_pooled(em, pool, v) if pooled else v for v, pooled in zip(node.inputs, roles)]
    return em.op(node.op, inputs, node.op, **node.attrs)


def _move(node: Node, em: Emitter) -> list[str] | None:
    if not _is_shrinking_mean(em, node) or not _reaches_conv(em, node.inputs[0]):
        return None
    return [_pooled(em, node, node.inputs[0])]


PASS = node_pass(RULE, "optimize", _move, __doc__ or "")
