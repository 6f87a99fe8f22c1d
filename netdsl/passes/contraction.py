"""Products of two activations from restricted layers, chunked so that no intermediate grows by the contracted length.

Shared by ``matmul_to_conv`` and ``lower_attention`` (not a pass itself). With no matrix-product
layer, ``out[p, m, n] = scale · Σ_k a[p, k, m] · b[p, k, n]`` is computed as a broadcast product
``a[p, k, m, 1] · b[p, k, 1, n]`` (Mul) whose ``k`` axis, the channel axis, is summed by a 1x1
convolution with a constant kernel of ``scale`` (Conv, with groups: see below). Written whole, the
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

Then the conv's groups (both forms do the same multiply-adds on the same product):

* **row groups**: the rows of ``a`` are cut into ``g`` equal blocks stacked on the channel axis,
  ``a`` becoming ``[P, g·K, M/g, 1]`` (a transpose); ``b`` is tiled ``g`` times to
  ``[P, g·K, 1, N]`` (Concat), and a conv with ``g`` groups sums each block: its ``g`` output
  channels are the row blocks, so the concatenated ``[P, g, M/g, N]`` is the ``[P, 1, M, N]``
  output as it lies in memory (a Reshape). Costs a transpose of ``a`` and ``g`` copies of ``b``;
* **contracted groups**: the conv sums ``g`` equal blocks of ``K`` into ``g`` channels, which a
  last ``g``-channel conv adds up once all chunks are concatenated. Costs ``g`` outputs, read
  once more: cheap when the output is small next to the operands (``attention``'s second
  product, whose contracted axis is the positions).

``g`` is the smallest prime factor of ``M`` or ``K`` (at most :data:`MAX_GROUPS`). Why groups:
ONNX Runtime's CPU provider runs an ungrouped conv over :data:`BLOCKED_CHANNELS` channels or
more in its blocked channel layout: the whole product is reordered first (a second write and
read of it, measured as long as the Mul that wrote it) and the one output channel is padded to
8; a grouped conv with fewer outputs than a block stays in the plain layout, one
matrix-vector product per group. A plan whose conv would be blocked is charged that reorder.

The plan is the cheapest (bytes moved + :data:`NODE_BYTES` per node + :data:`RUN_BYTES` per run of
the last axis the Muls write, see :attr:`ContractionPlan.cost`) whose largest piece holds
at most ``budget`` elements: :data:`BUDGET_FACTOR` times the largest of the two operands and the
output (for attention: the attention matrix), but never less than :data:`MIN_BUDGET` elements:
on the non-local block, pieces of 2^18 or 2^19 elements ran no faster than 2^20 (their extra nodes
cost what the L2 cache saves) and 2^21 ran 1.4 times slower. Every form is exact up to float32
summation order: a conv sums ``K`` (or ``kblock``, or ``K/g`` for contracted groups, whose ``g``
sums a last conv adds) products in one dot product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netdsl.initializers import NP_DTYPES
from netdsl.passes.rewriter import Emitter

# Elements a piece may hold, relative to the largest of the operands and the output.
BUDGET_FACTOR = 1.0
# Pieces up to this many elements (4 MiB of float32) are never cut further (measured: see above).
MIN_BUDGET = 1 << 20
# Cost of one more node, in bytes of memory traffic. Measured here (ONNX Runtime, one thread,
# fastest runs): a tiny node's dispatch takes 0.5 µs, a Mul of 64 KiB tensors 5.8 µs; a
# TensorRT layer adds a kernel launch. A node is charged like a small layer's whole work.
NODE_BYTES = 64 * 1024
# Cost of one run of the last axis in a Mul's output, in bytes of memory traffic: ONNX Runtime's
# broadcast Mul handles its output one last-axis run at a time. Measured here (one thread, thread
# CPU time of the fastest of 40 runs, [1, 64, r, 1] x [1, 64, 1, c] with r·c fixed): 15-30 ns
# per run on top of 0.75 ns per element, i.e. about 128 bytes; columns cut into chunks of 5
# made the non-local block's logits 8 times slower.
RUN_BYTES = 128
ROWS, COLUMNS = 2, 3  # the axis of the [P, 1, M, N] output that chunks split
# The most conv groups a plan uses (row groups copy ``b`` once per group).
MAX_GROUPS = 7
# An ungrouped conv over this many input channels or more runs in ONNX Runtime's blocked channel
# layout (8 floats, the AVX2 block): its input is reordered first (measured on 1.32).
BLOCKED_CHANNELS = 8
# How a plan groups the summing conv: not at all, by blocks of rows, by blocks of K.
UNGROUPED, ROW_GROUPS, CONTRACTED_GROUPS = "none", "rows", "contracted"


@dataclass(frozen=True)
class ContractionPlan:
    """How to cut ``[P, K, M, 1] · [P, K, 1, N]``: chunks of ``chunk`` along ``axis`` (rows of a row group, or
    columns), blocks of ``kblock`` of ``K``, and ``groups`` conv groups of the kind ``grouping``."""

    axis: int
    chunk: int
    kblock: int
    nodes: int
    bytes_moved: int
    largest: int  # elements of the largest piece
    groups: int = 1
    grouping: str = UNGROUPED
    runs: int = 0  # last-axis runs the Muls write

    @property
    def cost(self) -> int:
        """What the planner minimises, in bytes: traffic, plus :data:`NODE_BYTES` per node and :data:`RUN_BYTES`
        per run."""
        return self.bytes_moved + NODE_BYTES * self.nodes + RUN_BYTES * self.runs


def plan_contraction(p: int, k: int, m: int, n: int, itemsize: int = 4, budget: int | None = None,
                     operands: tuple[int, int] | None = None) -> ContractionPlan:
    """The cheapest plan of ``[p, k, m] x [p, k, n] -> [p, m, n]`` whose pieces hold at most ``budget`` elements.

    ``budget`` defaults to the one of the module docstring; ``operands`` are the element counts
    of the two operands before broadcasting (default ``p·k·m`` and ``p·k·n``).
    """
    a_size, b_size = operands or (p * k * m, p * k * n)
    if budget is None:
        budget = max(MIN_BUDGET, int(BUDGET_FACTOR * max(a_size, b_size, p * m * n)))
    sizes = (a_size, b_size)
    best: ContractionPlan | None = None
    groupings = [(UNGROUPED, 1), (ROW_GROUPS, smallest_factor(m)), (CONTRACTED_GROUPS, smallest_factor(k))]
    for grouping, groups in groupings:
        if grouping != UNGROUPED and groups == 1:
            continue
        kblocks = sorted({-(-k // blocks) for blocks in range(1, k + 1)}, reverse=True) if groups == 1 else [k]
        stacked = groups if grouping == ROW_GROUPS else 1
        rows = m // stacked
        for axis, length, other in ((ROWS, rows, n), (COLUMNS, n, rows)):
            for kblock in kblocks:
                widest = budget // (p * stacked * kblock * other)
                if widest < 1:
                    continue
                chunks = -(-length // min(widest, length))
                plan = _costed(axis, -(-length // chunks), kblock, grouping, groups, (p, k, m, n), itemsize, sizes)
                if plan.largest <= budget and (best is None or plan.cost < best.cost):
                    best = plan
    if best is None:  # one element of K along the shorter side exceeds the budget: take the finest cut
        best = _costed(COLUMNS if n >= m else ROWS, 1, 1, UNGROUPED, 1, (p, k, m, n), itemsize, sizes)
    return best


def smallest_factor(length: int) -> int:
    """The conv groups an axis of ``length`` may be cut into: its smallest prime factor up to :data:`MAX_GROUPS`
    (below ``length``), else 1."""
    factor = next((f for f in range(2, MAX_GROUPS + 1) if length % f == 0), 1)
    return factor if factor < length else 1


def _costed(axis: int, chunk: int, kblock: int, grouping: str, groups: int, dims: tuple[int, int, int, int],
            itemsize: int, operands: tuple[int, int]) -> ContractionPlan:
    """The node count, traffic and largest piece of one plan (see the module docstring)."""
    p, k, m, n = dims
    rows = m // groups if grouping == ROW_GROUPS else m
    length, other = (rows, n) if axis == ROWS else (n, rows)
    chunks, blocks = -(-length // chunk), -(-k // kblock)
    out = p * m * n
    pieces = chunks * blocks
    nodes = 2 * pieces + chunks * (blocks - 1)  # Mul + Conv per piece, Add per extra block
    moved = 2 * p * k * m * n + 2 * blocks * out + 3 * (blocks - 1) * out
    largest = p * (groups if grouping == ROW_GROUPS else 1) * min(kblock, k) * chunk * other
    if chunks > 1:
        nodes += chunks + 1  # a slice per chunk, the concat
        moved += 2 * (operands[0] if axis == ROWS else operands[1]) + 2 * out
    if blocks > 1:
        nodes += pieces + blocks  # the chunk's and the other operand's block slices
        moved += 2 * sum(operands)
    if grouping == ROW_GROUPS:
        nodes += 2  # the transpose stacking a's row blocks, the concat tiling b
        moved += 2 * operands[0] + (1 + groups) * operands[1]
    elif grouping == CONTRACTED_GROUPS:
        nodes += 1  # the conv adding the groups up
        moved += (groups - 1) * out * (3 if chunks > 1 else 1) + (groups + 1) * out
        largest = max(largest, groups * out)
    elif kblock >= BLOCKED_CHANNELS:
        moved += 2 * p * k * m * n  # the product reordered into the blocked layout
    runs = p * k * m * (chunks if axis == COLUMNS else 1)  # each piece writes all its rows
    return ContractionPlan(axis, chunk, kblock, nodes, moved * itemsize, largest, groups, grouping, runs)


def contract(em: Emitter, a: str, b: str, scale: float) -> str:
    """``scale · Σ_k a[p, k, m, 0] · b[p, k, 0, n]`` as ``[P, 1, M, N]`` from ``a[Pa, K, M, 1]`` and ``b[Pb, K, 1, N]``.

    ``Pa`` and ``Pb`` are equal or one of them is 1 (the Mul broadcasts it). Emits the pieces of
    the :func:`plan_contraction` of the shapes.
    """
    pa, k, m, _ = em.graph.type_of(a).shape
    pb, _, _, n = em.graph.type_of(b).shape
    if n < m:
        # The Mul runs along the last axis: compute the transpose, so that it runs along rows of max(M, N).
        swapped = contract(em, em.op("reshape", [b], shape=(pb, k, n, 1)), em.op("reshape", [a], shape=(pa, k, 1, m)),
                           scale)
        return em.op("transpose", [swapped], perm=(0, 1, 3, 2))
    itemsize = np.dtype(NP_DTYPES[em.graph.type_of(a).dtype]).itemsize
    plan = plan_contraction(max(pa, pb), k, m, n, itemsize, operands=(pa * k * m, pb * k * n))
    groups = plan.groups
    row_groups = groups if plan.grouping == ROW_GROUPS else 1
    if row_groups > 1:
        a, b = _stacked_rows(em, a, groups), em.op("concat", [b] * groups, "tiled", axis=1)
    length = m // row_groups if plan.axis == ROWS else n
    parts = []
    for start in range(0, length, plan.chunk):
        end = min(start + plan.chunk, length)
        whole = start == 0 and end == length
        a_part = a if whole or plan.axis != ROWS else em.op("slice", [a], "rows", axis=2, start=start, end=end, step=1)
        b_part = b if whole or plan.axis != COLUMNS else em.op("slice", [b], "cols", axis=3, start=start, end=end,
                                                               step=1)
        parts.append(_blocked_sum(em, a_part, b_part, plan.kblock * row_groups, scale, groups))
    out = parts[0] if len(parts) == 1 else em.op("concat", parts, "chunks", axis=plan.axis)
    if plan.grouping == CONTRACTED_GROUPS:
        return channel_sum(em, out, 1.0)
    # [P, g, M/g, N]: group h holds rows h·M/g ... (h+1)·M/g - 1, so in memory it is [P, 1, M, N].
    return out if row_groups == 1 else em.op("reshape", [out], "rows", shape=(max(pa, pb), 1, m, n))


def _stacked_rows(em: Emitter, a: str, groups: int) -> str:
    """``a[P, K, M, 1]``, its rows cut into ``groups`` blocks stacked on the channel axis: ``[P, g·K, M/g, 1]``."""
    p, k, m, _ = em.graph.type_of(a).shape
    blocks = em.op("reshape", [a], "blocks", shape=(p, k, groups, m // groups))
    return view(em, blocks, (0, 2, 1, 3), (p, groups * k, m // groups, 1))


def _blocked_sum(em: Emitter, a: str, b: str, kblock: int, scale: float, groups: int) -> str:
    """The product of ``a`` and ``b`` summed over their channel axis (per group), in blocks of ``kblock`` channels."""
    k = em.graph.type_of(a).shape[1]
    total = None
    for start in range(0, k, kblock):
        end = min(start + kblock, k)
        pair = [x if end - start == k else em.op("slice", [x], "block", axis=1, start=start, end=end, step=1)
                for x in (a, b)]
        partial = channel_sum(em, em.op("mul", pair, "product"), scale, groups)
        total = partial if total is None else em.op("add", [total, partial], "partial")
    assert total is not None
    return total


def channel_sum(em: Emitter, x: str, scale: float, groups: int = 1) -> str:
    """``scale ·`` the sums over ``groups`` equal blocks of axis 1 of the 4-D ``x``: a 1x1 conv with a constant
    kernel and ``groups`` groups, ``[N, groups, H, W]``."""
    t = em.graph.type_of(x)
    kernel = em.const(np.full((groups, t.shape[1] // groups, 1, 1), scale), t.dtype, "ones")
    return em.op("conv", [x, kernel], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=groups)


def view(em: Emitter, x: str, perm: tuple[int, ...] | None, shape: tuple[int, ...]) -> str:
    """``x`` (transposed by ``perm`` when given) reshaped to ``shape`` (no node when it already has that shape)."""
    moved = em.op("transpose", [x], perm=perm) if perm and list(perm) != sorted(perm) else x
    if em.graph.type_of(moved).shape == tuple(shape):
        return moved
    return em.op("reshape", [moved], shape=tuple(shape))

