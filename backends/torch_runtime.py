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
) -> torch.Tensor:
    """Sliding-window multi-head attention over a reflect-padded kernel x kernel neighbourhood (ACmix).

    Channel c = h*d + e (head h, in-head index e). For output (i, j) and window slot (a, b), the
    neighbour is the reflect-padded pixel (stride*i + a, stride*j + b), and
    logit = sum_e scale*q[e, si, sj] * (k[e, nb] + pos[e, si, sj] - pos[e, nb]) with (si, sj) =
    (stride*i, stride*j); the output is the softmax-weighted sum of v over the kernel*kernel slots.

    The window slots are taken a group at a time, each group a strided view of the padded map (no
    copy) with the group's slots on the last axis. Eagerly a group is one slot: its products are the
    query's size, which the CPU allocator reuses (larger ones are fresh, page-faulting memory on every
    step). Under ``torch.compile`` a group is one window row: kernel groups instead of kernel², so
    far fewer operators to trace and fuse, and the compiled step runs much faster than the eager one.
    """
    b, c, h, w = q.shape
    d = c // heads
    p = (kernel - 1) // 2
    ho, wo = h // stride, w // stride
    per_row = torch.compiler.is_compiling()

    def windows(t: torch.Tensor) -> list[torch.Tensor]:
        """The slot groups of ``t`` (X, d, H, W): views (X, d, Ho, Wo, slots), in slot order a*kernel + b."""
        padded = F.pad(t, (p, p, p, p), mode="reflect")
        if per_row:
            return [padded[:, :, a : a + stride * ho : stride].unfold(3, kernel, stride) for a in range(kernel)]
        return [
            padded[:, :, a : a + stride * ho : stride, bb : bb + stride * wo : stride].unsqueeze(-1)
            for a in range(kernel)
            for bb in range(kernel)
        ]

    query = (scale * q[:, :, ::stride, ::stride]).reshape(b * heads, d, ho, wo, 1)
    keys = windows(k.reshape(b * heads, d, h, w))
    if pos is None:
        logits = [(query * key).sum(dim=1) for key in keys]
    else:
        pos_query = pos[:, :, ::stride, ::stride].unsqueeze(-1)
        pairs = zip(keys, windows(pos), strict=True)
        logits = [(query * (key + pos_query - pos_key)).sum(dim=1) for key, pos_key in pairs]
    # Slot-major (X, kernel², Ho, Wo): each slot's logits and weights are one contiguous block.
    weights = torch.softmax(torch.cat([logit.movedim(-1, 1) for logit in logits], dim=1), dim=1)
    values = windows(v.reshape(b * heads, d, h, w))
    group = values[0].shape[-1]
    terms = (weights[:, n * group : (n + 1) * group].movedim(1, -1).unsqueeze(1) * value
             for n, value in enumerate(values))
    out = sum(term.sum(dim=-1) if per_row else term.squeeze(-1) for term in terms)
    return out.reshape(b, c, ho, wo)


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
