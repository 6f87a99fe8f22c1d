"""``merge_sibling_convs``: convs reading one input become one conv and channel slices, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pass_support import add_param, at, builder_with_input, check_rewrite, random_feeds, run_interp

from netdsl.builder import GraphBuilder
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.merge_sibling_convs import PASS, RULE
from netdsl.passes.pipeline import run_pipeline


def _conv(b: GraphBuilder, x: str, name: str, out_channels: int, in_channels: int, kernel: int, weights: dict,
          rng: np.random.Generator, line: int, bias: bool = True, groups: int = 1, stride: int = 1,
          pad: int = 0, dilation: int = 1) -> str:
    """A conv of ``x`` with seeded weights stored in ``weights`` under ``name.weight`` / ``name.bias``."""
    shape = (out_channels, in_channels // groups, kernel, kernel)
    weights[f"{name}.weight"] = rng.standard_normal(shape).astype(np.float32)
    if bias:
        weights[f"{name}.bias"] = rng.standard_normal(out_channels).astype(np.float32)
    params = [add_param(b, p, weights[p]) for p in (f"{name}.weight", f"{name}.bias") if p in weights]
    return b.op("conv", [x, *params], at(line), stride=(stride, stride), pads=(pad,) * 4,
                dilation=(dilation, dilation), groups=groups)


def siblings(widths: list[int], channels: int = 6, size: int = 5, kernel: int = 1, stride: int = 1, pad: int = 0,
             dilation: int = 1, bias: bool = True) -> tuple[Graph, dict]:
    """Convs of one input ``x``, ``widths[i]`` output channels each, every output a graph output."""
    rng = np.random.default_rng(3)
    b, x = builder_with_input(2, channels, size, size)
    weights: dict = {}
    for i, width in enumerate(widths):
        b.output(_conv(b, x, f"c{i}", width, channels, kernel, weights, rng, i + 2, bias, stride=stride, pad=pad,
                       dilation=dilation))
    return b.graph, weights


def test_three_projections_become_one_conv_and_three_slices() -> None:
    graph, weights = siblings([4, 4, 4])
    out, log = check_rewrite(PASS, graph, {"concat": 2, "conv": 1, "slice": 3}, weights)
    conv = next(n for n in out.nodes if n.op == "conv")
    assert out.type_of(conv.outputs[0]).shape == (2, 12, 5, 5) and conv.inputs[0] == "x"
    slices = [n for n in out.nodes if n.op == "slice"]
    assert [n.outputs[0] for n in slices] == graph.outputs  # each slice under its conv's name
    assert [(n.attrs["start"], n.attrs["end"]) for n in slices] == [(0, 4), (4, 8), (8, 12)]
    assert [n.provenance.span.line for n in slices] == [2, 3, 4]  # each traces to its own conv
    assert set(out.params) == set(graph.params)  # the parameters keep their names
    assert [e[1] for e in log.entries] == ["t.net:2:5", "t.net:3:5", "t.net:4:5"]


@pytest.mark.parametrize("case", ["groups", "other stride", "one with bias", "computed kernel"])
def test_convs_that_differ_stay_apart(case: str) -> None:
    rng = np.random.default_rng(0)
    b, x = builder_with_input(1, 4, 6, 6)
    weights: dict = {}
    a = _conv(b, x, "a", 4, 4, 1, weights, rng, 2, groups=2 if case == "groups" else 1)
    if case == "computed kernel":
        kernel = b.op("neg", [add_param(b, "k", np.ones((4, 4, 1, 1), np.float32))], at(3))
        weights["k"] = np.ones((4, 4, 1, 1), np.float32)
        c = b.op("conv", [x, kernel], at(4), stride=(1, 1), pads=(0,) * 4, dilation=(1, 1), groups=1)
    else:
        c = _conv(b, x, "c", 4, 4, 1, weights, rng, 3, bias=case != "one with bias",
                  stride=2 if case == "other stride" else 1)
    b.output(a)
    b.output(c)
    log = RewriteLog()
    out = PASS.run(b.graph, log)
    assert [n.op for n in out.nodes].count("conv") == 2 and not log.entries


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), channels=st.integers(1, 5),
       size=st.integers(3, 7), kernel=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), pad=st.integers(0, 1),
       dilation=st.integers(1, 2), bias=st.booleans())
def test_random_siblings_agree_with_the_interpreter(widths: list[int], channels: int, size: int, kernel: int,
                                                     stride: int, pad: int, dilation: int, bias: bool) -> None:
    assume((kernel - 1) * dilation + 1 <= size + 2 * pad)  # the window fits the padded map
    graph, weights = siblings(widths, channels, size, kernel, stride, pad, dilation, bias)
    check_rewrite(PASS, graph, {"concat": 2 if bias else 1, "conv": 1, "slice": len(widths)}, weights)


def test_the_acmix_block_keeps_its_parameters_and_outputs(repo_root: Path) -> None:
    graph = load_graph(repo_root / "specs" / "acmix.net")
    weights = initial_weights(graph, seed=1)
    lowered = run_pipeline(graph, "torch", weights=weights)
    convs = [n for n in lowered.graph.nodes if n.op == "conv" and n.inputs[0] == "x"]
    assert len(convs) == 1 and lowered.graph.type_of(convs[0].outputs[0]).shape[1] == 3 * 64
    assert set(lowered.graph.params) == set(graph.params)
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_interp(lowered.graph, weights, feeds)[0], run_interp(graph, weights, feeds)[0],
                               rtol=1e-5, atol=1e-5)


def test_the_generated_module_keeps_its_state_dict_and_trains_every_conv(repo_root: Path) -> None:
    torch = pytest.importorskip("torch")
    from netdsl.backends.torch_backend import build_module

    graph = load_graph(repo_root / "specs" / "acmix.net")
    weights = initial_weights(graph, seed=1)
    lowered = run_pipeline(graph, "torch").graph
    assert any(RULE in n.provenance.rules for n in lowered.nodes)
    module = build_module(lowered, weights)
    assert list(module.state_dict()) == list(graph.params)  # a checkpoint of the unmerged module loads as is
    x = torch.from_numpy(random_feeds(graph)["x"])
    y = module(x)
    np.testing.assert_allclose(y.detach().numpy(), run_interp(graph, weights, {"x": x.numpy()})[0],
                               rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    for name in ("conv1", "conv2", "conv3"):
        for p in ("weight", "bias"):
            grad = module.get_parameter(f"{name}.{p}").grad
            assert grad is not None and grad.abs().sum() > 0
