"""Products of two activations from restricted layers, chunked so that no intermediate grows by the contracted length.

Shared by ``matmul_to_conv`` and ``lower_attention`` (not a pass itself). With no matrix-product
layer, ``out[p, m, n] = scale · Σ_k a[p, k, m] · b[p, k, n]`` is computed as a broadcast product
``a[p, k, m, 1] · b[p, k, 1, n]`` (Mul) whose ``k`` axis, the channel axis, is summed by a 1x1
convolution with the constant kernel ``scale · ones[1, k, 1, 1]`` (Conv). Written whole, the
product holds ``K`` times the output: a global attention over 784 positions with 32-wide heads
materialises 32 attention matrices. :func:`plan_contraction` cuts it into pieces instead:

* **chunks**: the rows of ``a`` (``M``) or the columns of ``b`` (``N``) are sliced into ``c``
  chunks; each chunk's product is summed by its own conv and the partial outputs are
  concatenated (Slice, Mul, Conv per chunk, one Concat). The product is written and read once:
  about ``2·P·K·M·N`` elements of memory traffic, the floor of any form that materialises it;
* **contracted blocks**: ``K`` is sliced into ``kb`` blocks whose summed products are added
  (Slice, Mul, Conv, Add per block): ``+3·P·M·N`` elements of traffic per extra block. Needed
  only when a single row of the product exceeds the budget; one row of the product is as large
  as an operand, so the default budget never needs them: they serve smaller explicit budgets.

The plan is the cheapest (bytes moved + :data:`NODE_BYTES` per node) whose largest piece holds
at most ``budget`` elements: :data:`BUDGET_FACTOR` times the largest of the two operands and the
output (for attention: the attention matrix), but never less than :data:`MIN_BUDGET` elements,
below which a piece fits the caches and more nodes only cost dispatch time. Every form is exact
up to float32 summation order: the conv sums ``K`` (or ``kblock``) products in one dot product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from netdsl.passes.rewriter import Emitter

# Elements a piece may hold, relative to the largest of the operands and the output.
BUDGET_FACTOR = 1.0
# Pieces up to this many elements (4 MiB of float32) are never cut further.
MIN_BUDGET = 1 << 20
# Cost of one more node, in bytes of memory traffic: ONNX Runtime's dispatch of a small node
# (about 5 µs) is the time to move this many bytes at its elementwise bandwidth (~13 GB/s).
NODE_BYTES = 64 * 1024
ROWS, COLUMNS = 2, 3  # the axis of the [P, 1, M, N] output that chunks split


@dataclass(frozen=True)
class ContractionPlan:
    """How to cut ``[P, K, M, 1] · [P, K, 1, N]``: chunks of ``chunk`` along ``axis``, blocks of ``kblock`` of ``K``."""

    axis: int
    chunk: int
    kblock: int
    nodes: int
    bytes_moved: int
    largest: int  # elements of the largest piece


def plan_contraction(p: int, k: int, m: int, n: int, itemsize: int = 4, budget: int | None = None,
                     operands: tuple[int, int] | None = None) -> ContractionPlan:
    """The cheapest plan of ``[p, k, m] x [p, k, n] -> [p, m, n]`` whose pieces hold at most ``budget`` elements.

    ``budget`` defaults to the one of the module docstring; ``operands`` are the element counts
    of the two operands before broadcasting (default ``p·k·m`` and ``p·k·n``).
    """
    a_size, b_size = operands or (p * k * m, p * k * n)
    if budget is None:
        budget = max(MIN_BUDGET, int(BUDGET_FACTOR * max(a_size, b_size, p * m * n)))
    best: ContractionPlan | None = None
    for axis, length, other in ((ROWS, m, n), (COLUMNS, n, m)):
        for kblock in sorted({-(-k // blocks) for blocks in range(1, k + 1)}, reverse=True):
            widest = budget // (p * kblock * other)
            if widest < 1:
                continue
            chunks = -(-length // min(widest, length))
            plan = _costed(axis, -(-length // chunks), kblock, p, k, m, n, itemsize, (a_size, b_size))
            if best is None or (plan.bytes_moved + NODE_BYTES * plan.nodes
                                < best.bytes_moved + NODE_BYTES * best.nodes):
                best = plan
    if best is None:  # one element of K along the shorter side exceeds the budget: take the finest cut
        best = _costed(COLUMNS if n >= m else ROWS, 1, 1, p, k, m, n, itemsize, (a_size, b_size))
    return best


def _costed(axis: int, chunk: int, kblock: int, p: int, k: int, m: int, n: int, itemsize: int,
            operands: tuple[int, int]) -> ContractionPlan:
    """The node count, traffic and largest piece of one plan (see the module docstring)."""
    length, other = (m, n) if axis == ROWS else (n, m)
    chunks, blocks = -(-length // chunk), -(-k // kblock)
    out = p * m * n
    pieces = chunks * blocks
    nodes = 2 * pieces + chunks * (blocks - 1)  # Mul + Conv per piece, Add per extra block
    moved = 2 * p * k * m * n + 2 * blocks * out + 3 * (blocks - 1) * out
    if chunks > 1:
        nodes += chunks + 1  # a slice per chunk, the concat
        moved += 2 * (operands[0] if axis == ROWS else operands[1]) + 2 * out
    if blocks > 1:
        nodes += pieces + blocks  # the chunk's and the other operand's block slices
        moved += 2 * sum(operands)
    return ContractionPlan(axis, chunk, kblock, nodes, moved * itemsize, p * min(kblock, k) * chunk * other)


def contract(em: Emitter, a: str, b: str, scale: float, plan: ContractionPlan | None = None) -> str:
    """``scale · Σ_k a[p, k, m, 0] · b[p, k, 0, n]`` as ``[P, 1, M, N]`` from ``a[Pa, K, M, 1]`` and ``b[Pb, K, 1, N]``.

    ``Pa`` and ``Pb`` are equal or one of them is 1 (the Mul broadcasts it). Emits the pieces of
    ``plan`` (default: :func:`plan_contraction` of the shapes).
    """
    pa, k, m, _ = em.graph.type_of(a).shape
    pb, _, _, n = em.graph.type_of(b).shape
    if n < m:
        # The Mul runs along the last axis: compute the transpose, so that it runs along rows of max(M, N).
        swapped = contract(em, em.op("reshape", [b], shape=(pb, k, n, 1)), em.op("reshape", [a], shape=(pa, k, 1, m)),
                           scale, plan)
        return em.op("transpose", [swapped], perm=(0, 1, 3, 2))
    if plan is None:
        plan = plan_contraction(max(pa, pb), k, m, n, operands=(pa * k * m, pb * k * n))
    length = m if plan.axis == ROWS else n
    parts = []
    for start in range(0, length, plan.chunk):
        end = min(start + plan.chunk, length)
        whole = start == 0 and end == length
        a_part = a if whole or plan.axis != ROWS else em.op("slice", [a], "rows", axis=2, start=start, end=end, step=1)
        b_part = b if whole or plan.axis != COLUMNS else em.op("slice", [b], "cols", axis=3, start=start, end=end,
                                                               step=1)
        parts.append(_blocked_sum(em, a_part, b_part, plan.kblock, scale))
    if len(parts) == 1:
        return parts[0]
    return em.op("concat", parts, "chunks", axis=plan.axis)


def _blocked_sum(em: Emitter, a: str, b: str, kblock: int, scale: float) -> str:
    """The summed product of ``a`` and ``b`` over their channel axis, in blocks of ``kblock`` channels added up."""
    k = em.graph.type_of(a).shape[1]
    total = None
    for start in range(0, k, kblock):
        end = min(start + kblock, k)
        pair = [x if end - start == k else em.op("slice", [x], "block", axis=1, start=start, end=end, step=1)
                for x in (a, b)]
        partial = channel_sum(em, em.op("mul", pair, "product"), scale)
        total = partial if total is None else em.op("add", [total, partial], "partial")
    assert total is not None
    return total


def channel_sum(em: Emitter, x: str, scale: float) -> str:
    """``scale ·`` the sum over axis 1 of the 4-D ``x``, by a 1x1 conv with a constant kernel: ``[N, 1, H, W]``."""
    t = em.graph.type_of(x)
    kernel = em.const(np.full((1, t.shape[1], 1, 1), scale), t.dtype, "ones")
    return em.op("conv", [x, kernel], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)


def view(em: Emitter, x: str, perm: tuple[int, ...] | None, shape: tuple[int, ...]) -> str:
    """``x`` (transposed by ``perm`` when given) reshaped to ``shape`` (no node when it already has that shape)."""
    moved = em.op("transpose", [x], perm=perm) if perm and list(perm) != sorted(perm) else x
    if em.graph.type_of(moved).shape == tuple(shape):
        return moved
    return em.op("reshape", [moved], shape=tuple(shape))


def product_bytes(p: int, k: int, m: int, n: int, itemsize: int = 4) -> int:
    """Bytes of the whole broadcast product (what the unchunked form materialises)."""
    return math.prod((p, k, m, n)) * itemsize
