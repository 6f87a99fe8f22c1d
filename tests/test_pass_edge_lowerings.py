"""The restricted lowerings of the edge ops: clip_to_relu (relu6, hardsigmoid, clamp), minmax_to_relu
(minimum, maximum) and pool_padding_explicit (ceil_mode, count_include_pad=false). Each rewrite against
ONNX Runtime before/after (check_rewrite) and against torch.nn.functional; the error bounds their
docstrings state; and specs/blocks/edge_ops.net on every target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_support import at, builder_with_input, check_rewrite, f32, run_ort

from netdsl import api
from netdsl.builder import GraphBuilder
from netdsl.interp import run_graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.clip_to_relu import PASS as CLIP
from netdsl.passes.minmax_to_relu import PASS as MINMAX
from netdsl.passes.pool_padding_explicit import PASS as POOL

REPO = Path(__file__).resolve().parents[1]
SHAPE = (2, 3, 6, 7)


def _feeds(graph, scale: float = 4.0) -> dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng(0)
    return {i: (scale * rng.standard_normal(graph.values[i].shape)).astype(np.float32) for i in graph.inputs}


def _unary_graph(op: str, **attrs: object):  # noqa: ANN202
    b, x = builder_with_input(*SHAPE)
    b.output(b.op(op, [x], at(3), **attrs))
    return b.graph


CLIP_CASES = {
    "relu6": ({}, F.relu6),
    "hardsigmoid": ({}, F.hardsigmoid),
    "clamp": ({"min": -1.5, "max": 2.0}, lambda t: torch.clamp(t, -1.5, 2.0)),
    "clamp-min": ({"min": 0.25}, lambda t: torch.clamp(t, min=0.25)),
    "clamp-max": ({"max": -0.5}, lambda t: torch.clamp(t, max=-0.5)),
}


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_clip_to_relu_matches_onnx_runtime_and_torch(case: str) -> None:
    attrs, reference = CLIP_CASES[case]
    graph = _unary_graph(case.split("-")[0], **attrs)
    feeds = _feeds(graph)
    both = {"sub": 3, "relu": 2, "add": 1, "const": 2}  # x - relu(x - hi) + relu(lo - x)
    expected_ops = {"relu6": both, "clamp": both, "hardsigmoid": {"sub": 3, "relu": 2, "add": 2, "mul": 1, "const": 4},
                    "clamp-min": {"sub": 1, "relu": 1, "add": 1, "const": 1},
                    "clamp-max": {"sub": 2, "relu": 1, "const": 1}}[case]
    out, _ = check_rewrite(CLIP, graph, expected_ops, feeds=feeds)
    (got,) = run_ort(out, {}, feeds)
    x = feeds[graph.inputs[0]]
    want = reference(torch.from_numpy(x)).numpy()
    # the docstring's bound: 1.5 ulp of max(|x|, |bound|) outside the bounds (hardsigmoid: 2 ulp of the result more)
    scale = np.maximum(np.abs(x), 6.0)
    assert np.all(np.abs(got - want) <= 1.5 * np.spacing(scale) + 2 * np.spacing(np.abs(want)))


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(-100, 100, width=32), span=st.floats(0, 100, width=32),
       xs=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=16))
def test_clamp_lowering_is_exact_inside_the_bounds_and_within_its_bound_outside(lo: float, span: float,
                                                                                  xs: list[float]) -> None:
    hi = float(np.float32(lo + span))
    b = GraphBuilder("g")
    x = b.input("x", f32(len(xs)))
    b.output(b.op("clamp", [x], min=lo, max=hi))
    lowered = CLIP.run(b.graph, RewriteLog())
    values = np.asarray(xs, dtype=np.float32)
    got = run_graph(lowered, {}, {"x": values})[lowered.outputs[0]]
    want = np.clip(values, np.float32(lo), np.float32(hi))
    inside = (values >= np.float32(lo)) & (values <= np.float32(hi))
    assert np.array_equal(got[inside], values[inside])
    scale = np.maximum(np.abs(values), max(abs(np.float32(lo)), abs(np.float32(hi))))
    assert np.all(np.abs(got - want)[~inside] <= 1.5 * np.spacing(scale)[~inside])


@pytest.mark.parametrize(("op", "reference"), [("minimum", torch.minimum), ("maximum", torch.maximum)])
@pytest.mark.parametrize("other", [SHAPE, (1, 3, 1, 7)])
def test_minmax_to_relu_matches_onnx_runtime_and_torch(op: str, reference, other: tuple[int, ...]) -> None:  # noqa: ANN001
    b, x = builder_with_input(*SHAPE)
    y = b.input("y", f32(*other))
    b.output(b.op(op, [x, y], at(4)))
    feeds = _feeds(b.graph)
    expected_ops = {"sub": 2, "relu": 1} if op == "minimum" else {"sub": 1, "relu": 1, "add": 1}
    out, _ = check_rewrite(MINMAX, b.graph, expected_ops, feeds=feeds)
    (got,) = run_ort(out, {}, feeds)
    want = reference(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


POOL_CASES = [
    ("avgpool", 3, 1, 1, False, False),
    ("avgpool", 3, 2, 1, True, False),
    ("avgpool", 2, 2, 0, True, True),
    ("avgpool", 3, 2, 1, True, True),
    ("maxpool", 3, 2, 1, True, True),
    ("maxpool", 2, 2, 0, True, True),
]


@pytest.mark.parametrize(("op", "k", "s", "p", "ceil", "include"), POOL_CASES)
def test_pool_padding_explicit_matches_onnx_runtime_and_torch(op: str, k: int, s: int, p: int, ceil: bool,
                                                              include: bool) -> None:
    b, x = builder_with_input(*SHAPE)
    flags = {"ceil_mode": True} if ceil else {}
    if not include:
        flags["count_include_pad"] = False
    b.output(b.op(op, [x], at(5), kernel=(k, k), stride=(s, s), pads=(p,) * 4, **flags))
    feeds = _feeds(b.graph)
    t = torch.from_numpy(feeds[x])
    want = (F.max_pool2d(t, k, s, p, ceil_mode=ceil) if op == "maxpool" else
            F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=include)).numpy()
    # Every avgpool case has a window with a smaller divisor than k*k (at the border or cut by ceil mode).
    lowered_ops = {op: 1} | ({"mul": 1, "const": 1} if op == "avgpool" else {})
    out, _ = check_rewrite(POOL, b.graph, lowered_ops, feeds=feeds)
    assert all(not n.attrs.get("ceil_mode") and n.attrs.get("count_include_pad", True) for n in out.nodes)
    (got,) = run_ort(out, {}, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pool_padding_explicit_leaves_plain_pools_alone() -> None:
    b, x = builder_with_input(*SHAPE)
    b.output(b.op("avgpool", [x], at(5), kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1)))
    out = POOL.run(b.graph, RewriteLog())
    assert [n.op for n in out.nodes] == ["avgpool"] and "pool_padding_explicit" not in out.nodes[0].provenance.rules


@pytest.mark.slow
@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_edge_ops_spec_is_fully_covered_and_equals_the_onnx_target(target: str) -> None:
    graph = api.load(REPO / "specs" / "blocks" / "edge_ops.net")
    report = api.coverage(api.to_onnx(graph, target), target)
    assert report.covered, report.violation_lines()
    feeds = _feeds(graph, scale=1.0)
    plain, lowered = api.lower(graph, "onnx"), api.lower(graph, target)
    (want,), (got,) = run_ort(plain.graph, plain.weights, feeds), run_ort(lowered.graph, lowered.weights, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch_out = api.build_module(graph)(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(torch_out, want, rtol=1e-5, atol=1e-5)
