"""``gather`` of rows by constant indices -> Slice + Concat, or a one-hot 1x1 convolution (by cost).

Restricted TensorRT and DLA have no Gather layer. When the index is a constant (``const`` nodes
only), the rows are known at compile time. The table ``[T, ...]`` is viewed as ``[1, T, R, 1]``
(``R`` the elements of a row) so that rows are channels, which every target slices and
concatenates, then one of two forms picks the ``n`` indexed rows (negative indices count from
the end, as in the op):

* **slices**: one Slice per run of consecutive indices and a Concat along the channels; exact
  for every value; moves about ``4·n·R`` elements in ``runs + 1`` nodes;
* **one-hot conv**: a 1x1 convolution with the constant kernel ``onehot[n, T, 1, 1]``; one node
  moving ``(T + n)·R`` elements but ``n·T·R`` multiply-adds, and exact only for a finite table
  (``x·1 + Σ 0·y``: an inf or NaN in any row makes every output row NaN).

The form with the lower cost (bytes moved + ``NODE_BYTES`` per node + ``MAC_BYTES`` per
multiply-add) is emitted; the slices win unless the indices break into many runs. A gather
whose table is a parameter (a Swin relative-position bias) is left to ``fold_params``, which
turns it into a constant; so is a gather whose index is not a constant.
"""

from __future__ import annotations

import math

import numpy as np

from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node
from netdsl.passes.base import ops_absent
from netdsl.passes.contraction import NODE_BYTES
from netdsl.passes.known_values import absorb_producer, is_constant, known_array
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "gather_to_slice"
# A multiply-add of a 1x1 convolution is charged like moving this many bytes: side by side (ONNX
# Runtime, one thread), a 1x1 conv from 512 to 16 channels over 784 positions (6.4 M multiply-adds)
# took three times as long as a Mul writing 2.4 MiB, i.e. ~1 byte per multiply-add.
MAC_BYTES = 1.0


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[3, 4, 5, 0, 1]`` -> ``[(3, 6), (0, 2)]``: maximal runs of consecutive rows as half-open ranges."""
    out: list[tuple[int, int]] = []
    for r in rows.tolist():
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out


def one_hot_is_cheaper(n_runs: int, n: int, t: int, row: int, itemsize: int) -> bool:
    """True when the one-hot convolution costs less than ``n_runs`` slices and a concat (module docstring)."""
    slices = 4 * n * row * itemsize + NODE_BYTES * (n_runs + 1)
    one_hot = (t + n) * row * itemsize + NODE_BYTES + MAC_BYTES * n * t * row
    return one_hot < slices


def _leaves(em: Emitter, table: str, index: str) -> bool:
    """True for a gather this pass leaves: its index not known from constants, or its table constant."""
    return known_array(em, index) is None or is_constant(em, table)


def _left_alone(graph: Graph, node: Node) -> bool:
    """The postcondition's view of :func:`_leaves` on the rewritten graph."""
    return _leaves(Emitter(graph, node, RULE, graph.producers(), graph.consumers()), *node.inputs)


def _lower_gather(node: Node, em: Emitter) -> list[str] | None:
    table, index = node.inputs
    if _leaves(em, table, index):
        return None
    idx = known_array(em, index)
    absorb_producer(em, index)
    t = em.graph.type_of(table)
    out = em.graph.values[node.outputs[0]].shape
    rows = np.asarray(idx, dtype=np.int64).reshape(-1) % t.shape[0]
    row = math.prod(t.shape[1:])
    channels = em.op("reshape", [table], "rows", shape=(1, t.shape[0], row, 1))
    spans = runs(rows)
    itemsize = np.dtype(NP_DTYPES[t.dtype]).itemsize
    if one_hot_is_cheaper(len(spans), len(rows), t.shape[0], row, itemsize):
        kernel = np.zeros((len(rows), t.shape[0], 1, 1))
        kernel[np.arange(len(rows)), rows] = 1.0
        picked = em.op("conv", [channels, em.const(kernel, t.dtype, "onehot")], stride=(1, 1), pads=(0, 0, 0, 0),
                       dilation=(1, 1), groups=1)
    else:
        parts = [channels if (a, b) == (0, t.shape[0]) else
                 em.op("slice", [channels], "row", axis=1, start=a, end=b, step=1) for a, b in spans]
        picked = parts[0] if len(parts) == 1 else em.op("concat", parts, "picked", axis=1)
    return [em.op("reshape", [picked], shape=out)]


PASS = node_pass(RULE, "lower", _lower_gather, __doc__ or "", matches=("gather",),
                 post=ops_absent("gather", when="its indices are constants", kept=_left_alone))
