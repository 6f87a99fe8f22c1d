"""The edge-model ops (relu6, hardsigmoid, hardswish, clamp, minimum, maximum): each spec op against
torch.nn.functional, through netdsl's interpreter, ONNX Runtime (onnx target) and the generated
PyTorch module; bad arguments as located errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pass_support import run_ort

from netdsl import api
from netdsl.diagnostics import NetdslError
from netdsl.interp import run_graph

# Inputs spread over [-9, 9] so that every kink (0, 6, +-3) and both saturated sides are exercised.
SCALE = 4.0

UNARY = {
    "relu6(x)": F.relu6,
    "hardsigmoid(x)": F.hardsigmoid,
    "hardswish(x)": F.hardswish,
    "clamp(x, min=-1.5, max=2.0)": lambda x: torch.clamp(x, min=-1.5, max=2.0),
    "clamp(x, min=0.5)": lambda x: torch.clamp(x, min=0.5),
    "clamp(x, max=-0.25)": lambda x: torch.clamp(x, max=-0.25),
}

BINARY = {
    "minimum(x, y)": torch.minimum,
    "maximum(x, y)": torch.maximum,
}


def _spec(write_spec, expr: str, binary: bool, y_shape: str = "f32[2, 3, 5, 7]") -> Path:
    y = f"    input y: {y_shape}\n" if binary else ""
    return write_spec(f"model m() {{\n    input x: f32[2, 3, 5, 7]\n{y}    output out = {expr}\n}}\n")


def _feeds(graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: (SCALE * rng.standard_normal(graph.values[i].shape)).astype(np.float32) for i in graph.inputs}


def _check_everywhere(path: Path, reference) -> None:  # noqa: ANN001 - a torch function
    graph = api.load(path)
    feeds = _feeds(graph)
    expected = reference(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    interp = run_graph(graph, {}, feeds)[graph.outputs[0]]
    np.testing.assert_allclose(interp, expected, rtol=1e-6, atol=1e-6)
    (ort_out,) = run_ort(api.lower(graph, "onnx").graph, {}, feeds)
    np.testing.assert_allclose(ort_out, expected, rtol=1e-6, atol=1e-6)
    module = api.build_module(graph)
    with torch.no_grad():
        torch_out = module(*(torch.from_numpy(v) for v in feeds.values()))
    np.testing.assert_allclose(torch_out.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("expr", sorted(UNARY))
def test_unary_edge_op_matches_torch(write_spec, expr: str) -> None:
    _check_everywhere(_spec(write_spec, expr, binary=False), UNARY[expr])


@pytest.mark.parametrize("expr", sorted(BINARY))
def test_binary_edge_op_matches_torch(write_spec, expr: str) -> None:
    _check_everywhere(_spec(write_spec, expr, binary=True), BINARY[expr])


@pytest.mark.parametrize("expr", sorted(BINARY))
def test_binary_edge_op_broadcasts(write_spec, expr: str) -> None:
    _check_everywhere(_spec(write_spec, expr, binary=True, y_shape="f32[1, 3, 1, 7]"), BINARY[expr])


def _error(write_spec, expr: str, binary: bool = False, y_shape: str = "f32[2, 3, 5, 7]") -> tuple[str, int, int]:
    path = _spec(write_spec, expr, binary, y_shape)
    with pytest.raises(NetdslError) as info:
        api.load(path)
    d = info.value.diag
    return d.message, d.span.line, d.span.col


def test_clamp_min_above_max_is_located_at_min(write_spec) -> None:
    assert _error(write_spec, "clamp(x, min=6.0, max=0.0)") == ("clamp min (6) is greater than max (0)", 3, 31)


def test_clamp_without_bounds_is_located_at_the_call(write_spec) -> None:
    assert _error(write_spec, "clamp(x)") == ("clamp needs min=, max= or both", 3, 18)


def test_clamp_bound_must_be_a_number(write_spec) -> None:
    message, line, col = _error(write_spec, 'clamp(x, max="6")')
    assert (message, line, col) == ("argument 'max' of clamp() must be a number, found str \"6\"", 3, 31)


def test_minimum_of_shapes_that_do_not_broadcast_is_located_at_the_second_operand(write_spec) -> None:
    message, line, col = _error(write_spec, "minimum(x, y)", binary=True, y_shape="f32[2, 4, 5, 7]")
    assert (message, line, col) == ("shapes [2, 3, 5, 7] and [2, 4, 5, 7] do not broadcast: axis -3 is 3 vs 4", 4, 29)
