"""``fold_pointwise_into_conv``: a conv fed by a per-pixel affine chain of one map becomes one conv of that map."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pass_support import add_param, at, builder_with_input, check_rewrite, f32, op_counts, random_feeds, run_interp

from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.fold_pointwise_into_conv import PASS
from netdsl.passes.pipeline import run_pipeline

SPECS = Path(__file__).resolve().parents[1] / "specs"
Weights = dict[str, np.ndarray]


class Net:
    """A small graph on one NCHW input with seeded weights."""

    def __init__(self, *shape: int) -> None:
        self.b, self.x = builder_with_input(*shape)
        self.weights: Weights = {}
        self.rng = np.random.default_rng(4)
        self.line = 2

    def op(self, op: str, inputs: list[str], **attrs: object) -> str:
        self.line += 1
        return self.b.op(op, inputs, at(self.line), **attrs)

    def conv(self, x: str, out: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
             bias: bool = True) -> str:
        cin = self.b.graph.type_of(x).shape[1]
        name = f"c{self.line}"
        self.weights[f"{name}.weight"] = self.rng.standard_normal((out, cin // groups, kernel, kernel)).astype(
            np.float32)
        inputs = [x, add_param(self.b, f"{name}.weight", self.weights[f"{name}.weight"])]
        if bias:
            self.weights[f"{name}.bias"] = self.rng.standard_normal(out).astype(np.float32)
            inputs.append(add_param(self.b, f"{name}.bias", self.weights[f"{name}.bias"]))
        return self.op("conv", inputs, stride=(stride, stride), pads=(pad,) * 4, dilation=(1, 1), groups=groups)

    def graph(self, *outputs: str) -> Graph:
        for y in outputs:
            self.b.output(y)
        return self.b.graph


def _acmix_conv_path(batch: int, size: int, stride: int, channels: int = 8, heads: int = 2) -> tuple[Net, list[str]]:
    """ACmix's convolution path on x: q, k, v projections, fc over their heads, permute, grouped 3x3 conv."""
    net = Net(batch, channels, size, size)
    d, pixels = channels // heads, size * size
    qkv = [net.conv(net.x, channels) for _ in range(3)]
    views = [net.op("reshape", [t], shape=(batch, heads, d, pixels)) for t in qkv]
    f = net.conv(net.op("concat", views, axis=1), 9, bias=False)
    f = net.op("reshape", [net.op("transpose", [f], perm=(0, 2, 1, 3))], shape=(batch, 9 * d, size, size))
    return net, [net.conv(f, channels, kernel=3, stride=stride, pad=1, groups=d, bias=False), *qkv]


@pytest.mark.parametrize(("batch", "size", "stride"), [(1, 6, 2), (2, 6, 2), (3, 5, 1), (2, 9, 3)])
def test_the_acmix_conv_path_becomes_one_conv_of_x(batch: int, size: int, stride: int) -> None:
    net, (c, *_) = _acmix_conv_path(batch, size, stride)
    # The zero padding meets the constant part at the borders: a constant map is added.
    out, _ = check_rewrite(PASS.bind(net.weights), net.graph(c), {"conv": 1, "add": 1, "const": 2}, net.weights)
    (conv,) = [n for n in out.nodes if n.op == "conv"]
    assert conv.inputs[0] == net.x and conv.attrs["groups"] == 1 and conv.attrs["stride"] == (stride, stride)


def test_projections_read_elsewhere_stay() -> None:
    net, (c, q, *_) = _acmix_conv_path(2, 6, 2)
    y = net.op("add", [c, net.op("slice", [net.op("slice", [q], axis=2, start=0, end=6, step=2)], axis=3, start=0,
                                 end=6, step=2)])
    check_rewrite(PASS.bind(net.weights), net.graph(y), {"conv": 2, "add": 2, "const": 2, "slice": 2}, net.weights)


def test_an_unpadded_fold_has_a_bias() -> None:
    net = Net(2, 4, 5, 5)
    y = net.conv(net.conv(net.x, 6), 3, kernel=3)
    out, _ = check_rewrite(PASS.bind(net.weights), net.graph(y), {"conv": 1, "const": 2}, net.weights)
    (conv,) = out.nodes[-1:]
    assert len(conv.inputs) == 3 and conv.inputs[0] == net.x


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_a_chain_starts_at_a_conv_that_mixes_pixels(stem_stride: int) -> None:
    net = Net(1, 3, 8, 8)
    stem = net.conv(net.x, 8, kernel=3, stride=stem_stride, pad=1)  # a 3x3 stem: not per pixel, the chain's source
    y = net.conv(net.conv(stem, 8), 8, kernel=3, stride=2, pad=1, groups=4)  # 1x1 mix, grouped 3x3 stride 2
    out, _ = check_rewrite(PASS.bind(net.weights), net.graph(y), {"conv": 2, "add": 1, "const": 2}, net.weights)
    (folded,) = [n for n in out.nodes if n.op == "conv" and n.outputs[0] != stem]
    assert folded.inputs[0] == stem and folded.attrs["groups"] == 1 and folded.attrs["stride"] == (2, 2)


def _unchanged(graph: Graph, weights: Weights) -> None:
    out = PASS.bind(weights).run(copy.deepcopy(graph), RewriteLog())
    assert op_counts(out) == op_counts(graph)
    feeds = random_feeds(graph)
    np.testing.assert_array_equal(run_interp(out, weights, feeds)[0], run_interp(graph, weights, feeds)[0])


def test_a_chain_that_moves_pixels_is_not_folded() -> None:
    net = Net(1, 4, 6, 6)
    moved = net.op("transpose", [net.conv(net.x, 4)], perm=(0, 1, 3, 2))  # rows and columns swap places
    _unchanged(net.graph(net.conv(moved, 4, kernel=3, pad=1)), net.weights)


def test_a_fold_that_would_multiply_the_work_is_not_made() -> None:
    net = Net(1, 16, 6, 6)  # 16 -> 2 -> 16 channels: the folded 3x3 conv would do 7x the work of the two
    _unchanged(net.graph(net.conv(net.conv(net.x, 2), 16, kernel=3, pad=1)), net.weights)


def test_an_ungrouped_conv_is_folded_only_when_the_work_does_not_grow() -> None:
    net = Net(1, 8, 6, 6)  # 8 -> 2 -> 12 channels: one 8 -> 12 conv would do 96 MACs a pixel for 40
    _unchanged(net.graph(net.conv(net.conv(net.x, 2), 12)), net.weights)


def test_a_fold_that_frees_no_conv_is_not_made() -> None:
    net = Net(1, 4, 6, 6)
    p = net.conv(net.x, 4)
    _unchanged(net.graph(net.conv(p, 4, kernel=3, pad=1), p), net.weights)


def test_a_conv_of_two_maps_is_not_folded() -> None:
    net = Net(1, 4, 6, 6)
    other = net.b.input("u", f32(1, 4, 6, 6))
    mixed = net.op("concat", [net.conv(net.x, 2), net.conv(other, 2)], axis=1)
    _unchanged(net.graph(net.conv(mixed, 4, kernel=3, pad=1)), net.weights)


@pytest.mark.parametrize("target", ["onnx", "trt-restricted", "trt-dla"])
def test_acmix_at_stride_2_has_no_grouped_conv_and_its_outputs(target: str) -> None:
    graph = load_graph(SPECS / "acmix.net", "ACmix", sets=["in_planes=16", "out_planes=16", "stride=2"],
                       inputs=["x=2x16x10x10"])
    weights = initial_weights(graph, 1)
    lowered = run_pipeline(graph, target, weights)
    assert "fold_pointwise_into_conv" in {rule for rule, *_ in lowered.log.entries}
    assert not [n for n in lowered.graph.nodes if n.op == "conv" and n.attrs["groups"] > 1 and
                lowered.graph.type_of(n.inputs[1]).shape[2:] == (3, 3)]
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_interp(lowered.graph, lowered.weights or {}, feeds)[0],
                               run_interp(graph, weights, feeds)[0], rtol=1e-4, atol=1e-5)
