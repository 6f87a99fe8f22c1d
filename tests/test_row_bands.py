"""Row bands: runs of convolutions and elementwise ops evaluated a band of output rows at a time give the values
(and the extremes the range check observes) of the whole run, found where they should be, in less memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netdsl import interp, row_bands
from netdsl.builder import GraphBuilder
from netdsl.initializers import Init
from netdsl.ir import Graph, Node, TensorType


def conv(b: GraphBuilder, x: str, name: str, co: int, kernel: int = 1, stride: int = 1, pad: int = 0,
         dilation: int = 1, groups: int = 1, bias: bool = False, wider: int = 0) -> str:
    """A conv with ``pad`` rows and columns of padding on each side, and ``wider`` more columns on the left."""
    ci = b.graph.type_of(x).shape[1]
    params = [b.param(f"{name}.w", TensorType("f32", (co, ci // groups, kernel, kernel)), Init("zeros"))]
    if bias:
        params.append(b.param(f"{name}.b", TensorType("f32", (co,)), Init("zeros")))
    return b.op("conv", [x, *params], stride=(stride, stride), pads=(pad, pad + wider, pad, pad),
                dilation=(dilation,) * 2, groups=groups)


def silu(b: GraphBuilder, x: str) -> str:
    return b.op("mul", [x, b.op("sigmoid", [x])])


def random_weights(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(p.type.shape) * 0.5).astype(np.float32) for name, p in graph.params.items()}


def run(graph: Graph, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray], storage: type | None,
        in_slices: bool) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """The outputs and each value's extremes over every ``observe`` call."""
    seen: dict[str, tuple[float, float]] = {}

    def observe(node: Node, outputs: list[np.ndarray]) -> None:
        lo, hi = seen.get(node.outputs[0], (np.inf, -np.inf))
        seen[node.outputs[0]] = min(lo, float(outputs[0].min())), max(hi, float(outputs[0].max()))

    out = interp.run_graph(graph, weights, inputs, storage=storage, observe=observe, in_slices=in_slices)
    return out, seen


layer = st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]), st.sampled_from([1, 2]),
                  st.booleans(), st.booleans(), st.booleans())
"""kernel, stride, dilation, depthwise, bias, residual add."""


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(layer, min_size=1, max_size=4), rows=st.integers(2, 19), budget=st.sampled_from([1, 64, 700]),
       storage=st.sampled_from([None, np.float16]), seed=st.integers(0, 2**16))
def test_a_run_in_bands_equals_it_whole(layers: list[tuple[int, int, int, bool, bool, bool]], rows: int, budget: int,
                                        storage: type | None, seed: int) -> None:
    # conv (any kernel, stride, dilation, groups, with or without bias) > SiLU, residual adds where the shapes allow,
    # a broadcast scale: the outputs and every value's extremes are those of the whole run, whatever the band.
    b = GraphBuilder("bands")
    x = b.input("x", TensorType("f32", (2, 4, rows, 7)))
    scale = b.input("scale", TensorType("f32", (4, 1, 1)))
    h = b.op("mul", [x, scale])
    for i, (kernel, stride, dilation, depthwise, bias, residual) in enumerate(layers):
        pad = (kernel - 1) // 2 * dilation
        if b.graph.type_of(h).shape[2] + 2 * pad < (kernel - 1) * dilation + 1:
            break
        y = silu(b, conv(b, h, f"c{i}", 4, kernel, stride, pad, dilation, 4 if depthwise else 1, bias, wider=i % 2))
        h = b.op("add", [y, h]) if residual and b.graph.type_of(y).shape == b.graph.type_of(h).shape else y
    b.output(b.op("relu", [h], name="out"))
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((2, 4, rows, 7)).astype(np.float32),
              "scale": rng.standard_normal((4, 1, 1)).astype(np.float32)}
    weights = random_weights(b.graph, seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(row_bands, "BAND_ELEMENTS", budget)
        segments = row_bands.row_segments(b.graph)
        (whole, whole_seen), (banded, banded_seen) = (run(b.graph, weights, inputs, storage, s) for s in (False, True))
    # A band's matrix product has another shape than the whole one's, which may add the same products in another
    # order: equal within float32 rounding, and one float16 rounding more where values are stored in float16.
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if storage is None else {"rtol": 2e-3, "atol": 1e-4}
    np.testing.assert_allclose(banded["out"], whole["out"], **tolerance)
    assert banded_seen.keys() == whole_seen.keys()
    np.testing.assert_allclose([banded_seen[k] for k in whole_seen], [whole_seen[k] for k in whole_seen], **tolerance)
    # With one element per band, the run of two nodes or more at the end (to relu) is banded if it has rows to band.
    assert segments or budget > 1 or b.graph.values["out"].shape[2] < 2


def test_segments_end_where_a_value_is_read_outside_them() -> None:
    # stem (stride 2) > SiLU > 1x1 > SiLU > 3x3: the stem ends no segment of its own (nothing after it is read alone),
    # the 3x3 conv after the stride starts a new one, and the value the residual add reads back is a segment's end.
    b = GraphBuilder("blocks")
    x = b.input("x", TensorType("f32", (1, 3, 64, 64)))
    stem = silu(b, conv(b, x, "stem", 16, 3, 2, 1))         # nodes 0-2
    block_in = conv(b, stem, "pw", 16)                       # 3
    y = silu(b, conv(b, block_in, "dw", 16, 3, 1, 1, groups=16))  # 4-6
    out = b.op("add", [conv(b, y, "proj", 16), block_in], name="out")  # 7, 8
    b.output(out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(row_bands, "BAND_ELEMENTS", 4096)
        segments = row_bands.row_segments(b.graph)
    assert {last: s.nodes for last, s in segments.items()} == {3: (0, 1, 2, 3), 8: (4, 5, 6, 7, 8)}
    # At most three values of 16 channels x 32 columns are held at once (a conv's output, its sigmoid, their
    # product): 3 x 512 x rows <= 4096 elements, halving from 32 rows.
    assert [s.rows_per_band for s in segments.values()] == [2, 2]


def test_a_strided_conv_ends_the_segment_before_the_next_kernel_that_widens() -> None:
    b = GraphBuilder("strided")
    x = b.input("x", TensorType("f32", (1, 8, 64, 64)))
    h = conv(b, silu(b, conv(b, x, "a", 8, 3, 2, 1)), "b", 8)   # 3x3 stride 2 > SiLU > 1x1: nodes 0-3
    b.output(b.op("relu", [conv(b, h, "c", 8, 3, 1, 1)], name="out"))  # 3x3: nodes 4, 5
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(row_bands, "BAND_ELEMENTS", 4096)
        segments = row_bands.row_segments(b.graph)
    assert {last: s.nodes for last, s in segments.items()} == {3: (0, 1, 2, 3), 5: (4, 5)}


def test_a_value_that_is_a_graph_output_is_no_intermediate() -> None:
    b = GraphBuilder("outputs")
    x = b.input("x", TensorType("f32", (1, 8, 64, 64)))
    y = conv(b, x, "a", 8, 3, 1, 1)
    b.output(y)
    b.output(b.op("relu", [y], name="out"))
    assert row_bands.row_segments(b.graph) == {}


def test_band_pads_are_the_maps_edges_a_band_meets() -> None:
    b = GraphBuilder("pads")
    x = b.input("x", TensorType("f32", (1, 2, 10, 10)))
    conv(b, x, "a", 2, 5, 2, 2)  # output rows 0..4; row r reads input rows 2r - 2 .. 2r + 2
    node = b.graph.nodes[0]
    assert row_bands.rows_read(b.graph, node, (0, 2)) == [("x", (0, 5)), ("a.w", None)]
    assert row_bands.band_pads(b.graph, node, (0, 2)) == (2, 2, 0, 2)
    assert row_bands.rows_read(b.graph, node, (2, 5)) == [("x", (2, 10)), ("a.w", None)]
    assert row_bands.band_pads(b.graph, node, (2, 5)) == (0, 2, 1, 2)  # the last window reaches 1 of the 2 rows below


def test_a_run_in_bands_holds_no_intermediate_value_whole() -> None:
    # 1x1 conv to 32 channels at 256x256 (8.4 MB), SiLU, 3x3 stride-2 conv back to 8 channels (0.5 MB): whole, the
    # conv output and its sigmoid are held at once; in bands, no more than one of them is.
    b = GraphBuilder("expand")
    x = b.input("x", TensorType("f32", (1, 8, 256, 256)))
    b.output(conv(b, silu(b, conv(b, x, "up", 32)), "down", 8, 3, 2, 1))
    weights = random_weights(b.graph, 0)
    inputs = {"x": np.random.default_rng(1).standard_normal((1, 8, 256, 256)).astype(np.float32)}
    intermediate = 32 * 256 * 256 * 4
    peaks = []
    for in_slices in (False, True):
        tracemalloc.start()
        try:
            interp.run_graph(b.graph, weights, inputs, in_slices=in_slices)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    whole, banded = peaks
    assert whole > 2 * intermediate
    assert banded < intermediate / 2


def test_a_segment_may_start_after_a_value_held_whole() -> None:
    # h is a graph output (held whole), so no segment starts at its conv; the run after it still is one.
    b = GraphBuilder("after")
    x = b.input("x", TensorType("f32", (1, 8, 64, 64)))
    h = conv(b, x, "a", 8)                                                # node 0
    w = conv(b, b.op("relu", [conv(b, h, "b", 8, 3, 1, 1)]), "c", 8)      # nodes 1-3
    b.output(h)
    b.output(b.op("add", [w, h], name="out"))                            # node 4
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(row_bands, "BAND_ELEMENTS", 4096)
        segments = row_bands.row_segments(b.graph)
    assert {last: s.nodes for last, s in segments.items()} == {4: (1, 2, 3, 4)}
