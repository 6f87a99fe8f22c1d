"""DLA shaping: element-wise ops, slices, splits and concats on rank-4 views; the rank-4 view helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_support import (
    add_param,
    at,
    builder_with_input,
    check_rewrite,
    f32,
    lower_for_dla_and_compare,
    random_feeds,
    run_ort,
)

from netdsl import api
from netdsl.passes.base import RewriteLog
from netdsl.passes.elementwise_rank4 import PASS as ELEMENTWISE
from netdsl.passes.pool_windows import PASS as POOLS
from netdsl.passes.rank4_view import DIM_LIMIT, DLA_DIM_LIMIT, axis_view, layout4, rank4
from netdsl.passes.slice_concat_rank4 import PASS as SLICE_CONCAT

REPO = Path(__file__).resolve().parents[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20000), min_size=0, max_size=5), st.integers(0, 5))
def test_rank4_views_keep_the_elements_and_the_limits(extents: list[int], whole: int) -> None:
    axes = layout4(extents, whole=whole)
    view = rank4(extents, whole=whole)
    if axes is None:
        assert view is None
        return
    assert view is not None and len(view) == 4 and math.prod(view) == math.prod(extents)
    assert all(d <= DIM_LIMIT for d in view[1:])
    assert [math.prod(run) for run in axes] == extents  # each run keeps its own axes, in order
    assert all(len(run) == 1 for run in axes[:whole])


def test_rank4_view_splits_a_long_run_and_refuses_too_many() -> None:
    assert rank4([1, 3136, 96]) == (1, 3136, 96, 1)
    assert rank4([2, 3, 100000]) == (2, 3, 4000, 25)
    assert rank4([1, 2, 3, 4, 5]) is None
    assert rank4([1, 5000], whole=2) is None  # the channel run must stay whole
    assert axis_view((2, 197, 576), 2) == (394, 576, 1, 1)
    assert axis_view((5000, 3, 4), 1) is None  # the merged batch is above DLA's 4096


def _binary(op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], b_param: bool = False):
    b, x = builder_with_input(*a_shape)
    if b_param:
        y = add_param(b, "bias", np.zeros(b_shape, np.float32))
    else:
        y = b.input("y", f32(*b_shape))
    b.output(b.op(op, [x, y], at(2)))
    return b.graph


@pytest.mark.parametrize("op, a, b, param, ops", [
    # a token-sequence residual: [B, T, C] -> [B, T, C, 1]
    ("add", (2, 5, 6), (2, 5, 6), False, {"reshape": 3, "add": 1}),
    # a per-channel bias on tokens: the bias viewed as [1, 1, C, 1]
    ("mul", (2, 5, 6), (6,), True, {"reshape": 3, "mul": 1}),
    # rank 5 with a window mask broadcast over batch and heads: the two last axes merge
    ("add", (2, 3, 4, 5, 5), (1, 3, 1, 5, 5), False, {"reshape": 3, "add": 1}),
    # rank 2 and a broadcast column
    ("div", (3, 7), (3, 1), False, {"reshape": 3, "div": 1}),
    # a token axis longer than DLA's 8192: laid out over two axes
    ("sub", (1, 9000, 4), (1, 9000, 1), False, {"reshape": 3, "sub": 1}),
])
def test_elementwise_ops_run_on_rank4_views(op: str, a: tuple[int, ...], b: tuple[int, ...], param: bool,
                                            ops: dict[str, int]) -> None:
    graph = _binary(op, a, b, param)
    weights = {"bias": np.random.default_rng(1).standard_normal(b).astype(np.float32)} if param else None
    out, _ = check_rewrite(ELEMENTWISE, graph, ops, weights=weights)
    (node,) = [n for n in out.nodes if n.op == op]
    assert all(len(out.type_of(v).shape) == 4 for v in [*node.inputs, *node.outputs])
    assert all(d <= DLA_DIM_LIMIT for d in out.type_of(node.outputs[0]).shape[1:])


def test_elementwise_ops_on_rank4_maps_are_left_alone() -> None:
    graph = _binary("add", (2, 3, 4, 5), (2, 3, 4, 5))
    out = ELEMENTWISE.run(graph, RewriteLog())
    assert [n.op for n in out.nodes] == ["add"]


def test_elementwise_op_without_a_rank4_view_is_left_for_the_coverage_report() -> None:
    # five axes in a row with alternating broadcast patterns: no merge keeps the broadcasting
    graph = _binary("add", (2, 3, 4, 5, 6), (2, 1, 4, 1, 6))
    out = ELEMENTWISE.run(graph, RewriteLog())
    assert [n.op for n in out.nodes] == ["add"]


def _split_graph(shape: tuple[int, ...], axis: int, sizes: list[int]):
    b, x = builder_with_input(*shape)
    for y in b.op_multi("split", [x], at(2), axis=axis, sizes=tuple(sizes)):
        b.output(y)
    return b.graph


def _slice_graph(shape: tuple[int, ...], axis: int, start: int, end: int):
    b, x = builder_with_input(*shape)
    b.output(b.op("slice", [x], at(2), axis=axis, start=start, end=end, step=1))
    return b.graph


def _concat_graph(shapes: list[tuple[int, ...]], axis: int):
    builder, x = builder_with_input(*shapes[0])
    others = [builder.input(f"x{i}", f32(*s)) for i, s in enumerate(shapes[1:])]
    builder.output(builder.op("concat", [x, *others], at(2), axis=axis))
    return builder.graph


@pytest.mark.parametrize("graph, ops", [
    # ViT's qkv split of a token sequence: a channel split of [B*T, 3C, 1, 1]
    (_split_graph((2, 5, 12), 2, [4, 4, 4]), {"reshape": 4, "split": 1}),
    # a split of the batch axis: a channel split of [1, N, ...]
    (_split_graph((4, 3, 2, 2), 0, [1, 3]), {"reshape": 3, "split": 1}),
    # a slice of the batch axis (Swin's class-token free path, window batches)
    (_slice_graph((4, 3, 5), 0, 1, 3), {"reshape": 2, "slice": 1}),
    # a rank-3 slice of tokens (CvT's class token)
    (_slice_graph((2, 50, 8), 1, 0, 1), {"reshape": 2, "slice": 1}),
    # a concat of rows of a map: a channel concat of [N*C, H, W, 1]
    (_concat_graph([(2, 3, 4, 5), (2, 3, 2, 5)], 2), {"reshape": 3, "concat": 1}),
    # rows of single-channel maps swap rows and channel: the one-row piece needs no reshape
    (_concat_graph([(2, 1, 3, 5), (2, 1, 1, 5)], 2), {"reshape": 2, "concat": 1}),
    # columns of single-channel maps of several rows: the rows lie between, so no swap (it would scramble them)
    (_concat_graph([(1, 1, 3, 1), (1, 1, 3, 2)], 3), {"reshape": 3, "concat": 1}),
    # a class token in front of the tokens
    (_concat_graph([(2, 1, 8), (2, 49, 8)], 1), {"reshape": 3, "concat": 1}),
])
def test_slices_splits_and_concats_move_to_axis_1_of_a_rank4_view(graph, ops: dict[str, int]) -> None:
    out, _ = check_rewrite(SLICE_CONCAT, graph, ops)
    for node in out.nodes:
        if node.op in ("slice", "split", "concat"):
            assert node.attrs["axis"] == 1 and out.type_of(node.inputs[0]).rank == 4


@pytest.mark.parametrize("graph", [
    _slice_graph((2, 3, 4, 5), 2, 1, 3),  # DLA slices rank-4 maps along C, H and W as they are
    _slice_graph((2, 3, 4, 5), 0, 0, 2),  # the whole batch: nothing is cut from it
    _concat_graph([(2, 3, 4, 5), (2, 1, 4, 5)], 1),  # already a channel concat
    _concat_graph([(5000, 2, 3), (5000, 2, 3)], 1),  # no view: the batch would be above 4096
])
def test_slices_and_concats_dla_takes_or_no_view_fits_are_left_alone(graph) -> None:
    before = [n.op for n in graph.nodes]
    assert [n.op for n in SLICE_CONCAT.run(graph, RewriteLog()).nodes] == before


def test_vit_block_lowers_for_dla_fully_covered_with_the_onnx_targets_numbers() -> None:
    graph = api.load(REPO / "specs/blocks/vit.net", params={"dim": 48, "num_heads": 3}, inputs={"x": (2, 17, 48)})
    lowered = lower_for_dla_and_compare(graph)
    elementwise = {"add", "sub", "mul", "div", "slice", "split"}
    assert all(lowered.type_of(n.inputs[0]).rank == 4 for n in lowered.nodes if n.op in elementwise)


def _pool_graph(op: str, shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                pads: tuple[int, int, int, int]):
    b, x = builder_with_input(*shape)
    b.output(b.op(op, [x], at(2), kernel=kernel, stride=stride, pads=pads))
    return b.graph


@pytest.mark.parametrize("op, shape, kernel, stride, pads, ops", [
    # a 56 x 56 global pool as a tiling pool: 8 x 8 then 7 x 7
    ("avgpool", (1, 4, 56, 56), (56, 56), (56, 56), (0, 0, 0, 0), {"avgpool": 2}),
    # floor mode drops the last row and column in the first step already
    ("avgpool", (1, 2, 57, 58), (56, 56), (56, 56), (0, 0, 0, 0), {"avgpool": 2}),
    ("maxpool", (2, 3, 28, 28), (14, 14), (14, 14), (0, 0, 0, 0), {"maxpool": 2}),
    # SPP's 13 x 13 stride-1 max pool: 8 then 6, the padding shared out
    ("maxpool", (1, 3, 20, 20), (13, 13), (1, 1), (6, 6, 6, 6), {"maxpool": 2}),
    # a strided max pool with a long window on one axis only
    ("maxpool", (1, 2, 40, 9), (20, 3), (3, 2), (2, 1, 5, 1), {"maxpool": 3}),
    # tiling rows, a padded 3-wide average over columns on the last step
    ("avgpool", (1, 2, 32, 10), (16, 3), (16, 1), (0, 1, 0, 1), {"avgpool": 2}),
    # an overlapping large average: a depth-wise conv with a 1/144 kernel
    ("avgpool", (1, 3, 30, 30), (12, 12), (4, 4), (3, 3, 3, 3), {"const": 1, "conv": 1}),
])
def test_large_pools_become_pools_within_dlas_windows(op: str, shape: tuple[int, ...], kernel: tuple[int, int],
                                                      stride: tuple[int, int], pads: tuple[int, int, int, int],
                                                      ops: dict[str, int]) -> None:
    out, _ = check_rewrite(POOLS, _pool_graph(op, shape, kernel, stride, pads), ops)
    for node in out.nodes:
        if node.op in ("avgpool", "maxpool"):
            assert max(node.attrs["kernel"]) <= 8 and max(node.attrs["stride"]) <= 16 and max(node.attrs["pads"]) <= 7


@settings(max_examples=25, deadline=None)
@given(st.integers(9, 24), st.integers(1, 5), st.integers(0, 8), st.integers(0, 8), st.integers(24, 40))
def test_long_max_pools_equal_their_stride_one_steps(k: int, s: int, before: int, after: int, size: int) -> None:
    graph = _pool_graph("maxpool", (1, 2, size, 5), (k, 1), (s, 1), (min(before, k - 1), 0, min(after, k - 1), 0))
    out, _ = check_rewrite(POOLS, graph, {"maxpool": math.ceil((k - 1) / 7)})
    feeds = random_feeds(graph)
    assert np.array_equal(run_ort(out, {}, feeds)[0], run_ort(graph, {}, feeds)[0])  # maxima of maxima: bit-exact


def test_pools_with_no_exact_form_within_the_limits_are_left_alone() -> None:
    # an 11 x 11 tiling average: 11 is prime and above the pool window, its stride above the conv stride
    graph = _pool_graph("avgpool", (1, 2, 22, 22), (11, 11), (11, 11), (0, 0, 0, 0))
    assert [n.op for n in POOLS.run(graph, RewriteLog()).nodes] == ["avgpool"]


def test_pools_within_the_limits_are_left_alone() -> None:
    graph = _pool_graph("maxpool", (1, 2, 9, 9), (3, 3), (2, 2), (1, 1, 1, 1))
    assert [n.op for n in POOLS.run(graph, RewriteLog()).nodes] == ["maxpool"]
