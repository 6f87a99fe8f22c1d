"""``reduce_to_matmul``: a mean or sum over a leading run of axes becomes a matrix product with the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pass_support import TOL, at, builder_with_input, check_rewrite, random_feeds, run_ort

from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.pipeline import run_pipeline
from netdsl.passes.reduce_to_matmul import PASS


def reduce_graph(shape: tuple[int, ...], op: str, axes: tuple[int, ...], keepdims: bool) -> Graph:
    b, x = builder_with_input(*shape)
    b.output(b.op(op, [x], at(2), axes=axes, keepdims=keepdims))
    return b.graph


@pytest.mark.parametrize("shape, op, axes, keepdims", [
    ((2, 5, 5, 12), "reduce_mean", (1, 2), False),  # ConvNeXt's channels-last global mean
    ((2, 5, 5, 12), "reduce_mean", (-3, -2), True),  # the same, negative axes, kept
    ((1, 49, 16), "reduce_mean", (1,), False),  # Swin's mean over the tokens
    ((2, 6, 4, 4), "reduce_sum", (1,), True),  # a channel sum of an NCHW map
    ((3, 4, 5), "reduce_sum", (0, 1), False),  # the batch axis in the run: P = 1
])
def test_a_reduction_over_a_leading_run_becomes_a_matmul(shape: tuple[int, ...], op: str, axes: tuple[int, ...],
                                                         keepdims: bool) -> None:
    graph = reduce_graph(shape, op, axes, keepdims)
    out, log = check_rewrite(PASS, graph, {"const": 1, "reshape": 2, "matmul": 1})
    row = next(n for n in out.nodes if n.op == "const").attrs["value"]
    reduced = int(np.prod([shape[a] for a in axes]))
    assert row.shape == (1, reduced) and np.all(row == (1 / reduced if op == "reduce_mean" else 1))
    assert [entry[2:] for entry in log.entries] == [(op, ["const", "reshape", "matmul", "reshape"])]


@pytest.mark.parametrize("case, shape, axes", [
    ("trailing axes (fast in ONNX Runtime)", (2, 6, 4, 4), (2, 3)),
    ("a run followed by size-1 axes only", (2, 6, 1, 1), (1,)),
    ("axes that are not one run", (2, 3, 4, 5), (1, 3)),
])
def test_other_reductions_stay(case: str, shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    graph = reduce_graph(shape, "reduce_mean", axes, True)
    log = RewriteLog()
    out = PASS.run(graph, log)
    assert [n.op for n in out.nodes] == ["reduce_mean"] and not log.entries


def test_the_postcondition_names_a_reduction_left_over_a_leading_run() -> None:
    assert PASS.post is not None
    assert PASS.post(reduce_graph((1, 49, 16), "reduce_mean", (1,), True)) == [
        "reduce_mean over [1] of f32[1,49,16] is left"]


def test_the_onnx_pipeline_turns_convnexts_pooled_mean_into_a_matmul(repo_root: Path) -> None:
    graph = load_graph(repo_root / "specs" / "models" / "convnext_tiny.net", "convnext_tiny",
                       ["depths=1,1,1,1", "dims=8,16,24,32", "num_classes=10"])
    weights = initial_weights(graph, seed=1)
    lowered = run_pipeline(graph, "onnx", weights=weights)
    means = [n for n in lowered.graph.nodes if n.op == "reduce_mean"]
    # the mean of the residual stays over H and W of the NCHW map; the channels-last one is a matmul
    assert [n.attrs["axes"] for n in means] == [(2, 3)]
    assert sum(n.op == "matmul" for n in lowered.graph.nodes) == 1
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_ort(lowered.graph, lowered.weights, feeds)[0], run_ort(graph, weights, feeds)[0],
                               **TOL)
