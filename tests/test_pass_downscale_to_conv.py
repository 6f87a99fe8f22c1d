"""``downscale_to_conv``: a resize shrinking by whole factors becomes a fixed depthwise conv with the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pass_support import TOL, at, builder_with_input, check_rewrite, random_feeds, run_ort

from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.downscale_to_conv import PASS
from netdsl.passes.pipeline import run_pipeline


def resize_graph(channels: int, size: tuple[int, int], out_size: tuple[int, int], mode: str = "linear",
                 scales: tuple[float, float] | None = None) -> Graph:
    """x -> resize to ``out_size`` (by the factors out/in unless ``scales`` are given) -> output."""
    b, x = builder_with_input(2, channels, *size)
    factors = scales or (out_size[0] / size[0], out_size[1] / size[1])
    b.output(b.op("resize", [x], at(2), mode=mode, scales=factors, sizes=out_size))
    return b.graph


@pytest.mark.parametrize("size, out_size, mode", [
    ((16, 16), (4, 4), "linear"),  # k = 4, as CSA's 56 -> 14: the mean of the middle 2x2 of each 4x4 block
    ((9, 15), (3, 5), "linear"),  # k = 3: odd, one pixel per output
    ((10, 12), (5, 6), "linear"),  # k = 2
    ((12, 7), (4, 7), "linear"),  # one axis kept (k = 1)
    ((8, 8), (2, 4), "nearest"),
])
def test_a_whole_factor_downscale_becomes_a_depthwise_conv(size: tuple[int, int], out_size: tuple[int, int],
                                                          mode: str) -> None:
    graph = resize_graph(5, size, out_size, mode)
    out, log = check_rewrite(PASS, graph, {"const": 1, "conv": 1}, feeds=random_feeds(graph, seed=3))
    conv = next(n for n in out.nodes if n.op == "conv")
    assert conv.attrs["groups"] == 5 and conv.attrs["stride"] == (size[0] // out_size[0], size[1] // out_size[1])
    assert [entry[2:] for entry in log.entries] == [("resize", ["const", "conv"])]


def test_a_factor_given_as_a_rounded_fraction_still_counts() -> None:
    # the front end computes factors such as 1/3 in float64, which is not exactly a third
    graph = resize_graph(3, (9, 9), (3, 3), scales=(1 / 3, 1 / 3))
    check_rewrite(PASS, graph, {"const": 1, "conv": 1})


@pytest.mark.parametrize("size, out_size", [
    ((27, 27), (14, 14)),  # CSA's second stage: not a whole factor
    ((4, 4), (16, 16)),  # enlarging
    ((7, 7), (7, 7)),  # same size
])
def test_other_resizes_stay(size: tuple[int, int], out_size: tuple[int, int]) -> None:
    graph = resize_graph(2, size, out_size)
    log = RewriteLog()
    out = PASS.run(graph, log)
    assert [n.op for n in out.nodes] == ["resize"] and not log.entries


def test_the_onnx_pipeline_turns_the_csa_reduction_into_a_conv(repo_root: Path) -> None:
    # csa_demo: one CSA block at 28x28 with a 7x7 grid: 28 -> 7 is a whole factor (4), 7 -> 28 enlarges
    graph = load_graph(repo_root / "specs" / "csa.net")
    weights = initial_weights(graph, seed=4)
    result = run_pipeline(graph, "onnx", weights=weights)
    assert [n.op for n in graph.nodes].count("resize") == 2
    assert [n.op for n in result.graph.nodes].count("resize") == 1
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_ort(result.graph, result.weights, feeds)[0], run_ort(graph, weights, feeds)[0],
                               **TOL)
