"""``roll`` (cyclic shift, numpy.roll) -> Slice + Concat.

Shifted-window attention rolls feature maps; TensorRT has no roll layer. Rolling an axis of
length n by k (taken mod n) moves the last k entries to the front: ``concat(x[n-k:], x[:n-k])``.
Several (shift, axis) pairs (broadcast against each other, as numpy does) apply one after the
other; a roll by whole periods is the input itself.
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "roll_to_slice_concat"


def roll_moves(shape: tuple[int, ...], shifts: object, axes: object) -> list[tuple[int, int]]:
    """The non-trivial (axis, k) moves of a roll, with k in 1..n-1 (numpy broadcasting of shifts/axes)."""
    pairs = np.broadcast_arrays(np.atleast_1d(shifts), np.atleast_1d(axes))
    moves = [(int(ax) % len(shape), int(k)) for k, ax in zip(*pairs)]
    return [(ax, k % shape[ax]) for ax, k in moves if k % shape[ax]]


def _lower_roll(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    shape = em.graph.type_of(x).shape
    for axis, k in roll_moves(shape, node.attrs["shifts"], node.attrs["axes"]):
        n = shape[axis]
        head = em.op("slice", [x], "head", axis=axis, start=n - k, end=n, step=1)
        tail = em.op("slice", [x], "tail", axis=axis, start=0, end=n - k, step=1)
        x = em.op("concat", [head, tail], axis=axis)
    return [x]


PASS = node_pass(RULE, "lower", _lower_roll, __doc__ or "", matches=("roll",), post=ops_absent("roll"))
