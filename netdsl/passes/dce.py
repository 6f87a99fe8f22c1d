"""Dead-code elimination: nodes whose values reach no graph output, and parameters no node reads.

Removing unread parameters (and, in the pipeline, their weights) matters after folding: batch
norm statistics folded into a conv, ``num_batches_tracked`` counters, positional-encoding
weights folded into a constant. Not for training targets: a PyTorch module must keep every
parameter of the spec so that checkpoints load by name.
"""

from __future__ import annotations

from netdsl.ir import Graph, Node
from netdsl.passes.base import EVERY_OP, Pass, RewriteLog

RULE = "dce"


def live_values(graph: Graph) -> set[str]:
    """The values (and parameters) a graph output depends on."""
    live = set(graph.outputs)
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs):
            live.update(node.inputs)
    return live


def remove_dead_nodes(graph: Graph) -> list[Node]:
    """Drop the nodes none of whose outputs reaches a graph output; returns them."""
    live = live_values(graph)
    dead = [n for n in graph.nodes if not any(o in live for o in n.outputs)]
    graph.nodes = [n for n in graph.nodes if any(o in live for o in n.outputs)]
    for node in dead:
        for o in node.outputs:
            graph.values.pop(o, None)
    return dead


def unused_params(graph: Graph) -> list[str]:
    """Parameters and buffers that no node reads."""
    read = {i for n in graph.nodes for i in n.inputs}
    return [name for name in graph.params if name not in read]


def _run(graph: Graph, log: RewriteLog) -> Graph:
    for node in remove_dead_nodes(graph):
        log.record(RULE, node, [])
    for name in unused_params(graph):
        del graph.params[name]
    return graph


def _post(graph: Graph) -> list[str]:
    live = live_values(graph)
    dead = [f"{n.op} node {n.outputs[0]} is dead" for n in graph.nodes if not any(o in live for o in n.outputs)]
    return dead + [f"parameter {p} is unused" for p in unused_params(graph)]


PASS = Pass(RULE, "cleanup", _run, (__doc__ or "").strip(), post=_post, matches=EVERY_OP)
