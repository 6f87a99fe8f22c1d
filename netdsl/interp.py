"""Reference interpreter: evaluates IR graphs with numpy, op by op, as :mod:`netdsl.opdefs` defines them.

It is the oracle of the differential tests (a rewrite pass must not change what this interpreter
computes) and the evaluator of the constant-folding pass (:func:`eval_node` on nodes whose inputs
are all known). It favours plain, literal transcriptions of the op docstrings over speed, but
every window op is vectorised (strided views and BLAS products), so a full block at 56x56 runs
in well under a second.

Dtypes: an op's output has the dtype of its first input (of its first branch for ``where``; the
type checker requires equal dtypes), ``const`` has its declared dtype and ``grid`` is float32.
:func:`run_graph` can instead compute every floating value in float64, which makes differential
tests exact to ~1e-12.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node, TensorType
from netdsl.opdefs import conv_out_len, floor_mode_pads, window_divisors
from netdsl.resample import linear_taps, nearest_taps
from netdsl.row_bands import row_segments, run_segment

Kernel = Callable[[list[np.ndarray], dict[str, Any]], list[np.ndarray]]
SingleKernel = Callable[[list[np.ndarray], dict[str, Any]], np.ndarray]

KERNELS: dict[str, Kernel] = {}
"""The numpy implementation of every IR op: ``KERNELS[op](args, attrs) -> outputs``."""


def _kernel(name: str) -> Callable[[SingleKernel], SingleKernel]:
    """Register a single-output kernel as the implementation of op ``name``."""

    def register(fn: SingleKernel) -> SingleKernel:
        KERNELS[name] = lambda args, attrs: [fn(args, attrs)]
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# Shared helpers


_PAD_MODES = {"zero": "constant", "reflect": "reflect", "edge": "edge"}


def _pad_spatial(x: np.ndarray, pads: Sequence[int], mode: str = "zero", fill: float = 0.0) -> np.ndarray:
    """Pad the last two axes by ``pads`` = (top, left, bottom, right); mode ``zero`` pads with ``fill``.

    numpy's ``reflect`` mirrors without repeating the edge (index -t -> t), as the IR's pad does.
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {', '.join(_PAD_MODES)}, found {mode!r}")
    t, l, b, r = pads
    widths = [(0, 0)] * (x.ndim - 2) + [(t, b), (l, r)]
    fill_value = {"constant_values": fill} if mode == "zero" else {}
    return np.pad(x, widths, mode=_PAD_MODES[mode], **fill_value)


def _sliding(xp: np.ndarray, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """Read-only view [..., Ho, Wo, kh, kw] of the windows of an already padded ``xp[..., H, W]``.

    ``view[..., i, j, u, v] = xp[..., i*sh + u*dh, j*sw + v*dw]``.
    """
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    ho = conv_out_len(xp.shape[-2], kh, sh, 0, 0, dh)
    wo = conv_out_len(xp.shape[-1], kw, sw, 0, 0, dw)
    *lead, ry, rx = xp.strides
    return as_strided(
        xp,
        shape=(*xp.shape[:-2], ho, wo, kh, kw),
        strides=(*lead, ry * sh, rx * sw, ry * dh, rx * dw),
        writeable=False,
    )


def _windows(x: np.ndarray, attrs: dict[str, Any], kernel: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Windows [B, C, Ho, Wo, kh, kw] of ``x`` padded with ``fill`` per the stride/pads/dilation attrs."""
    xp = _pad_spatial(x, attrs["pads"], fill=fill)
    return _sliding(xp, kernel, attrs["stride"], attrs.get("dilation", (1, 1)))


def _softmax(x: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along ``axis``, into ``out`` if given (which may be ``x`` itself).

    The exp and the division work in place on ``x - max``: one array of ``x``'s size besides ``x``
    instead of three (the range checks run the attention logits of a whole map through here)."""
    e = np.subtract(x, np.max(x, axis=axis, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Reshape a 1-D ``vector`` so that it broadcasts along ``axis`` of an ``ndim``-array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-x))``, each step in place on one array (``out`` if given, which may be ``x`` itself)."""
    e = np.negative(x, out=out, dtype=None if out is not None else np.result_type(x, 1.0))
    # exp(-x) overflows to inf for very negative x, and 1 / (1 + inf) = 0 is the right limit.
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1.0
    return np.divide(1.0, e, out=e)


_erf_elements = np.vectorize(math.erf, otypes=[np.float64])
ERF_BLOCK = 1 << 14
"""Elements per call of the element-by-element erf: each call holds a Python float per element (about
32 bytes), so a whole activation at once (1.2 M elements in ConvNeXt-T's first GELU) took ~40 MB;
a block takes 0.5 MB."""


def _blockwise(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], dtype: npt.DTypeLike) -> np.ndarray:
    """``fn`` applied to :data:`ERF_BLOCK` elements of ``x`` at a time, into one array of ``dtype``: only the
    result is of ``x``'s size."""
    flat = np.asarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=dtype)
    for start in range(0, flat.size, ERF_BLOCK):
        out[start:start + ERF_BLOCK] = fn(flat[start:start + ERF_BLOCK])
    return out.reshape(np.shape(x))


def _erf(x: np.ndarray) -> np.ndarray:
    """``math.erf`` of every element, in float64, a block of :data:`ERF_BLOCK` elements at a time."""
    return _blockwise(x, _erf_elements, np.float64)


def _gelu_block(x: np.ndarray) -> np.ndarray:
    """``(x * 0.5) * (1 + erf(x / sqrt 2))`` in float64, the float64 factor updated in place."""
    phi = _erf_elements(x / math.sqrt(2.0))
    phi += 1.0
    phi *= x * 0.5
    return phi


def _gelu(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) with Phi from the exact erf (``math.erf``, accurate to about an ulp in float64).

    Computed in float64 a block at a time and stored in ``x``'s dtype (the dtype :func:`eval_node` gives
    the output): the same operations on the same operands as ``x * 0.5 * (1.0 + erf(x / sqrt 2))`` on the
    whole array (both products are commutative), without its four temporaries of ``x``'s size."""
    floating = np.issubdtype(np.asarray(x).dtype, np.floating)
    return _blockwise(x, _gelu_block, np.asarray(x).dtype if floating else np.float64)


# ---------------------------------------------------------------------------------------------
# Dense algebra and normalisation


CONV_SCRATCH_BYTES = 8 << 20
"""Byte budget of the conv kernel's im2col matrix: larger ones are built a band of output rows at a time.

A 7x7 depthwise conv over 96 channels at 56x56 would otherwise materialise 59 MB of columns for a
1.2 MB output, more than the model's weights of a small network (the range checks run this
interpreter while the weights are held). The band's rows set the shape of each matrix product, so
the budget also fixes the float32 rounding of the result (a smaller band may sum in another order)."""

CONV_GROUP_SCRATCH_BYTES = 1 << 20
"""Byte budget of the columns of a grouped conv's band: its groups are taken a few at a time under it.

Each group's product is a matrix product of its own, of the band's shape whatever the groups taken
with it, so the result is the same to the bit. MobileViT-S's first depthwise conv (128 channels at
128x128) held 8 MiB of columns and a 3.8 MB padded slab at a time; under this budget, 1 MiB and 0.5 MB."""


def _conv_band(win: np.ndarray, mats: np.ndarray, g: int, cig: int) -> np.ndarray:
    """One band of conv output, [B, Co, rows, Wo], from its windows [B, Ci, rows, Wo, kh, kw]."""
    b, _, rows, wo, kh, kw = win.shape
    # im2col per group, then one batched matrix product: [B, g, rows*Wo, Ci/g*kh*kw] @ [g, Ci/g*kh*kw, Co/g].
    cols = win.reshape(b, g, cig, rows, wo, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6).reshape(b, g, rows * wo, -1)
    return (cols @ mats).transpose(0, 1, 3, 2).reshape(b, -1, rows, wo)


def _padded_rows(x: np.ndarray, pads: Sequence[int], first: int, stop: int) -> np.ndarray:
    """Rows ``first .. stop - 1`` of ``x`` padded by ``pads`` (top, left, bottom, right) with zeros, built from
    those rows alone: the padded map is never made whole."""
    top, left, _, right = pads
    h = x.shape[-2]
    lo = min(max(first - top, 0), h)
    hi = min(max(stop - top, lo), h)
    above = min(max(lo - (first - top), 0), stop - first)
    return _pad_spatial(x[..., lo:hi, :], (above, left, stop - first - above - (hi - lo), right))


@_kernel("conv")
def _conv(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """A band of output rows at a time (:data:`CONV_SCRATCH_BYTES`), a few groups of it at a time
    (:data:`CONV_GROUP_SCRATCH_BYTES`), each from its own rows and channels of the padded input; the bias is
    added in place."""
    x, w = args[0], args[1]
    co, cig, kh, kw = w.shape
    g = attrs["groups"]
    pads, (sh, sw), (dh, dw) = attrs["pads"], attrs["stride"], attrs.get("dilation", (1, 1))
    b, ci, h, wi = x.shape
    ho = conv_out_len(h, kh, sh, pads[0], pads[2], dh)
    wo = conv_out_len(wi, kw, sw, pads[1], pads[3], dw)
    mats = w.reshape(g, co // g, cig * kh * kw).transpose(0, 2, 1)
    row_bytes = b * ci * wo * kh * kw * np.result_type(x, w).itemsize
    band = max(1, CONV_SCRATCH_BYTES // max(row_bytes, 1))
    per_step = max(1, CONV_GROUP_SCRATCH_BYTES * g // max(row_bytes * min(band, ho), 1))
    cog = co // g

    def part(top: int, count: int, first: int, groups: int) -> np.ndarray:
        """Output rows ``top .. top + count - 1`` of groups ``first .. first + groups - 1``."""
        chans = x[:, first * cig:(first + groups) * cig]
        slab = _padded_rows(chans, pads, top * sh, (top + count - 1) * sh + (kh - 1) * dh + 1)
        return _conv_band(_sliding(slab, (kh, kw), (sh, sw), (dh, dw)), mats[first:first + groups], groups, cig)

    if band >= ho and per_step >= g:
        y = part(0, ho, 0, g)
    else:
        y = np.empty((b, co, ho, wo), dtype=np.result_type(x, w))
        for top in range(0, ho, band):
            count = min(band, ho - top)
            for first in range(0, g, per_step):
                groups = min(per_step, g - first)
                y[:, first * cog:(first + groups) * cog, top:top + count] = part(top, count, first, groups)
    if len(args) == 3:
        y = _into_temporary(y, np.add, _along(args[2], 1, 4))
    return y


@_kernel("linear")
def _linear(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    y = args[0] @ args[1].T
    return y + args[2] if len(args) == 3 else y


@_kernel("matmul")
def _matmul(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.matmul(args[0], args[1])


@_kernel("batchnorm")
def _batchnorm(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    weight, bias, mean, var = (_along(a, 1, x.ndim) for a in args[1:])
    return (x - mean) / np.sqrt(var + attrs["eps"]) * weight + bias


def _normalise(x: np.ndarray, axes: int | tuple[int, ...], eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over ``axes``, biased variance (PyTorch's norms)."""
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@_kernel("layernorm")
def _layernorm(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    axis = attrs["axis"] % x.ndim
    y = _normalise(x, axis, attrs["eps"])
    if len(args) >= 2:
        y = y * _along(args[1], axis, x.ndim)
    if len(args) == 3:
        y = y + _along(args[2], axis, x.ndim)
    return y


@_kernel("groupnorm")
def _groupnorm(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x, *affine = args
    grouped = x.reshape(x.shape[0], attrs["groups"], -1)
    y = _normalise(grouped, 2, attrs["eps"]).reshape(x.shape)
    return y * _along(affine[0], 1, x.ndim) + _along(affine[1], 1, x.ndim) if affine else y


# ---------------------------------------------------------------------------------------------
# Elementwise


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": _gelu,
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "relu6": lambda x: np.clip(x, 0.0, 6.0).astype(x.dtype),
    "hardsigmoid": lambda x: (np.clip(x + 3.0, 0.0, 6.0) / 6.0).astype(x.dtype),
    "tanh": np.tanh,
    "exp": np.exp,
    "neg": np.negative,
    "sqrt": np.sqrt,
    "erf": lambda x: _erf(x).astype(x.dtype),
    "identity": lambda x: x,
}

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "minimum": np.minimum,
    "maximum": np.maximum,
}

for _name, _fn in _UNARY.items():
    _kernel(_name)(lambda args, attrs, fn=_fn: fn(args[0]))
for _name, _fn2 in _BINARY.items():
    _kernel(_name)(lambda args, attrs, fn=_fn2: fn(args[0], args[1]))


@_kernel("clamp")
def _clamp(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    lo, hi = attrs.get("min"), attrs.get("max")
    return np.clip(args[0], -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(args[0].dtype)


@_kernel("pow")
def _pow(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # 0 ** -1 = inf, (-1) ** 0.5 = nan
        return np.power(x, np.asarray(attrs["exponent"], dtype=x.dtype))


@_kernel("softmax")
def _softmax_op(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return _softmax(args[0], attrs["axis"])


# ---------------------------------------------------------------------------------------------
# Sources and data movement


@_kernel("const")
def _const(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.asarray(attrs["value"]).astype(NP_DTYPES[attrs["dtype"]])


@_kernel("grid")
def _grid(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    h, w = attrs["height"], attrs["width"]
    along_w = np.broadcast_to(np.linspace(-1.0, 1.0, w), (h, w))
    along_h = np.broadcast_to(np.linspace(-1.0, 1.0, h)[:, None], (h, w))
    return np.stack([along_w, along_h])[None].astype(np.float32)


@_kernel("reshape")
def _reshape(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return args[0].reshape(tuple(attrs["shape"]))


@_kernel("transpose")
def _transpose(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.transpose(args[0], tuple(attrs["perm"]))


@_kernel("rotate")
def _rotate(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    # Per head, x is an S x S matrix (channel, row-major position); rotate is its transpose.
    x = args[0]
    b, c, h, w = x.shape
    heads = attrs["heads"]
    s = c // heads
    return x.reshape(b, heads, s, s).swapaxes(2, 3).reshape(b, c, h, w)


def _shift_span(n: int, d: int) -> tuple[slice, slice] | None:
    """(destination, source) slices of an axis of length ``n`` for y[i] = x[i - d]; None if all fill."""
    if abs(d) >= n:
        return None
    return slice(max(d, 0), n + min(d, 0)), slice(max(-d, 0), n - max(d, 0))


@_kernel("shift")
def _shift(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    offsets = attrs["offsets"]
    per_group = x.shape[1] // len(offsets)
    y = np.zeros_like(x)
    for g, (dy, dx) in enumerate(offsets):
        rows, cols = _shift_span(x.shape[2], dy), _shift_span(x.shape[3], dx)
        if rows is None or cols is None:
            continue
        chans = slice(g * per_group, (g + 1) * per_group)
        y[:, chans, rows[0], cols[0]] = x[:, chans, rows[1], cols[1]]
    return y


@_kernel("unfold")
def _unfold(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    kh, kw = attrs["kernel"]
    win = _windows(x, attrs, (kh, kw))  # B, C, Ho, Wo, kh, kw
    b, c, ho, wo = win.shape[:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(b, c * kh * kw, ho, wo)


@_kernel("concat")
def _concat(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.concatenate(args, axis=attrs["axis"])


def _split(args: list[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
    bounds = np.cumsum(attrs["sizes"])[:-1]
    return np.split(args[0], bounds, axis=attrs["axis"])


KERNELS["split"] = _split


@_kernel("slice")
def _slice(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    index = [slice(None)] * x.ndim
    index[attrs["axis"] % x.ndim] = slice(attrs["start"], attrs["end"], attrs["step"])
    return x[tuple(index)]


@_kernel("pad")
def _pad(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return _pad_spatial(args[0], attrs["pads"], attrs["mode"])


@_kernel("roll")
def _roll(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.roll(args[0], tuple(attrs["shifts"]), tuple(attrs["axes"]))


@_kernel("where")
def _where(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.where(args[0] != 0, args[1], args[2])


@_kernel("gather")
def _gather(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return np.take(args[0], args[1], axis=0)


# ---------------------------------------------------------------------------------------------
# Attention


@_kernel("attention")
def _attention(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    q, k, v = args[:3]
    # Scaled (and biased) in place: the logits are the largest array here ([.., Lq, Lk]).
    logits = _into_temporary(q @ k.swapaxes(-1, -2), np.multiply, attrs["scale"])
    if len(args) == 4:
        logits = _into_temporary(logits, np.add, args[3])
    return _softmax(logits, -1) @ v


def _into_temporary(x: np.ndarray, ufunc: np.ufunc, operand: Any) -> np.ndarray:
    """``ufunc(x, operand)``, written over ``x`` (a temporary of the caller) when the result has its shape and
    dtype, so that the values are those of the out-of-place form."""
    if np.broadcast_shapes(x.shape, np.shape(operand)) == x.shape and np.result_type(x, operand) == x.dtype:
        return ufunc(x, operand, out=x)
    return ufunc(x, operand)


@_kernel("local_attention")
def _local_attention(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    q, k, v = args[:3]
    heads, kern, s = attrs["heads"], attrs["kernel"], attrs["stride"]
    b, c, h, w = q.shape
    d = c // heads
    p = (kern - 1) // 2
    ho, wo = h // s, w // s

    def neighbours(t: np.ndarray) -> np.ndarray:
        """[N, ch, H, W] -> [N, ch, Ho, Wo, kern*kern]: slot a*kern+b holds reflect(s*i+a-p, s*j+b-p)."""
        win = _sliding(_pad_spatial(t, (p, p, p, p), "reflect"), (kern, kern), (s, s), (1, 1))
        return win.reshape(*win.shape[:4], kern * kern)

    q_s = (attrs["scale"] * q[:, :, ::s, ::s]).reshape(b, heads, d, ho, wo)
    keys = neighbours(k).reshape(b, heads, d, ho, wo, kern * kern)
    if len(args) == 4:
        pos = args[3]  # 1, d, H, W; broadcast over batch and heads
        keys = keys + pos[:, None, :, ::s, ::s, None] - neighbours(pos)[:, None]
    logits = np.einsum("bhdij,bhdijn->bhijn", q_s, keys)
    weights = _softmax(logits, -1)
    values = neighbours(v).reshape(b, heads, d, ho, wo, kern * kern)
    return np.einsum("bhijn,bhdijn->bhdij", weights, values).reshape(b, c, ho, wo)


# ---------------------------------------------------------------------------------------------
# Pooling, reductions, resize


def _ceil_pads(x: np.ndarray, attrs: dict[str, Any]) -> dict[str, Any]:
    """The pool's attrs with ceil mode's cut windows made whole by trailing padding (floor mode after it)."""
    return {**attrs, "pads": floor_mode_pads(attrs, x.shape[2], x.shape[3])}


@_kernel("avgpool")
def _avgpool(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    if attrs.get("count_include_pad", True) and not attrs.get("ceil_mode"):
        # every window lies inside the padded map: the divisor is always kh*kw
        return np.mean(_windows(x, attrs, attrs["kernel"]), axis=(4, 5))
    sums = np.sum(_windows(x, _ceil_pads(x, attrs), attrs["kernel"]), axis=(4, 5))
    rows, cols = window_divisors(attrs, x.shape[2], x.shape[3])
    return (sums / np.outer(rows, cols)).astype(x.dtype)


@_kernel("maxpool")
def _maxpool(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = args[0]
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    return np.max(_windows(x, _ceil_pads(x, attrs), attrs["kernel"], fill=lowest), axis=(4, 5))


_REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max,
                                                   "reduce_min": np.min}

for _name, _reduce in _REDUCTIONS.items():
    _kernel(_name)(
        lambda args, attrs, fn=_reduce: fn(args[0], axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"]))
    )


def _resize_axis(x: np.ndarray, axis: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    n_in = x.shape[axis]
    if mode == "nearest":
        return np.take(x, nearest_taps(n_in, n_out, scale), axis=axis)
    i0, i1, lam = linear_taps(n_in, n_out, scale)
    lam = _along(lam, axis, x.ndim)
    return (1.0 - lam) * np.take(x, i0, axis=axis) + lam * np.take(x, i1, axis=axis)


@_kernel("resize")
def _resize(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    mode = attrs["mode"]
    if mode not in ("linear", "nearest"):
        raise ValueError(f"resize mode must be 'linear' or 'nearest', found {mode!r}")
    (ho, wo), (sh, sw) = attrs["sizes"], attrs["scales"]
    # Width first, then height: the same association as PyTorch's bilinear kernel,
    # h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11).
    return _resize_axis(_resize_axis(args[0], 3, wo, sw, mode), 2, ho, sh, mode)


# ---------------------------------------------------------------------------------------------
# Entry points


IN_PLACE: dict[str, Callable[[list[np.ndarray], dict[str, Any], np.ndarray], np.ndarray]] = {
    **{name: lambda args, attrs, out, fn=fn: fn(*args, out=out) for name, fn in _BINARY.items()},
    **{name: lambda args, attrs, out, fn=fn: fn(args[0], out=out)
       for name, fn in (("exp", np.exp), ("neg", np.negative), ("sqrt", np.sqrt), ("tanh", np.tanh))},
    "relu": lambda args, attrs, out: np.maximum(args[0], 0, out=out),
    "sigmoid": lambda args, attrs, out: _sigmoid(args[0], out=out),
    "softmax": lambda args, attrs, out: _softmax(args[0], attrs["axis"], out=out),
}
"""Elementwise ops (softmax too) that can write their output over an input of the output's shape and dtype,
``IN_PLACE[op](args, attrs, out)``: the same operations as their kernels, so the same values."""


def _reusable_target(op: str, args: list[np.ndarray], reusable: Sequence[int]) -> np.ndarray | None:
    """The first of ``args[i]`` (``i`` in ``reusable``) that ``op``'s output can be written over: an op of
    :data:`IN_PLACE` whose floating operands all have that argument's dtype and broadcast to its shape.

    Only when the kernel's new array would have the target's layout, so that a later reduction over the
    result sums in the same order: every operand is C-contiguous (so is the new array), or every operand
    has the target's shape and strides (numpy lays the new array out as its operands)."""
    if op not in IN_PLACE or not reusable:
        return None
    dtypes = {a.dtype for a in args}
    if len(dtypes) != 1 or not np.issubdtype(dtypes.pop(), np.floating):
        return None
    shape = np.broadcast_shapes(*(a.shape for a in args))
    for i in reusable:
        target = args[i]
        if target.shape == shape and (all(a.flags.c_contiguous for a in args)
                                      or all(a.shape == shape and _layout(a) == _layout(target) for a in args)):
            return target
    return None


def _layout(array: np.ndarray) -> tuple[int, ...]:
    """The strides of ``array``'s axes longer than 1 (the others are never stepped along)."""
    return tuple(stride for stride, n in zip(array.strides, array.shape, strict=True) if n > 1)


def eval_node(node: Node, args: list[np.ndarray], reusable: Sequence[int] = ()) -> list[np.ndarray]:
    """Evaluate one node on concrete input arrays (in ``node.inputs`` order); returns its outputs.

    Outputs take the dtype of the first input (the type checker requires matching dtypes; for
    ``where``, of its first branch), so a float32 graph stays float32 even where a kernel
    computes in float64 internally. ``reusable`` lists the arguments nothing else holds: an
    elementwise op (:data:`IN_PLACE`) may write its output over one of them.
    """
    kernel = KERNELS.get(node.op)
    if kernel is None:
        raise ValueError(f"the interpreter has no kernel for op {node.op!r}")
    target = _reusable_target(node.op, args, reusable)
    outs = kernel(args, node.attrs) if target is None else [IN_PLACE[node.op](args, node.attrs, target)]
    if args:
        like = args[1] if node.op == "where" else args[0]
        outs = [np.asarray(o).astype(like.dtype, copy=False) for o in outs]
    return outs


MOVES_VALUES = frozenset({"reshape", "transpose", "slice", "split", "concat", "pad", "roll", "rotate", "shift",
                          "identity"})
"""Ops whose outputs are some of their input elements (or zeros) moved: run on stored values as they are,
so that a slice stays a view and nothing is converted to the compute dtype and back."""


def _as_type(name: str, value: np.ndarray, type_: TensorType, dtype: npt.DTypeLike | None) -> np.ndarray:
    """``value`` checked against ``type_``'s shape and cast to its dtype (or to ``dtype`` if floating)."""
    arr = np.asarray(value)
    if arr.shape != type_.shape:
        raise ValueError(f"{name!r} must have shape {list(type_.shape)}, found {list(arr.shape)}")
    target = np.dtype(NP_DTYPES[type_.dtype])
    if dtype is not None and np.issubdtype(target, np.floating):
        target = np.dtype(dtype)
    return arr.astype(target, copy=False)


def _sole_holder(args: list[np.ndarray], index: int) -> bool:
    """Whether ``args`` is all that holds ``args[index]`` and its memory: referenced once by the list (besides
    this call's own two references), and either owning its data (a view references its base, so none exists)
    or a view of all of an array that nothing else references (a conv's output is a transposed product).
    Such an argument may be overwritten (:func:`eval_node`'s ``reusable``)."""
    array = args[index]
    if not isinstance(array, np.ndarray) or not array.flags.writeable or sys.getrefcount(array) != 3:
        return False
    if array.flags.owndata:
        return True
    base = array.base  # referenced by the view, here and by the call
    return isinstance(base, np.ndarray) and base.flags.owndata and base.nbytes == array.nbytes \
        and sys.getrefcount(base) == 3


def round_to_storage(value: np.ndarray, storage: npt.DTypeLike | None) -> np.ndarray:
    """A floating ``value`` rounded to the ``storage`` dtype but kept in its own dtype (others unchanged)."""
    if storage is None or not np.issubdtype(value.dtype, np.floating):
        return value
    with np.errstate(over="ignore"):  # beyond the storage range is Inf, as in a runtime storing that dtype
        return value.astype(storage).astype(value.dtype)


SLICED_CHAIN = (frozenset({"matmul"}), frozenset({"add", "mul"}), frozenset({"softmax"}), frozenset({"matmul"}))
"""Ops of an attention chain (logits; a mask, bias or scale; weights; weighted sum) that :func:`run_graph` can
evaluate a slice at a time: ``local_attention_to_matmul``'s logits of a whole stage are the largest values of a model,
and ``attention_to_matmul``'s scaled logits of MobileViT-S's first transformer (4 x 4 x 256 x 256) a large one."""


def sliced_chains(graph: Graph) -> dict[int, list[int]]:
    """The node indices of each :data:`SLICED_CHAIN` of ``graph``, by the index of its last node.

    Each intermediate value is read by the next node alone (as its first input) and is no graph output; the
    softmax is over the last axis, and the chain has a leading axis (before the matrix axes) longer than 1
    along which its other operands are sliced or broadcast."""
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            readers.setdefault(name, []).append(index)
    chains: dict[int, list[int]] = {}
    for index, node in enumerate(graph.nodes):
        chain = [index]
        for ops in SLICED_CHAIN[1:] if node.op in SLICED_CHAIN[0] else ():
            value = graph.nodes[chain[-1]].outputs[0]
            nxt = readers.get(value, [])
            if value in graph.outputs or len(nxt) != 1 or graph.nodes[nxt[0]].op not in ops \
                    or graph.nodes[nxt[0]].inputs.count(value) != 1 or graph.nodes[nxt[0]].inputs[0] != value:
                break
            chain.append(nxt[0])
        if len(chain) == len(SLICED_CHAIN) and _chain_axis(graph, [graph.nodes[i] for i in chain]) is not None:
            chains[chain[-1]] = chain
    return chains


def _chain_axis(graph: Graph, nodes: list[Node]) -> int | None:
    """The longest leading axis of a chain's values, None if there is none to slice along (or an operand has
    more axes than the values, or the softmax is not over the last axis)."""
    shape = graph.values[nodes[0].outputs[0]].shape
    rank = len(shape)
    operands = [graph.type_of(name).shape for node in nodes for name in node.inputs]
    if rank < 3 or nodes[2].attrs["axis"] % rank != rank - 1 or any(len(o) > rank for o in operands) \
            or len(graph.values[nodes[-1].outputs[0]].shape) != rank:
        return None
    axis = max(range(rank - 2), key=lambda a: shape[a])
    return axis if shape[axis] > 1 else None


def _slice_along(array: np.ndarray, axis: int, index: int, rank: int) -> np.ndarray:
    """Index ``index`` (kept as an axis of 1) of axis ``axis`` of a rank-``rank`` value, of an operand
    broadcast against it (aligned to the right); the operand as it is where it broadcasts along that axis."""
    own = axis - (rank - array.ndim)
    if own < 0 or array.shape[own] == 1:
        return array
    return array[(slice(None),) * own + (slice(index, index + 1),)]


def run_graph(
    graph: Graph,
    weights: dict[str, np.ndarray],
    inputs: dict[str, np.ndarray],
    dtype: npt.DTypeLike | None = None,
    *,
    storage: npt.DTypeLike | None = None,
    observe: Callable[[Node, list[np.ndarray]], None] | None = None,
    in_slices: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``inputs`` with parameter values ``weights``; returns every output by name.

    Inputs and weights are checked against their declared shapes and cast to their declared
    dtypes. With ``dtype`` (e.g. ``np.float64``), every floating value, including constants and
    grids, is computed in that dtype instead. Extra entries in ``weights`` are ignored.
    With ``storage`` (e.g. ``np.float16``), every floating weight, input and node output is
    stored in that dtype and converted to the compute dtype when an op reads them: a runtime that
    stores tensors in float16 and computes each op in float32 (overflow becomes Inf, as there).
    ``observe(node, outputs)`` is called after each node with its stored outputs (in ``storage``).
    With ``in_slices``, each attention chain (:func:`sliced_chains`) is evaluated a slice of its longest
    leading axis at a time, so that its logits are never whole: the same operations on the same operands
    (matrix products per matrix, softmax per row), and ``observe`` is called for each slice of its values;
    and each run of convolutions and elementwise ops (:func:`netdsl.row_bands.row_segments`) a band of rows
    at a time, so that its intermediate values are never whole either.
    Raises ValueError for a missing or misshapen input or weight, and RuntimeError if a node's
    result disagrees with its inferred shape (an op whose kernel and type rule differ).
    """
    env: dict[str, np.ndarray] = {}

    def stored(value: np.ndarray) -> np.ndarray:
        """A floating value as the run keeps it: in the ``storage`` dtype itself (half the bytes of float32)."""
        if storage is None or not np.issubdtype(value.dtype, np.floating):
            return value
        with np.errstate(over="ignore"):  # beyond the storage range is Inf, as in a runtime storing that dtype
            return value.astype(storage, copy=False)

    for kind, names, given in (("weight", list(graph.params), weights), ("input", graph.inputs, inputs)):
        for name in names:
            if name not in given:
                raise ValueError(f"missing {kind} {name!r} of graph {graph.name!r}")
            if kind == "input":
                env[name] = stored(_as_type(name, given[name], graph.type_of(name), dtype))
    # Weights are converted when a node reads them and values dropped after their last reader, so a
    # run holds the caller's weights once and only the live activations besides.
    chains = sliced_chains(graph) if in_slices else {}
    segments = row_segments(graph, {i for chain in chains.values() for i in chain}) if in_slices else {}
    # A chain's or segment's inputs are read at its end.
    ends = {i: last for last, chain in chains.items() for i in chain}
    ends.update((i, last) for last, segment in segments.items() for i in segment.nodes)
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        last_use.update((name, max(last_use.get(name, -1), ends.get(index, index))) for name in node.inputs)
    kept = set(graph.outputs)

    def read(name: str, moved: bool = False) -> np.ndarray:
        """``name``'s value in its compute dtype; a stored one as it is for ops that only move values."""
        if name not in env:
            value = _as_type(name, weights[name], graph.type_of(name), dtype)
            # A weight held in the storage dtype (float16_weights) is its own rounding: no round trip of its size.
            held = np.asarray(weights[name]).dtype == np.dtype(storage) if storage is not None else False
            return value if held else round_to_storage(value, storage)
        return env[name] if moved else widened(name, env[name])

    def drop_last_read(names: list[str], index: int) -> None:
        """Drop the values whose last reader is node ``index`` (before it computes: a stored input read in the
        compute dtype is not held twice)."""
        for name in names:
            if last_use[name] == index and name not in kept:
                env.pop(name, None)

    def compute(node: Node, args: list[np.ndarray], as_node: Node | None = None) -> list[np.ndarray]:
        """``node``'s stored outputs on ``args`` (which it may write over), evaluated as ``as_node`` if given (a
        convolution with a band's padding), observed."""
        outs = [stored(o) for o in eval_node(as_node or node, args,
                                             [i for i in range(len(args)) if _sole_holder(args, i)])]
        del args[:]
        if observe is not None:
            observe(node, outs)
        return outs

    def widened(name: str, value: np.ndarray) -> np.ndarray:
        """A stored value in its compute dtype (a value held in the storage dtype converted, others as they are)."""
        if storage is None or value.dtype != np.dtype(storage):
            return value
        return value.astype(dtype if dtype is not None else NP_DTYPES[graph.type_of(name).dtype])

    def run_chain(chain: list[int]) -> list[np.ndarray]:
        """The last output of a :func:`sliced_chains` chain, computed a slice at a time."""
        nodes = [graph.nodes[i] for i in chain]
        inner = {node.outputs[0] for node in nodes[:-1]}
        outer = {name: read(name) for node in nodes for name in node.inputs if name not in inner}
        drop_last_read(list(outer), chain[-1])
        rank = len(graph.values[nodes[0].outputs[0]].shape)
        axis = _chain_axis(graph, nodes)
        parts = []
        for index in range(graph.values[nodes[0].outputs[0]].shape[axis]):
            value: list[np.ndarray] = []  # the next node's argument; args alone hold it then (see _sole_holder)
            for node in nodes:
                args = [value.pop() if name in inner else _slice_along(outer[name], axis, index, rank)
                        for name in node.inputs]
                (out,) = compute(node, args)
                value.append(out if node is nodes[-1] else widened(node.outputs[0], out))
                del out
            parts.append(value.pop())
        return [np.concatenate(parts, axis=axis)]

    for index, node in enumerate(graph.nodes):
        if ends.get(index, index) != index:
            continue  # computed with its chain or segment
        if index in chains:
            outs = run_chain(chains[index])
        elif index in segments:
            nodes = [graph.nodes[i] for i in segments[index].nodes]
            inner = {node.outputs[0] for node in nodes[:-1]}
            # Activations as stored: each band converts its own rows.
            outer = {name: env[name] for node in nodes for name in node.inputs if name not in inner and name in env}
            drop_last_read(list(outer), index)
            outs = [run_segment(graph, segments[index], outer, read, compute, widened)]
            del outer
        else:
            args = [read(i, node.op in MOVES_VALUES) for i in node.inputs]
            drop_last_read(node.inputs, index)
            outs = compute(node, args)
        for name, value in zip(node.outputs, outs, strict=True):
            declared = graph.values[name]
            if value.shape != declared.shape:
                raise RuntimeError(
                    f"{node.op} ({node.provenance}) computed {name!r} with shape {list(value.shape)}, "
                    f"but its type is {declared}"
                )
            if storage is None and dtype is not None and np.issubdtype(value.dtype, np.floating):
                value = value.astype(dtype, copy=False)
            env[name] = value
        del outs, value  # the env is left the only holder of each output (see _sole_holder)
    return {name: read(name) for name in graph.outputs}
