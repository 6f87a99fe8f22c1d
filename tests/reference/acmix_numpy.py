"""NumPy reference of the official ACmix block (ResNet variant, class ``ACmix``).

Written from the operator-level description in ``acmix-reference.md``, reproducing its quirks: reflection
padding of k, v and the positional encoding; a positional grid in (x, y) order; the ``d^-½`` scale applied to
q before it meets the positional term; the fc features laid out head-dim-major before the grouped ``dep_conv``
(groups = head_dim, padding 1, no bias); stride taken top-left (``[::s]``). The block has no batch-norm, so
the forward pass is the same in training and eval. Where the reference fails at run time, ValueError is raised.
"""

from __future__ import annotations

import numpy as np

from . import StateDict, add_random_conv, conv2d, param, softmax

# dep_conv's padding is hard-wired in the reference, whatever kernel_conv is.
DEP_CONV_PADDING = 1

# The shared 1×1 projections producing q, k and v.
PROJECTIONS = ("conv1", "conv2", "conv3")


def attention_padding(kernel_att: int, dilation: int = 1) -> int:
    """Reflection padding of k, v and pe: ``(dilation·(kernel_att − 1) + 1) // 2``."""
    return (dilation * (kernel_att - 1) + 1) // 2


def check_acmix_shapes(
    height: int,
    width: int,
    *,
    out_planes: int,
    kernel_att: int,
    head: int,
    kernel_conv: int,
    stride: int,
    dilation: int,
) -> None:
    """Raise ValueError for the configurations and input sizes on which the reference block fails."""
    if out_planes % head:
        raise ValueError(f"out_planes {out_planes} is not divisible by head {head}")
    pad = attention_padding(kernel_att, dilation)
    if pad >= height or pad >= width:
        raise ValueError(f"reflection padding {pad} needs an input larger than {height}x{width}")
    h_out, w_out = height // stride, width // stride
    # The unfold ignores dilation; its window count must equal the strided output size for the view to work.
    unfold_h = (height + 2 * pad - kernel_att) // stride + 1
    unfold_w = (width + 2 * pad - kernel_att) // stride + 1
    if (unfold_h, unfold_w) != (h_out, w_out):
        raise ValueError(
            f"attention windows {unfold_h}x{unfold_w} do not fill the {h_out}x{w_out} output "
            f"(kernel_att {kernel_att}, dilation {dilation}, stride {stride}, input {height}x{width})"
        )
    conv_h = (height + 2 * DEP_CONV_PADDING - kernel_conv) // stride + 1
    conv_w = (width + 2 * DEP_CONV_PADDING - kernel_conv) // stride + 1
    if (conv_h, conv_w) != (h_out, w_out):
        raise ValueError(f"convolution path gives {conv_h}x{conv_w}, attention path {h_out}x{w_out}")


def positional_encoding(sd: StateDict, height: int, width: int, dtype: np.dtype) -> np.ndarray:
    """``conv_p`` applied to the (x, y) grid of ``linspace(-1, 1)`` coordinates: shape (1, head_dim, H, W)."""
    xs = np.linspace(-1.0, 1.0, width).astype(dtype)
    ys = np.linspace(-1.0, 1.0, height).astype(dtype)
    grid = np.stack([np.broadcast_to(xs[None, :], (height, width)), np.broadcast_to(ys[:, None], (height, width))])
    return conv2d(grid[None], param(sd, "conv_p.weight", dtype), param(sd, "conv_p.bias", dtype))


def _windows(padded: np.ndarray, kernel: int, stride: int, h_out: int, w_out: int) -> np.ndarray:
    """Sliding windows of ``padded`` (X, d, Hp, Wp) as (X, d, kernel², h_out, w_out), slot ``a·kernel + b``."""
    slots = [
        padded[:, :, a : a + stride * (h_out - 1) + 1 : stride, b : b + stride * (w_out - 1) + 1 : stride]
        for a in range(kernel)
        for b in range(kernel)
    ]
    return np.stack(slots, axis=2)


def _reflect(x: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")


def _attention_path(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, pe: np.ndarray, *, head: int, kernel_att: int, stride: int, pad: int
) -> np.ndarray:
    batch, channels, height, width = q.shape
    head_dim = channels // head
    h_out, w_out = height // stride, width // stride
    split = (batch * head, head_dim, height, width)
    q_scaled = q.reshape(split) * head_dim**-0.5
    q_s = q_scaled[:, :, ::stride, ::stride]
    pe_s = pe[:, :, ::stride, ::stride]
    keys = _windows(_reflect(k.reshape(split), pad), kernel_att, stride, h_out, w_out)
    values = _windows(_reflect(v.reshape(split), pad), kernel_att, stride, h_out, w_out)
    pe_windows = _windows(_reflect(pe, pad), kernel_att, stride, h_out, w_out)
    relative = keys + pe_s[:, :, None] - pe_windows
    logits = np.einsum("xeij,xenij->xnij", q_s, relative)
    weights = softmax(logits, axis=1)
    out = np.einsum("xnij,xenij->xeij", weights, values)
    return out.reshape(batch, channels, h_out, w_out)


def _convolution_path(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    fc_weight: np.ndarray,
    dep_weight: np.ndarray,
    *,
    head: int,
    stride: int,
) -> np.ndarray:
    batch, channels, height, width = q.shape
    head_dim = channels // head
    split = (batch, head, head_dim, height * width)
    stacked = np.concatenate([q.reshape(split), k.reshape(split), v.reshape(split)], axis=1)  # (B, 3·head, d, HW)
    # features[b, e, j, n] = Σ_c fc[j, c] · stacked[b, c, e, n]: channel e·kc² + j of the map dep_conv reads.
    features = np.einsum("jc,bcen->bejn", fc_weight[:, :, 0, 0], stacked)
    feature_map = features.reshape(batch, head_dim * fc_weight.shape[0], height, width)
    return conv2d(feature_map, dep_weight, None, stride=stride, padding=DEP_CONV_PADDING, groups=head_dim)


def acmix(
    x: np.ndarray,
    sd: StateDict,
    *,
    in_planes: int,
    out_planes: int,
    kernel_att: int = 7,
    head: int = 4,
    kernel_conv: int = 3,
    stride: int = 1,
    dilation: int = 1,
) -> np.ndarray:
    """Forward pass of ``ACmix(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation)`` on NCHW ``x``.

    Computes in the dtype of ``x``; returns (B, out_planes, H // stride, W // stride).
    """
    batch, channels, height, width = x.shape
    if channels != in_planes:
        raise ValueError(f"ACmix with in_planes {in_planes} got {channels} input channels")
    check_acmix_shapes(
        height,
        width,
        out_planes=out_planes,
        kernel_att=kernel_att,
        head=head,
        kernel_conv=kernel_conv,
        stride=stride,
        dilation=dilation,
    )
    dtype = x.dtype
    q, k, v = (conv2d(x, param(sd, f"{n}.weight", dtype), param(sd, f"{n}.bias", dtype)) for n in PROJECTIONS)
    pe = positional_encoding(sd, height, width, dtype)
    out_att = _attention_path(
        q, k, v, pe, head=head, kernel_att=kernel_att, stride=stride, pad=attention_padding(kernel_att, dilation)
    )
    out_conv = _convolution_path(
        q, k, v, param(sd, "fc.weight", dtype), param(sd, "dep_conv.weight", dtype), head=head, stride=stride
    )
    return param(sd, "rate1", dtype) * out_att + param(sd, "rate2", dtype) * out_conv


def random_acmix_state(
    rng: np.random.Generator,
    *,
    in_planes: int,
    out_planes: int,
    head: int = 4,
    kernel_conv: int = 3,
    dtype: type = np.float64,
) -> StateDict:
    """A random ``ACmix`` state dict with the reference's 12 keys, shapes and order (kernel_att adds no weights)."""
    head_dim = out_planes // head
    sd: StateDict = {
        "rate1": rng.uniform(0.2, 1.0, 1).astype(dtype),
        "rate2": rng.uniform(0.2, 1.0, 1).astype(dtype),
    }
    for name in PROJECTIONS:
        add_random_conv(sd, rng, name, (out_planes, in_planes, 1, 1), bias=True, dtype=dtype)
    add_random_conv(sd, rng, "conv_p", (head_dim, 2, 1, 1), bias=True, dtype=dtype)
    add_random_conv(sd, rng, "fc", (kernel_conv * kernel_conv, 3 * head, 1, 1), bias=False, dtype=dtype)
    add_random_conv(
        sd, rng, "dep_conv", (out_planes, kernel_conv * kernel_conv, kernel_conv, kernel_conv), bias=False, dtype=dtype
    )
    return sd
