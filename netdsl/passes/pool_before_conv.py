"""Average pooling before per-pixel affine ops: ``avgpool(conv1x1(x))`` -> ``conv1x1(avgpool(x))``.

An average pool without padding, and a mean over some axes, compute every output element as a
combination of input elements whose weights sum to one. An affine map along an axis the pool does
not average therefore commutes with them, bias included: ``W (sum_k a_k x_k) + b = sum_k a_k (W x_k
+ b)``. Such maps are a 1x1 conv (stride 1, no padding, any groups: along the channels of an NCHW
map), a batch norm, a ``linear`` (along the last axis), and a product or sum with a tensor that is
constant over the averaged axes (a layer scale, a bias); a sum of two maps pools term by term, and
a mean moves through a transpose by averaging the axes the transpose brings there. So the pool
moves up through residual sums, layer scales, transposes and pointwise maps, and those maps run on
the pooled tensor:

* CSA's classifier pools the last 6x6 map (AvgPool2d(6)), so the last block's ``mlp`` conv
  (2304 -> 768 channels) runs on one pixel instead of 36: 63.7 M MACs fewer of 3.68 G at 224x224.
* ConvNeXt's global mean reads ``x + transpose(gamma * pwconv2(...))``, the last block's
  channels-last MLP: its ``pwconv2`` (3072 -> 768) runs on one pixel instead of 49, 113 M MACs
  fewer of 4.46 G.

The pool moves only through values nothing else reads (otherwise the full map would still be
computed, and the op twice), only when it shrinks its input, and only when at least one conv or
linear ends up on the pooled tensor (moving it through sums alone saves nothing). Where it stops,
each branch gets its own copy of the pool: the windowed pool as it was, a mean over the axes it
has reached, keeping them; a mean that dropped its axes gets a reshape to its shape at the end.
Windowed pools move only through ops on NCHW maps (not through transposes or linears). Only
rounding differs (float32: a few ulps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from netdsl.ir import Node, TensorType
from netdsl.passes.conv_before_resize import is_pointwise
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "pool_before_conv"


@dataclass(frozen=True)
class _Pool:
    """The pool being moved up: ``node`` (an ``avgpool`` or a ``reduce_mean``) averaging ``axes`` of the
    value it is applied to (an average pool: H and W of an NCHW map)."""

    node: Node
    axes: frozenset[int]

    @property
    def windowed(self) -> bool:
        return self.node.op == "avgpool"

    def emit(self, em: Emitter, value: str) -> str:
        """The pool applied to ``value``, keeping the averaged axes."""
        if self.windowed:
            return em.op("avgpool", [value], "pooled", **self.node.attrs)
        return em.op("reduce_mean", [value], "pooled", axes=tuple(sorted(self.axes)), keepdims=True)


def _shrinking_pool(em: Emitter, node: Node) -> _Pool | None:
    """``node`` (an average pool or a mean) as a :class:`_Pool` when it is unpadded and makes its input smaller."""
    x = em.graph.type_of(node.inputs[0])
    if node.op == "avgpool":
        y = em.graph.type_of(node.outputs[0])
        if x.rank != 4 or any(node.attrs["pads"]) or y.shape[2] * y.shape[3] >= x.shape[2] * x.shape[3]:
            return None
        return _Pool(node, frozenset((2, 3)))
    axes = frozenset(a % x.rank for a in node.attrs["axes"])
    return _Pool(node, axes) if math.prod(x.shape[a] for a in axes) > 1 else None


def _constant_over(t: TensorType, out: TensorType, axes: frozenset[int]) -> bool:
    """True when ``t`` broadcasts against ``out`` with size 1 (or no axis) on every one of ``axes``."""
    shape = (1,) * (out.rank - t.rank) + tuple(t.shape)
    return all(shape[a] == 1 for a in axes)


def _pooled_operands(em: Emitter, node: Node, pool: _Pool) -> list[bool] | None:
    """Which inputs of ``node`` the pool moves onto (the rest pass unchanged), or None if it cannot move through."""
    rank = em.graph.type_of(node.outputs[0]).rank
    first_only = [True] + [False] * (len(node.inputs) - 1)
    if node.op == "conv":
        return first_only if is_pointwise(em, node) and pool.axes <= {2, 3} else None
    if node.op == "batchnorm":
        return first_only if 1 not in pool.axes else None
    if node.op == "linear":
        return first_only if not pool.windowed and rank - 1 not in pool.axes else None
    if node.op == "transpose":
        return None if pool.windowed else [True]
    if node.op not in ("add", "mul"):
        return None
    out = em.graph.type_of(node.outputs[0])
    roles = []
    for value in node.inputs:
        t = em.graph.type_of(value)
        if t.shape == out.shape:
            roles.append(True)
        elif _constant_over(t, out, pool.axes):
            roles.append(False)
        else:
            return None
    # A product of two maps is not the product of their means.
    return roles if node.op == "add" or sum(roles) == 1 else None


def _above(node: Node, pool: _Pool) -> _Pool:
    """The pool as it applies to the inputs of ``node`` (a transpose moves the averaged axes)."""
    if node.op == "transpose":
        return _Pool(pool.node, frozenset(node.attrs["perm"][a] for a in pool.axes))
    return pool


def _through(em: Emitter, value: str, pool: _Pool) -> tuple[Node, list[bool], _Pool] | None:
    """The node computing ``value`` if the pool can move above it, with its operands to pool and the pool there."""
    node = em.producer(value)
    if node is None or not em.used_once(value):
        return None
    roles = _pooled_operands(em, node, pool)
    return None if roles is None else (node, roles, _above(node, pool))


def _reaches_affine(em: Emitter, value: str, pool: _Pool) -> bool:
    """True when moving the pool above ``value`` puts at least one conv or linear on the pooled tensor."""
    step = _through(em, value, pool)
    if step is None:
        return False
    node, roles, above = step
    return node.op in ("conv", "linear") or any(
        _reaches_affine(em, v, above) for v, pooled in zip(node.inputs, roles) if pooled)


def _pooled(em: Emitter, pool: _Pool, value: str) -> str:
    """``value`` as if computed on the pooled tensor: the ops above it re-emitted on pooled operands."""
    step = _through(em, value, pool)
    if step is None:
        return pool.emit(em, value)
    node, roles, above = step
    em.absorb(node)
    inputs = [_pooled(em, above, v) if pooled else v for v, pooled in zip(node.inputs, roles)]
    return em.op(node.op, inputs, node.op, **node.attrs)


def _move(node: Node, em: Emitter) -> list[str] | None:
    pool = _shrinking_pool(em, node)
    if pool is None or not _reaches_affine(em, node.inputs[0], pool):
        return None
    pooled = _pooled(em, pool, node.inputs[0])
    shape = em.graph.type_of(node.outputs[0]).shape
    if em.graph.type_of(pooled).shape != shape:  # a mean that drops its axes
        pooled = em.op("reshape", [pooled], "pooled", shape=shape)
    return [pooled]


PASS = node_pass(RULE, "optimize", _move, __doc__ or "", matches=("avgpool", "reduce_mean"))
