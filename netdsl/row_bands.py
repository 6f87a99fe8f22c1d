"""Row bands: a run of convolutions and elementwise ops evaluated a band of output rows at a time.

The float16 range check runs a model's lowered graph in the interpreter on calibration inputs, and
whole, the activations of an early stage are most of what such a run holds: MobileViT-S's first
stride-2 inverted residual expands 32 channels to 128 at 128x128, and its SiLU holds the conv
output and its sigmoid (8.4 MB each in float32) beside a model of 11.3 MB in float16.

A *segment* here is a run of consecutive nodes, each a 2-D convolution or an elementwise op on
values of rank 4 (NCHW), whose intermediate values are read by nodes of the segment alone: each
output row of its last node depends on a bounded band of rows of every value before it (a
convolution widens the band by its kernel's reach and its stride), so the segment can be computed
a band of output rows at a time, each intermediate value existing only as the rows that band needs.
The same kernels run on those rows, a convolution's padding becoming the band's own where the band
meets the edge of the map, so each element is the same sum of the same products.

:func:`netdsl.interp.run_graph` evaluates segments this way with ``in_slices`` (:func:`row_segments`
finds them, :func:`run_segment` runs one); its ``observe`` callback sees each node once per band.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from netdsl.ir import Graph, Node

ROW_LOCAL_ELEMENTWISE = frozenset({
    "relu", "gelu", "sigmoid", "silu", "hardswish", "relu6", "hardsigmoid", "tanh", "exp", "neg", "sqrt", "erf",
    "identity", "clamp", "pow", "add", "sub", "mul", "div", "minimum", "maximum"})
"""Elementwise ops (with numpy broadcasting): each output row is computed from the same row of each input."""

BAND_ELEMENTS = 1 << 19
"""Elements of the band-sized values a segment holds at once (2 MiB in float32): the budget that sets how many
output rows a band has (at least one)."""

Rows = tuple[int, int]
"""A half-open range of rows (axis -2) of one value: ``(first, stop)``."""


@dataclass(frozen=True)
class Segment:
    """Consecutive node indices of a graph evaluated a band of rows at a time, and the rows of its output per band."""

    nodes: tuple[int, ...]
    rows_per_band: int


def last_readers(nodes: list[Node]) -> dict[str, int]:
    """The position in ``nodes`` of the last node reading each value they read."""
    return {name: position for position, node in enumerate(nodes) for name in node.inputs}


def _rows_of(graph: Graph, name: str) -> int:
    """The number of rows (axis -2) of ``name``, 1 for a value of rank < 2 (it broadcasts along them)."""
    shape = graph.type_of(name).shape
    return shape[-2] if len(shape) >= 2 else 1


def _is_row_local(graph: Graph, node: Node) -> bool:
    """A 2-D convolution, or an elementwise op, with one output of rank 4 and more than one row, and inputs of rank
    at most 4 (so an input computed in the segment has the rows of its reader's output, or is a convolution's)."""
    if len(node.outputs) != 1 or len(graph.values[node.outputs[0]].shape) != 4 or _rows_of(graph, node.outputs[0]) < 2:
        return False
    if node.op == "conv":
        return len(graph.type_of(node.inputs[0]).shape) == 4
    return node.op in ROW_LOCAL_ELEMENTWISE and all(len(graph.type_of(n).shape) <= 4 for n in node.inputs)


def _strided(node: Node) -> bool:
    """A convolution with a row stride above 1."""
    return node.op == "conv" and node.attrs["stride"][0] > 1


def _widens(graph: Graph, node: Node) -> bool:
    """A convolution whose output rows each read more than one input row."""
    return node.op == "conv" and graph.type_of(node.inputs[1]).shape[2] > 1


def _conv_reach(graph: Graph, node: Node, rows: Rows) -> Rows:
    """The input rows a convolution's output rows ``rows`` read, before clipping to the map (negative above it,
    beyond its last row below: padding)."""
    first, stop = rows
    kernel = graph.type_of(node.inputs[1]).shape[2]
    stride, dilation = node.attrs["stride"][0], node.attrs.get("dilation", (1, 1))[0]
    top = node.attrs["pads"][0]
    return first * stride - top, (stop - 1) * stride - top + (kernel - 1) * dilation + 1


def rows_read(graph: Graph, node: Node, rows: Rows) -> list[tuple[str, Rows | None]]:
    """For output rows ``rows`` of a row-local ``node``: each input (in order) and the rows of it read, None if read
    whole (a weight, a bias, or an operand that broadcasts along the rows). A convolution's rows are clipped to its
    input; the padding they leave out is :func:`band_pads`'s."""
    if node.op == "conv":
        x = node.inputs[0]
        lo, hi = _conv_reach(graph, node, rows)
        return [(x, (max(lo, 0), min(hi, _rows_of(graph, x)))), *((name, None) for name in node.inputs[1:])]
    out_rows = _rows_of(graph, node.outputs[0])
    return [(name, rows if _rows_of(graph, name) == out_rows else None) for name in node.inputs]


def band_pads(graph: Graph, node: Node, rows: Rows) -> tuple[int, int, int, int]:
    """The padding of a convolution computing output rows ``rows`` from the input rows :func:`rows_read` gives:
    the rows above and below them that lie outside the map (the columns' padding as it is)."""
    _, left, _, right = node.attrs["pads"]
    lo, hi = _conv_reach(graph, node, rows)
    return max(-lo, 0), left, max(hi - _rows_of(graph, node.inputs[0]), 0), right


def band_needs(graph: Graph, nodes: list[Node], rows: Rows, computed: dict[str, int] | None = None,
               final: bool = False) -> dict[str, Rows]:
    """The rows of every value a segment reads or computes (weights and broadcast operands aside) for output rows
    ``rows`` of its last node: for each value the span of all its readers' needs.

    ``computed`` gives, for values of earlier bands, how many of their first rows those computed: a value's rows
    from there on are computed too even where no reader needs them (a 1x1 stride-2 conv skips every other row),
    as are its last rows in the ``final`` band, so that over all bands every row of every value is computed
    (and observed) as in the whole run."""
    computed = computed or {}
    needs: dict[str, Rows] = {nodes[-1].outputs[0]: rows}
    for node in reversed(nodes):
        name = node.outputs[0]
        lo, hi = needs[name]
        needs[name] = span = (min(lo, computed.get(name, 0)), _rows_of(graph, name) if final else hi)
        for read, wanted in rows_read(graph, node, span):
            if wanted is not None:
                lo, hi = needs.get(read, wanted)
                needs[read] = (min(lo, wanted[0]), max(hi, wanted[1]))
    return needs


def _band_elements(graph: Graph, nodes: list[Node], rows: Rows) -> int:
    """The most elements of computed values a segment holds at once for output rows ``rows`` (each value from its
    computation to its last reader, as :func:`run_segment` holds it)."""
    needs = band_needs(graph, nodes, rows)
    last_reader = last_readers(nodes)
    live: dict[str, int] = {}
    most = 0
    for position, node in enumerate(nodes):
        name = node.outputs[0]
        shape = graph.values[name].shape
        live[name] = int(np.prod(shape)) // shape[-2] * (needs[name][1] - needs[name][0])
        most = max(most, sum(live.values()))
        for read in node.inputs:
            if last_reader[read] == position:
                live.pop(read, None)
    return most


def _rows_per_band(graph: Graph, nodes: list[Node]) -> int:
    """The most output rows (halving from all of them) whose band stays within :data:`BAND_ELEMENTS`, at least 1."""
    rows = _rows_of(graph, nodes[-1].outputs[0])
    while rows > 1 and _band_elements(graph, nodes, (0, rows)) > BAND_ELEMENTS:
        rows = (rows + 1) // 2
    return rows


def row_segments(graph: Graph, excluded: Collection[int] = ()) -> dict[int, Segment]:
    """The segments of ``graph`` worth evaluating in bands, by the index of their last node.

    From the first row-local node (not in ``excluded``) on, the longest run of consecutive row-local nodes whose
    intermediate values are read inside the run alone and are no graph outputs, ending before a conv that widens
    the band after a strided one; kept when it has two nodes or more and its values do not fit one band. Where no
    run from a node closes, the next node is tried."""
    last_reader = last_readers(graph.nodes)
    local = [i not in excluded and _is_row_local(graph, n) for i, n in enumerate(graph.nodes)]
    segments: dict[int, Segment] = {}
    start = 0
    while start < len(graph.nodes):
        stop, strided = start, False
        while stop < len(graph.nodes) and local[stop]:
            if strided and _widens(graph, graph.nodes[stop]):
                # Beyond a strided conv, each row a kernel reaches is a stride of rows before it: the bands'
                # overlapping rows would grow with every kernel, and be computed band after band.
                break
            strided |= _strided(graph.nodes[stop])
            stop += 1
        last = _last_closing(graph, last_reader, start, stop)
        if last is None:
            start += 1  # a segment may start after a node whose value is read further on (a residual's input)
            continue
        nodes = graph.nodes[start:last + 1]
        rows = _rows_per_band(graph, nodes)
        if rows < _rows_of(graph, nodes[-1].outputs[0]):
            segments[last] = Segment(tuple(range(start, last + 1)), rows)
        start = last + 1
    return segments


def _last_closing(graph: Graph, last_reader: dict[str, int], start: int, stop: int) -> int | None:
    """The last index ``last`` in ``start + 1 .. stop - 1`` such that every value nodes ``start .. last - 1``
    compute is read (by a later node, so one from ``start`` on) by nodes up to ``last`` alone and is no graph
    output, None if there is none."""
    outputs = set(graph.outputs)
    best, reach = None, start
    for last in range(start + 1, stop):
        name = graph.nodes[last - 1].outputs[0]
        if name in outputs or name not in last_reader:
            break  # held whole (or never read): no segment from start can hold it in bands
        reach = max(reach, last_reader[name])
        if reach <= last:
            best = last
    return best


def run_segment(
    graph: Graph,
    segment: Segment,
    outer: dict[str, np.ndarray],
    weight: Callable[[str], np.ndarray],
    compute: Callable[[Node, list[np.ndarray], Node], list[np.ndarray]],
    widen: Callable[[str, np.ndarray], np.ndarray],
) -> np.ndarray:
    """The output of ``segment``, computed a band of :attr:`Segment.rows_per_band` output rows at a time.

    ``outer`` holds the activations the segment reads from before it, as stored; ``weight(name)`` reads a weight
    in its compute dtype when a node of a band needs it (a segment may span a stage of a model, whose weights
    converted all at once would be that stage's size again);
    ``compute(node, args, as_node)`` returns ``node``'s stored outputs on ``args`` evaluated as ``as_node`` (a
    convolution with the band's padding); ``widen(name, array)`` gives a stored array in its compute dtype."""
    nodes = [graph.nodes[i] for i in segment.nodes]
    last = nodes[-1].outputs[0]
    total = _rows_of(graph, last)
    last_reader = last_readers(nodes)
    result: np.ndarray | None = None
    computed: dict[str, int] = {}
    for first in range(0, total, segment.rows_per_band):
        rows = (first, min(first + segment.rows_per_band, total))
        needs = band_needs(graph, nodes, rows, computed, final=rows[1] == total)
        computed = {name: stop for name, (_, stop) in needs.items()}
        band: dict[str, tuple[np.ndarray, int]] = {}  # a computed value's rows and the first of them
        for position, node in enumerate(nodes):
            args = []
            for name, span in rows_read(graph, node, needs[node.outputs[0]]):
                if span is None:
                    args.append(widen(name, outer[name]) if name in outer else weight(name))
                    continue
                array, offset = band[name] if name in band else (outer[name], 0)
                args.append(widen(name, array[..., span[0] - offset:span[1] - offset, :]))
                del array  # args alone may hold the rows now (an elementwise op may write over them)
            for name in node.inputs:
                if last_reader[name] == position:
                    band.pop(name, None)
            as_node = node if node.op != "conv" else dataclasses.replace(
                node, attrs={**node.attrs, "pads": band_pads(graph, node, needs[node.outputs[0]])})
            (out,) = compute(node, args, as_node)
            band[node.outputs[0]] = (out, needs[node.outputs[0]][0])
        out = band[last][0]
        if result is None:
            result = np.empty(graph.values[last].shape, dtype=out.dtype)
        result[..., rows[0]:rows[1], :] = out
    assert result is not None
    return result
