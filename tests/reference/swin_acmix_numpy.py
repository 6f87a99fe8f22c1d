"""NumPy reference of the Swin variant of ACmix (``WindowAttention_acmix``), eval mode (dropout is the identity).

Written from the operator-level description in ``acmix-reference.md`` §2.

Input layout: the module works on a channels-last map (B, H, W, C) with H and W passed alongside; the
description gives that layout, while a Swin block hands its attention module the tokens (B, H·W, C). The
two are the same memory (tokens are the row-major pixels), so :func:`window_attention_acmix` accepts
either and returns the layout it was given.

State dict order: PyTorch lists a module's own parameters, then its own buffers, then its children. The
module's own parameters are ``relative_position_bias_table``, ``rate1`` and ``rate2``; the description lists
the table first and the rates last among the module's members, hence the order
``relative_position_bias_table, rate1, rate2, relative_position_index, qkv.*, proj.*, fc.*, dep_conv.weight``.
"""

from __future__ import annotations

import numpy as np

from . import StateDict, add_random_conv, conv2d, param, softmax

CONV_KERNEL = 3  # the conv path's kernel is hard-wired to 3 (9 slots) in this variant


def square_window(window_size: int | tuple[int, int]) -> int:
    """The side of a square window given as an int or an (h, w) pair; non-square windows are rejected."""
    if isinstance(window_size, int):
        return window_size
    height, width = window_size
    if height != width:
        raise ValueError(f"window_size {window_size} is not square")
    return height


def relative_position_index(window: int) -> np.ndarray:
    """The (N, N) int64 buffer, N = window²: ``(ya − yb + w − 1)·(2w − 1) + (xa − xb + w − 1)`` for tokens a, b."""
    ys, xs = np.divmod(np.arange(window * window), window)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return (dy * (2 * window - 1) + dx).astype(np.int64)


def _convolution_path(qkv: np.ndarray, sd: StateDict, *, num_heads: int) -> np.ndarray:
    """fc over the 3·heads axis, then the grouped 3×3 dep_conv; (B, H, W, 3C) → (B, H, W, C)."""
    batch, height, width, three_c = qkv.shape
    head_dim = three_c // (3 * num_heads)
    tokens = qkv.reshape(batch, height * width, 3 * num_heads, head_dim)
    fc_weight = param(sd, "fc.weight", qkv.dtype)[:, :, 0, 0]
    fc_bias = param(sd, "fc.bias", qkv.dtype)
    # features[b, e, j, n]: channel e·9 + j of the map dep_conv reads (head-dim-major, slot-minor).
    features = np.einsum("jc,bnce->bejn", fc_weight, tokens) + fc_bias[None, None, :, None]
    feature_map = features.reshape(batch, head_dim * fc_weight.shape[0], height, width)
    out = conv2d(feature_map, param(sd, "dep_conv.weight", qkv.dtype), None, padding=1, groups=head_dim)
    return out.transpose(0, 2, 3, 1)


def _window_attention(
    qkv: np.ndarray, sd: StateDict, *, window: int, num_heads: int, scale: float, mask: np.ndarray | None
) -> np.ndarray:
    """Swin W-MSA with relative position bias and output projection; (B, H, W, 3C) → (B, H, W, C)."""
    batch, height, width, three_c = qkv.shape
    channels = three_c // 3
    head_dim = channels // num_heads
    rows, cols = height // window, width // window
    tokens = window * window
    # (B, rows, win, cols, win, 3, heads, d) → (3, B, rows, cols, heads, win·win, d)
    split = qkv.reshape(batch, rows, window, cols, window, 3, num_heads, head_dim)
    split = split.transpose(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch, rows * cols, num_heads, tokens, head_dim)
    q, k, v = split
    logits = np.einsum("bwhad,bwhcd->bwhac", q * scale, k)
    table = param(sd, "relative_position_bias_table", qkv.dtype)
    index = np.asarray(sd["relative_position_index"])
    logits = logits + table[index].transpose(2, 0, 1)[None, None]
    if mask is not None:
        if mask.shape != (rows * cols, tokens, tokens):
            raise ValueError(f"mask of shape {mask.shape}, expected {(rows * cols, tokens, tokens)}")
        logits = logits + mask.astype(qkv.dtype)[None, :, None]
    out = np.einsum("bwhac,bwhcd->bwahd", softmax(logits, axis=-1), v).reshape(batch, rows * cols, tokens, channels)
    out = out @ param(sd, "proj.weight", qkv.dtype).T + param(sd, "proj.bias", qkv.dtype)
    out = out.reshape(batch, rows, cols, window, window, channels).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(batch, height, width, channels)


def window_attention_acmix(
    x: np.ndarray,
    sd: StateDict,
    H: int,
    W: int,
    *,
    dim: int,
    window_size: int | tuple[int, int],
    num_heads: int,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Forward pass of ``WindowAttention_acmix(dim, window_size, num_heads, qkv_bias, qk_scale)``.

    ``x`` is (B, H·W, C) tokens or a (B, H, W, C) map, C = dim; the result has the same layout. ``mask``
    is the (nW, N, N) additive shifted-window mask or None. H and W must be multiples of the window.
    """
    window = square_window(window_size)
    batch = x.shape[0]
    if x.shape not in ((batch, H * W, dim), (batch, H, W, dim)):
        raise ValueError(f"input of shape {x.shape} is neither (B, {H}·{W}, {dim}) nor (B, {H}, {W}, {dim})")
    if H % window or W % window:
        raise ValueError(f"{H}x{W} map is not a whole number of {window}x{window} windows")
    head_dim = dim // num_heads
    # `or`, as in the reference: a qk_scale of 0 also falls back to d^-½.
    scale = qk_scale or head_dim**-0.5
    qkv = x.reshape(batch, H, W, dim) @ param(sd, "qkv.weight", x.dtype).T
    if qkv_bias:
        qkv = qkv + param(sd, "qkv.bias", x.dtype)
    attention = _window_attention(qkv, sd, window=window, num_heads=num_heads, scale=scale, mask=mask)
    convolution = _convolution_path(qkv, sd, num_heads=num_heads)
    out = param(sd, "rate1", x.dtype) * attention + param(sd, "rate2", x.dtype) * convolution
    return out.reshape(x.shape)


def random_swin_acmix_state(
    rng: np.random.Generator,
    *,
    dim: int,
    window_size: int | tuple[int, int],
    num_heads: int,
    qkv_bias: bool = True,
    dtype: type = np.float64,
) -> StateDict:
    """A random ``WindowAttention_acmix`` state dict: the reference's keys, shapes and order (see module docstring)."""
    window = square_window(window_size)
    slots = CONV_KERNEL * CONV_KERNEL
    sd: StateDict = {
        "relative_position_bias_table": rng.standard_normal(((2 * window - 1) ** 2, num_heads)).astype(dtype),
        "rate1": rng.uniform(0.2, 1.0, 1).astype(dtype),
        "rate2": rng.uniform(0.2, 1.0, 1).astype(dtype),
        "relative_position_index": relative_position_index(window),
        "qkv.weight": (rng.standard_normal((3 * dim, dim)) / np.sqrt(dim)).astype(dtype),
    }
    if qkv_bias:
        sd["qkv.bias"] = (0.1 * rng.standard_normal(3 * dim)).astype(dtype)
    sd["proj.weight"] = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(dtype)
    sd["proj.bias"] = (0.1 * rng.standard_normal(dim)).astype(dtype)
    add_random_conv(sd, rng, "fc", (slots, 3 * num_heads, 1, 1), bias=True, dtype=dtype)
    add_random_conv(sd, rng, "dep_conv", (dim, slots, CONV_KERNEL, CONV_KERNEL), bias=False, dtype=dtype)
    return sd
