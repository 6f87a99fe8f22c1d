"""Pools in the form every TensorRT profile takes: ``ceil_mode`` as trailing padding, and the
divisor of ``avgpool(count_include_pad=false)`` (or of ceil mode's cut windows) as a constant map.

The restricted profile allows AveragePool in floor mode only and says nothing of
``count_include_pad=0``. Ceil mode's output size is floor mode's once the padded map is extended
at the bottom/right by :func:`~netdsl.opdefs.ceil_extra`: a max pool over the extended padding is
unchanged (padding never wins the max; every window holds an input element). An average pool
becomes the floor-mode pool that counts padding, whose every window divides by ``kh * kw``,
times the constant map ``kh * kw / count`` of each window's true divisor
(:func:`~netdsl.opdefs.window_counts`); the Mul is left out when the map is all ones.

Error bound (float32): max pool exact. Average pool: the sum divided by ``kh * kw``, then the
product by the rounded ``kh * kw / count``: within 1.5 ulp of PyTorch's ``sum / count``. Valid for
every finite input.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.opdefs import floor_mode_pads, window_divisors
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "pool_padding_explicit"


def _has_options(graph_node: Node) -> bool:
    return bool(graph_node.attrs.get("ceil_mode")) or not graph_node.attrs.get("count_include_pad", True)


def _lower_pool(node: Node, em: Emitter) -> list[str] | None:
    if not _has_options(node):
        return None
    x = node.inputs[0]
    _, _, h, w = em.graph.type_of(x).shape
    (kh, kw), stride = node.attrs["kernel"], tuple(node.attrs["stride"])
    pooled = em.op(node.op, [x], kernel=(kh, kw), stride=stride, pads=floor_mode_pads(node.attrs, h, w))
    if node.op == "maxpool":
        return [pooled]
    counts = np.outer(*window_divisors(node.attrs, h, w))
    scale = (kh * kw) / counts
    if np.all(scale == 1.0):
        return [pooled]
    dtype = em.graph.type_of(x).dtype
    return [em.op("mul", [pooled, em.const(scale[None, None], dtype, "divisor")])]


PASS = node_pass(RULE, "lower", _lower_pool, __doc__ or "", matches=("avgpool", "maxpool"), post=ops_absent(
    "avgpool", "maxpool", when="with ceil_mode or count_include_pad=false",
    kept=lambda graph, node: not _has_options(node)))
