"""``strided_slice_to_conv``: strided spatial slices become depth-wise 1x1 convs with that stride (DLA)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pass_support import at, builder_with_input, check_rewrite, lower_for_dla_and_compare, op_counts

from netdsl.driver import load_graph
from netdsl.ir import Graph
from netdsl.passes.base import RewriteLog
from netdsl.passes.strided_slice_to_conv import PASS

SPECS = Path(__file__).resolve().parents[1] / "specs"


def sliced(shape: tuple[int, ...], *cuts: tuple[int, int, int, int], extra_reader: bool = False) -> Graph:
    """x -> one slice per ``(axis, start, end, step)`` in turn (optionally the first result also added to itself)."""
    b, x = builder_with_input(*shape)
    y = x
    for line, (axis, start, end, step) in enumerate(cuts, start=2):
        y = b.op("slice", [y], at(line), axis=axis, start=start, end=end, step=step)
        if extra_reader and line == 2:
            first = y
    b.output(b.op("add", [y, y], at(9)) if not extra_reader else y)
    if extra_reader:
        b.output(first)
    return b.graph


@pytest.mark.parametrize("cuts, expected", [
    ([(2, 0, 8, 2)], {"conv": 1, "const": 1, "add": 1}),  # whole height, every 2nd row: the conv alone
    ([(3, 1, 7, 3)], {"conv": 1, "const": 1, "slice": 1, "add": 1}),  # rows 1 and 4: cut to 1..4, stride 3
    ([(2, 1, 100, 2)], {"conv": 1, "const": 1, "slice": 1, "add": 1}),  # end clamped: rows 1, 3, 5, 7
    ([(2, 0, 8, 2), (3, 0, 9, 2)], {"conv": 1, "const": 1, "add": 1}),  # both axes: one conv
    ([(2, 1, 8, 2), (3, 0, 5, 2)], {"conv": 1, "const": 1, "slice": 2, "add": 1}),  # both axes, both cut
    ([(3, 0, 9, 8)], {"conv": 1, "const": 1, "add": 1}),  # DLA's largest stride
])
def test_strided_slices_become_one_depthwise_conv(cuts: list[tuple[int, int, int, int]],
                                                  expected: dict[str, int]) -> None:
    out, _ = check_rewrite(PASS, sliced((2, 3, 8, 9), *cuts), expected)
    (conv,) = [n for n in out.nodes if n.op == "conv"]
    assert conv.attrs["groups"] == 3
    assert conv.attrs["stride"] == tuple(max((c[3] for c in cuts if c[0] == axis), default=1) for axis in (2, 3))


@pytest.mark.parametrize("cuts", [
    [(1, 0, 3, 2)],  # the channel axis: no conv subsamples channels
    [(3, 0, 9, 9)],  # a step over DLA's stride limit stays for the coverage report
    [(2, 0, 8, 1)],  # unit steps are DLA slices already
])
def test_other_slices_stay(cuts: list[tuple[int, int, int, int]]) -> None:
    graph = sliced((2, 4, 8, 9), *cuts)
    out = PASS.run(graph, RewriteLog())
    assert op_counts(out)["slice"] == 1 and op_counts(out)["conv"] == 0


def test_a_height_slice_read_elsewhere_is_not_merged() -> None:
    out, _ = check_rewrite(PASS, sliced((1, 2, 8, 8), (2, 0, 8, 2), (3, 0, 8, 2), extra_reader=True),
                           {"conv": 2, "const": 2})
    assert sorted(n.attrs["stride"] for n in out.nodes if n.op == "conv") == [(1, 2), (2, 1)]


def test_strided_acmix_is_fully_covered_under_dla_and_unchanged() -> None:
    graph = load_graph(SPECS / "acmix.net", "ACmix", sets=["in_planes=16", "out_planes=16", "stride=2"],
                       inputs=["x=1x16x14x14"])
    lowered = lower_for_dla_and_compare(graph)
    assert not any(n.op == "slice" and n.attrs["step"] > 1 for n in lowered.nodes)
