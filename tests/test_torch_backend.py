"""The PyTorch backend: every op against an independent expectation, the module's state, training.

Expectations come from the op docstrings of :mod:`netdsl.opdefs`, written here with numpy
loops or torch.nn.functional, never with the generated code's own helpers. One job, hence one
file past 600 lines: the PyTorch backend's tests, one section per op family, then state and training.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netdsl.backends.torch_backend import build_module, generate_source, write_source
from netdsl.builder import GraphBuilder
from netdsl.initializers import initial_weights
from netdsl.ir import Frame, Graph, Init, Parameter, Provenance, Span, TensorType

RNG = np.random.default_rng(0)


def f32(*shape: int) -> TensorType:
    return TensorType("f32", tuple(shape))


def i64(*shape: int) -> TensorType:
    return TensorType("i64", tuple(shape))


def fan_in(n: int) -> Init:
    return Init("uniform_fan_in", (("fan_in", n),))


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run(graph: Graph, inputs: list[np.ndarray], weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Outputs of the generated module in eval mode (weights default to the seeded initial ones)."""
    module = build_module(graph, initial_weights(graph, seed=1) if weights is None else weights).eval()
    with torch.no_grad():
        out = module(*(torch.from_numpy(x) for x in inputs))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def single_op(op: str, input_shapes: list[tuple[int, ...]], **attrs: object) -> tuple[Graph, list[np.ndarray]]:
    """A graph applying ``op`` to fresh inputs, and random values for them."""
    b = GraphBuilder("op")
    names = [b.input(f"x{i}", f32(*s)) for i, s in enumerate(input_shapes)]
    for out in b.op_multi(op, names, **attrs):
        b.output(out)
    return b.graph, [randn(*s) for s in input_shapes]


def check_op(op: str, input_shapes: list[tuple[int, ...]], expected_fn, atol: float = 1e-5, **attrs: object) -> None:
    graph, inputs = single_op(op, input_shapes, **attrs)
    got = run(graph, inputs)
    expected = expected_fn(*inputs)
    expected = expected if isinstance(expected, list) else [expected]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=atol)


def pad_np(x: np.ndarray, pads: tuple[int, int, int, int], mode: str = "constant", value: float = 0.0) -> np.ndarray:
    t, l, b, r = pads
    widths = [(0, 0), (0, 0), (t, b), (l, r)]
    return np.pad(x, widths, mode=mode, constant_values=value) if mode == "constant" else np.pad(x, widths, mode=mode)


def windows_np(xp: np.ndarray, kernel, stride, dilation, ho: int, wo: int) -> np.ndarray:
    """[B, C, Ho, Wo, kh, kw] of xp[b, c, i*sh + u*dh, j*sw + v*dw]."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    out = np.empty(xp.shape[:2] + (ho, wo, kh, kw), xp.dtype)
    for i in range(ho):
        for j in range(wo):
            for u in range(kh):
                for v in range(kw):
                    out[:, :, i, j, u, v] = xp[:, :, i * sh + u * dh, j * sw + v * dw]
    return out


# ---------------------------------------------------------------------------------------------
# Convolution, linear, norms


@pytest.mark.parametrize(
    "pads,stride,dilation,groups,bias",
    [
        ((1, 1, 1, 1), (1, 1), (1, 1), 1, True),
        ((0, 2, 1, 0), (2, 1), (1, 2), 2, False),
        ((2, 2, 2, 2), (1, 2), (2, 1), 4, True),
    ],
)
@pytest.mark.parametrize("layer", [True, False], ids=["layer", "functional"])
def test_conv(pads, stride, dilation, groups, bias, layer):
    b = GraphBuilder("conv")
    x = b.input("x", f32(2, 4, 7, 6))
    prefix = "blk.c." if layer else "blk.c_"  # "blk.c_weight" has no layer prefix
    w = b.param(prefix + "weight", f32(8, 4 // groups, 3, 2), fan_in(6))
    inputs = [x, w] + ([b.param(prefix + "bias", f32(8), fan_in(6))] if bias else [])
    b.output(b.op("conv", inputs, stride=stride, pads=pads, dilation=dilation, groups=groups))
    weights = initial_weights(b.graph, seed=3)
    xv = randn(2, 4, 7, 6)
    t, l, bo, r = pads
    expected = F.conv2d(
        F.pad(torch.from_numpy(xv), (l, r, t, bo)),
        torch.from_numpy(weights[w]),
        torch.from_numpy(weights[prefix + "bias"]) if bias else None,
        stride=stride,
        dilation=dilation,
        groups=groups,
    ).numpy()
    np.testing.assert_allclose(run(b.graph, [xv], weights)[0], expected, rtol=1e-5, atol=1e-5)
    uses_layer = "nn.Conv2d(" in generate_source(b.graph)
    assert uses_layer == layer


def test_weights_shared_by_different_convs_stay_free_parameters():
    b = GraphBuilder("shared")
    x = b.input("x", f32(1, 2, 6, 6))
    w = b.param("c.weight", f32(2, 2, 3, 3), fan_in(18))
    once = b.op("conv", [x, w], stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    b.output(b.op("conv", [once, w], stride=(2, 2), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1))
    weights = initial_weights(b.graph, seed=1)
    xv, wt = randn(1, 2, 6, 6), torch.from_numpy(weights[w])
    expected = F.conv2d(F.conv2d(torch.from_numpy(xv), wt, padding=1), wt, stride=2).numpy()
    np.testing.assert_allclose(run(b.graph, [xv])[0], expected, rtol=1e-5, atol=1e-5)
    assert "nn.Conv2d" not in generate_source(b.graph)


def test_conv_with_computed_weight():
    b = GraphBuilder("conv")
    x = b.input("x", f32(1, 2, 5, 5))
    w = b.input("w", f32(3, 2, 3, 3))
    b.output(b.op("conv", [x, w], stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=1))
    xv, wv = randn(1, 2, 5, 5), randn(3, 2, 3, 3)
    expected = F.conv2d(torch.from_numpy(xv), torch.from_numpy(wv), padding=1).numpy()
    np.testing.assert_allclose(run(b.graph, [xv, wv])[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("names", [("fc.weight", "fc.bias"), ("w", "b"), ("fc.weight", None)])
def test_linear(names):
    b = GraphBuilder("linear")
    x = b.input("x", f32(2, 3, 5))
    params = [b.param(n, f32(4, 5) if i == 0 else f32(4), fan_in(5)) for i, n in enumerate(names) if n]
    b.output(b.op("linear", [x, *params]))
    weights = initial_weights(b.graph, seed=2)
    xv = randn(2, 3, 5)
    expected = xv @ weights[names[0]].T + (weights[names[1]] if names[1] else 0)
    np.testing.assert_allclose(run(b.graph, [xv], weights)[0], expected, rtol=1e-5, atol=1e-5)


def test_matmul_broadcasts_leading_axes():
    check_op("matmul", [(2, 1, 3, 4), (5, 4, 6)], lambda a, b: a @ b)


def batchnorm_graph(rank: int, tracked: bool = True) -> Graph:
    b = GraphBuilder("bn")
    x = b.input("x", f32(*(4, 3, 5, 6)[:rank]))
    names = []
    for leaf, init in [("weight", "ones"), ("bias", "zeros"), ("running_mean", "zeros"), ("running_var", "ones")]:
        names.append(b.param(f"bn.{leaf}", f32(3), Init(init), kind="buffer" if "running" in leaf else "param"))
    if tracked:
        b.param("bn.num_batches_tracked", i64(), Init("zeros"), kind="buffer")
    b.output(b.op("batchnorm", [x, *names], eps=1e-3, momentum=0.2))
    return b.graph


def random_stats(graph: Graph) -> dict[str, np.ndarray]:
    weights = initial_weights(graph)
    for leaf in ("weight", "bias", "running_mean"):
        weights[f"bn.{leaf}"] = randn(3)
    weights["bn.running_var"] = RNG.uniform(0.5, 2.0, 3).astype(np.float32)
    return weights


@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("tracked", [True, False], ids=["layer", "functional"])
def test_batchnorm_eval_uses_running_statistics(rank, tracked):
    graph = batchnorm_graph(rank, tracked)
    weights = random_stats(graph)
    xv = randn(*(4, 3, 5, 6)[:rank])
    shape = (1, 3) + (1,) * (rank - 2)
    stat = {k: weights[f"bn.{k}"].reshape(shape) for k in ("weight", "bias", "running_mean", "running_var")}
    expected = (xv - stat["running_mean"]) / np.sqrt(stat["running_var"] + 1e-3) * stat["weight"] + stat["bias"]
    np.testing.assert_allclose(run(graph, [xv], weights)[0], expected, rtol=1e-5, atol=1e-5)
    assert ("nn.BatchNorm" in generate_source(graph)) == tracked


@pytest.mark.parametrize("tracked", [True, False], ids=["layer", "functional"])
def test_batchnorm_trains_like_nn_batchnorm(tracked):
    graph = batchnorm_graph(4, tracked)
    weights = random_stats(graph)
    module = build_module(graph, weights)
    reference = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2)
    reference.load_state_dict({k.removeprefix("bn."): torch.from_numpy(v) for k, v in weights.items()}, strict=tracked)
    for _ in range(2):
        x = torch.from_numpy(randn(4, 3, 5, 6))
        torch.testing.assert_close(module(x), reference(x))
    state = module.state_dict()
    for leaf in ("running_mean", "running_var"):
        torch.testing.assert_close(state[f"bn.{leaf}"], getattr(reference, leaf))
    if tracked:
        assert int(state["bn.num_batches_tracked"]) == 2


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_layernorm(axis, affine):
    b = GraphBuilder("ln")
    x = b.input("x", f32(2, 4, 3, 5))
    channels = 5 if axis == -1 else 4
    params = []
    if affine != "none":
        params.append(b.param("ln.weight", f32(channels), Init("normal", (("std", 1.0),))))
    if affine == "weight+bias":
        params.append(b.param("ln.bias", f32(channels), Init("normal", (("std", 1.0),))))
    b.output(b.op("layernorm", [x, *params], axis=axis, eps=1e-4))
    weights = initial_weights(b.graph, seed=4)
    xv = randn(2, 4, 3, 5)
    mean = xv.mean(axis=axis, keepdims=True)
    expected = (xv - mean) / np.sqrt(((xv - mean) ** 2).mean(axis=axis, keepdims=True) + 1e-4)
    shape = (channels,) if axis == -1 else (channels, 1, 1)
    if params:
        expected = expected * weights["ln.weight"].reshape(shape)
    if len(params) == 2:
        expected = expected + weights["ln.bias"].reshape(shape)
    np.testing.assert_allclose(run(b.graph, [xv], weights)[0], expected, rtol=1e-5, atol=1e-5)


def test_groupnorm():
    b = GraphBuilder("gn")
    x = b.input("x", f32(2, 6, 3, 4))
    w = b.param("gn.weight", f32(6), Init("normal", (("std", 1.0),)))
    bias = b.param("gn.bias", f32(6), Init("normal", (("std", 1.0),)))
    b.output(b.op("groupnorm", [x, w, bias], groups=3, eps=1e-5))
    weights = initial_weights(b.graph)
    xv = randn(2, 6, 3, 4)
    g = xv.reshape(2, 3, -1)
    normed = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(xv.shape)
    expected = normed * weights[w].reshape(6, 1, 1) + weights[bias].reshape(6, 1, 1)
    np.testing.assert_allclose(run(b.graph, [xv], weights)[0], expected, rtol=1e-5, atol=1e-5)
    assert "nn.GroupNorm(3, 6)" in generate_source(b.graph)


# ---------------------------------------------------------------------------------------------
# Elementwise


def sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


UNARY = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "sigmoid": sigmoid_np,
    "silu": lambda x: x * sigmoid_np(x),
    "hardswish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "tanh": np.tanh,
    "exp": np.exp,
    "neg": lambda x: -x,
    "sqrt": lambda x: np.sqrt(np.abs(x)),
    "erf": np.vectorize(math.erf),
    "identity": lambda x: x,
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op):
    graph, (x,) = single_op(op, [(2, 3, 4, 5)])
    x = (x * 3).astype(np.float32)
    if op == "sqrt":
        x = np.abs(x)
    np.testing.assert_allclose(run(graph, [x])[0], UNARY[op](x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,fn", [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.divide)])
def test_binary_broadcasts(op, fn):
    check_op(op, [(2, 3, 1, 5), (4, 1)], fn)


@pytest.mark.parametrize("axis", [1, -1])
def test_softmax(axis):
    def softmax(x):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    check_op("softmax", [(2, 3, 4)], softmax, axis=axis)


def test_const_is_a_buffer_outside_the_state_dict():
    value = randn(1, 3, 2, 2)
    b = GraphBuilder("const")
    x = b.input("x", f32(2, 3, 2, 2))
    c = b.op("const", [], value=value, dtype="f32")
    ones = b.op("const", [], value=np.ones((3, 1, 1), np.float32), dtype="f32")
    b.output(b.op("add", [b.op("mul", [x, c]), ones]))
    xv = randn(2, 3, 2, 2)
    np.testing.assert_array_equal(run(b.graph, [xv])[0], xv * value + 1)
    module = build_module(b.graph)
    assert list(module.state_dict()) == []
    assert len(list(module.buffers())) == 2
    assert "torch.full((3, 1, 1), 1.0, dtype=torch.float32)" in generate_source(b.graph)


# ---------------------------------------------------------------------------------------------
# Shape ops


def test_reshape_and_transpose():
    b = GraphBuilder("shape")
    x = b.input("x", f32(2, 6, 4))
    r = b.op("reshape", [x], shape=(2, 3, 8))
    b.output(b.op("transpose", [r], perm=(2, 0, 1)))
    xv = randn(2, 6, 4)
    np.testing.assert_array_equal(run(b.graph, [xv])[0], xv.reshape(2, 3, 8).transpose(2, 0, 1))


def test_reshape_keeping_the_batch_axis_accepts_other_batch_sizes():
    graph, _ = single_op("reshape", [(2, 6, 4)], shape=(2, 24))
    xv = randn(5, 6, 4)
    np.testing.assert_array_equal(run(graph, [xv])[0], xv.reshape(5, 24))


def test_rotate_follows_the_index_formula():
    heads, h, w = 2, 2, 3
    s = h * w

    def rotate_np(x):
        y = np.empty_like(x)
        for n in range(heads):
            for c in range(s):
                for yy in range(h):
                    for xx in range(w):
                        y[:, n * s + c, yy, xx] = x[:, n * s + (yy * w + xx), c // w, c % w]
        return y

    check_op("rotate", [(2, heads * s, h, w)], rotate_np, heads=heads)


def test_shift_moves_each_group_down_right_with_zero_fill():
    offsets = ((0, 0), (1, -1), (-2, 1), (5, 0))

    def shift_np(x):
        y = np.zeros_like(x)
        per_group = x.shape[1] // len(offsets)
        for c in range(x.shape[1]):
            dy, dx = offsets[c // per_group]
            for i in range(x.shape[2]):
                for j in range(x.shape[3]):
                    if 0 <= i - dy < x.shape[2] and 0 <= j - dx < x.shape[3]:
                        y[:, c, i, j] = x[:, c, i - dy, j - dx]
        return y

    check_op("shift", [(2, 8, 4, 5)], shift_np, offsets=offsets)


@pytest.mark.parametrize("pads,stride,dilation", [((1, 1, 1, 1), (1, 1), (1, 1)), ((0, 1, 2, 0), (2, 1), (1, 2))])
def test_unfold(pads, stride, dilation):
    kernel = (3, 2)
    graph, _ = single_op("unfold", [(2, 3, 6, 5)], kernel=kernel, stride=stride, pads=pads, dilation=dilation)
    ho, wo = graph.type_of(graph.outputs[0]).shape[2:]

    def unfold_np(x):
        win = windows_np(pad_np(x, pads), kernel, stride, dilation, ho, wo)  # B, C, Ho, Wo, kh, kw
        return win.transpose(0, 1, 4, 5, 2, 3).reshape(2, 3 * 6, ho, wo)

    check_op("unfold", [(2, 3, 6, 5)], unfold_np, kernel=kernel, stride=stride, pads=pads, dilation=dilation)


def test_concat_split_slice():
    b = GraphBuilder("cat")
    x = b.input("x", f32(2, 3, 4))
    y = b.input("y", f32(2, 2, 4))
    c = b.op("concat", [x, y], axis=1)
    parts = b.op_multi("split", [c], axis=-1, sizes=(1, 3))
    (single,) = b.op_multi("split", [parts[1]], axis=0, sizes=(2,))
    b.output(b.op("slice", [single], axis=1, start=1, end=100, step=2))
    b.output(parts[0])
    xv, yv = randn(2, 3, 4), randn(2, 2, 4)
    got_slice, got_first = run(b.graph, [xv, yv])
    cat = np.concatenate([xv, yv], axis=1)
    np.testing.assert_array_equal(got_slice, cat[:, 1::2, 1:])
    np.testing.assert_array_equal(got_first, cat[:, :, :1])


@pytest.mark.parametrize("mode,np_mode", [("zero", "constant"), ("reflect", "reflect"), ("edge", "edge")])
def test_pad(mode, np_mode):
    pads = (1, 0, 2, 3)
    check_op("pad", [(2, 3, 4, 5)], lambda x: pad_np(x, pads, np_mode), pads=pads, mode=mode)


def test_roll():
    check_op("roll", [(2, 5, 6)], lambda x: np.roll(x, (2, -1), (1, 2)), shifts=(2, -1), axes=(1, 2))


def test_gather_rows_of_a_table():
    b = GraphBuilder("gather")
    table = b.input("table", f32(9, 3))
    index = b.op("const", [], value=RNG.integers(0, 9, (4, 4)), dtype="i64")
    b.output(b.op("gather", [table, index]))
    tv = randn(9, 3)
    np.testing.assert_array_equal(run(b.graph, [tv])[0], tv[b.graph.nodes[0].attrs["value"]])


def test_grid():
    b = GraphBuilder("grid")
    b.output(b.op("grid", [], height=3, width=1))
    b.output(b.op("grid", [], height=2, width=5))
    narrow, wide = run(b.graph, [])
    np.testing.assert_array_equal(narrow[0, 0], np.full((3, 1), -1.0))
    np.testing.assert_array_equal(narrow[0, 1], np.linspace(-1, 1, 3)[:, None])
    np.testing.assert_allclose(wide[0, 0], np.tile(np.linspace(-1, 1, 5), (2, 1)), atol=1e-7)
    np.testing.assert_allclose(wide[0, 1], np.tile(np.linspace(-1, 1, 2)[:, None], (1, 5)), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Pooling, reductions, resize


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 2, 0), (2, 2, 2, 2)])
@pytest.mark.parametrize("op", ["avgpool", "maxpool"])
def test_pooling(op, pads):
    kernel, stride = (3, 3), (2, 1)
    graph, _ = single_op(op, [(2, 3, 6, 5)], kernel=kernel, stride=stride, pads=pads)
    ho, wo = graph.type_of(graph.outputs[0]).shape[2:]

    def pool_np(x):
        if op == "avgpool":  # padded zeros count in the mean
            return windows_np(pad_np(x, pads), kernel, stride, (1, 1), ho, wo).mean(axis=(4, 5))
        return windows_np(pad_np(x, pads, value=-np.inf), kernel, stride, (1, 1), ho, wo).max(axis=(4, 5))

    check_op(op, [(2, 3, 6, 5)], pool_np, kernel=kernel, stride=stride, pads=pads)


@pytest.mark.parametrize("op,fn", [("reduce_mean", np.mean), ("reduce_sum", np.sum), ("reduce_max", np.max)])
@pytest.mark.parametrize("keepdims", [True, False])
def test_reductions(op, fn, keepdims):
    check_op(op, [(2, 3, 4, 5)], lambda x: fn(x, axis=(1, -1), keepdims=keepdims), axes=(1, -1), keepdims=keepdims)


def resize_np(x: np.ndarray, scales, sizes, mode: str) -> np.ndarray:
    """The resize docstring, one axis after the other."""
    for axis, (scale, n_out) in zip((2, 3), zip(scales, sizes)):
        n_in = x.shape[axis]
        d = np.arange(n_out, dtype=np.float64)
        if mode == "nearest":
            x = np.take(x, np.minimum(np.floor(d / scale).astype(int), n_in - 1), axis=axis)
            continue
        src = np.maximum((d + 0.5) / scale - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        x = (1 - lam) * np.take(x, i0, axis=axis) + lam * np.take(x, i1, axis=axis)
    return x


@pytest.mark.parametrize(
    "size,scales,sizes",
    [(27, (14 / 27, 14 / 27), (14, 14)), (14, (27 / 14, 27 / 14), (27, 27)), (6, (2.0, 0.5), (12, 3))],
)
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_resize_by_scale_factor(size, scales, sizes, mode):
    check_op(
        "resize",
        [(1, 2, size, size)],
        lambda x: resize_np(x, scales, sizes, mode),
        atol=2e-6,
        mode=mode,
        scales=scales,
        sizes=sizes,
    )


def test_resize_refuses_a_size_pytorch_does_not_produce():
    # CSA's way back from 14 to 29 multiplies by 1 / (14 / 29), which truncates to 28, not 29.
    scale = 1 / (14 / 29)
    assert int(14 * scale) == 28
    graph, inputs = single_op("resize", [(1, 1, 14, 14)], mode="linear", scales=(scale, scale), sizes=(29, 29))
    with pytest.raises(RuntimeError, match=r"gave \(28, 28\), the spec expects \(29, 29\)"):
        run(graph, inputs)


# ---------------------------------------------------------------------------------------------
# Attention


def softmax_np(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_attention_with_bias():
    def attention_np(q, k, v, bias):
        return softmax_np(0.3 * q @ k.swapaxes(-1, -2) + bias, -1) @ v

    check_op("attention", [(2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 7), (3, 5, 6)], attention_np, scale=0.3)


def local_attention_np(q, k, v, pos, heads, kernel, stride, scale):
    """The local_attention docstring, pixel by pixel."""
    b, c, h, w = q.shape
    d, p = c // heads, (kernel - 1) // 2
    ho, wo = h // stride, w // stride

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    y = np.zeros((b, c, ho, wo), np.float64)
    for bb in range(b):
        for hh in range(heads):
            ch = slice(hh * d, (hh + 1) * d)
            for i in range(ho):
                for j in range(wo):
                    si, sj = stride * i, stride * j
                    logits, values = [], []
                    for a in range(kernel):
                        for bw in range(kernel):
                            ri, rj = reflect(si + a - p, h), reflect(sj + bw - p, w)
                            key = k[bb, ch, ri, rj].astype(np.float64)
                            if pos is not None:
                                key = key + pos[0, :, si, sj] - pos[0, :, ri, rj]
                            logits.append(np.sum(scale * q[bb, ch, si, sj] * key))
                            values.append(v[bb, ch, ri, rj])
                    weights = softmax_np(np.array(logits), 0)
                    y[bb, ch, i, j] = weights @ np.array(values)
    return y


@pytest.mark.parametrize("size", [(4, 6), (16, 10), (6, 18)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride,with_pos", [(1, True), (2, True), (1, False)])
def test_local_attention(stride, with_pos, size):
    # Maps of one tile (4x6), of several tiles along one side (16x10 at stride 1: two tiles of 8x10), of tiles
    # that are not square (6x18 at stride 2: 3x9 output pixels, one tile of all of them).
    heads, kernel = 2, 3
    shapes = [(2, 6, *size)] * 3 + ([(1, 3, *size)] if with_pos else [])

    def expected(q, k, v, pos=None):
        return local_attention_np(q, k, v, pos, heads, kernel, stride, 0.5).astype(np.float32)

    check_op("local_attention", shapes, expected, heads=heads, kernel=kernel, stride=stride, scale=0.5)


# ---------------------------------------------------------------------------------------------
# Whole modules: state, initialisation, source


def acmix_like_graph(size: int = 6, batch: int = 2) -> Graph:
    """ACmix's ResNet block (in = out = 8, 2 heads, 3x3 attention), with the reference's names."""
    c, heads, d = 8, 2, 4
    prov = Provenance(Span("specs/acmix.net", 10, 3, 10, 40), (Frame("ACmix", "acmix", None),))
    b = GraphBuilder("ACmix")
    x = b.input("x", f32(batch, c, size, size))
    b.param("rate1", f32(1), Init("fill", (("value", 0.5),)))
    b.param("rate2", f32(1), Init("fill", (("value", 0.5),)))
    qkv = []
    for name, value in (("conv1", "q"), ("conv2", "k"), ("conv3", "v")):
        w = b.param(f"{name}.weight", f32(c, c, 1, 1), fan_in(c))
        bias = b.param(f"{name}.bias", f32(c), fan_in(c))
        conv = dict(stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
        qkv.append(b.op("conv", [x, w, bias], prov, name=value, **conv))
    pw = b.param("conv_p.weight", f32(d, 2, 1, 1), fan_in(2))
    pb = b.param("conv_p.bias", f32(d), fan_in(2))
    grid = b.op("grid", [], prov, height=size, width=size)
    conv = dict(stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    pe = b.op("conv", [grid, pw, pb], prov, name="pe", **conv)
    att = b.op("local_attention", [*qkv, pe], prov, name="att", heads=heads, kernel=3, stride=1, scale=d**-0.5)
    parts = [b.op("reshape", [t], prov, shape=(batch, heads, d, size * size)) for t in qkv]
    stacked = b.op("concat", parts, prov, axis=1)
    fc = b.param("fc.weight", f32(9, 3 * heads, 1, 1), fan_in(3 * heads))
    f = b.op("conv", [stacked, fc], prov, name="f", **conv)
    f = b.op("transpose", [f], prov, perm=(0, 2, 1, 3))
    f = b.op("reshape", [f], prov, shape=(batch, d * 9, size, size))
    dep = b.param("dep_conv.weight", f32(c, 9, 3, 3), Init("shift", (("kernel", 3),)))
    same = dict(stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1))
    out_conv = b.op("conv", [f, dep], prov, name="out_conv", groups=d, **same)
    y = b.op("add", [b.op("mul", [att, "rate1"]), b.op("mul", [out_conv, "rate2"])], prov, name="y")
    b.output(y)
    return b.graph


def csa_like_graph(batch: int = 2) -> Graph:
    """A CSA block's gate at 4x4 -> 2x2 (one head), with batch norms, resizes and rotate."""
    c, s = 4, 2
    b = GraphBuilder("csa block")
    x = b.input("x", f32(batch, c, 4, 4))
    b.param("gamma", f32(1, c, 1, 1), Init("fill", (("value", 1e-2),)))

    def conv_bn(inp: str, conv: str, bn: str, cin: int, cout: int, k: int = 1, groups: int = 1) -> str:
        w = b.param(f"{conv}.weight", f32(cout, cin // groups, k, k), Init("trunc_normal", (("std", 0.2),)))
        bias = b.param(f"{conv}.bias", f32(cout), Init("zeros"))
        p = k // 2
        y = b.op("conv", [inp, w, bias], stride=(1, 1), pads=(p, p, p, p), dilation=(1, 1), groups=groups)
        leaves = [("weight", "ones"), ("bias", "zeros"), ("running_mean", "zeros"), ("running_var", "ones")]
        stats = [
            b.param(f"{bn}.{leaf}", f32(cout), Init(init), kind="buffer" if "running" in leaf else "param")
            for leaf, init in leaves
        ]
        b.param(f"{bn}.num_batches_tracked", i64(), Init("zeros"), kind="buffer")
        return b.op("batchnorm", [y, *stats], eps=1e-5, momentum=0.1)

    v = b.op("silu", [conv_bn(x, "v", "act_v.0", c, c, k=3, groups=c)], name="v")
    small = b.op("resize", [v], mode="linear", scales=(0.5, 0.5), sizes=(s, s))
    q = conv_bn(small, "q", "norm_q", c, s * s)
    rel = b.op("mul", [q, b.op("rotate", [q], heads=1)])
    big = b.op("resize", [rel], mode="linear", scales=(2.0, 2.0), sizes=(4, 4))
    gate = b.op("sigmoid", [conv_bn(big, "qk", "act_qk.0", s * s, c)])
    t = b.op("mul", [gate, v])
    t = b.op("silu", [conv_bn(t, "qkv", "act_qkv.0", c, 2 * c)])
    w = b.param("mlp.weight", f32(c, 2 * c, 1, 1), fan_in(2 * c))
    bias = b.param("mlp.bias", f32(c), fan_in(2 * c))
    t = b.op("conv", [t, w, bias], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    b.output(b.op("add", [x, b.op("mul", [t, "gamma"])], name="y"))
    return b.graph


@pytest.mark.parametrize("make", [acmix_like_graph, csa_like_graph])
def test_state_dict_keys_are_the_parameter_names_in_declaration_order(make):
    graph = make()
    module = build_module(graph)
    assert list(module.state_dict()) == list(graph.params)
    assert "STATE_DICT_ORDER" not in generate_source(graph)  # the natural module order already matches


def test_state_dict_keeps_an_order_modules_would_not_give():
    b = GraphBuilder("order")
    x = b.input("x", f32(1, 3))
    w = b.param("fc.weight", f32(3, 3), fan_in(3))
    scale = b.param("scale", f32(1), Init("ones"))  # a root parameter declared after a child's
    b.output(b.op("mul", [b.op("linear", [x, w]), scale]))
    module = build_module(b.graph)
    assert list(module.state_dict()) == ["fc.weight", "scale"]
    assert list(torch.nn.Sequential(module).state_dict()) == ["0.fc.weight", "0.scale"]


def test_initialisers_match_the_numpy_ones():
    graph = acmix_like_graph()
    index = Init("relative_position_index", (("window", 3),))
    graph.params["attn.relative_position_index"] = Parameter("attn.relative_position_index", i64(9, 9), index, "buffer")
    module = build_module(graph)
    state = module.state_dict()
    expected = initial_weights(graph)
    for name in ("rate1", "rate2", "dep_conv.weight", "attn.relative_position_index"):
        np.testing.assert_array_equal(state[name].numpy(), expected[name])
    bound = 1 / math.sqrt(8)
    assert state["conv1.weight"].abs().max() <= bound and state["conv1.weight"].std() > bound / 4


def test_build_module_loads_weights_strictly():
    graph = acmix_like_graph()
    weights = initial_weights(graph, seed=7)
    state = build_module(graph, weights).state_dict()
    for name, value in weights.items():
        np.testing.assert_array_equal(state[name].numpy(), value)
    del weights["rate2"]
    with pytest.raises(RuntimeError, match="rate2"):
        build_module(graph, weights)


def test_module_is_returned_in_training_mode():
    assert build_module(csa_like_graph()).training


def test_generated_source_imports_only_torch_and_is_deterministic():
    graph = acmix_like_graph()
    source = generate_source(graph)
    assert source == generate_source(acmix_like_graph())
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"torch"}


def test_forward_lines_name_their_spec_location():
    source = generate_source(acmix_like_graph())
    assert ("local_attention(q, k, v, pe, self.att_outside, self.att_index, heads=2, stride=1, scale=0.5, tile=(6, 6))"
            "  # specs/acmix.net:10:3 in acmix") in source


def test_written_source_is_a_standalone_module(tmp_path):
    graph = csa_like_graph()
    path = tmp_path / "csa_block.py"
    write_source(graph, path)
    # only the module itself, no temporary file; checked before the import, which may write a bytecode cache
    assert [p.name for p in tmp_path.iterdir()] == ["csa_block.py"]
    spec = importlib.util.spec_from_file_location("csa_block", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.csa_block()  # graph name "csa block" made an identifier
    assert list(net.state_dict()) == list(graph.params)


def test_awkward_parameter_names():
    b = GraphBuilder("names")
    x = b.input("x", f32(2, 3))
    w1 = b.param("blocks.1x.fc.weight", f32(3, 3), fan_in(3))  # segment that is no identifier
    w2 = b.param("stages.1.fc.weight", f32(3, 3), fan_in(3))  # numbered, but not from 0: no ModuleList
    w3 = b.param("scales.0", f32(3), Init("ones"))  # numbered parameter
    w4 = b.param("0.weight", f32(3, 3), fan_in(3))  # numbered layer of the root module
    y = b.op("linear", [b.op("linear", [b.op("linear", [x, w1]), w2]), w4])
    b.output(b.op("mul", [y, w3], name="class"))
    assert list(build_module(b.graph).state_dict()) == list(b.graph.params)
    xv = randn(2, 3)
    w = initial_weights(b.graph, seed=1)
    expected = (xv @ w[w1].T @ w[w2].T @ w[w4].T) * w[w3]
    np.testing.assert_allclose(run(b.graph, [xv])[0], expected, rtol=1e-5, atol=1e-6)


def test_float64_graphs_run_in_float64():
    b = GraphBuilder("double")
    x = b.input("x", TensorType("f64", (1, 2, 3, 3)))
    w = b.param("c.weight", TensorType("f64", (2, 2, 1, 1)), fan_in(2))
    b.output(b.op("conv", [x, w], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1))
    weights = initial_weights(b.graph)
    xv = RNG.standard_normal((1, 2, 3, 3))
    expected = np.einsum("oc,bchw->bohw", weights["c.weight"][:, :, 0, 0], xv)
    (got,) = run(b.graph, [xv], weights)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_names_clashing_with_module_attributes_are_refused():
    b = GraphBuilder("clash")
    x = b.input("x", f32(2, 3))
    b.output(b.op("mul", [x, b.param("training", f32(3), Init("ones"))]))
    with pytest.raises(ValueError, match="'training' is an attribute of torch.nn.Module"):
        generate_source(b.graph)


# ---------------------------------------------------------------------------------------------
# Training


def trainable_step(module: torch.nn.Module, x: torch.Tensor) -> None:
    module.zero_grad()
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()


@pytest.mark.parametrize("make", [acmix_like_graph, csa_like_graph])
def test_gradients_reach_every_trainable_parameter(make):
    graph = make()
    module = build_module(graph, initial_weights(graph))
    trainable_step(module, torch.from_numpy(randn(*graph.type_of("x").shape)))
    params = dict(module.named_parameters())
    assert sorted(params) == sorted(n for n, p in graph.params.items() if p.trainable)
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make", [pytest.param(acmix_like_graph, marks=pytest.mark.slow), csa_like_graph])
def test_torch_compile_matches_eager(make):
    torch._dynamo.reset()
    graph = make()
    module = build_module(graph, initial_weights(graph))
    x = torch.from_numpy(randn(*graph.type_of("x").shape))
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x))
    trainable_step(compiled, x)
    assert all(p.grad is not None for p in module.parameters())


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    graph = acmix_like_graph()
    module = build_module(graph, initial_weights(graph)).eval()
    x = torch.from_numpy(randn(*graph.type_of("x").shape))
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(module)(x), module(x), rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        graph = csa_like_graph()
        module = build_module(graph, initial_weights(graph))
        ddp = torch.nn.parallel.DistributedDataParallel(module)
        optimiser = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(rank)  # different data on each rank
        for _ in range(2):
            optimiser.zero_grad()
            ddp(torch.randn(2, 4, 4, 4)).square().mean().backward()
            optimiser.step()
        results[rank] = {k: v.detach().clone() for k, v in module.named_parameters()}
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_distributed_data_parallel_keeps_replicas_in_sync():
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        states = dict(results)
    graph = csa_like_graph()
    start = initial_weights(graph)
    assert list(states[0]) == list(states[1]) == [n for n, p in graph.params.items() if p.trainable]
    for name, value in states[0].items():
        # Each rank saw other data: equal parameters mean the gradients were averaged.
        torch.testing.assert_close(value, states[1][name])
    for name in ("gamma", "mlp.weight", "q.weight"):
        assert not np.allclose(states[0][name].numpy(), start[name]), name



def test_generated_acmix_module_exports_with_torchscript_onnx_exporter(tmp_path):
    # Users export trained modules with torch.onnx.export; the legacy (TorchScript) exporter needs every
    # size that local_attention reads to be known while tracing.
    import onnxruntime as ort

    graph = acmix_like_graph(size=6, batch=1)
    module = build_module(graph, initial_weights(graph, seed=3)).eval()
    x = torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "acmix.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=False)
        expected = module(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
