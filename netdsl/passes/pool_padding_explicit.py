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
from netdsl.opdefs import ceil_extra, window_counts
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
    (kh, kw), (sh, sw), (t, l, b, r) = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
    ceil = bool(node.attrs.get("ceil_mode"))
    pads = (t, l, b + ceil_extra(h, kh, sh, t, b), r + ceil_extra(w, kw, sw, l, r)) if ceil else (t, l, b, r)
    pooled = em.op(node.op, [x], kernel=(kh, kw), stride=(sh, sw), pads=pads)
    if node.op == "maxpool":
        return [pooled]
    include = bool(node.attrs.get("count_include_pad", True))
    counts = np.outer(window_counts(h, kh, sh, t, b, ceil, include), window_counts(w, kw, sw, l, r, ceil, include))
    scale = (kh * kw) / counts
    if np.all(scale == 1.0):
        return [pooled]
    dtype = em.graph.type_of(x).dtype
    return [em.op("mul", [pooled, em.const(scale[None, None], dtype, "divisor")])]


PASS = node_pass(RULE, "lower", _lower_pool, __doc__ or "", matches=("avgpool", "maxpool"), post=ops_absent(
    "avgpool", "maxpool", when="with ceil_mode or count_include_pad=false",
    kept=lambda graph, node: not _has_options(node)))
