"""The numpy interpreter against PyTorch (and against literal loops of the op docstrings)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netdsl.builder import GraphBuilder
from netdsl.initializers import NP_DTYPES, initial_weights
from netdsl.interp import KERNELS, eval_node, run_graph
from netdsl.ir import Init, Node, TensorType
from netdsl.opdefs import OPS

IR_DTYPES = {np.dtype(v): k for k, v in NP_DTYPES.items()}
TOL = {np.float32: 1e-5, np.float64: 1e-10}
FLOATS = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def run_op(op: str, arrays: list[np.ndarray], **attrs: Any) -> list[np.ndarray]:
    """Evaluate ``op`` as a one-node graph (so type inference and the shape check run too)."""
    b = GraphBuilder("single")
    names = [b.input(f"in{i}", TensorType(IR_DTYPES[a.dtype], a.shape)) for i, a in enumerate(arrays)]
    outs = b.op_multi(op, names, **attrs)
    for o in outs:
        b.output(o)
    result = run_graph(b.graph, {}, dict(zip(names, arrays, strict=True)))
    return [result[o] for o in outs]


def run1(op: str, arrays: list[np.ndarray], **attrs: Any) -> np.ndarray:
    return run_op(op, arrays, **attrs)[0]


def check(actual: np.ndarray, expected: torch.Tensor | np.ndarray, dtype: Any) -> None:
    """Same dtype, same shape, equal within the dtype's tolerance."""
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def test_every_ir_op_has_a_kernel() -> None:
    assert set(KERNELS) == set(OPS)


# --------------------------------------------------------------------------------------------
# Dense algebra and normalisation


CONV_CASES = [
    # ci, co, kernel, stride, pads (t,l,b,r), dilation, groups, bias, (H, W)
    (4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, (7, 9)),
    (4, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, False, (8, 7)),
    (6, 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 6, True, (9, 6)),
    (4, 8, (3, 2), (2, 1), (0, 1, 2, 0), (2, 1), 2, True, (10, 7)),
    (3, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, (4, 5)),
]


@FLOATS
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case: tuple, dtype: Any) -> None:
    ci, co, kernel, stride, pads, dilation, groups, with_bias, (h, w) = case
    rng = np.random.default_rng(1)
    x = randn(rng, (2, ci, h, w), dtype)
    weight = randn(rng, (co, ci // groups, *kernel), dtype)
    args = [x, weight] + ([randn(rng, (co,), dtype)] if with_bias else [])
    y = run1("conv", args, stride=stride, pads=pads, dilation=dilation, groups=groups)
    top, left, bottom, right = pads
    xp = F.pad(t(x), (left, right, top, bottom))
    bias = t(args[2]) if with_bias else None
    check(y, F.conv2d(xp, t(weight), bias, stride=stride, dilation=dilation, groups=groups), dtype)


@FLOATS
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(dtype: Any, with_bias: bool) -> None:
    rng = np.random.default_rng(2)
    x, w, b = randn(rng, (2, 3, 5), dtype), randn(rng, (4, 5), dtype), randn(rng, (4,), dtype)
    args = [x, w, b] if with_bias else [x, w]
    check(run1("linear", args), F.linear(t(x), t(w), t(b) if with_bias else None), dtype)


@FLOATS
def test_matmul_broadcasts_leading_axes(dtype: Any) -> None:
    rng = np.random.default_rng(3)
    a, b = randn(rng, (2, 1, 3, 4), dtype), randn(rng, (5, 4, 6), dtype)
    check(run1("matmul", [a, b]), torch.matmul(t(a), t(b)), dtype)


@FLOATS
def test_batchnorm_eval(dtype: Any) -> None:
    rng = np.random.default_rng(4)
    x = randn(rng, (2, 5, 3, 4), dtype)
    weight, bias, mean = (randn(rng, (5,), dtype) for _ in range(3))
    var = rng.uniform(0.5, 2.0, 5).astype(dtype)
    y = run1("batchnorm", [x, weight, bias, mean, var], eps=1e-3, momentum=0.1)
    expected = F.batch_norm(t(x), t(mean), t(var), t(weight), t(bias), training=False, eps=1e-3)
    check(y, expected, dtype)


@FLOATS
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm(dtype: Any, axis: int, affine: bool) -> None:
    rng = np.random.default_rng(5)
    x = randn(rng, (2, 6, 3, 4), dtype) * 3 + 1
    c = x.shape[axis]
    weight, bias = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    y = run1("layernorm", [x, weight, bias] if affine else [x], axis=axis, eps=1e-5)
    moved = t(x).movedim(axis, -1)
    expected = F.layer_norm(moved, (c,), t(weight) if affine else None, t(bias) if affine else None, eps=1e-5)
    check(y, expected.movedim(-1, axis), dtype)


@FLOATS
def test_groupnorm(dtype: Any) -> None:
    rng = np.random.default_rng(6)
    x = randn(rng, (2, 6, 3, 5), dtype) * 2 - 1
    weight, bias = randn(rng, (6,), dtype), randn(rng, (6,), dtype)
    y = run1("groupnorm", [x, weight, bias], groups=3, eps=1e-5)
    check(y, F.group_norm(t(x), 3, t(weight), t(bias), eps=1e-5), dtype)


# --------------------------------------------------------------------------------------------
# Elementwise


UNARY_REFS = {
    "relu": F.relu,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "neg": torch.neg,
    "sqrt": torch.sqrt,
    "erf": torch.erf,
    "identity": lambda x: x,
}


@pytest.mark.filterwarnings("error")  # e.g. no overflow warning from the sigmoid's exp
@FLOATS
@pytest.mark.parametrize("op", sorted(UNARY_REFS))
def test_unary(op: str, dtype: Any) -> None:
    rng = np.random.default_rng(7)
    x = randn(rng, (3, 4, 5), dtype) * 3
    if op == "sqrt":
        x = np.abs(x)
    elif op != "exp":
        x[0, 0, :3] = [-1000.0, 1000.0, 0.0]  # saturated tails
    check(run1(op, [x]), UNARY_REFS[op](t(x)), dtype)


@FLOATS
@pytest.mark.parametrize("axis", [1, -1])
def test_softmax(dtype: Any, axis: int) -> None:
    rng = np.random.default_rng(8)
    x = randn(rng, (2, 5, 3, 4), dtype) * 20  # large logits: needs the max subtraction
    check(run1("softmax", [x], axis=axis), torch.softmax(t(x), dim=axis), dtype)


BINARY_REFS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


@FLOATS
@pytest.mark.parametrize("op", sorted(BINARY_REFS))
def test_binary_broadcasting(op: str, dtype: Any) -> None:
    rng = np.random.default_rng(9)
    a = randn(rng, (2, 3, 4, 5), dtype)
    b = rng.uniform(0.5, 2.0, (3, 1, 5)).astype(dtype) * rng.choice([-1, 1], (3, 1, 5)).astype(dtype)
    check(run1(op, [a, b]), BINARY_REFS[op](t(a), t(b)), dtype)


# --------------------------------------------------------------------------------------------
# Sources and data movement


@pytest.mark.parametrize("ir_dtype", ["f32", "i64"])
def test_const_has_its_declared_dtype(ir_dtype: str) -> None:
    value = np.arange(6.0).reshape(2, 3) - 2
    (y,) = eval_node(Node("const", [], ["c"], {"value": value, "dtype": ir_dtype}), [])
    assert y.dtype == NP_DTYPES[ir_dtype]
    np.testing.assert_array_equal(y, value)


@pytest.mark.parametrize("height,width", [(5, 7), (1, 3), (4, 1)])
def test_grid(height: int, width: int) -> None:
    y = run1("grid", [], height=height, width=width)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    expected = torch.stack([gx, gy])[None]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=1e-7)  # torch's f32 linspace: 1 ulp


@FLOATS
def test_reshape_and_transpose(dtype: Any) -> None:
    x = randn(np.random.default_rng(10), (2, 3, 4, 5), dtype)
    check(run1("reshape", [x], shape=(6, 20)), t(x).reshape(6, 20), dtype)
    check(run1("transpose", [x], perm=(0, 2, 3, 1)), t(x).permute(0, 2, 3, 1), dtype)


@pytest.mark.parametrize("heads,h,w", [(1, 3, 3), (2, 2, 3), (3, 4, 2)])
def test_rotate_matches_index_formula(heads: int, h: int, w: int) -> None:
    s = h * w
    x = randn(np.random.default_rng(11), (2, heads * s, h, w), np.float32)
    y = run1("rotate", [x], heads=heads)
    expected = np.empty_like(x)
    for n in range(heads):
        for c in range(s):
            for yy in range(h):
                for xx in range(w):
                    expected[:, n * s + c, yy, xx] = x[:, n * s + yy * w + xx, c // w, c % w]
    np.testing.assert_array_equal(y, expected)


@FLOATS
def test_shift(dtype: Any) -> None:
    offsets = ((0, 0), (1, 0), (0, -2), (-1, 1), (5, 0))  # the last moves every row out
    x = randn(np.random.default_rng(12), (2, 10, 5, 6), dtype)
    y = run1("shift", [x], offsets=offsets)
    # F.pad with a negative width crops: pad dy on top and crop dy at the bottom moves rows down.
    pieces = [F.pad(chunk, (dx, -dx, dy, -dy)) for chunk, (dy, dx) in zip(t(x).chunk(5, 1), offsets, strict=True)]
    check(y, torch.cat(pieces, 1), dtype)


@FLOATS
@pytest.mark.parametrize("kernel,stride,pads,dilation", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 1), (0, 2, 1, 0), (1, 2)),
])
def test_unfold(dtype: Any, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple) -> None:
    x = randn(np.random.default_rng(13), (2, 3, 7, 6), dtype)
    y = run1("unfold", [x], kernel=kernel, stride=stride, pads=pads, dilation=dilation)
    top, left, bottom, right = pads
    cols = F.unfold(F.pad(t(x), (left, right, top, bottom)), kernel, dilation=dilation, stride=stride)
    check(y, cols.reshape(y.shape), dtype)


@FLOATS
def test_concat_split_slice(dtype: Any) -> None:
    rng = np.random.default_rng(14)
    a, b = randn(rng, (2, 3, 4), dtype), randn(rng, (2, 5, 4), dtype)
    check(run1("concat", [a, b], axis=1), torch.cat([t(a), t(b)], 1), dtype)
    parts = run_op("split", [b], axis=-2, sizes=(1, 3, 1))
    for got, expected in zip(parts, torch.split(t(b), [1, 3, 1], dim=-2), strict=True):
        check(got, expected, dtype)
    check(run1("slice", [b], axis=1, start=-4, end=100, step=2), t(b)[:, -4:100:2], dtype)


@FLOATS
@pytest.mark.parametrize("mode,torch_mode", [("zero", "constant"), ("reflect", "reflect"), ("edge", "replicate")])
def test_pad(dtype: Any, mode: str, torch_mode: str) -> None:
    x = randn(np.random.default_rng(15), (2, 3, 4, 5), dtype)
    y = run1("pad", [x], pads=(1, 3, 2, 0), mode=mode)
    check(y, F.pad(t(x), (3, 0, 1, 2), mode=torch_mode), dtype)


@FLOATS
def test_roll(dtype: Any) -> None:
    x = randn(np.random.default_rng(16), (2, 3, 4, 5), dtype)
    check(run1("roll", [x], shifts=(-1, 2), axes=(2, 3)), torch.roll(t(x), (-1, 2), (2, 3)), dtype)


@FLOATS
def test_gather(dtype: Any) -> None:
    rng = np.random.default_rng(17)
    table = randn(rng, (9, 3), dtype)
    idx = rng.integers(0, 9, (4, 4)).astype(np.int64)
    check(run1("gather", [table, idx]), t(table)[t(idx)], dtype)


# --------------------------------------------------------------------------------------------
# Attention


@FLOATS
@pytest.mark.parametrize("with_bias", [True, False])
def test_attention(dtype: Any, with_bias: bool) -> None:
    rng = np.random.default_rng(18)
    q, k = randn(rng, (2, 3, 5, 4), dtype), randn(rng, (2, 3, 6, 4), dtype)
    v, bias = randn(rng, (2, 3, 6, 7), dtype), randn(rng, (3, 5, 6), dtype)
    y = run1("attention", [q, k, v, bias] if with_bias else [q, k, v], scale=0.3)
    mask = t(bias) if with_bias else None
    check(y, F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=mask, scale=0.3), dtype)


def local_attention_loop(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray | None,
                         heads: int, kernel: int, stride: int, scale: float) -> np.ndarray:
    """The local_attention docstring, one output pixel and window slot at a time."""
    b_, c, h, w = q.shape
    d, p = c // heads, (kernel - 1) // 2

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    y = np.zeros((b_, c, h // stride, w // stride))
    for b in range(b_):
        for hd in range(heads):
            ch = slice(hd * d, (hd + 1) * d)
            for i in range(h // stride):
                for j in range(w // stride):
                    si, sj = stride * i, stride * j
                    slots = [(reflect(si + a - p, h), reflect(sj + bb - p, w))
                             for a in range(kernel) for bb in range(kernel)]
                    logits = []
                    for r in slots:
                        rel = k[b, ch, r[0], r[1]]
                        if pos is not None:
                            rel = rel + pos[0, :, si, sj] - pos[0, :, r[0], r[1]]
                        logits.append(np.sum(scale * q[b, ch, si, sj] * rel))
                    weights = np.exp(np.array(logits) - max(logits))
                    weights /= weights.sum()
                    y[b, ch, i, j] = sum(wn * v[b, ch, r[0], r[1]] for wn, r in zip(weights, slots, strict=True))
    return y


@FLOATS
@pytest.mark.parametrize("heads,kernel,stride,h,w,with_pos", [
    (2, 3, 1, 5, 4, True),
    (2, 3, 2, 6, 4, True),
    (1, 5, 2, 6, 8, True),
    (2, 3, 1, 4, 6, False),
])
def test_local_attention_matches_docstring_loop(
    dtype: Any, heads: int, kernel: int, stride: int, h: int, w: int, with_pos: bool
) -> None:
    rng = np.random.default_rng(19)
    c = 2 * heads
    q, k, v = (randn(rng, (2, c, h, w), dtype) for _ in range(3))
    pos = randn(rng, (1, c // heads, h, w), dtype) if with_pos else None
    args = [q, k, v] + ([pos] if with_pos else [])
    y = run1("local_attention", args, heads=heads, kernel=kernel, stride=stride, scale=0.7)
    f64 = [a.astype(np.float64) for a in args]
    expected = local_attention_loop(f64[0], f64[1], f64[2], f64[3] if with_pos else None, heads, kernel, stride, 0.7)
    check(y, expected.astype(dtype), dtype)


def acmix_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                          heads: int, kernel: int, stride: int) -> torch.Tensor:
    """ACmix's attention path as its reference computes it: reflect pad + unfold, softmax over the window."""
    b, c, h, w = q.shape
    d, p, n = c // heads, (kernel - 1) // 2, kernel * kernel
    ho, wo = h // stride, w // stride

    def unfolded(x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(F.pad(x, (p, p, p, p), mode="reflect"), kernel, stride=stride)
        return cols.view(x.shape[0], d, n, ho, wo)

    q_s = (q * d ** -0.5).reshape(b * heads, d, h, w)[:, :, ::stride, ::stride]
    pe_s = pos[:, :, ::stride, ::stride]
    keys = unfolded(k.reshape(b * heads, d, h, w)) + pe_s.unsqueeze(2) - unfolded(pos)
    weights = torch.softmax((q_s.unsqueeze(2) * keys).sum(1), dim=1)
    return (weights.unsqueeze(1) * unfolded(v.reshape(b * heads, d, h, w))).sum(2).view(b, c, ho, wo)


@FLOATS
@pytest.mark.parametrize("stride", [1, 2])
def test_local_attention_matches_acmix_at_block_size(dtype: Any, stride: int) -> None:
    """64 channels, 56x56, 7x7 window, 4 heads: the size of an ACmix stage-1 block."""
    rng = np.random.default_rng(20)
    q, k, v = (randn(rng, (1, 64, 56, 56), dtype) for _ in range(3))
    pos = randn(rng, (1, 16, 56, 56), dtype)
    y = run1("local_attention", [q, k, v, pos], heads=4, kernel=7, stride=stride, scale=16 ** -0.5)
    check(y, acmix_attention_torch(t(q), t(k), t(v), t(pos), 4, 7, stride), dtype)


# --------------------------------------------------------------------------------------------
# Pooling, reductions, resize


@FLOATS
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 2, 1, 0)])
def test_avgpool_counts_padding(dtype: Any, pads: tuple) -> None:
    x = randn(np.random.default_rng(21), (2, 3, 7, 6), dtype)
    y = run1("avgpool", [x], kernel=(3, 3), stride=(2, 2), pads=pads)
    top, left, bottom, right = pads
    expected = F.avg_pool2d(F.pad(t(x), (left, right, top, bottom)), 3, 2)
    if pads == (1, 1, 1, 1):
        check(y, F.avg_pool2d(t(x), 3, 2, padding=1, count_include_pad=True), dtype)
    check(y, expected, dtype)


@FLOATS
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 2, 1, 0)])
def test_maxpool_ignores_padding(dtype: Any, pads: tuple) -> None:
    x = randn(np.random.default_rng(22), (2, 3, 7, 6), dtype) - 10  # all negative: zero padding would win
    y = run1("maxpool", [x], kernel=(3, 3), stride=(2, 2), pads=pads)
    top, left, bottom, right = pads
    expected = F.max_pool2d(F.pad(t(x), (left, right, top, bottom), value=-math.inf), 3, 2)
    if pads == (1, 1, 1, 1):
        check(y, F.max_pool2d(t(x), 3, 2, padding=1), dtype)
    check(y, expected, dtype)


REDUCE_REFS = {"reduce_mean": torch.mean, "reduce_sum": torch.sum, "reduce_max": torch.amax}


@FLOATS
@pytest.mark.parametrize("op", sorted(REDUCE_REFS))
@pytest.mark.parametrize("axes,keepdims", [((2, 3), True), ((1, -1), False)])
def test_reductions(dtype: Any, op: str, axes: tuple, keepdims: bool) -> None:
    x = randn(np.random.default_rng(23), (2, 3, 4, 5), dtype)
    check(run1(op, [x], axes=axes, keepdims=keepdims), REDUCE_REFS[op](t(x), dim=axes, keepdim=keepdims), dtype)


RESIZE_CASES = [
    # (H, W), (scale_h, scale_w): sizes are trunc(L * scale) in float64, PyTorch's rule
    ((27, 27), (14 / 27, 14 / 27)),
    ((14, 14), (1 / (14 / 27), 1 / (14 / 27))),
    ((13, 13), (14 / 13, 14 / 13)),
    ((14, 14), (1 / (14 / 13), 1 / (14 / 13))),
    ((56, 40), (0.25, 0.35)),
    ((6, 9), (7 / 6, 2.0)),
]


@FLOATS
@pytest.mark.parametrize("shape,scales", RESIZE_CASES)
def test_resize_linear_matches_interpolate(dtype: Any, shape: tuple, scales: tuple) -> None:
    x = randn(np.random.default_rng(24), (2, 3, *shape), dtype)
    sizes = tuple(int(n * s) for n, s in zip(shape, scales, strict=True))
    y = run1("resize", [x], mode="linear", scales=scales, sizes=sizes)
    expected = F.interpolate(t(x), scale_factor=scales, mode="bilinear", align_corners=False)
    check(y, expected, dtype)


def test_resize_round_trip_sizes() -> None:
    """27 -> 14 -> 27 and 13 -> 14 -> 13 under the float64 size rule."""
    assert [int(27 * (14 / 27)), int(14 * (1 / (14 / 27))), int(13 * (14 / 13)), int(14 * (1 / (14 / 13)))] == [
        14, 27, 14, 13]


@FLOATS
@pytest.mark.parametrize("shape,scales", [((5, 6), (2.0, 3.0)), ((8, 12), (0.5, 0.25)), ((6, 6), (1.5, 0.5))])
def test_resize_nearest_matches_interpolate(dtype: Any, shape: tuple, scales: tuple) -> None:
    # Factors whose reciprocals are exact in float32, where PyTorch's float32 index arithmetic
    # agrees with the docstring's floor(d / scale).
    x = randn(np.random.default_rng(25), (1, 2, *shape), dtype)
    sizes = tuple(int(n * s) for n, s in zip(shape, scales, strict=True))
    y = run1("resize", [x], mode="nearest", scales=scales, sizes=sizes)
    check(y, F.interpolate(t(x), scale_factor=scales, mode="nearest"), dtype)


# --------------------------------------------------------------------------------------------
# Graphs


def small_block() -> tuple[GraphBuilder, dict[str, Any]]:
    """conv -> batchnorm -> gelu, plus a positional grid added through a 1x1 conv and a const."""
    b = GraphBuilder("block")
    x = b.input("x", TensorType("f32", (2, 4, 6, 5)))
    fan = (("fan_in", 36),)
    w = b.param("conv.weight", TensorType("f32", (8, 4, 3, 3)), Init("uniform_fan_in", fan))
    bias = b.param("conv.bias", TensorType("f32", (8,)), Init("uniform_fan_in", fan))
    bn = [b.param(f"bn.{n}", TensorType("f32", (8,)), Init("normal", (("std", 0.5),)))
          for n in ("weight", "bias", "running_mean")]
    var = b.param("bn.running_var", TensorType("f32", (8,)), Init("fill", (("value", 1.5),)))
    pw = b.param("pos.weight", TensorType("f32", (8, 2, 1, 1)), Init("normal", (("std", 1.0),)))
    y = b.op("conv", [x, w, bias], stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    y = b.op("batchnorm", [y, *bn, var], eps=1e-5, momentum=0.1)
    y = b.op("gelu", [y])
    g = b.op("grid", [], height=6, width=5)
    pos = b.op("conv", [g, pw], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    third = b.op("const", [], value=np.array(1 / 3, dtype=np.float32).reshape(1, 1, 1, 1), dtype="f32")
    out = b.op("add", [y, b.op("mul", [pos, third])], name="out")
    b.output(out)
    return b, {"x": np.random.default_rng(26).standard_normal((2, 4, 6, 5)).astype(np.float32)}


def small_block_torch(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    y = F.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
    y = F.batch_norm(y, p["bn.running_mean"], p["bn.running_var"], p["bn.weight"], p["bn.bias"], eps=1e-5)
    # The IR grid is f32: the float64 linspace rounded once (torch's f32 linspace may be an ulp off).
    lin = [torch.linspace(-1, 1, n, dtype=torch.float64).float() for n in (6, 5)]
    gy, gx = torch.meshgrid(*lin, indexing="ij")
    grid = torch.stack([gx, gy])[None].to(x.dtype)
    third = torch.tensor(np.float32(1 / 3), dtype=x.dtype)
    return F.gelu(y) + F.conv2d(grid, p["pos.weight"]) * third


@pytest.mark.parametrize("dtype", [None, np.float64], ids=["f32", "f64"])
def test_run_graph_matches_torch(dtype: Any) -> None:
    b, inputs = small_block()
    weights = initial_weights(b.graph, seed=3)
    out = run_graph(b.graph, weights, inputs, dtype=dtype)["out"]
    compute = np.float32 if dtype is None else np.float64
    params = {k: t(v.astype(compute)) for k, v in weights.items()}
    check(out, small_block_torch(t(inputs["x"].astype(compute)), params), compute)


def test_run_graph_float64_is_more_precise_than_float32() -> None:
    b, inputs = small_block()
    weights = initial_weights(b.graph, seed=3)
    f32 = run_graph(b.graph, weights, inputs)["out"]
    f64 = run_graph(b.graph, weights, inputs, dtype=np.float64)["out"]
    assert f32.dtype == np.float32 and f64.dtype == np.float64
    assert 0 < np.abs(f32 - f64).max() < 1e-5


def test_run_graph_rejects_missing_and_misshapen_values() -> None:
    b, inputs = small_block()
    weights = initial_weights(b.graph)
    with pytest.raises(ValueError, match="missing weight 'bn.bias'"):
        run_graph(b.graph, {k: v for k, v in weights.items() if k != "bn.bias"}, inputs)
    with pytest.raises(ValueError, match="missing input 'x'"):
        run_graph(b.graph, weights, {})
    with pytest.raises(ValueError, match=r"'x' must have shape \[2, 4, 6, 5\], found \[2, 4, 5, 6\]"):
        run_graph(b.graph, weights, {"x": inputs["x"].reshape(2, 4, 5, 6)})


def test_run_graph_reports_a_kernel_type_mismatch() -> None:
    b, inputs = small_block()
    b.graph.values["gelu"] = TensorType("f32", (2, 8, 6, 6))  # as if type inference were wrong
    with pytest.raises(RuntimeError, match=r"gelu .* computed 'gelu' with shape \[2, 8, 6, 5\]"):
        run_graph(b.graph, initial_weights(b.graph), inputs)


def test_eval_node_returns_every_output_and_keeps_the_dtype() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    parts = eval_node(Node("split", ["x"], ["a", "b", "c"], {"axis": 1, "sizes": (2, 4, 6)}), [x])
    assert [p.shape for p in parts] == [(2, 2), (2, 4), (2, 6)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), x)
    (y,) = eval_node(Node("gelu", ["x"], ["y"]), [x])
    assert y.dtype == np.float32


def test_eval_node_rejects_unknown_ops() -> None:
    with pytest.raises(ValueError, match="no kernel for op 'fft'"):
        eval_node(Node("fft", ["x"], ["y"]), [np.zeros(3)])


def test_run_graph_drops_each_value_after_its_last_reader() -> None:
    import weakref

    b, inputs = small_block()
    graph = b.graph
    last_reader = {name: i for i, node in enumerate(graph.nodes) for name in node.inputs}
    produced: dict[str, weakref.ref] = {}
    alive_after_last_reader: list[str] = []

    def observe(node: Node, outputs: list[np.ndarray]) -> None:
        index = graph.nodes.index(node)
        alive_after_last_reader.extend(name for name, ref in produced.items()
                                       if last_reader.get(name, index) < index and ref() is not None
                                       and name not in graph.outputs)
        produced.update((name, weakref.ref(out)) for name, out in zip(node.outputs, outputs, strict=True))

    expected = run_graph(graph, initial_weights(graph, seed=3), inputs)["out"]
    got = run_graph(graph, initial_weights(graph, seed=3), inputs, observe=observe)["out"]
    np.testing.assert_array_equal(got, expected)
    assert len(produced) > 2 and alive_after_last_reader == []
