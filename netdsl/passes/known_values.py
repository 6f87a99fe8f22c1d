"""What a lowering may know about a value at compile time: whether it is constant, and its array.

Not a pass: shared by the lowerings that need a constant operand (``matmul_to_conv``,
``gather_to_slice``, ``where_to_blend``). They run before constant folding, so a constant written
as a small subgraph of constants (e.g. a mask concatenated from filled blocks) is evaluated here
with the interpreter, exactly as ``constant_folding`` would.
"""

from __future__ import annotations

import numpy as np

from netdsl.interp import eval_node
from netdsl.passes.rewriter import Emitter

MAX_ELEMENTS = 1 << 24  # as constant_folding: never evaluate a huge broadcast


def is_constant(em: Emitter, value: str) -> bool:
    """True when ``value`` is a parameter, a constant, or computed from those only."""
    if em.graph.is_param(value):
        return True
    node = em.producer(value)
    if node is None:
        return False
    return node.op == "const" or (bool(node.inputs) and all(is_constant(em, i) for i in node.inputs))


def known_array(em: Emitter, value: str) -> np.ndarray | None:
    """The array of ``value`` when ``const`` nodes alone compute it (parameters are not known), else None."""
    node = em.producer(value)
    if node is None or em.graph.type_of(value).numel > MAX_ELEMENTS:
        return None
    if node.op == "const":
        return np.asarray(node.attrs["value"])
    args = [known_array(em, i) for i in node.inputs]
    if not node.inputs or any(a is None for a in args):
        return None
    return eval_node(node, args)[node.outputs.index(value)]  # type: ignore[arg-type]


def absorb_producer(em: Emitter, value: str) -> None:
    """Let the rewrite drop the node computing ``value`` (e.g. an index or mask it has read) once unread."""
    node = em.producer(value)
    if node is not None:
        em.absorb(node)
