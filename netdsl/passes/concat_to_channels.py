"""``concat`` along a spatial axis -> transposes around a concat along the channel axis (for DLA).

DLA concatenates only along channels (the third axis from the end), while the padding and roll
lowerings concatenate rows and columns. Swapping the concat axis with the channel axis in every
input, concatenating along channels and swapping back computes the same tensor with allowed
Shuffle and Concat layers. An input sliced from a tensor that the concat transposes anyway (it
is an input too, as in a padding, or it gives several slices, as in a roll) is sliced from that
transposed tensor instead, so a reflect padding costs one transpose, not one per row.
Transposes of constants are folded later; ``cleanup_shuffles`` merges back-to-back swaps of
consecutive concats. Tensors of rank < 3 have no channel axis and are left alone.
"""

from __future__ import annotations

from collections import Counter

from netdsl.ir import Graph, Node
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "concat_to_channels"


def _off_channels(graph: Graph, node: Node) -> bool:
    """A concat of rank >= 3 tensors along another axis than the third from the end."""
    if node.op != "concat":
        return False
    rank = graph.type_of(node.inputs[0]).rank
    return rank >= 3 and node.attrs["axis"] % rank != rank - 3


def _swap(rank: int, a: int, b: int) -> tuple[int, ...]:
    perm = list(range(rank))
    perm[a], perm[b] = b, a
    return tuple(perm)


def _to_channels(node: Node, em: Emitter) -> list[str] | None:
    if not _off_channels(em.graph, node):
        return None
    rank = em.graph.type_of(node.inputs[0]).rank
    perm = _swap(rank, node.attrs["axis"] % rank, rank - 3)
    transposed: dict[str, str] = {}

    def moved(x: str) -> str:
        if x not in transposed:
            transposed[x] = em.op("transpose", [x], perm=perm)
        return transposed[x]

    slices = [s for x in node.inputs if (s := em.producer(x)) is not None and s.op == "slice"]
    sliced_from = Counter(s.inputs[0] for s in slices)
    inputs = []
    for x in node.inputs:
        cut = em.producer(x)
        if cut is not None and cut.op == "slice" and (cut.inputs[0] in node.inputs or sliced_from[cut.inputs[0]] > 1):
            em.absorb(cut)
            # perm is a swap, so it maps an axis of the source to the same data's axis after transposing.
            attrs = {**cut.attrs, "axis": perm[cut.attrs["axis"] % rank]}
            inputs.append(em.op("slice", [moved(cut.inputs[0])], **attrs))
        else:
            inputs.append(moved(x))
    joined = em.op("concat", inputs, axis=rank - 3)
    return [em.op("transpose", [joined], perm=perm)]


def _post(graph: Graph) -> list[str]:
    return [f"concat {n.outputs[0]} is not along channels" for n in graph.nodes if _off_channels(graph, n)]


PASS = node_pass(RULE, "lower", _to_channels, __doc__ or "", post=_post, matches=("concat",))
