"""Sibling convolutions as one: convs reading the same input -> one conv and a channel slice per original.

Convolutions that read the same tensor with the same kernel size, stride, padding and dilation, one
group each, and constant kernels and biases (parameters or ``const`` nodes) compute their outputs
from the same input windows. One conv whose kernel (and bias) is theirs concatenated along the
output channels computes all of them at once; a ``slice`` of its channels gives each original
output, under its original name. E.g. ACmix's ``q``, ``k`` and ``v`` projections become one 1x1 conv
with three times the channels: one pass over the input instead of three, one kernel launch instead
of three. Every output element is the same dot product as before; only the rounding of a conv
implementation that blocks its sums by the number of output channels can differ (float32: a few ulps).

The concatenation of the kernels is a parameter-only node in the graph: parameters keep their names
(a checkpoint loads unchanged, and the ``torch`` target trains each conv's own ``weight`` and
``bias``, concatenated in ``forward``), and ``fold_params`` folds it into one constant on the targets
that run it. Convs with a bias merge only with convs with a bias, convs without only with convs
without. The merged conv carries the provenance of the first of its convs (graph order) plus this
rule, each slice that of the conv whose output it gives.
"""

from __future__ import annotations

from collections import defaultdict

from netdsl.ir import Graph, Node
from netdsl.passes.base import Pass, RewriteLog
from netdsl.passes.rewriter import Emitter, rename_value, rewrite_nodes

RULE = "merge_sibling_convs"

Key = tuple[str, tuple[int, ...], str, str, bool]


def _constant(graph: Graph, value: str, producers: dict[str, Node], before: int, position: dict[int, int]) -> bool:
    """True when ``value`` is a parameter, or a ``const`` node's output computed before node index ``before``."""
    if graph.is_param(value):
        return True
    node = producers.get(value)
    return node is not None and node.op == "const" and position[id(node)] < before


def _sibling_key(graph: Graph, conv: Node) -> Key:
    """What convs must share to merge: input, kernel shape past the output channels, dtype, attributes, bias."""
    kernel = graph.type_of(conv.inputs[1])
    attrs = repr(sorted(conv.attrs.items()))
    return conv.inputs[0], kernel.shape[1:], kernel.dtype, attrs, len(conv.inputs) == 3


def sibling_groups(graph: Graph) -> list[list[Node]]:
    """The groups of two or more convs of ``graph`` that merge, each in graph order.

    A conv joins when it has one group and constant kernel and bias; its constants must be computed
    before the first conv of its group, where the merged conv is placed.
    """
    producers = graph.producers()
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    candidates: dict[Key, list[Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "conv" and node.attrs["groups"] == 1:
            candidates[_sibling_key(graph, node)].append(node)
    groups = []
    for convs in candidates.values():
        first = position[id(convs[0])]
        merged = [c for c in convs if all(_constant(graph, i, producers, first, position) for i in c.inputs[1:])]
        if len(merged) > 1:
            groups.append(merged)
    return groups


def _merge(group: list[Node], em: Emitter) -> dict[str, str]:
    """Emit the merged conv of ``group`` and its slices; the slice value of each conv output, by output name."""
    first = group[0]
    kernel = em.op("concat", [c.inputs[1] for c in group], "kernel", axis=0)
    bias = [em.op("concat", [c.inputs[2] for c in group], "bias", axis=0)] if len(first.inputs) == 3 else []
    merged = em.op("conv", [first.inputs[0], kernel, *bias], "merged", **first.attrs)
    sliced: dict[str, str] = {}
    start = 0
    for conv in group:
        channels = em.graph.type_of(conv.outputs[0]).shape[1]
        em.source = conv
        sliced[conv.outputs[0]] = em.op("slice", [merged], axis=1, start=start, end=start + channels, step=1)
        start += channels
    return sliced


def _run(graph: Graph, log: RewriteLog) -> Graph:
    group_of = {id(c): group for group in sibling_groups(graph) for c in group}
    sliced: dict[str, str] = {}

    def rewrite(node: Node, em: Emitter) -> list[str] | None:
        group = group_of.get(id(node))
        if group is None:
            return None
        if node is group[0]:
            sliced.update(_merge(group, em))
        return [sliced[node.outputs[0]]]

    rewrite_nodes(graph, RULE, log, rewrite, frozenset({"conv"}))
    # The later convs of a group were redirected to their slices: give each slice the conv's output name back.
    for name, value in sliced.items():
        if name not in graph.values and value in graph.values:
            rename_value(graph.nodes, value, name)
            graph.values[name] = graph.values.pop(value)
    return graph


def _post(graph: Graph) -> list[str]:
    return [f"convs {', '.join(c.outputs[0] for c in group)} still read {group[0].inputs[0]} separately"
            for group in sibling_groups(graph)]


PASS = Pass(RULE, "optimize", _run, (__doc__ or "").strip(), post=_post, matches=frozenset({"conv"}))
