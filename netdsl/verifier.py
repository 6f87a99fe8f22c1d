"""IR verifier: structural and type invariants every graph must satisfy, before and after passes.

Checks: SSA (each value defined once, before use), every input of a node defined, outputs
defined, every op known with a legal arity, the recorded type of every node output equal to
what :mod:`netdsl.opdefs` infers, and no unused parameter references to unknown names.
"""

from __future__ import annotations

from netdsl.ir import Graph
from netdsl.opdefs import OPS, OpTypeError, infer_types


class VerifyError(Exception):
    """The graph breaks an IR invariant (an internal error, not a user error)."""


def verify(graph: Graph) -> None:
    """Raise :class:`VerifyError` describing the first broken invariant."""
    defined = set(graph.inputs)
    for name in graph.inputs:
        if name not in graph.values:
            raise VerifyError(f"input %{name} has no type")
    for idx, node in enumerate(graph.nodes):
        where = f"node {idx} ({node.op} -> {', '.join(node.outputs)})"
        if node.op not in OPS:
            raise VerifyError(f"{where}: unknown op '{node.op}'")
        for i in node.inputs:
            if i not in defined and i not in graph.params:
                raise VerifyError(f"{where}: input '{i}' is used before it is defined")
        types = [graph.type_of(i) for i in node.inputs]
        try:
            expected = infer_types(node.op, types, node.attrs)
        except OpTypeError as err:
            raise VerifyError(f"{where}: {err.message}") from None
        if len(expected) != len(node.outputs):
            raise VerifyError(f"{where}: {len(node.outputs)} outputs, op gives {len(expected)}")
        for out, t in zip(node.outputs, expected):
            if out in defined:
                raise VerifyError(f"{where}: value '{out}' defined twice")
            if graph.values.get(out) != t:
                raise VerifyError(f"{where}: '{out}' recorded as {graph.values.get(out)}, inferred {t}")
            defined.add(out)
    for o in graph.outputs:
        if o not in defined:
            raise VerifyError(f"output '{o}' is never defined")
