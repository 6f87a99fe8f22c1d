"""``slice_before_conv``: a slice of a 1x1 conv's output is taken before the conv, or becomes its stride, with the
same outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pass_support import add_param, at, builder_with_input, check_rewrite, op_counts

from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.slice_before_conv import PASS

CONV = {"stride": (1, 1), "pads": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}


def _graph(kernel: int = 1, slices: tuple[tuple[int, int, int, int], ...] = ((2, 0, 7, 2), (3, 0, 7, 2)),
           read_conv: bool = False, out: int = 6,
           stride: tuple[int, int] = (1, 1)) -> tuple[Graph, dict[str, np.ndarray], str]:
    """x [2, 4, 7, 7] -> conv (4 -> ``out`` channels, ``stride``) -> the slices (axis, start, end, step) in turn."""
    b, x = builder_with_input(2, 4, 7, 7)
    rng = np.random.default_rng(2)
    weights = {"c.weight": rng.standard_normal((out, 4, kernel, kernel)).astype(np.float32),
               "c.bias": rng.standard_normal(out).astype(np.float32)}
    y = b.op("conv", [x, *(add_param(b, name, value) for name, value in weights.items())], at(3),
             **{**CONV, "pads": (kernel // 2,) * 4, "stride": stride})
    conv = y
    for line, (axis, start, end, step) in enumerate(slices, 4):
        y = b.op("slice", [y], at(line), axis=axis, start=start, end=end, step=step)
    b.output(y)
    if read_conv:
        b.output(conv)
    return b.graph, weights, x


@pytest.mark.parametrize("slices", [((2, 0, 6, 2),), ((0, 1, 2, 1),), ((3, 2, 6, 3),),
                                    ((2, 1, 7, 2), (0, 0, 1, 1), (3, 0, 5, 1))])
def test_slices_move_above_the_conv(slices: tuple[tuple[int, int, int, int], ...]) -> None:
    graph, weights, x = _graph(slices=slices)
    out, _ = check_rewrite(PASS, graph, {"slice": len(slices), "conv": 1}, weights)
    (conv,) = [n for n in out.nodes if n.op == "conv"]
    assert conv.inputs[0] != x and conv.outputs[0] in out.outputs
    assert conv.provenance.span == graph.nodes[0].provenance.span


@pytest.mark.parametrize(("slices", "stride", "out", "folded", "left"), [
    (((2, 0, 7, 2), (3, 0, 7, 2)), (1, 1), 6, (2, 2), 0),   # every second row and column: a stride-2 conv
    (((3, 0, 7, 3),), (1, 1), 6, (1, 3), 0),                 # every third column, to the last one (6)
    (((2, 0, 4, 2),), (2, 1), 6, (4, 1), 0),                 # a strided conv's stride grows (rows 0 and 2 of its 4)
    (((2, 0, 7, 2),), (1, 1), 2, (2, 1), 0),                 # a stride copies nothing: a wider input may fold
    (((2, 0, 7, 2), (3, 1, 7, 2)), (1, 1), 6, (2, 1), 1),   # the columns from 1 are a slice, moved above
])
def test_strided_slices_become_the_convs_stride(slices: tuple[tuple[int, int, int, int], ...], stride: tuple[int, int],
                                               out: int, folded: tuple[int, int], left: int) -> None:
    graph, weights, x = _graph(slices=slices, out=out, stride=stride)
    result, _ = check_rewrite(PASS, graph, {"slice": left, "conv": 1}, weights)
    (conv,) = [n for n in result.nodes if n.op == "conv"]
    assert conv.attrs["stride"] == folded and conv.outputs[0] in result.outputs
    assert (conv.inputs[0] == x) == (left == 0)
    assert conv.provenance.span == graph.nodes[0].provenance.span


def _unchanged(graph: Graph) -> None:
    assert op_counts(PASS.run(copy.deepcopy(graph), RewriteLog())) == op_counts(graph)


@pytest.mark.parametrize(("kernel", "slices", "read_conv", "out"), [
    (3, ((2, 0, 7, 2),), False, 6),   # a 3x3 conv reads its neighbours
    (1, ((1, 0, 3, 1),), False, 6),   # channels are what the conv mixes
    (1, ((2, 0, 7, 1),), False, 6),   # a slice that keeps everything saves nothing
    (1, ((2, 0, 7, 2),), True, 6),    # the full map is still needed
    (1, ((2, 1, 7, 2),), False, 2),   # the conv's input is wider than its output: the slice would copy more
])
def test_other_slices_stay(kernel: int, slices: tuple[tuple[int, int, int, int], ...], read_conv: bool,
                           out: int) -> None:
    _unchanged(_graph(kernel, slices, read_conv, out)[0])
