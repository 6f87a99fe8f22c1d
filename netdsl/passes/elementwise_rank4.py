"""Binary element-wise ops on tensors of rank other than 4 -> the same op on rank-4 views (for DLA).

DLA runs Add, Sub, Mul and Div on rank-4 (NCHW) tensors only (``trt-dla.toml``: "Add rank 3 is
below limit 4..4"), while token sequences ``[B, T, C]`` (ViT, Swin, CvT blocks), matrices and
rank-5 window tensors reach them as they are. A row-major reshape is free and exact, so the
inputs are viewed as rank 4, the op runs on the views, and its result is viewed back.

The view must broadcast like the original: each axis of the result is full or 1 in each input
(its broadcast pattern). Lower ranks keep their axes and gain trailing 1s (``[B, T, C]`` ->
``[B, T, C, 1]``: the batch stays the batch); a higher rank merges neighbouring axes of one
pattern (length-1 axes first, then the smallest products) until four remain; an axis longer than
DLA's 8192 is laid out over two where the rank leaves room (:mod:`netdsl.passes.rank4_view`).
An op with no such view (more than four patterns in a row) is left alone: the coverage report
names it. ``cleanup_shuffles`` merges the views of consecutive ops into one reshape.
Exact: reshapes move no values.
"""

from __future__ import annotations

from netdsl.ir import Graph, Node
from netdsl.passes.rank4_view import DLA_DIM_LIMIT, layout4, pad4, view_as
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "elementwise_rank4"
OPS = ("add", "sub", "mul", "div")

Run = tuple[int, tuple[bool, ...]]  # (extent, which inputs are full along it)


def _runs(out: tuple[int, ...], inputs: list[tuple[int, ...]]) -> list[Run] | None:
    """The result's axes as (extent, pattern) runs, merged until at most four remain; None if they do not fit."""
    aligned = [(1,) * (len(out) - len(s)) + s for s in inputs]
    runs: list[Run] = [(d, tuple(s[i] == d for s in aligned)) for i, d in enumerate(out)]
    if len(runs) > 4:
        runs = [r for r in runs if r[0] > 1] or [(1, runs[0][1])]
    while len(runs) > 4:
        pairs = [i for i in range(len(runs) - 1) if runs[i][1] == runs[i + 1][1]]
        if not pairs:
            return None
        i = min(pairs, key=lambda k: runs[k][0] * runs[k + 1][0])
        runs[i:i + 2] = [(runs[i][0] * runs[i + 1][0], runs[i][1])]
    return runs


def _plan(graph: Graph, node: Node) -> tuple[list[Run], list[tuple[int, ...]]] | None:
    """For a DLA element-wise op off rank 4 that has a rank-4 view: its runs and the view axes of each run."""
    if all(graph.type_of(v).rank == 4 for v in [*node.inputs, *node.outputs]):
        return None
    runs = _runs(graph.type_of(node.outputs[0]).shape, [graph.type_of(x).shape for x in node.inputs])
    axes = None if runs is None else layout4([e for e, _ in runs], limit=DLA_DIM_LIMIT)
    return None if runs is None or axes is None else (runs, axes)


def _to_rank4(node: Node, em: Emitter) -> list[str] | None:
    plan = _plan(em.graph, node)
    if plan is None:
        return None
    runs, axes = plan
    views = []
    for k, x in enumerate(node.inputs):
        shape = [d if pattern[k] else 1 for (_, pattern), run in zip(runs, axes) for d in run]
        views.append(view_as(em, x, pad4(shape)))
    y = em.op(node.op, views, **node.attrs)
    return [view_as(em, y, em.graph.values[node.outputs[0]].shape)]


def _post(graph: Graph) -> list[str]:
    return [f"{n.op} {n.outputs[0]} is not on rank-4 tensors" for n in graph.nodes
            if n.op in OPS and _plan(graph, n) is not None]


PASS = node_pass(RULE, "lower", _to_rank4, __doc__ or "", post=_post, matches=OPS)
