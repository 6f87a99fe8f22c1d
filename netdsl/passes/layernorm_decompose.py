"""``layernorm`` -> a channels-first view, means by ``reduce_mean``, ``sqrt`` and elementwise ops.

Restricted TensorRT and DLA have no normalisation layer. Layer norm over axis ``a`` of any shape
is computed on a rank-4 view ``[N, C, H, W]`` whose axis 1 is the normalised axis (DLA runs
elementwise layers on rank-4 tensors only, and a channel mean is one 1x1 convolution):

* ``a`` is axis 1, or nothing but the batch precedes it: a reshape (free);
* ``a`` is the last axis (channels-last maps ``[B, H, W, C]``, token sequences ``[B, L, C]``):
  one transpose to ``[B, C, ...]``; ``cleanup_shuffles`` cancels it against the transposes of
  ``linear_to_conv`` around it or of a ``transpose`` written in the spec (ConvNeXt's blocks);
* otherwise the axes before ``a`` fold into the batch: ``[N*M, C, T]``, a reshape.

On the view: ``m = mean(x)``, ``d = x - m``, ``d = d - mean(d)``, ``v = mean(d * d)``,
``y = d / sqrt(v + eps)``, then ``y * weight + bias``; the view is undone. The means are
``reduce_mean`` nodes over axis 1 (``keepdims``) that ``reduce_to_conv`` turns into 1x1
convolutions with constant kernels (or average pools), so this pass runs before it; ``sqrt`` is
lowered by the math lowerings, which run after it: its ``range`` attribute tells them that its
input lies in ``[eps, VARIANCE_CEILING]`` (``var >= 0``, and float addition is monotonic).

Why the variance is the two-pass ``mean((x - m)^2)`` and not ``mean(x^2) - m^2``: the latter
subtracts two numbers of size ``m^2`` to get one of size ``v``, so for values around 1e4 with unit
variance it loses every digit (float32 keeps 7). Why the second centring ``d - mean(d)``: ``m``
itself is a float32 sum of C terms and can be off by ~sqrt(C) ulps of |x| (1e-3 at 1e4); ``x - m``
is exact (Sterbenz) and ``mean(d)`` recovers that offset to ulps of |d|, so the output error no
longer scales with |m|. Error bound: with u = 2^-24, n = C, each mean is within ~n*u of the
exact sum's relative error; the output is within ~(2n + 8) * u * max|x - m| / sqrt(v + eps)
of the exact layer norm, i.e. a few 1e-6 for n <= 4096 and O(1) normalised outputs, at any mean.
Valid for finite inputs with ``(x - m)^2`` finite (|x - m| < 1.8e19); ``v + eps >= eps > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rank4_view import rank4_shape, view_as
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "layernorm_decompose"

VARIANCE_CEILING = 1e12
"""The largest ``var + eps`` the ``sqrt`` lowering is built for (|x - mean| up to 1e6), the general range's top."""

Undo = Callable[[str], str]


def channels_first(em: Emitter, x: str, axis: int) -> tuple[str, Undo]:
    """A rank-4 view of ``x`` with ``axis`` as axis 1, and the function mapping a result back to ``x``'s layout."""
    shape = em.graph.type_of(x).shape
    rank, c = len(shape), shape[axis]
    n, between, after = (shape[0], math.prod(shape[1:axis]), math.prod(shape[axis + 1:])) if axis else (1, 1, 0)
    if axis == 0 or between == 1 or after > 1:
        lead = (n * between, c) if axis else (1, c)
        return view_as(em, x, rank4_shape(shape, lead)), lambda y: view_as(em, y, shape)
    perm = (0, axis, *range(1, axis))
    moved_shape = tuple(shape[p] for p in perm)
    moved = em.op("transpose", [x], perm=perm)

    def undo(y: str) -> str:
        back = tuple(perm.index(i) for i in range(rank))
        return em.op("transpose", [view_as(em, y, moved_shape)], perm=back)

    return view_as(em, moved, rank4_shape(moved_shape, (n, c))), undo


def normalise(em: Emitter, x: str, axes: tuple[int, ...], eps: float) -> str:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` of ``x``, two-pass and re-centred (see the module docstring)."""

    def mean(v: str, hint: str) -> str:
        return em.op("reduce_mean", [v], hint, axes=axes, keepdims=True)

    centred = em.op("sub", [x, mean(x, "mean")], "centred")
    centred = em.op("sub", [centred, mean(centred, "offset")], "centred")
    var = mean(em.op("mul", [centred, centred], "square"), "var")
    var_eps = em.op("add", [var, em.scalar(eps, var)], "var_eps")
    std = em.op("sqrt", [var_eps], "std", range=(eps, VARIANCE_CEILING))
    return em.op("div", [centred, std], "normed")


def affine(em: Emitter, y: str, weight: str | None, bias: str | None) -> str:
    """``y * weight + bias`` with the per-channel vectors viewed along axis 1 of the rank-4 ``y``."""
    per_channel = (1, em.graph.type_of(y).shape[1], 1, 1)
    if weight is not None:
        y = em.op("mul", [y, view_as(em, weight, per_channel)], "scaled")
    if bias is not None:
        y = em.op("add", [y, view_as(em, bias, per_channel)], "shifted")
    return y


def _decompose_layernorm(node: Node, em: Emitter) -> list[str] | None:
    x, *params = node.inputs
    axis = node.attrs["axis"] % em.graph.type_of(x).rank
    view, undo = channels_first(em, x, axis)
    y = normalise(em, view, (1,), node.attrs["eps"])
    weight, bias = (params + [None, None])[:2]
    return [undo(affine(em, y, weight, bias))]


PASS = node_pass(RULE, "lower", _decompose_layernorm, __doc__ or "", matches=("layernorm",),
                 post=ops_absent("layernorm"))
