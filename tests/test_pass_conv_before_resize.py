"""``conv_before_resize``: a 1x1 conv after an enlarging resize runs before it, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pass_support import TOL, add_param, at, builder_with_input, check_rewrite, random_feeds, run_ort

from netdsl.cost import graph_cost, node_macs
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.conv_before_resize import PASS
from netdsl.passes.pipeline import run_pipeline


def resize_then_conv(channels: int, out_channels: int, size: int, out_size: int, mode: str = "linear",
                     kernel: int = 1, groups: int = 1, extra_reader: bool = False) -> tuple[Graph, dict]:
    """x -> resize to ``out_size`` (by the factor out_size/size) -> conv (with bias), seeded weights."""
    rng = np.random.default_rng(7)
    b, x = builder_with_input(2, channels, size, size)
    scale = out_size / size
    r = b.op("resize", [x], at(2), mode=mode, scales=(scale, scale), sizes=(out_size, out_size))
    weights = {"c.weight": rng.standard_normal((out_channels, channels // groups, kernel, kernel)).astype(np.float32),
               "c.bias": rng.standard_normal(out_channels).astype(np.float32)}
    names = [add_param(b, name, value) for name, value in weights.items()]
    y = b.op("conv", [r, *names], at(3), stride=(1, 1), pads=(kernel // 2,) * 4, dilation=(1, 1), groups=groups)
    b.output(b.op("add", [y, r], at(4)) if extra_reader else y)
    return b.graph, weights


@pytest.mark.parametrize("channels, out_channels, size, out_size, mode, groups", [
    (6, 4, 4, 16, "linear", 1),  # a whole factor (the CSA grid back to a 56x56 map is 14 -> 56)
    (6, 4, 7, 13, "linear", 1),  # a fractional one (14 -> 27 in CSA's second stage)
    (8, 4, 4, 8, "linear", 2),
    (5, 5, 13, 14, "linear", 1),  # as many channels out as in, barely enlarging
    (4, 4, 3, 6, "nearest", 1),
    (96, 196, 13, 14, "linear", 1),  # widening, as CSA's q projection before stage 2's 13 -> 14 resize
])
def test_the_conv_moves_before_an_enlarging_resize(channels: int, out_channels: int, size: int, out_size: int,
                                                  mode: str, groups: int) -> None:
    graph, weights = resize_then_conv(channels, out_channels, size, out_size, mode, groups=groups)
    out, _ = check_rewrite(PASS, graph, {"conv": 1, "resize": 1}, weights)
    conv, resize = out.nodes
    assert (conv.op, resize.op) == ("conv", "resize") and conv.inputs[0] == "x" and resize.inputs == conv.outputs
    assert out.type_of(conv.outputs[0]).shape[2:] == (size, size)  # the conv runs on the small map
    assert graph_cost(out).macs * out_size**2 == graph_cost(graph).macs * size**2


@pytest.mark.parametrize("case", ["shrinking", "read twice", "3x3 kernel", "widening"])
def test_the_conv_stays_where_moving_does_not_pay_or_is_wrong(case: str) -> None:
    graph, _ = {
        "shrinking": lambda: resize_then_conv(6, 4, 16, 4),
        "read twice": lambda: resize_then_conv(4, 4, 4, 8, extra_reader=True),
        "3x3 kernel": lambda: resize_then_conv(4, 4, 4, 8, kernel=3),
        # 8 more channels to interpolate cost more than the 10 k MACs saved
        "widening": lambda: resize_then_conv(16, 24, 13, 14),
    }[case]()
    log = RewriteLog()
    out = PASS.run(graph, log)
    assert [n.op for n in out.nodes][:2] == ["resize", "conv"] and not log.entries


def test_the_onnx_pipeline_puts_csa_projections_on_the_grid(repo_root: Path) -> None:
    # csa_demo: one CSA block at 28x28 with a 7x7 grid and 2 heads, so q has 2 * 49 channels
    graph = load_graph(repo_root / "specs" / "csa.net")
    weights = initial_weights(graph, seed=2)
    result = run_pipeline(graph, "onnx", weights=weights)
    before, after = (next(n for n in g.nodes if n.op == "conv" and n.inputs[1].endswith("qk.weight"))
                     for g in (graph, result.graph))
    assert result.graph.type_of(after.inputs[0]).shape == (1, 98, 7, 7)
    assert node_macs(graph, before) - node_macs(result.graph, after) == 64 * 98 * (28 * 28 - 7 * 7)
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_ort(result.graph, result.weights, feeds)[0], run_ort(graph, weights, feeds)[0],
                               **TOL)
