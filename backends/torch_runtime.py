"""Functions copied verbatim into generated PyTorch modules, each only when a graph needs it.

They are the few ops PyTorch has no single call for, and the initialisers and state-dict hook of
generated modules. :func:`netdsl.backends.torch_codegen.generate_source` copies a function's source
(``inspect.getsource``), so each must be self-contained: it may use only ``torch``, ``nn`` and ``F``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, scale_factor: tuple[float, float], size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize by ``scale_factor`` with PyTorch's sizing and sampling; fail if the size is not ``size``.

    ``size`` is what the spec's type checker computed, so every runtime agrees on it.
    """
    align_corners = False if mode == "bilinear" else None
    y = F.interpolate(x, scale_factor=scale_factor, mode=mode, align_corners=align_corners)
    if tuple(y.shape[-2:]) != tuple(size):
        raise RuntimeError(f"resize by {scale_factor} gave {tuple(y.shape[-2:])}, the spec expects {tuple(size)}")
    return y


def rotate(x: torch.Tensor, heads: int) -> torch.Tensor:
    """CSA rotation: per head, transpose the (S channels) x (S = H*W positions) matrix.

    y[b, n*S + c, i, j] = x[b, n*S + (i*W + j), c // W, c % W].
    """
    b, c, h, w = x.shape
    s = c // heads
    return x.reshape(b, heads, s, h * w).transpose(2, 3).reshape(b, c, h, w)


def shift(x: torch.Tensor, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Move channel group g by offsets[g] = (dy, dx), down/right, filling with zeros.

    y[b, c, i, j] = x[b, c, i - dy, j - dx]; the groups are equal channel blocks, in order.
    """
    h, w = x.shape[-2:]
    p = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (p, p, p, p))
    per_group = x.shape[1] // len(offsets)
    groups = [
        padded[:, g * per_group : (g + 1) * per_group, p - dy : p - dy + h, p - dx : p - dx + w]
        for g, (dy, dx) in enumerate(offsets)
    ]
    return torch.cat(groups, dim=1)


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    outside: torch.Tensor,
    index: torch.Tensor,
    heads: int,
    stride: int,
    scale: float,
    tile: tuple[int, int],
) -> torch.Tensor:
    """Sliding-window multi-head attention over a reflect-padded kernel x kernel neighbourhood (ACmix).

    Channel c = h*d + e (head h, in-head index e). For output (i, j) and window slot (a, b), the
    neighbour is the reflect-padded pixel (stride*i + a, stride*j + b), and
    logit = sum_e scale*q[e, si, sj] * (k[e, nb] + pos[e, si, sj] - pos[e, nb]) with (si, sj) =
    (stride*i, stride*j); the output is the softmax-weighted sum of v over the kernel*kernel slots.

    Computed over tiles of ``tile`` = (rows, cols) output pixels (they divide the output's sides): one
    batched matrix product gives each tile pixel's logits against every padded pixel under the tile's
    windows (its band), the mask ``outside`` (:func:`band_outside`) drops those outside the pixel's own
    window, and a second product sums the weighted values. The term q*pos[si, sj] is the same for every
    slot of a pixel, so the softmax cancels it and the keys are k - pos. The bands of keys and values are
    each one gather of pixel vectors at the constant flat positions ``index`` (:func:`band_index`, reflect
    padding included), laid out as the products take them; its backward is one scatter-add. Both
    constants are inputs, so ``torch.compile`` neither traces nor generates code for them and the mask
    is a contiguous load in the softmax kernel.
    """
    b, c, h, w = q.shape
    d = c // heads
    rows, cols = tile
    n_r, n_c = h // stride // rows, w // stride // cols

    def bands(t: torch.Tensor) -> torch.Tensor:
        """(X, d, H, W) -> (X * tiles, band, d): the pixels under each tile's windows."""
        return t.reshape(b * heads, d, h * w).transpose(1, 2).index_select(1, index).reshape(-1, outside.shape[1], d)

    keys = k.reshape(b * heads, d, h, w)
    if pos is not None:
        keys = keys - pos
    query = (scale * q[:, :, ::stride, ::stride]).reshape(b * heads, d, n_r, rows, n_c, cols)
    query = query.permute(0, 2, 4, 3, 5, 1).reshape(-1, rows * cols, d)
    logits = (query @ bands(keys).transpose(1, 2)).masked_fill(outside, float("-inf"))
    out = torch.softmax(logits, dim=-1) @ bands(v)
    out = out.reshape(b * heads, n_r, n_c, rows, cols, d).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(b, c, h // stride, w // stride)


def band_outside(kernel: int, stride: int, tile: tuple[int, int]) -> torch.Tensor:
    """Mask [rows*cols, band] of :func:`local_attention`: True where a band pixel is outside a tile pixel's window.

    A tile's band is the (stride*(rows-1) + kernel) x (stride*(cols-1) + kernel) padded pixels under its
    windows; tile pixel (i, j)'s window holds band pixel (a, b) when stride*i <= a < stride*i + kernel and
    stride*j <= b < stride*j + kernel.
    """
    def inside(size: int) -> torch.Tensor:
        offset = torch.arange(stride * (size - 1) + kernel) - stride * torch.arange(size)[:, None]
        return (offset >= 0) & (offset < kernel)

    rows, cols = tile
    window = inside(rows)[:, None, :, None] & inside(cols)[None, :, None, :]
    return ~window.reshape(rows * cols, -1)


def band_index(height: int, width: int, kernel: int, stride: int, tile: tuple[int, int]) -> torch.Tensor:
    """Flat input position (y*width + x) of every band pixel of every tile of :func:`local_attention`.

    Tiles in row-major order, each band row-major; band pixel (a, b) of tile (r, c) is the padded pixel
    (stride*rows*r + a, stride*cols*c + b) of the input reflect-padded by (kernel-1)/2 on every side.
    """
    p = (kernel - 1) // 2

    def reflected(size: int, per_tile: int) -> torch.Tensor:
        """(tiles, span): source index along an axis of each tile's band pixels."""
        starts = stride * per_tile * torch.arange(size // stride // per_tile)
        padded = (starts[:, None] + torch.arange(stride * (per_tile - 1) + kernel) - p).abs()
        return torch.where(padded >= size, 2 * (size - 1) - padded, padded)

    ys, xs = reflected(height, tile[0]), reflected(width, tile[1])
    return (ys[:, None, :, None] * width + xs[None, :, None, :]).flatten()


def positional_grid(height: int, width: int) -> torch.Tensor:
    """Grid [1, 2, H, W]: channel 0 = linspace(-1, 1, W) along the width, channel 1 = linspace(-1, 1, H)."""
    xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float32).expand(height, width)
    ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float32).unsqueeze(1).expand(height, width)
    return torch.stack([xs, ys]).unsqueeze(0)


@torch.no_grad()
def init_shift_kernels_(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """One-hot conv kernels: in-group input channel j has a single 1 at (j // kernel, j % kernel)."""
    weight.zero_()
    for j in range(weight.shape[1]):
        weight[:, j, j // kernel, j % kernel] = 1.0
    return weight


@torch.no_grad()
def init_relative_position_index_(index: torch.Tensor, window: int) -> torch.Tensor:
    """Swin's table for a window x window window: (ya - yb + window - 1) * (2*window - 1) + (xa - xb + window - 1)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    index.copy_((rel[0] * (2 * window - 1) + rel[1]).reshape(index.shape))
    return index


def keep_declaration_order(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: list the module's entries in the order the spec declares them.

    ``state_dict`` is the OrderedDict being filled; this module's entries are its last ones.
    """
    for key in module.STATE_DICT_ORDER:
        state_dict.move_to_end(prefix + key)


RUNTIME_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    resize,
    rotate,
    shift,
    local_attention,
    band_outside,
    band_index,
    positional_grid,
    init_shift_kernels_,
    init_relative_position_index_,
    keep_declaration_order,
)
"""The functions a generated module may contain, in the order they appear there."""
