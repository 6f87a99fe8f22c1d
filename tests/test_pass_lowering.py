"""Differential tests of the lowering rewrites: each runs in netdsl's interpreter before and after the pass."""

from __future__ import annotations

import numpy as np
import pytest
from pass_support import at, builder_with_input, check_rewrite, f32, op_counts, random_feeds, run_interp

from netdsl.ir import Init
from netdsl.passes.base import RewriteLog
from netdsl.passes.concat_to_channels import PASS as CONCAT
from netdsl.passes.hardswish_decompose import PASS as HARDSWISH
from netdsl.passes.linear_to_conv import PASS as LINEAR
from netdsl.passes.maxpool_to_elementwise import PASS as MAXPOOL
from netdsl.passes.neg_to_mul import PASS as NEG
from netdsl.passes.pad_to_slice_concat import PASS as PAD
from netdsl.passes.reduce_max_to_elementwise import PASS as REDUCE_MAX
from netdsl.passes.reduce_to_conv import PASS as REDUCE
from netdsl.passes.roll_to_slice_concat import PASS as ROLL
from netdsl.passes.shift_to_conv import PASS as SHIFT
from netdsl.passes.softmax_decompose import PASS as SOFTMAX
from netdsl.passes.tanh_decompose import PASS as TANH
from netdsl.passes.unfold_to_conv import PASS as UNFOLD
from netdsl.verifier import verify


@pytest.mark.parametrize("offsets", [
    ((0, 1), (1, 0), (0, -1), (-1, 0)),
    ((2, -3), (0, 0), (-5, 1), (1, 1)),  # -5 moves a 5-row map out entirely: that group is zeros
    ((0, 0),),
])
def test_shift_becomes_depthwise_conv_with_one_hot_const_kernel(offsets: tuple[tuple[int, int], ...]) -> None:
    b, x = builder_with_input(2, 8, 5, 6)
    b.output(b.op("shift", [x], at(3), offsets=offsets))
    out, _ = check_rewrite(SHIFT, b.graph, {"const": 1, "conv": 1})
    conv = next(n for n in out.nodes if n.op == "conv")
    kernel = next(n for n in out.nodes if n.op == "const").attrs["value"]
    live = [(dy, dx) for dy, dx in offsets if abs(dy) < 5 and abs(dx) < 6]
    my, mx = max(abs(dy) for dy, _ in live), max(abs(dx) for _, dx in live)
    assert kernel.shape == (8, 1, 2 * my + 1, 2 * mx + 1)
    assert conv.attrs["groups"] == 8 and conv.attrs["pads"] == (my, mx, my, mx)
    assert conv.inputs[1] == next(n for n in out.nodes if n.op == "const").outputs[0]


@pytest.mark.parametrize("kernel, stride, pads, dilation", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 3), (2, 1), (0, 1, 1, 0), (2, 1)),
])
def test_unfold_becomes_one_hot_group_conv(kernel: tuple[int, int], stride: tuple[int, int],
                                           pads: tuple[int, int, int, int], dilation: tuple[int, int]) -> None:
    b, x = builder_with_input(2, 3, 7, 6)
    b.output(b.op("unfold", [x], at(4), kernel=kernel, stride=stride, pads=pads, dilation=dilation))
    out, _ = check_rewrite(UNFOLD, b.graph, {"const": 1, "conv": 1})
    conv = next(n for n in out.nodes if n.op == "conv")
    assert conv.attrs["groups"] == 3 and out.type_of(conv.inputs[1]).shape == (3 * kernel[0] * kernel[1], 1, *kernel)


@pytest.mark.parametrize("mode, pads, ops", [
    ("reflect", (2, 1, 1, 3), {"slice": 7, "concat": 2, "relu": 1}),
    ("edge", (1, 2, 3, 0), {"slice": 3, "concat": 2, "relu": 1}),
    ("zero", (1, 0, 2, 1), {"const": 3, "concat": 2, "relu": 1}),
])
def test_pad_becomes_slices_and_concats(mode: str, pads: tuple[int, int, int, int], ops: dict[str, int]) -> None:
    b, x = builder_with_input(1, 2, 4, 5)
    b.output(b.op("relu", [b.op("pad", [x], at(2), pads=pads, mode=mode)], at(3)))
    check_rewrite(PAD, b.graph, ops)


def test_zero_pad_before_a_conv_moves_into_the_conv_padding() -> None:
    b, x = builder_with_input(1, 2, 5, 5)
    w = b.param("c.weight", f32(3, 2, 3, 3), Init("zeros"))
    y = b.op("pad", [x], at(2), pads=(1, 2, 0, 1), mode="zero")
    b.output(b.op("conv", [y, w], at(3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=1))
    weights = {w: np.random.default_rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)}
    out, _ = check_rewrite(PAD, b.graph, {"conv": 1}, weights)
    assert out.nodes[0].attrs["pads"] == (2, 3, 1, 2) and out.nodes[0].inputs[0] == x


def test_zero_pad_read_twice_is_not_folded_into_the_conv() -> None:
    b, x = builder_with_input(1, 2, 5, 5)
    w = b.param("c.weight", f32(2, 2, 1, 1), Init("zeros"))
    y = b.op("pad", [x], at(2), pads=(1, 1, 1, 1), mode="zero")
    c = b.op("conv", [y, w], at(3), stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    b.output(b.op("add", [c, y], at(4)))
    weights = {w: np.ones((2, 2, 1, 1), np.float32)}
    check_rewrite(PAD, b.graph, {"const": 4, "concat": 2, "conv": 1, "add": 1}, weights)


def test_roll_becomes_slices_and_concats() -> None:
    b, x = builder_with_input(1, 3, 4, 5)
    b.output(b.op("roll", [x], at(2), shifts=(1, -2), axes=(2, 3)))
    check_rewrite(ROLL, b.graph, {"slice": 4, "concat": 2})


def test_roll_by_whole_periods_is_the_input() -> None:
    b, x = builder_with_input(1, 3, 4, 5)
    b.output(b.op("relu", [b.op("roll", [x], at(2), shifts=(4, 10), axes=(2, -1))], at(3)))
    out, _ = check_rewrite(ROLL, b.graph, {"relu": 1})
    assert out.nodes[0].inputs == [x]


def test_a_graph_output_that_becomes_its_input_keeps_its_name_through_an_identity() -> None:
    b, x = builder_with_input(1, 3, 4, 5)
    b.output(b.op("roll", [x], at(2), shifts=(0,), axes=(1,)))
    out, _ = check_rewrite(ROLL, b.graph, {"identity": 1})
    assert out.nodes[0].inputs == [x] and out.nodes[0].outputs == out.outputs


@pytest.mark.parametrize("shape, axes, keepdims, ops", [
    ((2, 3, 7), (-1,), True, {"slice": 7, "sub": 3, "relu": 3, "add": 3, "concat": 1}),
    ((2, 4, 2, 3), (1, 3), False, {"slice": 9, "sub": 4, "relu": 4, "add": 4, "concat": 1, "reshape": 1}),
])
def test_reduce_max_becomes_pairwise_relu_maxima(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool,
                                                 ops: dict[str, int]) -> None:
    b, x = builder_with_input(*shape)
    b.output(b.op("reduce_max", [x], at(2), axes=axes, keepdims=keepdims))
    check_rewrite(REDUCE_MAX, b.graph, ops)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_decomposes_and_keeps_the_max_subtraction(axis: int) -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op("softmax", [x], at(2), axis=axis))
    graph = b.graph
    # Logits of a few hundred overflow exp() in float32 unless the maximum is subtracted first.
    feeds = random_feeds(graph, scale=300.0)
    ops = {"reduce_max": 1, "sub": 1, "exp": 1, "reduce_sum": 1, "div": 1}
    out, _ = check_rewrite(SOFTMAX, graph, ops, feeds=feeds)
    assert np.isfinite(run_interp(out, {}, feeds)[0]).all()


def test_softmax_without_reduce_layers_lowers_to_allowed_ops_only() -> None:
    b, x = builder_with_input(1, 6, 3, 4)
    b.output(b.op("softmax", [x], at(2), axis=1))
    graph = b.graph
    feeds = random_feeds(graph, scale=50.0)
    expected = run_interp(graph, {}, feeds)[0]
    log = RewriteLog()
    for p in (SOFTMAX, REDUCE_MAX, REDUCE):
        graph = p.run(graph, log)
        verify(graph)
    assert set(op_counts(graph)) == {"slice", "sub", "relu", "add", "concat", "exp", "const", "conv", "div"}
    np.testing.assert_allclose(run_interp(graph, {}, feeds)[0], expected, rtol=1e-5, atol=1e-6)


def test_hardswish_decomposes_into_relu_and_elementwise_ops() -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op("hardswish", [x], at(2)))
    feeds = random_feeds(b.graph, scale=4.0)  # covers both saturated ends and the ramp
    check_rewrite(HARDSWISH, b.graph, {"const": 2, "add": 1, "sub": 2, "relu": 2, "mul": 2}, feeds=feeds)


def test_tanh_decomposes_into_sigmoid() -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op("tanh", [x], at(2)))
    check_rewrite(TANH, b.graph, {"const": 2, "mul": 2, "sigmoid": 1, "sub": 1}, feeds=random_feeds(b.graph, scale=3.0))


def test_neg_becomes_a_product_with_minus_one_bit_exactly() -> None:
    b, x = builder_with_input(1, 2, 3, 4)
    b.output(b.op("neg", [x], at(2)))
    feeds = random_feeds(b.graph, scale=1e30)
    feeds["x"].flat[:4] = [np.inf, -np.inf, 0.0, -0.0]
    graph, _ = check_rewrite(NEG, b.graph, {"const": 1, "mul": 1}, feeds=feeds)
    (y,) = run_interp(graph, {}, feeds)
    np.testing.assert_array_equal(np.signbit(y), ~np.signbit(feeds["x"]))
    np.testing.assert_array_equal(y, -feeds["x"])


def test_spatial_concat_moves_to_the_channel_axis_slicing_the_transposed_source_once() -> None:
    b, x = builder_with_input(1, 3, 4, 5)
    rows = [b.op("slice", [x], at(2 + k), axis=2, start=k + 1, end=k + 2, step=1) for k in range(2)]
    padded = b.op("concat", [rows[1], rows[0], x], at(4), axis=2)
    y = b.input("y", f32(1, 3, 2, 5))
    stacked = b.op("concat", [b.op("sigmoid", [x], at(5)), y], at(6), axis=2)
    beside = b.op("concat", [padded, stacked], at(7), axis=-1)
    b.output(beside)
    flat = b.op("reshape", [x], at(8), shape=(3, 20))
    b.output(b.op("concat", [flat, flat], at(9), axis=1))  # rank 2: no channel axis, left alone
    check_rewrite(CONCAT, b.graph, {"slice": 2, "sigmoid": 1, "reshape": 1, "concat": 4, "transpose": 8})


@pytest.mark.parametrize("kernel, stride, pads, ops", [
    ((3, 3), (2, 2), (1, 1, 1, 1), {"pad": 1, "slice": 12, "sub": 8, "relu": 8, "add": 8}),
    ((2, 3), (1, 2), (0, 0, 0, 0), {"slice": 8, "sub": 5, "relu": 5, "add": 5}),
])
def test_maxpool_becomes_strided_taps_and_pairwise_maxima(kernel: tuple[int, int], stride: tuple[int, int],
                                                          pads: tuple[int, int, int, int], ops: dict[str, int]) -> None:
    b, x = builder_with_input(2, 3, 7, 8)
    b.output(b.op("maxpool", [x], at(2), kernel=kernel, stride=stride, pads=pads))
    # Negative maps make the padding matter: zero padding would win the max at the borders.
    feeds = {x: -np.abs(random_feeds(b.graph)[x]) - 1.0}
    out, _ = check_rewrite(MAXPOOL, b.graph, ops, feeds=feeds)
    assert all(n.attrs["mode"] == "edge" for n in out.nodes if n.op == "pad")


@pytest.mark.parametrize("shape, ops", [
    ((3, 6), {"reshape": 3, "conv": 1}),
    ((2, 5, 6), {"reshape": 3, "transpose": 2, "conv": 1}),
    ((2, 3, 4, 6), {"reshape": 1, "transpose": 2, "conv": 1}),
    ((2, 2, 3, 2, 6), {"reshape": 3, "transpose": 2, "conv": 1}),
])
def test_linear_becomes_a_1x1_conv_on_a_channels_first_view(shape: tuple[int, ...], ops: dict[str, int]) -> None:
    b, x = builder_with_input(*shape)
    rng = np.random.default_rng(2)
    weights = {"fc.weight": rng.standard_normal((4, 6)).astype(np.float32),
               "fc.bias": rng.standard_normal(4).astype(np.float32)}
    w, bias = (b.param(k, f32(*v.shape), Init("zeros")) for k, v in weights.items())
    b.output(b.op("linear", [x, w, bias], at(2)))
    out, _ = check_rewrite(LINEAR, b.graph, ops, weights)
    conv = next(n for n in out.nodes if n.op == "conv")
    assert conv.inputs[2] == "fc.bias" and out.type_of(conv.inputs[1]).shape == (4, 6, 1, 1)
