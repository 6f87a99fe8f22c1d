"""``gather_to_slice`` and ``where_to_blend``: differential tests in the interpreter, and the ``where`` op itself."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
from pass_support import at, check_rewrite, f32, op_counts, random_feeds, run_interp, run_ort

from netdsl.backends.onnx_backend import to_onnx
from netdsl.builder import GraphBuilder
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.driver import load_graph
from netdsl.interp import run_graph
from netdsl.ir import Graph, Init, TensorType
from netdsl.passes import gather_to_slice, where_to_blend
from netdsl.passes.base import RewriteLog
from netdsl.passes.pipeline import run_pipeline


def gather_graph(table: tuple[int, ...], index: np.ndarray) -> Graph:
    b = GraphBuilder("g")
    t = b.input("table", f32(*table))
    idx = b.op("const", [], value=index.astype(np.int64), dtype="i64")
    b.output(b.op("gather", [t, idx], at(3)))
    return b.graph


@pytest.mark.parametrize(("index", "expected"), [
    # runs of consecutive rows -> one slice each, one concat
    (np.array([[3, 4, 5], [0, 1, -1]]), {"reshape": 2, "slice": 3, "concat": 1}),
    (np.array([2, 3]), {"reshape": 2, "slice": 1}),
    (np.arange(1024), {"reshape": 2}),  # every row in order: only views
])
def test_gather_of_a_few_runs_from_a_large_table_becomes_slices(index: np.ndarray, expected: dict[str, int]) -> None:
    """1024 rows of 64 values: a one-hot conv would cost 64 K multiply-adds per picked row."""
    check_rewrite(gather_to_slice.PASS, gather_graph((1024, 4, 16), index), expected)


def test_gather_of_scattered_rows_from_a_small_table_is_a_one_hot_conv() -> None:
    """200 rows of single values picked in random order from a 10-row table: one conv beats ~180 slices."""
    index = np.random.default_rng(0).integers(0, 10, size=200)
    assert gather_to_slice.one_hot_is_cheaper(len(gather_to_slice.runs(index)), 200, 10, 1, 4)
    check_rewrite(gather_to_slice.PASS, gather_graph((10, 1), index), {"reshape": 2, "conv": 1, "const": 1})


def test_gather_of_a_parameter_table_is_left_to_constant_folding() -> None:
    b = GraphBuilder("g")
    table = b.param("table", TensorType("f32", (5, 2)), Init("zeros"))
    idx = b.op("const", [], value=np.array([1, 0]), dtype="i64")
    b.output(b.op("gather", [table, idx], at(3)))
    after = gather_to_slice.PASS.run(copy.deepcopy(b.graph), RewriteLog())
    assert op_counts(after) == op_counts(b.graph)


def where_graph(mask: np.ndarray, shape: tuple[int, ...]) -> Graph:
    b = GraphBuilder("w")
    x, y = b.input("x", f32(*shape)), b.input("y", f32(*shape))
    cond = b.op("const", [], value=mask, dtype="bool" if mask.dtype == bool else "f32")
    b.output(b.op("where", [cond, x, y], at(5)))
    return b.graph


def test_where_with_a_constant_mask_becomes_a_blend() -> None:
    mask = np.random.default_rng(1).random((1, 3, 1, 5)) < 0.5
    check_rewrite(where_to_blend.PASS, where_graph(mask, (2, 3, 4, 5)), {"const": 2, "mul": 2, "add": 1})


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_where_with_a_uniform_mask_is_a_branch(value: float) -> None:
    """An all-true (all-false) float mask selects a branch: the output is a copy of that graph input."""
    check_rewrite(where_to_blend.PASS, where_graph(np.full((1, 1, 1, 5), value, np.float32), (2, 3, 4, 5)),
                  {"identity": 1})


def test_where_blend_is_exact_for_finite_values_and_nan_where_the_dropped_branch_is_infinite() -> None:
    """The documented semantics: bit-equal where the unselected value is finite, NaN where it is inf."""
    mask = np.array([[True, False, True, False]])
    graph = where_graph(mask, (1, 4))
    after = where_to_blend.PASS.run(copy.deepcopy(graph), RewriteLog())
    feeds = {"x": np.array([[1.5, np.inf, -2.0, 3.0]], np.float32), "y": np.array([[np.inf, 7.0, 0.25, -1.0]],
                                                                                  np.float32)}
    (want,), (got,) = run_interp(graph, {}, feeds), run_interp(after, {}, feeds)
    np.testing.assert_array_equal(want, [[1.5, 7.0, -2.0, -1.0]])
    np.testing.assert_array_equal(got[0, 2:], want[0, 2:])
    assert np.isnan(got[0, :2]).all()  # the dropped inf (y, then x) is multiplied by 0


@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_where_op_agrees_in_interpreter_onnx_runtime_and_torch(write_spec, target: str) -> None:
    """``where(mask, a, b)`` from a spec, a mask concatenated from constants: the three backends and the
    lowered graph (every node covered by the target's profile) agree."""
    import torch

    from netdsl.backends.torch_backend import build_module

    path = write_spec("""
        model m() {
            input x: f32[N=1, 4, 6, 6]
            mask = concat([constant(1.0, [1, 4, 3, 6]), constant(0.0, [1, 4, 3, 6])], axis=2)
            output y = where(mask, x, relu(x) - 1.0)
        }
    """)
    graph = load_graph(path)
    feeds = random_feeds(graph)
    want = np.where(np.arange(6)[None, None, :, None] < 3, feeds["x"], np.maximum(feeds["x"], 0) - 1)
    np.testing.assert_array_equal(run_graph(graph, {}, feeds)[graph.outputs[0]], want)
    session = ort.InferenceSession(to_onnx(graph, {}).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, feeds)[0], want)
    module = build_module(graph, {})
    np.testing.assert_array_equal(module(torch.from_numpy(feeds["x"])).detach().numpy(), want)
    lowered = run_pipeline(graph, target, weights={})
    assert "where" not in op_counts(lowered.graph)
    assert check_coverage(to_onnx(lowered.graph, {}), load_profile(target)).covered
    np.testing.assert_array_equal(run_ort(lowered.graph, lowered.weights or {}, feeds)[0], want)


@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_gather_lowered_for_the_target_is_covered_and_exact(target: str) -> None:
    index = np.array([[1, 2], [5, 0]])
    graph = gather_graph((6, 4, 5), index)
    lowered = run_pipeline(graph, target, weights={})
    assert "gather" not in op_counts(lowered.graph)
    assert check_coverage(to_onnx(lowered.graph, {}), load_profile(target)).covered
    feeds = random_feeds(graph)
    np.testing.assert_array_equal(run_ort(lowered.graph, {}, feeds)[0], feeds["table"][index])
