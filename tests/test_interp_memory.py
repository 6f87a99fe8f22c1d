"""The interpreter's conv builds its im2col matrix in bands under a byte budget, with the same result."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netdsl import api, interp

ATTRS = {"stride": (1, 1), "pads": (3, 3, 3, 3), "dilation": (1, 1)}


def conv(x: np.ndarray, w: np.ndarray, groups: int, **attrs: object) -> np.ndarray:
    return interp.KERNELS["conv"]([x, w], {**ATTRS, **attrs, "groups": groups})[0]


def test_depthwise_conv_scratch_stays_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 7x7 depthwise conv over 96 channels at 56x56: 59 MB of columns in one piece, 1.2 MB of output.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 96, 56, 56)).astype(np.float32)
    w = rng.standard_normal((96, 1, 7, 7)).astype(np.float32)
    whole_columns = 96 * 56 * 56 * 49 * 4
    monkeypatch.setattr(interp, "CONV_SCRATCH_BYTES", 2 * whole_columns)
    expected = conv(x, w, 96)
    monkeypatch.setattr(interp, "CONV_SCRATCH_BYTES", 4 << 20)
    tracemalloc.start()
    try:
        banded = conv(x, w, 96)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The padded input, one band of columns with its product, and the output.
    padded, output = 96 * 62 * 62 * 4, expected.nbytes
    assert peak <= padded + 2 * (4 << 20) + 2 * output
    assert peak < whole_columns / 4
    np.testing.assert_array_equal(banded, expected)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), stride=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       budget=st.integers(1, 4000), seed=st.integers(0, 2**16))
def test_banded_conv_equals_the_whole(rows: int, stride: int, groups: int, budget: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, rows, 5)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32)
    attrs = {"stride": (stride, stride), "pads": (1, 1, 1, 1)}
    whole = conv(x, w, groups, **attrs)
    saved = interp.CONV_SCRATCH_BYTES
    interp.CONV_SCRATCH_BYTES = budget  # down to one output row per band
    try:
        banded = conv(x, w, groups, **attrs)
    finally:
        interp.CONV_SCRATCH_BYTES = saved
    # A band's matrix product is a smaller BLAS call, which may sum in another order: equal up to float32 rounding.
    np.testing.assert_allclose(banded, whole, rtol=1e-5, atol=1e-5)


def test_float16_storage_run_rounds_every_value_once(repo_root: Path) -> None:
    # Reference: every input, weight and node output rounded to float16, each op computed in float32.
    graph = api.load(repo_root / "specs" / "models" / "small.net")
    weights = api.initial_weights(graph)
    x = np.random.default_rng(1).standard_normal(graph.type_of(graph.inputs[0]).shape).astype(np.float32)
    env = {name: interp.round_to_storage(value, np.float16) for name, value in weights.items()}
    env[graph.inputs[0]] = interp.round_to_storage(x, np.float16)
    for node in graph.nodes:
        outs = interp.eval_node(node, [env[i] for i in node.inputs])
        env.update(zip(node.outputs, (interp.round_to_storage(o, np.float16) for o in outs), strict=True))
    stored_outputs: list[np.dtype] = []
    got = interp.run_graph(graph, weights, {graph.inputs[0]: x}, storage=np.float16,
                           observe=lambda node, outs: stored_outputs.extend(o.dtype for o in outs))
    for name in graph.outputs:
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], env[name])
    assert set(stored_outputs) == {np.dtype(np.float16)}  # held at half the bytes


def test_erf_in_blocks_equals_math_erf(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(2).standard_normal((3, 5, 7)).astype(np.float32)
    monkeypatch.setattr(interp, "ERF_BLOCK", 8)  # 105 elements: 13 full blocks and a partial one
    got = interp._erf(x)
    assert got.shape == x.shape and got.dtype == np.float64
    np.testing.assert_array_equal(got.ravel(), [math.erf(v) for v in x.ravel().tolist()])
    assert interp._erf(np.float32(0.5)) == math.erf(0.5)
