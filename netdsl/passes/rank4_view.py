"""Rank-4 views for the TensorRT lowerings: fold a tensor into ``[N, C, H, W]`` within the profiles' limits.

Restricted TensorRT runs convolutions and pooling on NCHW maps with at most 4096 channels and
4096 rows or columns (``max_channels`` / ``max_spatial`` of ``trt-restricted.toml``); DLA takes
rank-4 tensors only, with batch <= 4096 and other dimensions <= 8192 (``trt-dla.toml``). A
row-major reshape is free (a view), so a lowering may lay any contiguous run of axes out over
two axes of the view; these helpers pick such splits within the stricter of the limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from netdsl.passes.rewriter import Emitter

DIM_LIMIT = 4096  # the smaller of the restricted (4096) and DLA (8192 non-batch, 4096 batch) limits
POOL_WINDOW = 8  # DLA pools windows of at most 8 x 8 (trt-dla.toml AveragePool kernel limit)


def split_extent(n: int, limit: int = DIM_LIMIT) -> tuple[int, int] | None:
    """``(a, b)`` with ``a * b == n``, ``a, b <= limit`` and ``b`` as small as possible; None if there is none."""
    for b in range(max(1, math.ceil(n / limit)), limit + 1):
        if n % b == 0:
            return n // b, b
    return None


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


def rank4_shape(natural: tuple[int, ...], lead: tuple[int, int]) -> tuple[int, ...]:
    """``natural`` when it already is a rank-4 view starting with ``lead`` within the limits, else ``lead`` + a map."""
    if len(natural) == 4 and natural[:2] == lead and max(natural[1:]) <= DIM_LIMIT:
        return natural
    rest = math.prod(natural) // math.prod(lead)
    return (*lead, *(split_extent(rest) or (rest, 1)))
