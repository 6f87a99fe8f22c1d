"""``avgpool`` / ``maxpool`` with a window above DLA's 8 x 8 -> pools within the limits, or a depth-wise conv.

DLA pools windows of at most 8 x 8 with strides up to 16 and paddings up to 7; its convolutions
take kernels up to 32 x 32, strides up to 8 and paddings below the kernel (``trt-dla.toml``).
A larger pool takes the first of these exact forms that fits, per axis:

* tiling pools (window = stride, no padding) whose window factors into numbers <= 8
  (:func:`netdsl.passes.rank4_view.window_factors`): pools one after another with window =
  stride = each factor, e.g. 56 -> 8 then 7. Every output covers the same inputs (windows are
  aligned at 0; the inputs floor mode drops at the end are dropped by the first step already),
  and the blocks of one step are equal in size, so the mean of their means is the mean and the
  maximum of their maxima the maximum;
* max pools: stride-1 pools of windows k1, ..., kn (each <= 8, k1 + ... + kn - n + 1 = k), the
  last one with the stride, the padding shared out among them (each below its window and <= 7).
  A stride-1 window of k1 followed by one of k2 covers k1 + k2 - 1 inputs, and padding never
  wins a maximum, so the result is the same to the bit (SPP's 13 x 13, stride 1, as 7 then 7);
* average pools with a window up to 32, a stride up to 8 and padding below the window (padded
  zeros counted): a depth-wise conv whose kernel is 1/(kh*kw) everywhere; its error is that
  of a float32 sum of kh*kw terms (<= (kh*kw - 1) * 2^-24 * sum |x| relative to it).

A pool with none of these forms (e.g. an average over a window with a prime factor above 8
and a stride above 8, a ceil-mode pool, a padded pool that leaves the padding out of its
mean) is left alone: the coverage report locates it.
"""

from __future__ import annotations

from itertools import zip_longest

import numpy as np

from netdsl.ir import Node
from netdsl.passes.rank4_view import POOL_WINDOW, window_factors
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "pool_windows"
POOL_STRIDE = 16  # DLA's pooling stride limit (trt-dla.toml)
POOL_PADDING = 7  # DLA's pooling padding limit
CONV_KERNEL = 32  # DLA's convolution kernel limit
CONV_STRIDE = 8  # DLA's convolution stride limit

Step = tuple[int, int, int, int]  # (window, stride, pad before, pad after) along one axis


def _tiling_steps(k: int, s: int, before: int, after: int) -> list[Step] | None:
    """Consecutive tiling pools covering one tiling window of ``k``; None when it is not one or does not factor."""
    if k != s or before or after:
        return None
    factors = window_factors(k)
    return None if factors is None else [(f, f, 0, 0) for f in factors]


def _share(total: int, windows: list[int]) -> list[int] | None:
    """``total`` padding shared out over steps of ``windows``, each below its window and <= 7; None if too much."""
    shares = []
    for w in windows:
        shares.append(min(total, w - 1, POOL_PADDING))
        total -= shares[-1]
    return None if total else shares


def _max_steps(k: int, s: int, before: int, after: int) -> list[Step] | None:
    """Stride-1 max pools of windows <= 8 covering ``k`` inputs, the last one with the stride ``s``."""
    windows = [POOL_WINDOW] * ((k - 1) // (POOL_WINDOW - 1))
    if (k - 1) % (POOL_WINDOW - 1):
        windows.append((k - 1) % (POOL_WINDOW - 1) + 1)
    front, back = _share(before, windows), _share(after, windows)
    if front is None or back is None or s > POOL_STRIDE:
        return None
    return [(w, s if i == len(windows) - 1 else 1, p, q) for i, (w, p, q) in enumerate(zip(windows, front, back))]


def _steps(node: Node) -> list[tuple[Step, Step]] | None:
    """The pools replacing ``node`` as (H step, W step) pairs, aligned at the last step; None if none fit."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
    per_axis = []
    for k, s, before, after in ((kh, sh, pt, pb), (kw, sw, pl, pr)):
        if k <= POOL_WINDOW and s <= POOL_STRIDE and max(before, after) <= POOL_PADDING:
            steps = [(k, s, before, after)]
        else:
            steps = _tiling_steps(k, s, before, after)
            if steps is None and node.op == "maxpool":
                steps = _max_steps(k, s, before, after)
        if steps is None:
            return None
        per_axis.append(steps)
    rows, cols = per_axis
    one: Step = (1, 1, 0, 0)
    # Shorter lists are padded with identity windows in front, so both strides land on the last step.
    return list(zip_longest(rows[::-1], cols[::-1], fillvalue=one))[::-1]


def _mean_conv(node: Node, em: Emitter) -> str | None:
    """An average pool as a depth-wise conv with a constant 1/(kh*kw) kernel, when DLA's conv limits allow."""
    (kh, kw), stride, pads = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
    if max(kh, kw) > CONV_KERNEL or max(stride) > CONV_STRIDE or any(p >= k for p, k in zip(pads, (kh, kw, kh, kw))):
        return None
    x = node.inputs[0]
    t = em.graph.type_of(x)
    channels = t.shape[1]
    weight = em.const(np.full((channels, 1, kh, kw), 1.0 / (kh * kw)), t.dtype, "box")
    return em.op("conv", [x, weight], "mean", stride=stride, pads=pads, dilation=(1, 1), groups=channels)


def _split_pool(node: Node, em: Emitter) -> list[str] | None:
    if node.attrs.get("ceil_mode", False):
        return None
    if any(node.attrs["pads"]) and not node.attrs.get("count_include_pad", True):
        return None  # the steps would count padding the original leaves out
    (kh, kw), stride, pads = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
    if max(kh, kw) <= POOL_WINDOW and max(stride) <= POOL_STRIDE and max(pads) <= POOL_PADDING:
        return None
    steps = _steps(node)
    if steps is None:
        conv = _mean_conv(node, em) if node.op == "avgpool" else None
        return None if conv is None else [conv]
    y = node.inputs[0]
    for (kh, sh, pt, pb), (kw, sw, pl, pr) in steps:
        if (kh, kw, sh, sw) != (1, 1, 1, 1):
            y = em.op(node.op, [y], "step", **{**node.attrs, "kernel": (kh, kw), "stride": (sh, sw),
                                               "pads": (pt, pl, pb, pr)})
    return [y]


PASS = node_pass(RULE, "lower", _split_pool, __doc__ or "", matches=("avgpool", "maxpool"))
