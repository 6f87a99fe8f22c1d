"""``pool_before_conv``: an average pool moves above the per-pixel affine ops feeding it, with the same outputs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pass_support import TOL, add_param, at, builder_with_input, check_rewrite, random_feeds, run_ort

from netdsl.cost import graph_cost
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.interp import run_graph
from netdsl.ir import Graph, Node
from netdsl.passes.base import RewriteLog
from netdsl.passes.pipeline import run_pipeline
from netdsl.passes.pool_before_conv import PASS
from netdsl.verifier import verify

CHANNELS, SIZE = 6, 6
Weights = dict[str, np.ndarray]


class Net:
    """A small graph on x: f32[2, 6, 6, 6] with seeded weights, built op by op."""

    def __init__(self) -> None:
        self.b, self.x = builder_with_input(2, CHANNELS, SIZE, SIZE)
        self.weights: Weights = {}
        self.rng = np.random.default_rng(3)
        self.line = 2

    def param(self, name: str, shape: tuple[int, ...], positive: bool = False) -> str:
        value = self.rng.standard_normal(shape).astype(np.float32)
        self.weights[name] = np.abs(value) + 0.5 if positive else value
        return add_param(self.b, name, self.weights[name])

    def op(self, op: str, inputs: list[str], **attrs: object) -> str:
        self.line += 1
        return self.b.op(op, inputs, at(self.line), **attrs)

    def conv(self, x: str, out: int, kernel: int = 1, groups: int = 1, name: str = "c") -> str:
        cin = self.b.graph.type_of(x).shape[1]
        w = self.param(f"{name}.weight", (out, cin // groups, kernel, kernel))
        bias = self.param(f"{name}.bias", (out,))
        return self.op("conv", [x, w, bias], stride=(1, 1), pads=(kernel // 2,) * 4, dilation=(1, 1), groups=groups)

    def linear(self, x: str, out: int, name: str = "fc") -> str:
        """A linear map of the last axis (with bias)."""
        w = self.param(f"{name}.weight", (out, self.b.graph.type_of(x).shape[-1]))
        return self.op("linear", [x, w, self.param(f"{name}.bias", (out,))])

    def channels_last_mlp(self, x: str, hidden: int, name: str = "mlp") -> str:
        """ConvNeXt's block body: to NHWC, linear, sigmoid, linear back, layer scale, to NCHW."""
        t = self.op("transpose", [x], perm=(0, 2, 3, 1))
        t = self.linear(self.op("sigmoid", [self.linear(t, hidden, f"{name}.1")]), CHANNELS, f"{name}.2")
        t = self.op("mul", [self.param(f"{name}.gamma", (CHANNELS,)), t])
        return self.op("transpose", [t], perm=(0, 3, 1, 2))

    def batchnorm(self, x: str, name: str = "bn") -> str:
        c = self.b.graph.type_of(x).shape[1]
        stats = [self.param(f"{name}.{k}", (c,), positive=k == "running_var")
                 for k in ("weight", "bias", "running_mean", "running_var")]
        return self.op("batchnorm", [x, *stats], eps=1e-5, momentum=0.1)

    def scale(self, x: str, name: str = "gamma", gamma_first: bool = False) -> str:
        """A layer scale: x * gamma (or gamma * x), gamma of shape [C, 1, 1]."""
        gamma = self.param(name, (self.b.graph.type_of(x).shape[1], 1, 1))
        return self.op("mul", [gamma, x] if gamma_first else [x, gamma])

    def avgpool(self, x: str, kernel: int = SIZE, stride: int = SIZE, pad: int = 0) -> str:
        return self.op("avgpool", [x], kernel=(kernel, kernel), stride=(stride, stride), pads=(pad,) * 4)

    def mean(self, x: str, axes: tuple[int, ...] = (2, 3), keepdims: bool = True) -> str:
        return self.op("reduce_mean", [x], axes=axes, keepdims=keepdims)

    def done(self, y: str) -> tuple[Graph, Weights]:
        self.b.output(y)
        return self.b.graph, self.weights


def pointwise_conv(n: Net) -> str:
    return n.avgpool(n.conv(n.x, 8))


def residual_with_layer_scale(n: Net) -> str:
    # CSA's last block before the classifier: x + gamma * mlp(...), then AvgPool2d(6)
    return n.avgpool(n.op("add", [n.x, n.scale(n.conv(n.op("sigmoid", [n.x]), CHANNELS))]))


def grouped_conv_and_batchnorm(n: Net) -> str:
    return n.mean(n.batchnorm(n.conv(n.x, 4, groups=2)))


def strided_pool(n: Net) -> str:
    return n.avgpool(n.conv(n.x, 4), kernel=2, stride=2)  # 6x6 -> 3x3: the conv runs on 9 pixels, not 36


def chain_of_convs(n: Net) -> str:
    return n.avgpool(n.conv(n.conv(n.x, 8, name="a"), 4, name="b"))


def mean_without_keepdims(n: Net) -> str:
    return n.mean(n.conv(n.x, 4), keepdims=False)


def convnext_tail(n: Net) -> str:
    # ConvNeXt's last block and global mean: x + transpose(gamma * pwconv2(act(pwconv1(...)))), mean over H, W
    return n.mean(n.op("add", [n.x, n.channels_last_mlp(n.x, 8)]), keepdims=False)


def mean_over_channels_last_axes(n: Net) -> str:
    return n.mean(n.linear(n.op("transpose", [n.x], perm=(0, 2, 3, 1)), 4), axes=(1, 2))


@pytest.mark.parametrize("build, ops, conv_pixels", [
    (pointwise_conv, {"avgpool": 1, "conv": 1}, 1),
    (residual_with_layer_scale, {"sigmoid": 1, "avgpool": 2, "conv": 1, "mul": 1, "add": 1}, 1),
    (grouped_conv_and_batchnorm, {"reduce_mean": 1, "conv": 1, "batchnorm": 1}, 1),
    (strided_pool, {"avgpool": 1, "conv": 1}, 9),
    (chain_of_convs, {"avgpool": 1, "conv": 2}, 1),
    (mean_without_keepdims, {"reduce_mean": 1, "conv": 1, "reshape": 1}, 1),
    (convnext_tail, {"reduce_mean": 2, "transpose": 2, "linear": 2, "sigmoid": 1, "mul": 1, "add": 1,
                     "reshape": 1}, 0),
    (mean_over_channels_last_axes, {"transpose": 1, "reduce_mean": 1, "linear": 1}, 0),
], ids=lambda v: getattr(v, "__name__", None))
def test_the_pool_moves_above_pointwise_ops(build: Callable[[Net], str], ops: dict[str, int], conv_pixels: int) -> None:
    n = Net()
    graph, weights = n.done(build(n))
    out, _ = check_rewrite(PASS, graph, ops, weights)
    convs = [node for node in out.nodes if node.op == "conv"]
    for conv in convs:
        h, w = out.type_of(conv.outputs[0]).shape[2:]
        assert h * w == conv_pixels
    assert graph_cost(out).macs < graph_cost(graph).macs
    pools = [node for node in out.nodes if node.op in ("avgpool", "reduce_mean")]
    assert all(SIZE * SIZE == _averaged(out, p) for p in pools)
    linears = [node for node in out.nodes if node.op == "linear"]
    if linears:  # the last linear runs on the pooled tensor: one row per image
        last = out.type_of(linears[-1].outputs[0])
        assert last.numel == last.shape[0] * last.shape[-1]


def _averaged(graph: Graph, pool: Node) -> int:
    """How many positions the map ``pool`` reads has (an average pool: H x W; a mean: its averaged axes)."""
    shape = graph.type_of(pool.inputs[0]).shape
    axes = (2, 3) if pool.op == "avgpool" else pool.attrs["axes"]
    return int(np.prod([shape[a] for a in axes]))


@pytest.mark.parametrize("case, build", [
    ("3x3 conv", lambda n: n.avgpool(n.conv(n.x, 4, kernel=3))),
    ("padded pool", lambda n: n.avgpool(n.conv(n.x, 4), kernel=3, stride=3, pad=1)),
    ("pool that does not shrink", lambda n: n.avgpool(n.conv(n.x, 4), kernel=1, stride=1)),
    ("conv output read twice", lambda n: n.op("add", [n.avgpool(c := n.conv(n.x, 4)), n.mean(c)])),
    ("product of two maps", lambda n: n.avgpool(n.op("mul", [n.conv(n.x, CHANNELS), n.x]))),
    ("sums only", lambda n: n.avgpool(n.op("add", [n.x, n.op("sigmoid", [n.x])]))),
    ("linear over an averaged axis", lambda n: n.mean(n.linear(n.op("transpose", [n.x], perm=(0, 2, 3, 1)), 4),
                                                      axes=(3,))),
    ("windowed pool of a transpose", lambda n: n.avgpool(n.op("transpose", [n.conv(n.x, 4)], perm=(0, 1, 3, 2)))),
    ("mean over channels", lambda n: n.mean(n.conv(n.x, 4), axes=(1, 2, 3))),
])
def test_the_pool_stays_where_moving_is_wrong_or_does_not_pay(case: str, build: Callable[[Net], str]) -> None:
    n = Net()
    graph, _ = n.done(build(n))
    before = [(node.op, node.inputs) for node in graph.nodes]
    log = RewriteLog()
    out = PASS.run(graph, log)
    assert [(node.op, node.inputs) for node in out.nodes] == before and not log.entries


@pytest.mark.parametrize("model, sets, saved", [
    # A small CSA backbone: the last map is 6x6 (AvgPool2d(6)), the last dim 48 and the MLP 3 x 48 wide
    ("convselfattn", ["depths=1,1,1,1", "dims=16,24,32,48", "num_heads=1,1,2,2"], 48 * 144 * (36 - 1)),
    # A small ConvNeXt: the last map is 7x7, the last dim 32 and its MLP 4 x 32 wide. pwconv2 (128 -> 32)
    # runs on 1 pixel instead of 49; the channels-last mean of its input is then a matmul of 49 x 128 MACs
    # (reduce_to_matmul)
    ("convnext_tiny", ["depths=1,1,1,1", "dims=8,16,24,32", "num_classes=10"], 128 * 32 * (49 - 1) - 49 * 128),
])
def test_the_onnx_pipeline_runs_the_last_mlp_on_the_pooled_map(repo_root: Path, model: str, sets: list[str],
                                                              saved: int) -> None:
    graph = load_graph(repo_root / "specs" / "models" / f"{model}.net", model, sets)
    weights = initial_weights(graph, seed=1)
    with_pass = run_pipeline(graph, "onnx", weights=weights)
    without = run_pipeline(graph, "onnx", weights=weights, passes=[p for p in with_pass.passes if p != PASS.name])
    assert graph_cost(without.graph).macs - graph_cost(with_pass.graph).macs == saved
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_ort(with_pass.graph, with_pass.weights, feeds)[0],
                               run_ort(graph, weights, feeds)[0], **TOL)


def test_the_pass_is_in_every_inference_pipeline() -> None:
    from netdsl.passes.pipeline import PIPELINES

    assert [t for t, passes in PIPELINES.items() if PASS.name in passes] == ["onnx", "trt", "trt-restricted", "trt-dla"]


# ----------------------------------------------------------------------------- property: random op chains

STEPS = ("conv", "grouped conv", "batchnorm", "scale", "residual", "sigmoid", "channels-last mlp")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.sampled_from(STEPS), min_size=1, max_size=6),
       pool=st.sampled_from([("avgpool", 6, 6), ("avgpool", 2, 2), ("avgpool", 3, 2), ("avgpool", 4, 1),
                             ("mean", 0, 0), ("mean without keepdims", 0, 0)]),
       widths=st.lists(st.sampled_from([2, 4, 6]), min_size=6, max_size=6))
def test_any_chain_of_ops_under_a_pool_keeps_its_values_and_never_costs_more(
        steps: list[str], pool: tuple[str, int, int], widths: list[int]) -> None:
    """Random stacks of pointwise and blocking ops under a pool: the pass keeps every output (float64
    interpreter) and never adds MACs."""
    n = Net()
    x = n.x
    for k, (step, width) in enumerate(zip(steps, widths)):
        if step in ("conv", "grouped conv"):
            x = n.conv(x, width, groups=2 if step == "grouped conv" and n.b.graph.type_of(x).shape[1] % 2 == 0 else 1,
                       name=f"c{k}")
        elif step == "batchnorm":
            x = n.batchnorm(x, name=f"bn{k}")
        elif step == "scale":
            x = n.scale(x, name=f"g{k}", gamma_first=True)
        elif step == "residual" and n.b.graph.type_of(x).shape == n.b.graph.type_of(n.x).shape:
            x = n.op("add", [n.x, x])  # n.x is also read by the first op: it is pooled once per reader
        elif step == "channels-last mlp" and n.b.graph.type_of(x).shape[1] == CHANNELS:
            x = n.channels_last_mlp(x, width, name=f"m{k}")
        else:
            x = n.op("sigmoid", [x])
    kind, kernel, stride = pool
    pooled = n.avgpool(x, kernel, stride) if kind == "avgpool" else n.mean(x, keepdims=kind == "mean")
    graph, weights = n.done(pooled)
    feeds = random_feeds(graph)
    before = run_graph(graph, weights, feeds, np.float64)
    log = RewriteLog()
    out = PASS.run(copy.deepcopy(graph), log)
    verify(out)
    event("rewritten" if log.entries else "kept")
    after = run_graph(out, weights, feeds, np.float64)
    for name in graph.outputs:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-10, atol=1e-12)
    assert graph_cost(out).macs <= graph_cost(graph).macs
