"""Layer, group and instance norms lowered for the TensorRT targets: differential tests, large means, golden counts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pass_support import add_param, at, builder_with_input, check_rewrite, random_feeds, run_ort

from netdsl.backends.onnx_backend import to_onnx
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.groupnorm_decompose import PASS as GROUPNORM
from netdsl.passes.layernorm_decompose import PASS as LAYERNORM
from netdsl.passes.pipeline import run_pipeline
from netdsl.passes.reduce_to_conv import PASS as REDUCE

NORMALISED = {"sub": 2, "mul": 2, "add": 2, "sqrt": 1, "div": 1, "reduce_mean": 3, "const": 1}


def _layernorm(shape: tuple[int, ...], axis: int, affine: bool = True) -> tuple[Graph, dict[str, np.ndarray]]:
    b, x = builder_with_input(*shape)
    c = shape[axis]
    rng = np.random.default_rng(7)
    weights = {"ln.weight": rng.standard_normal(c).astype(np.float32),
               "ln.bias": rng.standard_normal(c).astype(np.float32)} if affine else {}
    params = [add_param(b, name, value) for name, value in weights.items()]
    b.output(b.op("layernorm", [x, *params], at(3), axis=axis, eps=1e-5))
    return b.graph, weights


def _groupnorm(shape: tuple[int, ...], groups: int) -> tuple[Graph, dict[str, np.ndarray]]:
    b, x = builder_with_input(*shape)
    rng = np.random.default_rng(8)
    weights = {"gn.weight": rng.standard_normal(shape[1]).astype(np.float32),
               "gn.bias": rng.standard_normal(shape[1]).astype(np.float32)}
    params = [add_param(b, name, value) for name, value in weights.items()]
    b.output(b.op("groupnorm", [x, *params], at(4), groups=groups, eps=1e-5))
    return b.graph, weights


def _exact(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    """The normalisation in float64 (the reference for inputs where float32 runtimes lose digits)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)


@pytest.mark.parametrize("shape, axis, affine, views", [
    ((2, 8, 5, 6), 1, True, {}),  # channels-first map: the map itself is the view
    ((2, 5, 6, 8), -1, True, {"transpose": 2}),  # channels-last map: one transpose there and back
    ((2, 7, 12), -1, True, {"transpose": 2, "reshape": 2}),  # token sequence [B, L, C]
    ((2, 4, 6, 3), 2, False, {"reshape": 2}),  # a middle axis: the leading axes fold into the batch
    ((3, 16), 1, True, {"reshape": 2}),  # a vector per sample
])
def test_layernorm_lowers_on_a_channels_first_view(shape: tuple[int, ...], axis: int, affine: bool,
                                                   views: dict[str, int]) -> None:
    graph, weights = _layernorm(shape, axis, affine)
    ops = dict(NORMALISED)
    if affine:
        ops["reshape"] = ops.get("reshape", 0) + 2  # weight and bias viewed as [1, C, 1, 1]
    else:
        ops.update(mul=1, add=1)
    for op, n in views.items():
        ops[op] = ops.get(op, 0) + n
    check_rewrite(LAYERNORM, graph, ops, weights)


@pytest.mark.parametrize("shape, groups", [((2, 8, 5, 6), 2), ((2, 8, 5, 6), 8), ((2, 6, 7), 3), ((1, 4, 3, 3), 1)])
def test_groupnorm_lowers_on_a_grouped_view(shape: tuple[int, ...], groups: int) -> None:
    graph, weights = _groupnorm(shape, groups)
    out, _ = check_rewrite(GROUPNORM, graph, {**NORMALISED, "reshape": 4 + (len(shape) != 4)}, weights)
    means = [n for n in out.nodes if n.op == "reduce_mean"]
    assert {tuple(n.attrs["axes"]) for n in means} == {(2, 3)}


def _lowered(graph: Graph, norm_pass) -> Graph:
    return REDUCE.run(norm_pass.run(copy.deepcopy(graph), RewriteLog()), RewriteLog())


@pytest.mark.parametrize("mean, scale", [(1e4, 1.0), (-3e5, 10.0), (0.0, 1e-3), (0.0, 1e6), (1.0, 1e-20)])
@pytest.mark.parametrize("shape, axis", [((2, 96, 4, 4), 1), ((2, 5, 96), -1)])
def test_layernorm_stays_exact_at_large_means_and_any_magnitude(mean: float, scale: float, shape: tuple[int, ...],
                                                                axis: int) -> None:
    graph, weights = _layernorm(shape, axis, affine=False)
    rng = np.random.default_rng(3)
    feeds = {"x": (mean + scale * rng.standard_normal(shape)).astype(np.float32)}
    (got,) = run_ort(_lowered(graph, LAYERNORM), weights, feeds)
    want = _exact(feeds["x"], (axis % len(shape),), 1e-5)
    # 1e-4 relative to the output's largest magnitude (unit-variance outputs are O(1)); measured ~1e-6
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def test_groupnorm_stays_exact_at_a_large_mean() -> None:
    graph, weights = _groupnorm((1, 64, 28, 28), 32)
    feeds = {"x": (1e4 + np.random.default_rng(4).standard_normal((1, 64, 28, 28))).astype(np.float32)}
    (got,) = run_ort(_lowered(graph, GROUPNORM), weights, feeds)
    affine = (weights["gn.weight"].reshape(1, -1, 1, 1), weights["gn.bias"].reshape(1, -1, 1, 1))
    want = _exact(feeds["x"].reshape(1, 32, -1), (2,), 1e-5).reshape(1, 64, 28, 28) * affine[0] + affine[1]
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def lower_and_compare(graph: Graph, target: str) -> Graph:
    """Lower ``graph`` for ``target``; every node but ``sqrt`` (lowered by the math passes) is covered; outputs equal.

    The reference is the ``onnx`` target's output with the same initial weights.
    """
    weights = initial_weights(graph)
    lowered = run_pipeline(graph, target, weights=weights)
    report = check_coverage(to_onnx(lowered.graph, lowered.weights), load_profile(target))
    assert [line for line in report.violation_lines() if " Sqrt " not in line] == []
    plain = run_pipeline(graph, "onnx", weights=weights)
    feeds = random_feeds(graph)
    (want,), (got,) = run_ort(plain.graph, plain.weights, feeds), run_ort(lowered.graph, lowered.weights, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return lowered.graph


@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
@pytest.mark.parametrize("build", [
    lambda: _layernorm((1, 14, 14, 96), -1)[0], lambda: _layernorm((2, 49, 64), -1)[0],
    lambda: _layernorm((1, 96, 56, 56), 1)[0], lambda: _groupnorm((1, 64, 56, 56), 32)[0],
    lambda: _groupnorm((2, 8, 5, 6), 8)[0]])
def test_target_lowering_is_covered_and_equal(build, target: str) -> None:
    graph = lower_and_compare(build(), target)
    assert not {n.op for n in graph.nodes} & {"layernorm", "groupnorm", "reduce_mean"}


INSTANCE_NORM_SPEC = """
model inorm_demo() {
    input x: f32[2, 6, 5, 7]
    a = instancenorm(x) as plain
    output y = instancenorm(a, affine=true, eps=1e-3) as scaled
}
"""


def test_instancenorm_is_pytorch_instancenorm2d_and_lowers_for_restricted_targets(write_spec) -> None:
    import torch

    from netdsl.backends.torch_backend import build_module
    from netdsl.driver import load_graph

    graph = load_graph(write_spec(INSTANCE_NORM_SPEC), None, [], [])
    assert sorted(graph.params) == ["scaled.bias", "scaled.weight"]
    rng = np.random.default_rng(5)
    weights = {"scaled.weight": rng.standard_normal(6).astype(np.float32),
               "scaled.bias": rng.standard_normal(6).astype(np.float32)}
    reference = torch.nn.Sequential(torch.nn.InstanceNorm2d(6), torch.nn.InstanceNorm2d(6, eps=1e-3, affine=True))
    reference[1].load_state_dict({k.split(".")[1]: torch.from_numpy(v) for k, v in weights.items()})
    x = (3.0 + rng.standard_normal((2, 6, 5, 7))).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
        got_torch = build_module(graph, weights)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got_torch, want, atol=1e-5)
    for target in ("trt-restricted", "trt-dla"):
        lowered = run_pipeline(graph, target, weights=weights)
        assert "groupnorm" not in {n.op for n in lowered.graph.nodes}
        (got,) = run_ort(lowered.graph, lowered.weights, {"x": x})
        np.testing.assert_allclose(got, want, atol=1e-5)
