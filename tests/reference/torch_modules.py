"""PyTorch re-implementations of the CSA and ACmix reference modules, used to make reference checkpoints.

Written from the operator-level descriptions (``csa-reference.md``, ``acmix-reference.md``), independently of
the numpy references in this package. Each module has the reference's constructor arguments and module
structure, so its ``state_dict()`` has the reference's keys, shapes and order, and a checkpoint of one loads
into the other. Deliberate departures, none of which changes a state dict or an output:

* ``Swish`` computes ``x·σ(x)`` (the published one raises AttributeError on its first call).
* The CSA block and backbone do not take the reference's unused ``resize_mode`` argument.
* ACmix builds its positional grid in the input's dtype, so the module also runs in float64 (the reference
  uses the default dtype and fails on float64 input unless that is the default).
* ``WindowAttentionACmix.forward`` accepts (B, H·W, C) tokens or a (B, H, W, C) map and returns the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .csa_numpy import CONVSELFATTN_ARGS

# ----------------------------------------------------------------------------------------------------------
# CSA


class Swish(nn.Module):
    """``x·σ(x)``; no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x·σ(x)``."""
        return x * torch.sigmoid(x)


class DropPath(nn.Module):
    """Per-sample stochastic depth (timm semantics: survivors are scaled by 1/keep); identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with whole samples zeroed at rate ``drop_prob`` during training."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        survivors = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * survivors / keep if keep > 0 else x * survivors


class CSABlock(nn.Module):
    """``Block_Conv_SelfAttn``: the CSA block, with the reference's submodule names and constructor arguments."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
        sr_to: int = 14,
        num_heads: int = 4,
        mlp_ratio: int = 3,
        neighbors: int = 7,
    ) -> None:
        super().__init__()
        self.sr_to = sr_to
        self.num_heads = num_heads
        q_channels = num_heads * sr_to * sr_to
        hidden = mlp_ratio * dim
        # gamma is the block's own parameter, so it comes first in the state dict when present.
        self.gamma = (
            nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init_value)))
            if layer_scale_init_value > 0
            else None
        )
        self.v = nn.Conv2d(dim, dim, neighbors, padding=neighbors // 2, groups=dim)
        self.act_v = nn.Sequential(nn.BatchNorm2d(dim), Swish())
        self.q = nn.Conv2d(dim, q_channels, 1)
        self.norm_q = nn.BatchNorm2d(q_channels)
        self.qk = nn.Conv2d(q_channels, dim, 1)
        self.act_qk = nn.Sequential(nn.BatchNorm2d(dim), nn.Sigmoid())
        self.qkv = nn.Conv2d(dim, hidden, 1)
        self.act_qkv = nn.Sequential(nn.BatchNorm2d(hidden), Swish())
        self.mlp = nn.Conv2d(hidden, dim, 1)
        self.drop_path = DropPath(drop_path)

    def rotate(self, q: torch.Tensor) -> torch.Tensor:
        """Per head, transpose the (sr_to² channels) × (sr_to² positions) matrix of ``q``."""
        batch, channels, height, width = q.shape
        positions = self.sr_to * self.sr_to
        per_head = q.reshape(batch, self.num_heads, positions, positions)
        return per_head.transpose(2, 3).reshape(batch, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW ``x`` plus the gated, MLP-projected value path; raises RuntimeError where the reference does."""
        height, width = int(x.shape[-2]), int(x.shape[-1])
        v = self.act_v(self.v(x))
        down = (self.sr_to / height, self.sr_to / width)
        up = (1.0 / down[0], 1.0 / down[1])
        q = self.norm_q(self.q(F.interpolate(v, scale_factor=down, mode="bilinear", align_corners=False)))
        relations = F.interpolate(q * self.rotate(q), scale_factor=up, mode="bilinear", align_corners=False)
        gate = self.act_qk(self.qk(relations))
        t = self.mlp(self.act_qkv(self.qkv(gate * v)))
        if self.gamma is not None:
            t = self.gamma * t
        return x + self.drop_path(t)


class CSABackbone(nn.Module):
    """``CSA_backbone``: stem and down-sampling convs, CSA stages, AvgPool2d(6), BN and a 1×1 conv head."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        head_init_scale: float = 1.0,
        ds_patch: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_dim: Sequence[int] = (2, 2, 2, 2),
        sr_to: Sequence[int] = (14, 14, 14, 7),
        neighbors: int = 5,
    ) -> None:
        super().__init__()
        phases = range(len(depths))
        self.downsample_layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_chans if i == 0 else dims[i - 1],
                    dims[i],
                    ds_patch[i],
                    stride=strides[i],
                    padding=ds_patch[0] // 2 if i == 0 else 0,  # only the stem is padded
                ),
                nn.BatchNorm2d(dims[i]),
            )
            for i in phases
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        first = [sum(depths[:i]) for i in phases]
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    CSABlock(
                        dims[i],
                        drop_path=rates[first[i] + j],
                        layer_scale_init_value=layer_scale_init_value,
                        sr_to=sr_to[i],
                        num_heads=num_heads[i],
                        mlp_ratio=mlp_dim[i],
                        neighbors=neighbors,
                    )
                    for j in range(depths[i])
                )
            )
            for i in phases
        )
        self.avgpool = nn.AvgPool2d(6)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Conv2d(dims[-1], num_classes, 1)
        self.apply(_init_conv)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of NCHW images, with every size-1 axis squeezed (``(num_classes,)`` at batch 1)."""
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.head(self.norm(self.avgpool(x))).squeeze()


def _init_conv(module: nn.Module) -> None:
    """The backbone's init: truncated normal (std 0.02, cut at ±2) for conv and linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(module.bias)


def convselfattn(**kwargs: object) -> CSABackbone:
    """The registered model ``convselfattn``: the ConvNeXt-T-sized CSA backbone; ``kwargs`` go to the backbone."""
    return CSABackbone(**CONVSELFATTN_ARGS, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# ACmix


def _shift_init_(weight: torch.Tensor, kernel: int) -> None:
    """Shift kernels: input slot ``j`` of every output channel is a one-hot at (j // kernel, j % kernel)."""
    with torch.no_grad():
        weight.zero_()
        for j in range(kernel * kernel):
            weight[:, j, j // kernel, j % kernel] = 1.0


class ACmix(nn.Module):
    """The ResNet-variant ACmix block: shared 1×1 projections feeding a sliding-window attention path and a
    shift-and-sum convolution path, mixed by the learnable scalars ``rate1`` and ``rate2``."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.head = head
        self.head_dim = out_planes // head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        # The window padding counts the dilation, the unfold does not: dilation > 1 fails, as in the reference.
        self.pad_att = nn.ReflectionPad2d((dilation * (kernel_att - 1) + 1) // 2)
        self.unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=stride)
        self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel_conv * kernel_conv * self.head_dim,
            out_planes,
            kernel_conv,
            stride=stride,
            padding=1,
            groups=self.head_dim,
            bias=False,
        )
        _shift_init_(self.dep_conv.weight, kernel_conv)

    def positional_encoding(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """``conv_p`` of the (x, y) coordinate grid, each coordinate ``linspace(-1, 1)``: (1, head_dim, H, W)."""
        xs = torch.linspace(-1.0, 1.0, width, dtype=like.dtype, device=like.device)
        ys = torch.linspace(-1.0, 1.0, height, dtype=like.dtype, device=like.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return self.conv_p(torch.stack([grid_x, grid_y]).unsqueeze(0))

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(X, d, H, W) → (X, d, kernel_att², Ho, Wo): every output pixel's reflected window, cut by ``nn.Unfold``."""
        s = self.stride
        return self.unfold(self.pad_att(x)).view(x.shape[0], self.head_dim, self.kernel_att**2, x.shape[2] // s,
                                                 x.shape[3] // s)

    def window_logits(self, q: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        """(X, d, Ho, Wo) queries against (X, d, N, Ho, Wo) relative keys → (X, N, Ho, Wo): products summed over d."""
        return (q.unsqueeze(2) * relative).sum(1)

    def window_sum(self, attn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(X, N, Ho, Wo) weights over (X, d, N, Ho, Wo) values → (X, d, Ho, Wo): products summed over the window."""
        return (attn.unsqueeze(1) * values).sum(2)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Sliding-window attention with reflected borders and a relative positional term inside the logits."""
        batch, _, height, width = q.shape
        s = self.stride
        q = q.view(batch * self.head, self.head_dim, height, width) * self.head_dim**-0.5
        k = k.view(batch * self.head, self.head_dim, height, width)
        v = v.view(batch * self.head, self.head_dim, height, width)
        pe = self.positional_encoding(height, width, q)
        relative = self.windows(k) + pe[:, :, ::s, ::s].unsqueeze(2) - self.windows(pe)
        attn = self.window_logits(q[:, :, ::s, ::s], relative).softmax(dim=1)
        out = self.window_sum(attn, self.windows(v))
        return out.reshape(batch, self.out_planes, height // s, width // s)

    def convolution(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """fc across the q/k/v heads, then the grouped shift-and-sum ``dep_conv``."""
        batch, _, height, width = q.shape
        split = (batch, self.head, self.head_dim, height * width)
        features = self.fc(torch.cat([q.view(split), k.view(split), v.view(split)], dim=1))
        features = features.permute(0, 2, 1, 3).reshape(batch, -1, height, width)
        return self.dep_conv(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_planes, H, W) → (B, out_planes, H // stride, W // stride)."""
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        return self.rate1 * self.attention(q, k, v) + self.rate2 * self.convolution(q, k, v)


class ACmixEinsum(ACmix):
    """ACmix with both window sums written as ``einsum`` (same parameters and outputs; a different exported graph)."""

    def window_logits(self, q: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        """The logits as ``einsum("xdhw,xdnhw->xnhw")``."""
        return torch.einsum("xdhw,xdnhw->xnhw", q, relative)

    def window_sum(self, attn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The weighted values as ``einsum("xnhw,xdnhw->xdhw")``."""
        return torch.einsum("xnhw,xdnhw->xdhw", attn, values)


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


class WindowAttentionACmix(nn.Module):
    """``WindowAttention_acmix``: Swin window attention plus an ACmix convolution path over the whole map."""

    def __init__(
        self,
        dim: int,
        window_size: int | tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        window = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        if window[0] != window[1]:
            raise ValueError(f"window_size {window_size} is not square")
        self.dim = dim
        self.window = window[0]
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * self.window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(self.window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.fc = nn.Conv2d(3 * num_heads, 9, 1, bias=True)
        self.dep_conv = nn.Conv2d(9 * self.head_dim, dim, 3, padding=1, groups=self.head_dim, bias=False)
        _shift_init_(self.dep_conv.weight, 3)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))

    def window_attention(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """W-MSA on (B, H, W, 3C) projections → (B, H, W, C), including the output projection."""
        batch, height, width, _ = qkv.shape
        ws, nh = self.window, self.num_heads
        rows, cols, tokens = height // ws, width // ws, ws * ws
        windows = qkv.view(batch, rows, ws, cols, ws, 3 * self.dim).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(batch * rows * cols, tokens, 3, nh, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = windows[0] * self.scale, windows[1], windows[2]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(tokens, tokens, nh)
        attn = q @ k.transpose(-2, -1) + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            attn = attn.view(batch, rows * cols, nh, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, nh, tokens, tokens)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = self.proj((attn @ v).transpose(1, 2).reshape(batch * rows * cols, tokens, self.dim))
        out = out.view(batch, rows, cols, ws, ws, self.dim).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, height, width, self.dim)

    def convolution(self, qkv: torch.Tensor) -> torch.Tensor:
        """fc across the q/k/v heads (with bias), then the grouped 3×3 ``dep_conv``; (B, H, W, 3C) → (B, H, W, C)."""
        batch, height, width, _ = qkv.shape
        heads = qkv.reshape(batch, height * width, 3 * self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        features = self.fc(heads).permute(0, 3, 1, 2).reshape(batch, 9 * self.head_dim, height, width)
        return self.dep_conv(features).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, H: int, W: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` is (B, H·W, C) or (B, H, W, C); ``mask`` the (nW, N, N) additive mask or None."""
        qkv = self.qkv(x.reshape(x.shape[0], H, W, self.dim))
        out = self.rate1 * self.window_attention(qkv, mask) + self.rate2 * self.convolution(qkv)
        return self.proj_drop(out).reshape(x.shape)
