"""``matmul`` -> 1x1 convolutions, elementwise products and shuffles (no MatMul layer).

Restricted TensorRT has no MatMul / Gemm layer. ``a[..., M, K] @ b[..., K, N]`` (numpy
broadcasting of the leading axes) is rewritten by the kind of its operands:

* ``b`` a constant matrix ``[K, N]`` (parameters or constants only): a ``linear`` map with the
  weight ``bᵀ``, which ``linear_to_conv`` (after this pass) turns into a 1x1 convolution;
* ``a`` a constant matrix ``[M, K]``: ``b`` viewed as ``[P, K, N, 1]`` (``P`` the leading
  elements) convolved with the kernel ``a[M, K, 1, 1]`` -> ``[P, M, N, 1]``;
* two activations: ``a`` viewed as ``[P, K, M, 1]`` and ``b`` as ``[P, K, 1, N]`` are
  contracted by :mod:`netdsl.passes.contraction`: broadcast products summed over ``K`` by
  constant-kernel 1x1 convolutions, cut into chunks (and, when ``K`` exceeds the output, into
  added blocks of ``K``) so that no piece is much larger than the largest of the operands and
  the output. An operand whose leading axes broadcast is first expanded by adding a zero
  constant of the broadcast shape, unless all its leading axes are 1 (the Mul broadcasts it).

The constant kernels and transposed weights are parameter-only subgraphs that ``fold_params``
turns into constants. Exact up to float32 summation order (``+ 0`` only turns a ``-0.0`` into
``+0.0``, which does not change any product or sum).
"""

from __future__ import annotations

import math

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.contraction import contract, view
from netdsl.passes.known_values import is_constant
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "matmul_to_conv"


def _leading(em: Emitter, x: str, batch: tuple[int, ...]) -> tuple[str, int]:
    """``x`` with its leading axes equal to ``batch`` (or all 1), and its leading element count."""
    shape = em.graph.type_of(x).shape
    lead = shape[:-2]
    if math.prod(lead) == 1 or lead == batch:
        return x, math.prod(lead)
    zeros = em.const(np.zeros((*batch, 1, 1)), em.graph.type_of(x).dtype, "expand")
    return em.op("add", [x, zeros], "expanded"), math.prod(batch)


def _const_left(em: Emitter, a: str, b: str, out: tuple[int, ...]) -> str:
    """A constant ``a[M, K]`` times ``b[..., K, N]``: a 1x1 conv of ``b`` viewed as ``[P, K, N, 1]``."""
    m, k = em.graph.type_of(a).shape
    n = em.graph.type_of(b).shape[-1]
    p = math.prod(out[:-2])
    kernel = em.op("reshape", [a], "kernel", shape=(m, k, 1, 1))
    y = em.op("conv", [view(em, b, None, (p, k, n, 1)), kernel], stride=(1, 1), pads=(0, 0, 0, 0),
              dilation=(1, 1), groups=1)
    return em.op("reshape", [y], shape=out)


def _lower_matmul(node: Node, em: Emitter) -> list[str] | None:
    a, b = node.inputs
    at, bt = em.graph.type_of(a), em.graph.type_of(b)
    out = em.graph.values[node.outputs[0]].shape
    if bt.rank == 2 and is_constant(em, b):
        return [em.op("linear", [a, em.op("transpose", [b], "weight", perm=(1, 0))])]
    if at.rank == 2 and is_constant(em, a):
        return [_const_left(em, a, b, out)]
    batch = out[:-2]
    (a, pa), (b, pb) = _leading(em, a, batch), _leading(em, b, batch)
    m, k = at.shape[-2:]
    n = bt.shape[-1]
    r = em.graph.type_of(a).rank
    a_view = view(em, a, (*range(r - 2), r - 1, r - 2), (pa, k, m, 1))
    y = contract(em, a_view, view(em, b, None, (pb, k, 1, n)), 1.0)
    return [em.op("reshape", [y], shape=out)]


PASS = node_pass(RULE, "lower", _lower_matmul, __doc__ or "", matches=("matmul",), post=ops_absent("matmul"))
