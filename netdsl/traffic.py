"""Per-block statistics of a graph: parameters, MACs, activation memory and memory traffic per frame.

"Memory traffic per frame" counts, for every op, the bytes it reads (activations and weights)
and writes (its outputs), divided by the batch size: the weight + activation bytes moved to
process one image if nothing stayed in cache. It is the quantity the CSA study compares
across models; it ignores fusion, which only lowers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netdsl.cost import node_macs
from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, TensorType


def _nbytes(t: TensorType) -> int:
    return t.numel * np.dtype(NP_DTYPES[t.dtype]).itemsize


@dataclass
class BlockStats:
    """Figures of one block instance (or the top level)."""

    name: str
    params: int = 0
    macs: int = 0
    activation_bytes: int = 0
    bytes_moved: int = 0
    ops: int = 0


@dataclass
class GraphStats:
    """Per-block rows and totals; MACs and bytes are for the whole batch unless named per frame."""

    model: str
    batch: int
    blocks: list[BlockStats] = field(default_factory=list)
    total: BlockStats = field(default_factory=lambda: BlockStats("total"))

    def _row(self, b: BlockStats) -> dict:
        per = max(self.batch, 1)
        return {"params": b.params, "macs": b.macs // per, "activation_bytes": b.activation_bytes // per,
                "bytes_per_frame": b.bytes_moved // per, "ops": b.ops}

    def to_json(self) -> dict:
        """Totals at the top level (``params``, ``macs``, ``bytes_per_frame``, ...) and one row per block."""
        return {"model": self.model, "batch": self.batch, **self._row(self.total),
                "blocks": [{"name": b.name, **self._row(b)} for b in self.blocks]}


def _block_key(path: str, depth: int) -> str:
    parts = [p for p in path.split(".") if p]
    return ".".join(parts[:depth]) if parts else "(top)"


def graph_stats(graph: Graph, depth: int = 2) -> GraphStats:
    """Statistics of ``graph`` grouped by the first ``depth`` segments of each op's block path."""
    batch = graph.values[graph.inputs[0]].shape[0] if graph.inputs and graph.values[graph.inputs[0]].rank else 1
    stats = GraphStats(graph.name, batch)
    rows: dict[str, BlockStats] = {}

    def row(key: str) -> BlockStats:
        if key not in rows:
            rows[key] = BlockStats(key)
        return rows[key]

    for p in graph.params.values():
        if p.trainable:
            row(_block_key(p.provenance.block_path, depth)).params += p.type.numel
    for node in graph.nodes:
        r = row(_block_key(node.provenance.block_path, depth))
        r.ops += 1
        r.macs += node_macs(graph, node)
        written = sum(_nbytes(graph.values[o]) for o in node.outputs)
        if node.op != "const":
            r.activation_bytes += written
        r.bytes_moved += written + sum(_nbytes(graph.type_of(i)) for i in node.inputs)
    stats.blocks = [rows[k] for k in rows]
    for b in stats.blocks:
        stats.total.params += b.params
        stats.total.macs += b.macs
        stats.total.activation_bytes += b.activation_bytes
        stats.total.bytes_moved += b.bytes_moved
        stats.total.ops += b.ops
    return stats
