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
    heads: int,
    kernel: int,
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
    windows (its band), a mask drops those outside the pixel's own window, and a second product sums the
    weighted values. The term q*pos[si, sj] is the same for every slot of a pixel, so the softmax cancels
    it and the keys are k - pos. A handful of large operators instead of a few per window slot: eagerly
    the products run as matrix kernels, and under ``torch.compile`` there is little to trace and fuse.
    """
    b, c, h, w = q.shape
    d = c // heads
    p = (kernel - 1) // 2
    rows, cols = tile
    n_r, n_c = h // stride // rows, w // stride // cols
    span_r, span_c = stride * (rows - 1) + kernel, stride * (cols - 1) + kernel

    def bands(t: torch.Tensor) -> torch.Tensor:
        """The padded pixels under each tile's windows: (X, d, H, W) -> (X, row tiles, col tiles, d, band)."""
        # Reflect padding as a gather with constant indices: the same values as F.pad(mode="reflect"),
        # but a result whose size the TorchScript ONNX exporter can see (its unfold needs it).
        padded = t.index_select(2, reflected(t.shape[2])).index_select(3, reflected(t.shape[3]))
        cut = padded.unfold(2, span_r, stride * rows)[:, :, :n_r].unfold(3, span_c, stride * cols)[:, :, :, :n_c]
        return cut.reshape(b * heads, d, n_r, n_c, span_r * span_c).permute(0, 2, 3, 1, 4)

    def reflected(size: int) -> torch.Tensor:
        """Source index of each position of an axis reflect-padded by p on both sides."""
        index = torch.arange(-p, size + p, device=q.device).abs()
        return torch.where(index >= size, 2 * (size - 1) - index, index)

    def inside(size: int, span: int) -> torch.Tensor:
        """(size, span): output index i's window covers padded stride*i .. stride*i + kernel - 1."""
        offset = torch.arange(span, device=q.device) - stride * torch.arange(size, device=q.device)[:, None]
        return (offset >= 0) & (offset < kernel)

    keys = k.reshape(b * heads, d, h, w)
    if pos is not None:
        keys = keys - pos
    query = (scale * q[:, :, ::stride, ::stride]).reshape(b * heads, d, n_r, rows, n_c, cols)
    query = query.permute(0, 2, 4, 3, 5, 1).reshape(b * heads, n_r, n_c, rows * cols, d)
    window = inside(rows, span_r)[:, None, :, None] & inside(cols, span_c)[None, :, None, :]
    logits = (query @ bands(keys)).masked_fill(~window.reshape(rows * cols, span_r * span_c), float("-inf"))
    out = torch.softmax(logits, dim=-1) @ bands(v.reshape(b * heads, d, h, w)).transpose(-1, -2)
    out = out.reshape(b * heads, n_r, n_c, rows, cols, d).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(b, c, h // stride, w // stride)


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
    positional_grid,
    init_shift_kernels_,
    init_relative_position_index_,
    keep_declaration_order,
)
"""The functions a generated module may contain, in the order they appear there."""
