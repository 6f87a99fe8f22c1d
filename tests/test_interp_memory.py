"""The interpreter's memory: conv builds its im2col matrix in bands (and groups) under byte budgets, elementwise
ops write over inputs nothing else holds, each with the same result to the bit."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netdsl import api, interp
from netdsl.builder import GraphBuilder
from netdsl.ir import Node, TensorType

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
    # Some groups' columns, padded rows and product at a time, and the output: never the whole padded input.
    assert peak <= 2 * interp.CONV_GROUP_SCRATCH_BYTES + expected.nbytes
    assert peak < whole_columns / 16
    np.testing.assert_array_equal(banded, expected)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 6), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       pads=st.tuples(*[st.integers(0, 4)] * 4), groups=st.sampled_from([1, 2, 4]), cig=st.integers(1, 2),
       band_budget=st.integers(1, 4000), group_budget=st.integers(1, 4000), seed=st.integers(0, 2**16))
def test_conv_in_bands_and_groups_equals_it_on_the_padded_whole(
        rows: int, cols: int, stride: int, dilation: int, pads: tuple[int, int, int, int], groups: int, cig: int,
        band_budget: int, group_budget: int, seed: int) -> None:
    # Reference: the input padded whole beforehand (pads 0), every group in one product. Each group's product
    # keeps the band's shape however many groups are taken at a time, so the result is equal to the bit.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, groups * cig, rows, cols)).astype(np.float32)
    w = rng.standard_normal((2 * groups, cig, 3, 2)).astype(np.float32)
    bias = rng.standard_normal(2 * groups).astype(np.float32)
    top, left, bottom, right = pads
    if rows + top + bottom <= 2 * dilation or cols + left + right <= dilation:
        return  # no window fits
    attrs = {"stride": (stride, stride), "dilation": (dilation, dilation), "groups": groups}
    padded = np.pad(x, [(0, 0), (0, 0), (top, bottom), (left, right)])
    saved = interp.CONV_SCRATCH_BYTES, interp.CONV_GROUP_SCRATCH_BYTES
    try:
        interp.CONV_GROUP_SCRATCH_BYTES = 1 << 40
        interp.CONV_SCRATCH_BYTES = band_budget
        expected = interp.KERNELS["conv"]([padded, w, bias], {**attrs, "pads": (0, 0, 0, 0)})[0]
        interp.CONV_GROUP_SCRATCH_BYTES = group_budget
        got = interp.KERNELS["conv"]([x, w, bias], {**attrs, "pads": pads})[0]
    finally:
        interp.CONV_SCRATCH_BYTES, interp.CONV_GROUP_SCRATCH_BYTES = saved
    np.testing.assert_array_equal(got, expected)


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


def _arrays(draw: st.DrawFn, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A random array of ``shape``, C-contiguous or a transposed (non-contiguous) copy."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = (rng.standard_normal(shape) * 3).astype(dtype)
    if draw(st.booleans()) and len(shape) >= 2:
        return np.ascontiguousarray(values.swapaxes(-1, -2)).swapaxes(-1, -2)
    return values


@st.composite
def in_place_cases(draw: st.DrawFn) -> tuple[Node, list[np.ndarray]]:
    """An op of IN_PLACE on arguments of one shape, a broadcast second operand or another dtype."""
    op = draw(st.sampled_from(sorted(interp.IN_PLACE)))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    args = [_arrays(draw, shape, dtype)]
    if op in ("add", "sub", "mul", "div", "minimum", "maximum"):
        other = shape[draw(st.integers(0, len(shape))):] if draw(st.booleans()) else shape
        args.append(_arrays(draw, other, draw(st.sampled_from([dtype, np.float32]))))
        if draw(st.booleans()):
            args.reverse()
    if op == "sqrt":
        args = [np.abs(a) for a in args]
    return Node(op, [f"a{i}" for i in range(len(args))], ["y"], {"axis": -1} if op == "softmax" else {}), args


@settings(max_examples=150, deadline=None)
@given(case=in_place_cases())
def test_elementwise_ops_written_over_a_reusable_input_are_unchanged(case: tuple[Node, list[np.ndarray]]) -> None:
    node, args = case
    with np.errstate(all="ignore"):
        (expected,) = interp.eval_node(node, [a.copy(order="K") for a in args])
        copies = [a.copy(order="K") for a in args]
        (got,) = interp.eval_node(node, copies, reusable=range(len(copies)))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
    assert interp._layout(got) == interp._layout(expected)  # a later reduction sums in the same order
    if len({a.dtype for a in args}) == 1 and all(a.shape == got.shape and a.flags.c_contiguous for a in args):
        assert any(got is a for a in copies)  # written over an input, not a new array


def test_run_graph_overwrites_only_values_nothing_else_holds() -> None:
    # x -> sigmoid -> mul(x, .) -> exp -> add(., x): the caller's input and every value an observer keeps
    # are left as they were computed; the values the run alone holds are reused.
    b = GraphBuilder("chain")
    x = b.input("x", TensorType("f32", (1, 16, 64, 64)))
    s = b.op("sigmoid", [x])
    t = b.op("exp", [b.op("mul", [x, s])])
    b.output(b.op("add", [t, x], name="out"))
    inputs = {"x": np.random.default_rng(3).standard_normal((1, 16, 64, 64)).astype(np.float32)}
    given_x = inputs["x"].copy()
    kept: dict[str, np.ndarray] = {}
    snapshots: dict[str, np.ndarray] = {}

    def observe(node: Node, outputs: list[np.ndarray]) -> None:
        kept[node.outputs[0]] = outputs[0]
        snapshots[node.outputs[0]] = outputs[0].copy()

    got = interp.run_graph(b.graph, {}, inputs, observe=observe)["out"]
    np.testing.assert_array_equal(inputs["x"], given_x)
    for name, value in kept.items():
        np.testing.assert_array_equal(value, snapshots[name])
    sig = 1.0 / (1.0 + np.exp(-given_x))
    np.testing.assert_array_equal(got, np.exp(given_x * sig) + given_x)
    tracemalloc.start()
    try:
        interp.run_graph(b.graph, {}, inputs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # sigmoid's output is the only activation: mul and exp write over it, and add over exp's output.
    assert peak < 1.5 * given_x.nbytes


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), rows=st.integers(1, 5), keys=st.integers(1, 6),
       depth=st.integers(1, 3), bias_rank=st.integers(1, 3), storage=st.sampled_from([None, np.float16]),
       middle=st.sampled_from(["add", "mul"]), seed=st.integers(0, 2**16))
def test_attention_chain_in_slices_equals_it_whole(lead: list[int], rows: int, keys: int, depth: int, bias_rank: int,
                                                    storage: type | None, middle: str, seed: int) -> None:
    # logits = q @ kᵀ, + bias or * scale (broadcast), softmax over the keys, @ v: the outputs and every value's
    # extremes (as the range check observes them) are the same to the bit whether the chain runs whole or a slice at
    # a time.
    b = GraphBuilder("chain")
    shape = (*lead, rows, keys)
    q = b.input("q", TensorType("f32", (*lead, rows, depth)))
    k = b.input("k", TensorType("f32", (*lead, depth, keys)))
    v = b.input("v", TensorType("f32", (*lead, keys, depth)))
    bias = b.input("bias", TensorType("f32", shape[-bias_rank:]))
    logits = b.op(middle, [b.op("matmul", [q, k]), bias])
    b.output(b.op("matmul", [b.op("softmax", [logits], axis=-1), v], name="out"))
    rng = np.random.default_rng(seed)
    inputs = {name: (rng.standard_normal(b.graph.type_of(name).shape) * 4).astype(np.float32)
              for name in ("q", "k", "v", "bias")}
    assert interp.sliced_chains(b.graph) == ({3: [0, 1, 2, 3]} if max(lead) > 1 else {})

    def run(in_slices: bool) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
        seen: dict[str, tuple[float, float]] = {}

        def observe(node: Node, outputs: list[np.ndarray]) -> None:
            lo, hi = seen.get(node.outputs[0], (np.inf, -np.inf))
            seen[node.outputs[0]] = min(lo, float(outputs[0].min())), max(hi, float(outputs[0].max()))

        out = interp.run_graph(b.graph, {}, inputs, storage=storage, observe=observe, in_slices=in_slices)["out"]
        return out, seen

    (whole, whole_seen), (sliced, sliced_seen) = run(False), run(True)
    np.testing.assert_array_equal(sliced, whole)
    assert sliced.flags.c_contiguous and sliced_seen == whole_seen


def test_only_arrays_nothing_else_holds_are_reusable() -> None:
    held = np.ones((4, 6))
    assert interp._sole_holder([np.ones((4, 6))], 0)
    assert interp._sole_holder([np.ones((4, 6)).T], 0)  # a view of all of an array only it references
    assert not interp._sole_holder([held], 0)
    assert not interp._sole_holder([held.T], 0)  # its base is held
    assert not interp._sole_holder([np.ones((4, 6))[1:]], 0)  # part of an array: the rest is not the op's
    twice = [np.ones(3)]
    twice.append(twice[0])
    assert not interp._sole_holder(twice, 0)  # x * x: both arguments are the same array
    assert not interp._sole_holder([np.broadcast_to(np.ones(3), (2, 3))], 0)  # read-only


def test_weights_held_in_float16_are_read_without_a_round_trip(repo_root: Path) -> None:
    # A float16 weight is its own float16 rounding: the run gives what the float32 weights rounded to float16 give.
    graph = api.load(repo_root / "specs" / "models" / "small.net")
    weights = api.initial_weights(graph)
    held = {name: w.astype(np.float16) if w.ndim > 1 else w for name, w in weights.items()}
    rounded = {name: interp.round_to_storage(w, np.float16) if w.ndim > 1 else w for name, w in weights.items()}
    x = {graph.inputs[0]: np.random.default_rng(4).standard_normal(graph.type_of(graph.inputs[0]).shape)
         .astype(np.float32)}
    got, expected = (interp.run_graph(graph, w, x, storage=np.float16) for w in (held, rounded))
    for name in graph.outputs:
        np.testing.assert_array_equal(got[name], expected[name])
