"""Activation memory of a graph run in node order: the peak live set and the largest single tensor.

A value is live from the node that computes it (graph inputs: from the start) until the last
node that reads it (graph outputs: until the end). The peak live set is the largest total size
of the values live at once while a node runs (its inputs and its outputs both count), i.e. the
activation memory a runtime needs if it frees every tensor after its last reader and runs the
nodes in this order. ``const`` outputs and parameters are weights, not activations, and do not
count. Runtimes may reorder nodes or reuse buffers in place; the figures are those of the order
the graph is written in. :func:`live_memory` works on any node list (e.g. an ONNX graph's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, TensorType


def nbytes(t: TensorType) -> int:
    """Bytes of a tensor of type ``t``."""
    return t.numel * np.dtype(NP_DTYPES[t.dtype]).itemsize


@dataclass(frozen=True)
class MemoryFigures:
    """Peak live activation bytes, the largest single activation (bytes and name) and the node count."""

    peak_bytes: int
    largest_bytes: int
    largest: str
    nodes: int


def live_memory(nodes: Sequence[tuple[Sequence[str], Sequence[str]]], size: Mapping[str, int],
                inputs: Sequence[str], outputs: Sequence[str]) -> MemoryFigures:
    """The figures of ``nodes`` (``(inputs, outputs)`` name pairs, run in order); ``size`` gives the bytes
    of every activation (names absent from it are weights)."""
    end = len(nodes)
    last_read = {v: end for v in outputs}
    for i, (ins, _) in enumerate(nodes):
        for v in ins:
            if v in size and last_read.get(v) != end:
                last_read[v] = i
    live = sum(size.get(v, 0) for v in inputs)
    peak = live
    for i, (ins, outs) in enumerate(nodes):
        created = [o for o in outs if o in size]
        live += sum(size[o] for o in created)
        peak = max(peak, live)
        # What dies here: inputs read for the last time, and outputs nothing reads.
        dead = {v for v in ins if v in size and last_read.get(v) == i} | {o for o in created if o not in last_read}
        live -= sum(size[v] for v in dead)
    largest = max(size, key=lambda v: size[v], default="")
    return MemoryFigures(peak, size.get(largest, 0), largest, len(nodes))


def memory_figures(graph: Graph) -> MemoryFigures:
    """The :class:`MemoryFigures` of ``graph`` (see the module docstring)."""
    weights = {o for n in graph.nodes if n.op == "const" for o in n.outputs}
    size = {v: nbytes(t) for v, t in graph.values.items() if v not in weights}
    return live_memory([(n.inputs, n.outputs) for n in graph.nodes], size, graph.inputs, graph.outputs)
