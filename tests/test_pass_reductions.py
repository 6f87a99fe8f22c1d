"""Reductions over any axes lowered for the TensorRT targets: sums/means by ones-convs or pools, maxima/minima."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_support import at, builder_with_input, check_rewrite, lower_for_dla_and_compare, op_counts, run_interp

from netdsl.backends.onnx_backend import to_onnx
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.passes.base import RewriteLog
from netdsl.passes.reduce_max_to_elementwise import PASS as EXTREMA
from netdsl.passes.reduce_min_to_max import PASS as MIN_TO_MAX
from netdsl.passes.reduce_to_conv import PASS as REDUCE
from netdsl.passes.reduce_to_conv import plan


def _reduction(op: str, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool):
    b, x = builder_with_input(*shape)
    b.output(b.op(op, [x], at(2), axes=axes, keepdims=keepdims))
    return b.graph


@pytest.mark.parametrize("op, shape, axes, keepdims, ops", [
    # channel axis of an NCHW map: one 1x1 conv on the map itself
    ("reduce_sum", (2, 5, 3, 4), (1,), True, {"const": 1, "conv": 1}),
    # the map's H and W: an average pool on the map itself
    ("reduce_mean", (2, 5, 3, 4), (2, 3), True, {"avgpool": 1}),
    # a 56 x 56 mean within DLA's 8 x 8 windows: 8 x 8 then 7 x 7
    ("reduce_mean", (1, 8, 56, 56), (2, 3), True, {"avgpool": 2}),
    # the last axis only: pooled on a view
    ("reduce_mean", (2, 5, 3, 4), (-1,), True, {"reshape": 2, "avgpool": 1}),
    # a sum of everything but the batch: pools, then times the count
    ("reduce_sum", (2, 5, 3, 4), (1, 2, 3), False, {"reshape": 2, "avgpool": 2, "const": 1, "mul": 1}),
    # token sequence, trailing axis, no keepdims
    ("reduce_mean", (2, 3, 7), (-1,), False, {"reshape": 2, "avgpool": 1}),
    # the batch axis: a ones-conv over a view with the batch as channels
    ("reduce_sum", (2, 5, 3, 4), (0,), True, {"reshape": 2, "const": 1, "conv": 1}),
    # two separate runs (leading and middle): one conv each, larger run first
    ("reduce_mean", (2, 3, 4, 5), (0, 2), False, {"reshape": 3, "const": 2, "conv": 2}),
    # more channels than the 4096 limit: two convolutions
    ("reduce_mean", (1, 5000, 3), (1,), True, {"reshape": 3, "const": 2, "conv": 2}),
    # a prime extent above the pool window: transposed into channels
    ("reduce_sum", (2, 3, 11), (-1,), True, {"reshape": 3, "transpose": 1, "const": 1, "conv": 1}),
    # only length-1 axes reduced: a reshape
    ("reduce_mean", (2, 1, 3), (1,), False, {"reshape": 1}),
])
def test_reductions_become_ones_convolutions_or_pools(op: str, shape: tuple[int, ...], axes: tuple[int, ...],
                                                      keepdims: bool, ops: dict[str, int]) -> None:
    check_rewrite(REDUCE, _reduction(op, shape, axes, keepdims), ops)


def test_every_view_stays_within_the_channel_and_map_limits() -> None:
    graph = _reduction("reduce_mean", (2, 5000, 6000), (1,), True)
    out = REDUCE.run(copy.deepcopy(graph), RewriteLog())
    for node in out.nodes:
        if node.op in ("conv", "avgpool"):
            assert max(out.type_of(node.inputs[0]).shape[1:]) <= 4096, node


def test_a_reduction_without_a_view_within_the_limits_is_left_alone() -> None:
    # 4099 channels (a prime above 4096) followed by kept elements: no conv within the channel limit sums them
    assert plan((1, 4099, 2), {1}) is None
    graph = _reduction("reduce_sum", (1, 4099, 2), (1,), True)
    assert op_counts(REDUCE.run(copy.deepcopy(graph), RewriteLog())) == {"reduce_sum": 1}


@pytest.mark.parametrize("shape, axes", [((1, 96, 56, 56), (2, 3)), ((2, 49, 96), (1,)), ((1, 768, 7, 7), (1, 2, 3)),
                                         ((2, 3, 7, 7), (1,))])
def test_dla_lowering_of_means_is_covered_and_equal(shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    graph = lower_for_dla_and_compare(_reduction("reduce_mean", shape, axes, False))
    windows = [n.attrs["kernel"] for n in graph.nodes if n.op == "avgpool"]
    assert all(max(w) <= 8 for w in windows)


def test_restricted_lowering_is_covered() -> None:
    graph = REDUCE.run(_reduction("reduce_mean", (8, 3136, 96), (1,), True), RewriteLog())
    report = check_coverage(to_onnx(graph, {}), load_profile("trt-restricted"))
    assert report.covered, report.violation_lines()


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=5), data=st.data(),
       op=st.sampled_from(["reduce_sum", "reduce_mean"]), keepdims=st.booleans(),
       magnitude=st.sampled_from([1e-30, 1.0, 1e4, 1e30]))
def test_any_axes_any_rank_agree_with_onnx_runtime(shape: list[int], data: st.DataObject, op: str, keepdims: bool,
                                                   magnitude: float) -> None:
    rank = len(shape)
    axes = tuple(data.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True)))
    graph = _reduction(op, tuple(shape), axes, keepdims)
    rng = np.random.default_rng(len(shape))
    feeds = {"x": (magnitude * (1 + rng.standard_normal(shape))).astype(np.float32)}
    out = REDUCE.run(copy.deepcopy(graph), RewriteLog())
    assert REDUCE.post is not None and REDUCE.post(out) == []
    (want,), (got,) = run_interp(graph, {}, feeds), run_interp(out, {}, feeds)
    scale = np.abs(feeds["x"]).sum() if op == "reduce_sum" else np.abs(feeds["x"]).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("op, shape, axes, keepdims, ops", [
    ("reduce_max", (2, 3, 7), (-1,), True, {"slice": 7, "sub": 3, "relu": 3, "add": 3, "concat": 1}),
    ("reduce_min", (2, 3, 7), (-1,), True, {"slice": 7, "sub": 6, "relu": 3, "concat": 1}),
    ("reduce_min", (2, 4, 2, 3), (0, 3), False, {"slice": 7, "sub": 6, "relu": 3, "concat": 1, "reshape": 1}),
])
def test_maxima_and_minima_become_pairwise_relu_trees(op: str, shape: tuple[int, ...], axes: tuple[int, ...],
                                                      keepdims: bool, ops: dict[str, int]) -> None:
    check_rewrite(EXTREMA, _reduction(op, shape, axes, keepdims), ops)


@pytest.mark.parametrize("shape, axes, keepdims, ops", [
    ((2, 4, 5, 6), (1, 3), True, {"const": 1, "mul": 2, "reduce_max": 1}),
    ((2, 7, 9), (-1,), False, {"reshape": 2, "const": 1, "mul": 2, "reduce_max": 1}),
    ((5, 2, 3), (0,), True, {"reshape": 2, "const": 1, "mul": 2, "reduce_max": 1}),
])
def test_dla_minima_are_negated_maxima(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool,
                                       ops: dict[str, int]) -> None:
    out, _ = check_rewrite(MIN_TO_MAX, _reduction("reduce_min", shape, axes, keepdims), ops,
                           feeds={"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 1e20})
    report = check_coverage(to_onnx(out, {}), load_profile("trt-dla"))
    assert report.covered, report.violation_lines()
