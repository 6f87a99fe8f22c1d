"""``resize_to_conv``: fractional and shrinking resizes become per-axis 1x1 convs (DLA), same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pass_support import at, builder_with_input, check_rewrite, lower_for_dla_and_compare, random_feeds

from netdsl.driver import load_graph
from netdsl.interp import run_graph
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.resize_to_conv import PASS
from netdsl.resample import interpolation_matrix

SPECS = Path(__file__).resolve().parents[1] / "specs"


def resized(size: tuple[int, int], out: tuple[int, int], mode: str = "linear") -> Graph:
    b, x = builder_with_input(2, 3, *size)
    scales = (out[0] / size[0], out[1] / size[1])
    b.output(b.op("resize", [x], at(2), mode=mode, scales=scales, sizes=out))
    return b.graph


@pytest.mark.parametrize("size, out, mode, convs", [
    ((24, 20), (12, 5), "linear", 0),  # shrinking by whole factors: one depth-wise conv (as downscale_to_conv)
    ((27, 27), (14, 14), "linear", 2),  # 14/27
    ((14, 14), (27, 27), "linear", 2),  # back up by 27/14
    ((13, 13), (14, 14), "linear", 2),  # 14/13
    ((12, 9), (6, 9), "linear", 0),  # a whole factor on one axis, 1 on the other: one depth-wise conv
    ((13, 9), (7, 9), "linear", 1),  # only the height changes, by 7/13
])
def test_resizes_dla_cannot_run_become_convs(size: tuple[int, int], out: tuple[int, int], mode: str,
                                             convs: int) -> None:
    graph = resized(size, out, mode)
    expected = {"transpose": 2 * convs, "conv": convs, "const": convs} if convs else {"conv": 1, "const": 1}
    rewritten, _ = check_rewrite(PASS, graph, expected)
    assert all(n.attrs["groups"] == (1 if convs else 3) for n in rewritten.nodes if n.op == "conv")


def test_whole_upsampling_stays() -> None:
    assert [n.op for n in PASS.run(resized((14, 14), (56, 56)), RewriteLog()).nodes] == ["resize"]


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_a_whole_upsampled_axis_stays_a_resize(mode: str) -> None:
    rewritten, _ = check_rewrite(PASS, resized((8, 8), (4, 16), mode), {"transpose": 2, "conv": 1, "const": 1,
                                                                          "resize": 1})
    (resize,) = [n for n in rewritten.nodes if n.op == "resize"]
    assert tuple(resize.attrs["scales"]) == (1.0, 2.0) and tuple(resize.attrs["sizes"]) == (4, 16)


def test_the_matrix_is_the_interpreters_resize() -> None:
    graph = resized((27, 20), (14, 9))
    x = random_feeds(graph)["x"]
    (want,) = run_graph(graph, {}, {"x": x}).values()
    mh, mw = interpolation_matrix(27, 14, 14 / 27, "linear"), interpolation_matrix(20, 9, 9 / 20, "linear")
    np.testing.assert_allclose(np.einsum("oh,bchw,pw->bcop", mh, x, mw), want, rtol=1e-6, atol=1e-6)
    assert np.allclose(mh.sum(axis=1), 1.0) and (np.count_nonzero(mh, axis=1) <= 2).all()


def test_csa_is_fully_covered_under_dla_and_unchanged() -> None:
    graph = load_graph(SPECS / "csa.net", "CSA", sets=["dim=16", "sr_to=14", "num_heads=2"],
                       inputs=["x=1x16x27x27"])
    lowered = lower_for_dla_and_compare(graph)
    assert not any(n.op == "resize" and min(n.attrs["scales"]) < 1 for n in lowered.nodes)
