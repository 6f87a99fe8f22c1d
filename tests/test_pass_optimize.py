"""Differential tests of the optimising and cleanup rewrites (ONNX Runtime before and after)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pass_support import add_param, at, builder_with_input, check_rewrite, f32, op_counts, run_ort

from netdsl.builder import GraphBuilder
from netdsl.interp import eval_node
from netdsl.ir import Graph, Init, TensorType
from netdsl.passes.base import RewriteLog
from netdsl.passes.cleanup_shuffles import PASS as CLEANUP
from netdsl.passes.constant_folding import PASS as CONSTANT_FOLDING
from netdsl.passes.constant_folding import make_constant_folding
from netdsl.passes.cse import PASS as CSE
from netdsl.passes.dce import PASS as DCE
from netdsl.passes.fold_batchnorm import PASS as FOLD_BATCHNORM
from netdsl.passes.fold_params import PASS as FOLD_PARAMS

RNG = np.random.default_rng(7)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_constant_folding_folds_grids_and_const_subgraphs_but_keeps_parameters() -> None:
    b, x = builder_with_input(1, 2, 3, 4)
    w = add_param(b, "scale", rand(1, 2, 1, 1))
    grid = b.op("grid", [], at(2), height=3, width=4)
    two = b.op("const", [], at(3), value=np.full((1, 1, 1, 1), 2.0, np.float32), dtype="f32")
    table = b.op("mul", [grid, two], at(4))
    shifted = b.op("add", [x, b.op("reshape", [b.op("reshape", [table], at(5), shape=(2, 12))], at(6),
                                              shape=(1, 2, 3, 4))], at(7))
    b.output(b.op("mul", [shifted, b.op("mul", [w, two], at(8))], at(9)))
    weights = {w: rand(1, 2, 1, 1)}
    out, log = check_rewrite(CONSTANT_FOLDING, b.graph, {"const": 2, "add": 1, "mul": 2}, weights)
    folded = next(n for n in out.nodes if n.op == "const" and n.attrs["value"].shape == (1, 2, 3, 4))
    grid_node = next(n for n in b.graph.nodes if n.op == "grid")
    np.testing.assert_array_equal(folded.attrs["value"], eval_node(grid_node, [])[0].reshape(1, 2, 3, 4) * 2)
    assert w in out.params and [e[2] for e in log.entries] == ["grid", "mul", "reshape", "reshape"]


def test_constant_folding_leaves_results_above_the_size_limit() -> None:
    b, x = builder_with_input(1, 2, 3, 4)
    b.output(b.op("add", [x, b.op("grid", [], at(2), height=3, width=4)], at(3)))
    small = make_constant_folding(max_elements=10)
    graph = small.run(b.graph, RewriteLog())
    assert op_counts(graph)["grid"] == 1 and small.post is not None and small.post(graph) == []


def test_fold_params_turns_parameter_only_subgraphs_into_constants() -> None:
    b, x = builder_with_input(1, 4, 3, 3)
    w, bias = add_param(b, "p.weight", rand(4, 2, 1, 1)), add_param(b, "p.bias", rand(4))
    pe = b.op("conv", [b.op("grid", [], at(2), height=3, width=3), w, bias], at(3),
              stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    table = add_param(b, "rel.table", rand(5, 4))
    index = add_param(b, "rel.index", np.array([[0, 4, 2], [1, 1, 3], [4, 0, 0]], np.int64), kind="buffer")
    bias_map = b.op("transpose", [b.op("gather", [table, index], at(4))], at(5), perm=(2, 0, 1))
    y = b.op("add", [b.op("add", [x, pe], at(6)), b.op("reshape", [bias_map], at(7), shape=(1, 4, 3, 3))], at(8))
    b.output(y)
    weights = {w: rand(4, 2, 1, 1), bias: rand(4), table: rand(5, 4),
               index: np.array([[0, 4, 2], [1, 1, 3], [4, 0, 0]], np.int64)}
    out, _ = check_rewrite(FOLD_PARAMS.bind(weights), b.graph, {"const": 2, "add": 2}, weights)
    assert set(out.params) == set(b.graph.params)  # unread now, but removing them is dce's job
    cleaned = DCE.run(out, RewriteLog())
    assert cleaned.params == {}


def _batchnorm_stats(b: GraphBuilder, weights: dict[str, np.ndarray], channels: int) -> list[str]:
    """The four statistics of a batch norm over ``channels`` (random, positive variance), added to ``weights``."""
    stats = {"gamma": rand(channels), "beta": rand(channels), "mean": rand(channels),
             "var": np.abs(rand(channels)) + 0.1}
    names = [add_param(b, f"bn.{k}", v, "buffer" if k in ("mean", "var") else "param") for k, v in stats.items()]
    weights.update(zip(names, stats.values()))
    return names


def _conv(b: GraphBuilder, weights: dict[str, np.ndarray], x: str, bias: bool, groups: int, kernel: int, pad: int,
          line: int) -> str:
    """A 4 -> 6 channel conv ``c`` on ``x`` (with a bias if asked) and random weights added to ``weights``."""
    w = add_param(b, "c.weight", rand(6, 4 // groups, kernel, kernel))
    weights[w] = rand(6, 4 // groups, kernel, kernel)
    inputs = [x, w]
    if bias:
        inputs.append(add_param(b, "c.bias", rand(6)))
        weights["c.bias"] = rand(6)
    return b.op("conv", inputs, at(line), stride=(1, 1), pads=(pad,) * 4, dilation=(1, 1), groups=groups)


def _conv_bn_graph(bias: bool, groups: int, extra_reader: bool = False) -> tuple[Graph, dict[str, np.ndarray]]:
    """conv (optionally with bias / grouped) -> batchnorm with random statistics, and its weights."""
    b, x = builder_with_input(2, 4, 5, 5)
    weights: dict[str, np.ndarray] = {}
    c = _conv(b, weights, x, bias, groups, kernel=3, pad=1, line=2)
    y = b.op("batchnorm", [c, *_batchnorm_stats(b, weights, 6)], at(3), eps=1e-5, momentum=0.1)
    b.output(b.op("add", [y, c], at(4)) if extra_reader else y)
    return b.graph, weights


@pytest.mark.parametrize("bias, groups", [(True, 1), (False, 2)])
def test_fold_batchnorm_rewrites_the_conv_parameters(bias: bool, groups: int) -> None:
    graph, weights = _conv_bn_graph(bias, groups)
    original = dict(weights)
    out, _ = check_rewrite(FOLD_BATCHNORM.bind(weights), graph, {"conv": 1}, weights)
    conv = out.nodes[0]
    assert conv.inputs[1:] == ["c.weight", "c.bias"]  # the conv keeps (or gains) the readable names
    assert conv.provenance.span == graph.nodes[0].provenance.span and conv.provenance.rules == ("fold_batchnorm",)
    assert not np.array_equal(weights["c.weight"], original["c.weight"])
    assert "fold_batchnorm" in out.params["c.bias"].provenance.rules


def test_fold_batchnorm_keeps_a_conv_whose_output_is_read_elsewhere() -> None:
    graph, weights = _conv_bn_graph(True, 1, extra_reader=True)
    out = FOLD_BATCHNORM.bind(weights).run(graph, RewriteLog())
    assert op_counts(out)["batchnorm"] == 1


def test_fold_batchnorm_copies_a_shared_kernel() -> None:
    b, x = builder_with_input(1, 2, 4, 4)
    w = add_param(b, "shared.weight", rand(2, 2, 1, 1))
    weights = {w: rand(2, 2, 1, 1)}
    outs = []
    for k in range(2):
        c = b.op("conv", [x, w], at(2 + k), stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
        names = [add_param(b, f"bn{k}.{s}", rand(2)) for s in ("gamma", "beta", "mean")]
        names.append(add_param(b, f"bn{k}.var", np.abs(rand(2)) + 0.5))
        weights.update({n: rand(2) if not n.endswith("var") else np.abs(rand(2)) + 0.5 for n in names})
        outs.append(b.op("batchnorm", [c, *names], at(4 + k), eps=1e-3, momentum=0.1))
    b.output(b.op("add", outs, at(6)))
    shared = weights[w].copy()
    out, _ = check_rewrite(FOLD_BATCHNORM.bind(weights), b.graph, {"conv": 2, "add": 1}, weights)
    kernels = [n.inputs[1] for n in out.nodes if n.op == "conv"]
    assert len(set(kernels)) == 2 and w not in kernels
    np.testing.assert_array_equal(weights[w], shared)


def _bn_conv_graph(bias: bool, groups: int, kernel: int = 1, pad: int = 0,
                   extra_reader: bool = False) -> tuple[Graph, dict[str, np.ndarray]]:
    """x -> (sigmoid, so that no conv precedes the norm) -> batchnorm -> conv, and the weights."""
    b, x = builder_with_input(2, 4, 5, 5)
    weights: dict[str, np.ndarray] = {}
    y = b.op("batchnorm", [b.op("sigmoid", [x], at(2)), *_batchnorm_stats(b, weights, 4)], at(3), eps=1e-5,
             momentum=0.1)
    c = _conv(b, weights, y, bias, groups, kernel, pad, line=4)
    b.output(b.op("add", [c, b.op("reduce_mean", [y], at(5), axes=(1,), keepdims=True)], at(6)) if extra_reader else c)
    return b.graph, weights


@pytest.mark.parametrize("bias, groups, kernel", [(True, 1, 1), (False, 2, 1), (True, 2, 3)])
def test_fold_batchnorm_folds_a_norm_into_the_conv_after_it(bias: bool, groups: int, kernel: int) -> None:
    # the CSA classifier: batchnorm on the pooled map, then the 1x1 head conv
    graph, weights = _bn_conv_graph(bias, groups, kernel)
    out, _ = check_rewrite(FOLD_BATCHNORM.bind(weights), graph, {"sigmoid": 1, "conv": 1}, weights)
    conv = out.nodes[1]
    assert conv.inputs[0] == out.nodes[0].outputs[0] and conv.inputs[1:] == ["c.weight", "c.bias"]
    assert conv.provenance.span == graph.nodes[2].provenance.span and conv.provenance.rules == ("fold_batchnorm",)


@pytest.mark.parametrize("case", ["padded conv", "norm read twice"])
def test_fold_batchnorm_keeps_a_norm_before_a_padded_conv_or_read_elsewhere(case: str) -> None:
    graph, weights = (_bn_conv_graph(True, 1, kernel=3, pad=1) if case == "padded conv"
                      else _bn_conv_graph(True, 1, extra_reader=True))
    out = FOLD_BATCHNORM.bind(weights).run(graph, RewriteLog())
    assert op_counts(out)["batchnorm"] == 1


def test_cse_merges_equal_nodes_and_equal_constants() -> None:
    b, x = builder_with_input(1, 3, 4, 4)
    ones = [b.op("const", [], at(2 + k), value=np.ones((1, 3, 1, 1), np.float32), dtype="f32") for k in range(2)]
    r1, r2 = (b.op("mul", [b.op("relu", [x], at(4 + k)), ones[k]], at(6 + k)) for k in range(2))
    kept = b.op("transpose", [x], at(8), perm=(0, 1, 3, 2))
    b.output(b.op("add", [b.op("add", [r1, r2], at(9)), kept], at(10)))
    b.output(r2)  # a graph output merged into another value keeps its name
    out, log = check_rewrite(CSE, b.graph, {"const": 1, "relu": 1, "mul": 1, "transpose": 1, "add": 2})
    assert r2 in {o for n in out.nodes for o in n.outputs}
    assert len(log.entries) == 3


def test_dce_removes_dead_nodes_and_unread_parameters() -> None:
    b, x = builder_with_input(1, 2, 3, 3)
    w = add_param(b, "dead.weight", rand(2, 2, 1, 1))
    b.param("bn.num_batches_tracked", TensorType("i64", ()), Init("zeros"), "buffer")
    b.op("conv", [b.op("relu", [x], at(2)), w], at(3), stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    b.output(b.op("sigmoid", [x], at(4)))
    out, log = check_rewrite(DCE, b.graph, {"sigmoid": 1}, {w: rand(2, 2, 1, 1)})
    assert out.params == {} and [e[2] for e in log.entries] == ["relu", "conv"]
    assert set(out.values) == {x, out.outputs[0]}


def test_cleanup_merges_shuffle_chains_and_drops_no_ops() -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    r = b.op("reshape", [b.op("reshape", [x], at(2), shape=(6, 20))], at(3), shape=(2, 60))
    t = b.op("transpose", [b.op("transpose", [x], at(4), perm=(0, 2, 3, 1))], at(5), perm=(0, 3, 1, 2))
    same = b.op("reshape", [b.op("identity", [t], at(6))], at(7), shape=(2, 3, 4, 5))
    swapped = b.op("transpose", [b.op("transpose", [x], at(8), perm=(0, 2, 3, 1))], at(9), perm=(0, 2, 1, 3))
    whole = b.op("slice", [same], at(10), axis=2, start=0, end=4, step=1)
    b.output(r)
    b.output(b.op("add", [whole, x], at(11)))
    b.output(swapped)
    out, _ = check_rewrite(CLEANUP, b.graph, {"reshape": 1, "add": 1, "transpose": 1})
    add = next(n for n in out.nodes if n.op == "add")
    assert add.inputs == [x, x]
    assert next(n for n in out.nodes if n.op == "transpose").attrs["perm"] == (0, 3, 2, 1)


def test_cleanup_keeps_an_inner_shuffle_that_is_read_elsewhere() -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    inner = b.op("reshape", [x], at(2), shape=(6, 20))
    b.output(b.op("reshape", [inner], at(3), shape=(2, 60)))
    b.output(b.op("relu", [inner], at(4)))
    out, _ = check_rewrite(CLEANUP, b.graph, {"reshape": 2, "relu": 1})
    assert all(n.inputs == [x] for n in out.nodes if n.op == "reshape")


def test_cleanup_keeps_a_graph_output_copy_of_an_input() -> None:
    b, x = builder_with_input(2, 3)
    b.output(b.op("identity", [x], at(2)))
    out = CLEANUP.run(b.graph, RewriteLog())
    assert op_counts(out) == {"identity": 1} and run_ort(out, {}, {x: np.ones((2, 3), np.float32)})[0].shape == (2, 3)
    assert f32(2, 3) == out.values[out.outputs[0]]


def _channel_slices(b: GraphBuilder, x: str, bounds: list[tuple[int, int]], line: int) -> list[str]:
    return [b.op("slice", [x], at(line + i), axis=1, start=start, end=end, step=1)
            for i, (start, end) in enumerate(bounds)]


def test_cleanup_joins_a_concat_of_adjacent_slices_into_one_slice_or_the_value() -> None:
    b, x = builder_with_input(2, 12, 3, 3)
    part = _channel_slices(b, x, [(2, 5), (5, 9)], 2)
    b.output(b.op("concat", part, at(4), axis=1))
    whole = _channel_slices(b, x, [(0, 4), (4, 12)], 5)
    b.output(b.op("relu", [b.op("concat", whole, at(7), axis=-3)], at(8)))
    out, _ = check_rewrite(CLEANUP, b.graph, {"slice": 1, "relu": 1})
    (joined,) = [n for n in out.nodes if n.op == "slice"]
    assert (joined.attrs["start"], joined.attrs["end"]) == (2, 9)
    assert next(n for n in out.nodes if n.op == "relu").inputs == [x]


def test_cleanup_joins_reshaped_slices_that_split_the_concat_axis() -> None:
    # ACmix's fc input: q, k and v (channel slices of one merged projection) viewed as [B, heads, d, H*W].
    b, x = builder_with_input(2, 24, 3, 4)
    views = [b.op("reshape", [piece], at(5 + i), shape=(2, 2, 4, 12))
             for i, piece in enumerate(_channel_slices(b, x, [(0, 8), (8, 16), (16, 24)], 2))]
    b.output(b.op("concat", views, at(8), axis=1))
    out, _ = check_rewrite(CLEANUP, b.graph, {"reshape": 1})
    assert out.nodes[0].inputs == [x] and out.nodes[0].attrs["shape"] == (2, 6, 4, 12)


@pytest.mark.parametrize("case", ["gap", "order", "other axis", "prefix merged"])
def test_cleanup_keeps_a_concat_that_is_not_one_piece_of_its_source(case: str) -> None:
    b, x = builder_with_input(2, 12, 2, 2)
    bounds = {"gap": [(0, 4), (5, 9)], "order": [(4, 8), (0, 4)]}.get(case, [(0, 6), (6, 12)])
    pieces = _channel_slices(b, x, bounds, 2)
    if case == "prefix merged":  # the reshape merges the batch axis into the channels: the pieces interleave
        pieces = [b.op("reshape", [p], at(4 + i), shape=(1, 12, 2, 2)) for i, p in enumerate(pieces)]
    b.output(b.op("concat", pieces, at(6), axis=0 if case == "other axis" else 1))
    out = CLEANUP.run(copy.deepcopy(b.graph), RewriteLog())
    assert op_counts(out) == op_counts(b.graph)


def test_cleanup_turns_a_transpose_of_length_one_axes_into_a_reshape_and_merges_it() -> None:
    b, x = builder_with_input(2, 12)
    view = b.op("reshape", [x], at(2), shape=(2, 1, 3, 4))
    b.output(b.op("transpose", [view], at(3), perm=(0, 2, 1, 3)))
    b.output(b.op("transpose", [view], at(4), perm=(0, 1, 3, 2)))  # moves data: stays a transpose
    out, _ = check_rewrite(CLEANUP, b.graph, {"reshape": 2, "transpose": 1})
    assert all(n.inputs == [x] for n in out.nodes if n.op == "reshape" and n.outputs[0] == out.outputs[0])
