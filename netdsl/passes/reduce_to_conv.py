"""``reduce_sum`` / ``reduce_mean`` over any axes -> constant-ones convolutions or average pooling.

Restricted TensorRT and DLA have no Reduce layer for sums and means, but a convolution whose
kernel is all ones sums what it covers (scaled by 1/n for a mean), and an average pool takes the
mean of its window. Adjacent axes that are both reduced, or both kept, merge into one run (a
reshape is free), and length-1 axes drop out, so every reduction is a sequence of runs
``[P, R, T]``: P kept elements before a reduced run of R, T after it. Each reduced run, largest
first, takes the cheapest of three forms, none of which moves data:

* ``T > 1`` (channels form): the view ``[P, R, T1, T2]`` and a 1x1 conv with kernel
  ``ones[1, R, 1, 1]`` -- the channel reduction of an NCHW map, or any axis followed by others;
* ``T == 1`` (pooling form): the view ``[P0, P1, R1, R2]`` and average pools with windows of at
  most 8 x 8 and stride = window (DLA's window limit), e.g. a 56 x 56 mean as an 8 x 8 pool, then
  a 7 x 7 one; a sum multiplies the mean by R. The mean of equal-size block means is the mean;
* ``T == 1`` and R has a prime factor above 8: ``[P, R]`` is transposed to ``[R, P]`` and
  reduced in the channels form (the one form that moves the tensor once).

Every dimension of a view stays within 4096 (the restricted channel and map limits, and DLA's);
a run of more than 4096 elements is reduced in two convolutions (``[P*b, a, T]`` then
``[P, b, T]``). A reduction with no such split is left alone (the coverage report names it).
Without ``keepdims`` a final reshape drops the reduced axes.

Error bound: float32 summation of n terms in any order, |error| <= (n - 1) * u * sum |x_i|
(u = 2^-24), plus one rounding of the 1/n kernel entry or pool scale per step; in practice (blocked
or pairwise accumulation) ~sqrt(n) * u * sum |x_i|. Valid for all finite inputs whose sum is
finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rank4_view import DIM_LIMIT, split_extent, view_as, window_factors
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "reduce_to_conv"
REDUCTIONS = ("reduce_sum", "reduce_mean")


@dataclass(frozen=True)
class Step:
    """The reduction of one run: P kept elements before it, R reduced, T kept after; its form."""

    before: int
    extent: int
    after: int
    form: str  # "channels", "pool" or "transposed"


def runs(shape: tuple[int, ...], axes: set[int]) -> list[tuple[int, bool]]:
    """``shape`` as (extent, reduced) runs: length-1 axes dropped, neighbours of one kind merged."""
    merged: list[tuple[int, bool]] = []
    for i, d in enumerate(shape):
        if d == 1:
            continue
        if merged and merged[-1][1] == (i in axes):
            merged[-1] = (merged[-1][0] * d, i in axes)
        else:
            merged.append((d, i in axes))
    return merged


def _chunkable(n: int) -> bool:
    """A run of n channels can be summed by at most two 1x1 convolutions within the channel limit."""
    return n <= DIM_LIMIT or split_extent(n) is not None


def _pool_grid(extent: int) -> tuple[list[int], list[int]] | None:
    """Window rows and columns pooling ``extent`` elements laid out as ``[prod(rows), prod(cols)]``."""
    factors = window_factors(extent)
    if factors is None:
        return None
    rows, cols = factors[0::2], factors[1::2]
    return (rows, cols) if max(math.prod(rows), math.prod(cols)) <= DIM_LIMIT else None


def _form(shape: tuple[int, ...], before: int, extent: int, after: int) -> str | None:
    """The form reducing ``[before, extent, after]`` of a tensor of ``shape`` (see the module docstring)."""
    if after > 1 or (shape == (before, extent, 1, 1) and extent <= DIM_LIMIT):  # a conv on the tensor as it is
        return "channels" if _chunkable(extent) and split_extent(after) else None
    if split_extent(before) is None:
        return None
    if _pool_grid(extent) is not None:
        return "pool"
    return "transposed" if _chunkable(extent) else None


def plan(shape: tuple[int, ...], axes: set[int]) -> list[Step] | None:
    """The steps reducing ``axes`` of ``shape``, largest run first; None when one has no form."""
    current = runs(shape, axes)
    steps = []
    while any(reduced for _, reduced in current):
        i = max((k for k, (_, reduced) in enumerate(current) if reduced), key=lambda k: current[k][0])
        before, after = math.prod(e for e, _ in current[:i]), math.prod(e for e, _ in current[i + 1:])
        laid_out = () if steps else shape  # only the first step reads the input as it is
        form = _form(laid_out, before, current[i][0], after)
        if form is None:
            return None
        steps.append(Step(before, current[i][0], after, form))
        del current[i]
    return steps


def _ones_conv(em: Emitter, x: str, channels: int, mean: bool) -> str:
    kernel = np.full((1, channels, 1, 1), 1.0 / channels if mean else 1.0)
    weight = em.const(kernel, em.graph.type_of(x).dtype, "ones")
    return em.op("conv", [x, weight], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)


def _kept_split(shape: tuple[int, ...], lead: tuple[int, ...], n: int) -> tuple[int, int] | None:
    """The last two axes of a rank-4 ``shape`` starting with ``lead`` when they hold ``n`` within the limits."""
    if len(shape) == 4 and shape[:2] == lead and shape[2] * shape[3] == n and max(shape[1:]) <= DIM_LIMIT:
        return shape[2], shape[3]
    return None


def _channels(em: Emitter, x: str, before: int, extent: int, after: int, mean: bool) -> str:
    """Sum (or mean) of the middle run of ``x`` viewed as ``[before, extent, after]``."""
    if extent > DIM_LIMIT:  # two convolutions: the inner chunks of a channels first, then the b chunk sums
        a, b = split_extent(extent) or (extent, 1)
        t1, t2 = split_extent(after) or (after, 1)
        x = _ones_conv(em, view_as(em, x, (before * b, a, t1, t2)), a, mean)
        extent = b
    t1, t2 = _kept_split(em.graph.type_of(x).shape, (before, extent), after) or split_extent(after) or (after, 1)
    return _ones_conv(em, view_as(em, x, (before, extent, t1, t2)), extent, mean)


def _map_grid(shape: tuple[int, ...], before: int, extent: int) -> tuple[list[int], list[int]] | None:
    """Windows pooling the last two axes of the rank-4 map ``shape`` in place, if it lays out ``[before, extent]``."""
    if len(shape) != 4 or shape[0] * shape[1] != before or shape[2] * shape[3] != extent or max(shape[1:]) > DIM_LIMIT:
        return None
    rows, cols = window_factors(shape[2]), window_factors(shape[3])
    return (rows, cols) if rows is not None and cols is not None else None


def _pool(em: Emitter, x: str, before: int, extent: int, mean: bool) -> str:
    """Mean (or sum) of the trailing run of ``x`` viewed as ``[before, extent]`` by average pools."""
    shape = em.graph.type_of(x).shape
    in_place, generic = _map_grid(shape, before, extent), _pool_grid(extent)
    if in_place and generic and max(map(len, generic)) < max(map(len, in_place)):
        in_place = None  # a re-laid-out view pools in fewer steps
    rows, cols = in_place or generic or ([extent], [])
    batch, channels = shape[:2] if in_place else (split_extent(before) or (before, 1))[::-1]
    y = view_as(em, x, (batch, channels, math.prod(rows), math.prod(cols)))
    for k in range(max(len(rows), len(cols))):
        window = (rows[k] if k < len(rows) else 1, cols[k] if k < len(cols) else 1)
        y = em.op("avgpool", [y], "mean", kernel=window, stride=window, pads=(0, 0, 0, 0))
    return y if mean else em.op("mul", [y, em.scalar(float(extent), y)], "sum")


def _apply(em: Emitter, x: str, step: Step, mean: bool) -> str:
    if step.form == "channels":
        return _channels(em, x, step.before, step.extent, step.after, mean)
    if step.form == "pool":
        return _pool(em, x, step.before, step.extent, mean)
    moved = em.op("transpose", [em.op("reshape", [x], "view", shape=(step.before, step.extent))], perm=(1, 0))
    return _channels(em, moved, 1, step.extent, step.before, mean)


def _lower_reduce(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    t = em.graph.type_of(x)
    steps = plan(t.shape, {a % t.rank for a in node.attrs["axes"]})
    if steps is None:
        return None
    y = x
    for step in steps:
        y = _apply(em, y, step, node.op == "reduce_mean")
    out_shape = em.graph.values[node.outputs[0]].shape
    if em.graph.type_of(y).shape != out_shape:
        y = em.op("reshape", [y], shape=out_shape)
    return [y]


PASS = node_pass(RULE, "lower", _lower_reduce, __doc__ or "", post=ops_absent(*REDUCTIONS),
                 matches=REDUCTIONS)
