"""The rewriter API: declared matches, the walker that repeats until nothing changes, its cap."""

from __future__ import annotations

import pytest
from pass_support import at, builder_with_input, check_rewrite, op_counts

from netdsl.ir import Node
from netdsl.passes import registry
from netdsl.passes.base import EVERY_OP, Pass, RewriteLog, WeightedPass
from netdsl.passes.cleanup_shuffles import PASS as CLEANUP
from netdsl.passes.rewriter import Emitter, RewriteDidNotSettle, node_pass
from netdsl.passes.roll_to_slice_concat import PASS as ROLL


def _runnable(p: Pass | WeightedPass) -> Pass:
    """The pass itself, or a weighted pass bound to no weights (enough to read what it declares)."""
    return p if isinstance(p, Pass) else p.bind({})


def test_every_registered_pass_declares_the_ops_it_matches() -> None:
    # Lists the passes still written without a declaration, so that they are visible by name.
    undeclared = sorted(name for name, p in registry.all_passes().items() if _runnable(p).matches is None)
    assert undeclared == []


def test_a_declared_pass_is_called_on_the_matching_nodes_only() -> None:
    seen: list[str] = []

    def record(node: Node, em: Emitter) -> list[str] | None:
        seen.append(node.op)
        return None

    b, x = builder_with_input(1, 2, 3, 3)
    b.output(b.op("sigmoid", [b.op("relu", [b.op("relu", [x], at(2))], at(3))], at(4)))
    node_pass("only_relu", "lower", record, "records what it is called on", matches=("relu",)).run(
        b.graph, RewriteLog())
    assert seen == ["relu", "relu"]
    seen.clear()
    node_pass("every", "lower", record, "records what it is called on", matches=EVERY_OP).run(b.graph, RewriteLog())
    assert seen == ["relu", "relu", "sigmoid"]


def test_the_declaration_is_the_set_of_ops_given() -> None:
    assert ROLL.matches == frozenset({"roll"}) and CLEANUP.matches is not None and "transpose" in CLEANUP.matches


def test_repeating_cleanup_turns_a_merged_transpose_of_length_one_axes_into_a_reshape() -> None:
    # Neither transpose keeps the element order; their product only moves the length-1 axis: a reshape,
    # which the second sweep finds and merges with the reshape that follows.
    b, x = builder_with_input(2, 3, 1)
    t = b.op("transpose", [b.op("transpose", [x], at(2), perm=(1, 0, 2))], at(3), perm=(2, 1, 0))
    b.output(b.op("sigmoid", [b.op("reshape", [t], at(4), shape=(6,))], at(5)))
    out, log = check_rewrite(CLEANUP, b.graph, {"reshape": 1, "sigmoid": 1})
    (reshape,) = (n for n in out.nodes if n.op == "reshape")
    assert reshape.inputs == [x] and reshape.provenance.rules == ("cleanup_shuffles",)
    assert [e[2] for e in log.entries] == ["transpose", "transpose", "reshape"]


def test_a_pass_that_never_settles_is_an_internal_error_naming_where() -> None:
    def wrap(node: Node, em: Emitter) -> list[str]:
        return [em.op("relu", [node.inputs[0]])]

    b, x = builder_with_input(1, 2)
    b.output(b.op("relu", [x], at(7)))
    endless = node_pass("endless", "lower", wrap, "rewrites every relu into a relu", matches=("relu",), repeat=True,
                        max_sweeps=3)
    with pytest.raises(RewriteDidNotSettle,
                       match=r"rule endless still rewrote 1 node\(s\) after 3 sweeps: relu at t\.net:7:5"):
        endless.run(b.graph, RewriteLog())


def test_a_repeating_pass_stops_when_a_sweep_changes_nothing() -> None:
    calls: list[str] = []

    def halve(node: Node, em: Emitter) -> list[str] | None:
        calls.append(node.op)
        n = em.graph.type_of(node.inputs[0]).shape[0]
        if n == 1:
            return None
        half = em.op("slice", [node.inputs[0]], axis=0, start=0, end=n // 2, step=1)
        return [em.op("reduce_max", [half], axes=(0,), keepdims=True)]

    b, x = builder_with_input(8, 2)
    b.output(b.op("reduce_max", [x], at(2), axes=(0,), keepdims=True))
    out = node_pass("halve", "lower", halve, "keeps the first half", matches=("reduce_max",), repeat=True).run(
        b.graph, RewriteLog())
    assert op_counts(out) == {"slice": 3, "reduce_max": 1} and len(calls) == 4
