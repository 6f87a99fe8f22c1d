"""Rank-4 views for the TensorRT lowerings: lay a tensor out as ``[N, C, H, W]`` within the profiles' limits.

Restricted TensorRT runs convolutions and pooling on NCHW maps with at most 4096 channels and
4096 rows or columns (``max_channels`` / ``max_spatial`` of ``trt-restricted.toml``); DLA runs
element-wise layers, Slice and Resize on rank-4 tensors only, with batch <= 4096 and other
dimensions <= 8192 (``trt-dla.toml``). A row-major reshape is free (a view), so a lowering may
merge any contiguous run of axes into one axis of the view, or lay one run out over two. This
module is the one place that chooses such views: :func:`layout4` lays consecutive runs out over
four axes (splitting a run that is too long), and the other helpers build on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from netdsl.passes.rewriter import Emitter

DIM_LIMIT = 4096  # the smaller of the restricted (4096) and DLA (8192 non-batch, 4096 batch) limits
DLA_DIM_LIMIT = 8192  # DLA's limit on non-batch dimensions (trt-dla.toml max_non_batch_dim), for DLA-only passes
POOL_WINDOW = 8  # DLA pools windows of at most 8 x 8 (trt-dla.toml AveragePool kernel limit)


def split_extent(n: int, limit: int = DIM_LIMIT, first_limit: int | None = None) -> tuple[int, int] | None:
    """``(a, b)`` with ``a * b == n``, ``a <= first_limit`` (default ``limit``), ``b <= limit`` and ``b`` as small
    as possible; None if there is none."""
    first_limit = limit if first_limit is None else first_limit
    for b in range(max(1, math.ceil(n / first_limit)), limit + 1):
        if n % b == 0:
            return n // b, b
    return None


def layout4(extents: Sequence[int], whole: int = 0, limit: int = DIM_LIMIT,
            first_limit: int | None = None) -> list[tuple[int, ...]] | None:
    """The axes each of ``extents`` (consecutive runs of a tensor's axes) takes in a rank-4 view, in order.

    Each run takes one axis; while the view has room, a run after the first ``whole`` ones that
    is longer than ``limit`` is laid out over two (:func:`split_extent`; its first axis within
    ``first_limit``), last runs first. None when more than four axes are needed or an axis after
    the first (the batch) stays longer than ``limit``.
    """
    axes: list[tuple[int, ...]] = [(e,) for e in extents]
    for i in reversed(range(whole, len(axes))):
        room = 4 - sum(map(len, axes))
        if room > 0 and axes[i][0] > limit and (pair := split_extent(axes[i][0], limit, first_limit)):
            axes[i] = pair
    flat = [d for run in axes for d in run]
    return axes if len(flat) <= 4 and all(d <= limit for d in flat[1:]) else None


def pad4(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` (rank <= 4) padded with trailing 1s to rank 4 (a view of the same elements)."""
    return (*shape, *(1,) * (4 - len(shape)))


def rank4(extents: Sequence[int], whole: int = 0, limit: int = DIM_LIMIT,
          first_limit: int | None = None) -> tuple[int, ...] | None:
    """The rank-4 view laying out ``extents`` as :func:`layout4` does, padded with trailing 1s; None if none."""
    axes = layout4(extents, whole, limit, first_limit)
    return None if axes is None else pad4([d for run in axes for d in run])


def rank4_shape(natural: tuple[int, ...], lead: tuple[int, int]) -> tuple[int, ...]:
    """``natural`` when it already is a rank-4 view starting with ``lead`` within the limits, else ``lead`` + a map."""
    if len(natural) == 4 and natural[:2] == lead and max(natural[1:]) <= DIM_LIMIT:
        return natural
    rest = math.prod(natural) // math.prod(lead)
    return rank4([*lead, rest], whole=2) or (*lead, rest, 1)


def axis_view(shape: Sequence[int], axis: int) -> tuple[int, ...] | None:
    """The view ``[P, K, A1, A2]`` of ``shape`` with its ``axis`` (length K) as axis 1: P the axes before it
    merged (the batch, within DLA's 4096), A1 * A2 the axes after it, within DLA's limits; None when there is none."""
    before = math.prod(shape[:axis])
    view = rank4([before, shape[axis], math.prod(shape[axis + 1:])], whole=2, limit=DLA_DIM_LIMIT)
    return view if before <= DIM_LIMIT else None


def window_factors(n: int, window: int = POOL_WINDOW) -> list[int] | None:
    """Factors of ``n``, each at most ``window``, in few steps (largest first); None if a prime factor is larger.

    Pooling a length-``n`` axis by consecutive windows of these sizes (stride = window) averages it.
    """
    primes: list[int] = []
    rest, p = n, 2
    while rest > 1 and p <= window:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        return None
    factors: list[int] = []
    for q in sorted(primes, reverse=True):  # first fit, largest prime first: few windows
        for i, f in enumerate(factors):
            if f * q <= window:
                factors[i] = f * q
                break
        else:
            factors.append(q)
    return sorted(factors, reverse=True)


def view_as(em: Emitter, x: str, shape: Sequence[int]) -> str:
    """``x`` reshaped to ``shape`` (``x`` itself when it has that shape)."""
    shape = tuple(shape)
    return x if em.graph.type_of(x).shape == shape else em.op("reshape", [x], "view", shape=shape)
