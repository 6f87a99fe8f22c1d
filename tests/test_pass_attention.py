"""``lower_local_attention`` and ``lower_attention``: differential tests in netdsl's interpreter.

Each graph runs in the interpreter before the pass (the attention op's reference semantics) and
after it (only restricted-mode ops), on the same random inputs and weights; the outputs must
agree within 1e-5 and the rewritten graph must hold exactly the expected op types. The lowered
graphs also go through ONNX (only restricted ONNX ops).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pass_support import run_interp

from netdsl.backends.onnx_backend import to_onnx
from netdsl.builder import GraphBuilder
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph, Init, Provenance, Span, TensorType
from netdsl.passes import lower_attention, lower_local_attention
from netdsl.passes.base import Pass, RewriteLog
from netdsl.passes.pipeline import run_pipeline

TOL = {"rtol": 1e-5, "atol": 1e-5}
SPAN = Span("t.net", 3, 5, 3, 40)
RESTRICTED_ONNX_OPS = {"Conv", "Add", "Sub", "Mul", "Div", "Reshape", "Transpose", "Concat", "Slice", "Split",
                       "Softmax"}
# What the local-attention rewrite itself creates, per kind of positional term.
LOCAL_OPS = {"slice", "concat", "mul", "add", "conv", "const", "reshape", "softmax", "split"}


def rewritten(graph: Graph, pass_: Pass) -> Graph:
    """A copy of ``graph`` after ``pass_``, with its postcondition checked."""
    after = pass_.run(copy.deepcopy(graph), RewriteLog())
    assert pass_.post is not None and pass_.post(after) == []
    return after


def assert_same_outputs(before: Graph, after: Graph, weights: dict[str, np.ndarray],
                        feeds: dict[str, np.ndarray]) -> None:
    for old, new in zip(run_interp(before, weights, feeds), run_interp(after, weights, feeds), strict=True):
        assert old.shape == new.shape
        np.testing.assert_allclose(new, old, **TOL)


def random_feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(graph.values[name].shape).astype(np.float32) for name in graph.inputs}


def op_types(graph: Graph) -> set[str]:
    return {n.op for n in graph.nodes}


# ---------------------------------------------------------------------------------------------- local attention


def local_attention_graph(batch: int, channels: int, size: tuple[int, int], heads: int, kernel: int, stride: int,
                          pos: str) -> Graph:
    """q, k, v inputs -> local_attention; ``pos`` is "none", "input" (a graph input) or "grid" (conv_p of a grid)."""
    b = GraphBuilder("local")
    h, w = size
    f32 = TensorType("f32", (batch, channels, h, w))
    q, k, v = (b.input(n, f32) for n in "qkv")
    d = channels // heads
    extra = []
    if pos == "input":
        extra = [b.input("pos", TensorType("f32", (1, d, h, w)))]
    elif pos == "grid":
        weight = b.param("conv_p.weight", TensorType("f32", (d, 2, 1, 1)), Init("uniform_fan_in", (("fan_in", 2),)))
        bias = b.param("conv_p.bias", TensorType("f32", (d,)), Init("uniform_fan_in", (("fan_in", 2),)))
        grid = b.op("grid", [], height=h, width=w)
        extra = [b.op("conv", [grid, weight, bias], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)]
    y = b.op("local_attention", [q, k, v, *extra], Provenance(SPAN), heads=heads, kernel=kernel, stride=stride,
             scale=d**-0.5)
    b.output(y)
    return b.graph


LOCAL_CASES = [
    # batch, channels, (H, W), heads, kernel, stride, pos
    (2, 8, (6, 7), 1, 3, 1, "none"),
    (1, 8, (8, 6), 2, 5, 2, "none"),
    (2, 16, (9, 11), 4, 7, 1, "grid"),
    (1, 16, (10, 8), 4, 3, 2, "grid"),
    (2, 8, (8, 10), 2, 7, 2, "grid"),
    (1, 12, (7, 9), 1, 5, 1, "grid"),
    (2, 8, (7, 5), 2, 3, 1, "input"),
    (1, 16, (8, 12), 4, 5, 2, "input"),
]


@pytest.mark.parametrize(("batch", "channels", "size", "heads", "kernel", "stride", "pos"), LOCAL_CASES)
def test_local_attention_lowering_matches(batch: int, channels: int, size: tuple[int, int], heads: int, kernel: int,
                                          stride: int, pos: str) -> None:
    before = local_attention_graph(batch, channels, size, heads, kernel, stride, pos)
    after = rewritten(before, lower_local_attention.PASS)
    weights = initial_weights(before, seed=kernel)
    assert_same_outputs(before, after, weights, random_feeds(before, seed=channels + kernel))

    # The grid factorisation projects q by the (transposed) conv_p weight; a positional input is
    # subtracted slot by slot instead. The grid and conv_p nodes stay for DCE to drop.
    expected = {"none": LOCAL_OPS, "input": LOCAL_OPS | {"sub"}, "grid": LOCAL_OPS | {"transpose", "grid"}}[pos]
    assert op_types(after) == expected
    untouched = {o for n in before.nodes if n.op != "local_attention" for o in n.outputs}
    for node in after.nodes:
        if not untouched & set(node.outputs):
            assert node.provenance.span == SPAN
            assert node.provenance.rules == (lower_local_attention.RULE,)


@pytest.mark.parametrize("pos", ["grid", "input"])
def test_local_attention_in_batch_chunks_matches(monkeypatch: pytest.MonkeyPatch, pos: str) -> None:
    """Stacked products over the budget: the batch is lowered in chunks (here one image each) and stays exact."""
    monkeypatch.setattr(lower_local_attention, "STACK_BUDGET", 1)
    before = local_attention_graph(3, 8, (7, 6), 2, 3, 1, pos)
    after = rewritten(before, lower_local_attention.PASS)
    batch_slices = [n for n in after.nodes if n.op == "slice" and n.attrs["axis"] == 0]
    assert len(batch_slices) == 3 * 3  # q, k and v of each of the three images
    assert_same_outputs(before, after, initial_weights(before, seed=4), random_feeds(before, seed=5))


def test_local_attention_with_an_unfactorable_positional_conv() -> None:
    """A positional term that is not a 1x1 conv of the grid takes the general path and stays exact."""
    b = GraphBuilder("local")
    f32 = TensorType("f32", (1, 8, 6, 6))
    q, k, v = (b.input(n, f32) for n in "qkv")
    weight = b.param("conv_p.weight", TensorType("f32", (4, 2, 3, 3)), Init("uniform_fan_in", (("fan_in", 18),)))
    pos = b.op("conv", [b.op("grid", [], height=6, width=6), weight], stride=(1, 1), pads=(1, 1, 1, 1),
               dilation=(1, 1), groups=1)
    b.output(b.op("local_attention", [q, k, v, pos], heads=2, kernel=3, stride=1, scale=0.5))
    after = rewritten(b.graph, lower_local_attention.PASS)
    assert "sub" in op_types(after) and "transpose" not in op_types(after)
    assert_same_outputs(b.graph, after, initial_weights(b.graph), random_feeds(b.graph, seed=3))


@pytest.mark.parametrize("stride", [1, 2])
def test_acmix_block_lowering_matches(repo_root: Path, stride: int) -> None:
    before = load_graph(repo_root / "specs" / "acmix.net", entry="ACmix",
                        sets=["in_planes=16", "out_planes=16", f"stride={stride}"], inputs=["x=2x16x10x12"])
    after = rewritten(before, lower_local_attention.PASS)
    assert "local_attention" in op_types(before)
    assert_same_outputs(before, after, initial_weights(before, seed=stride), random_feeds(before, seed=stride))


def test_acmix_block_compiles_to_restricted_onnx_ops(repo_root: Path) -> None:
    graph = load_graph(repo_root / "specs" / "acmix.net", entry="ACmix", sets=["in_planes=16", "out_planes=16"],
                       inputs=["x=2x16x10x12"])
    weights = initial_weights(graph, seed=1)
    lowered = run_pipeline(graph, "trt-restricted", weights)
    model = to_onnx(lowered.graph, lowered.weights or {})
    assert {n.op_type for n in model.graph.node} <= RESTRICTED_ONNX_OPS
    feeds = random_feeds(graph, seed=1)
    assert_same_outputs(graph, lowered.graph, {**weights, **(lowered.weights or {})}, feeds)


# ---------------------------------------------------------------------------------------------- attention


def attention_graph(q_shape: tuple[int, ...], k_len: int, v_dim: int, bias_shape: tuple[int, ...] | None,
                    scale: float) -> Graph:
    b = GraphBuilder("attn")
    batch, heads, _, d = q_shape
    q = b.input("q", TensorType("f32", q_shape))
    k = b.input("k", TensorType("f32", (batch, heads, k_len, d)))
    v = b.input("v", TensorType("f32", (batch, heads, k_len, v_dim)))
    bias = [b.input("bias", TensorType("f32", bias_shape))] if bias_shape else []
    b.output(b.op("attention", [q, k, v, *bias], Provenance(SPAN), scale=scale))
    return b.graph


ATTENTION_CASES = [
    # q shape, key length, value width, bias shape
    ((2, 3, 5, 4), 7, 6, None),
    ((1, 2, 9, 8), 9, 8, (1, 2, 9, 9)),
    ((4, 2, 16, 4), 16, 4, (4, 1, 16, 16)),
    ((2, 1, 3, 5), 11, 2, (11,)),
]


@pytest.mark.parametrize(("q_shape", "k_len", "v_dim", "bias_shape"), ATTENTION_CASES)
def test_attention_lowering_matches(q_shape: tuple[int, ...], k_len: int, v_dim: int,
                                    bias_shape: tuple[int, ...] | None) -> None:
    before = attention_graph(q_shape, k_len, v_dim, bias_shape, scale=q_shape[-1] ** -0.5)
    after = rewritten(before, lower_attention.PASS)
    assert_same_outputs(before, after, {}, random_feeds(before, seed=k_len))
    expected = {"transpose", "reshape", "mul", "conv", "const", "softmax"} | ({"add"} if bias_shape else set())
    assert op_types(after) == expected
    assert all(n.provenance.rules == (lower_attention.RULE,) and n.provenance.span == SPAN for n in after.nodes)


def test_swin_window_attention_block_lowering_matches(repo_root: Path) -> None:
    """Windowed attention with relative position bias and the shifted-window mask, in the Swin ACmix block."""
    before = load_graph(repo_root / "specs" / "acmix.net", entry="WindowAttentionACmix",
                        sets=["dim=16", "window_size=4", "num_heads=2", "shift_size=2"], inputs=["x=2x8x8x16"])
    after = rewritten(before, lower_attention.PASS)
    assert "attention" in op_types(before)
    assert "attention" not in op_types(after)
    assert "gather" in op_types(after)  # the bias table lookup is left to constant folding
    assert_same_outputs(before, after, initial_weights(before, seed=5), random_feeds(before, seed=5))
