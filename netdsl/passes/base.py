"""Pass infrastructure: what a rewrite pass is, and how it records what it did.

A pass is a :class:`Pass`: a name, the phase it runs in, a function ``Graph -> Graph`` and
optional pre/postcondition checks (tests assert them). Nodes a pass creates get the
provenance of the node they replace plus the pass's name (:func:`derived`), so every
lowered op can be traced back to its spec line and the chain of rules applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from netdsl.ir import Graph, Node, Provenance

# Phases run in this order; within a phase, passes run in the order the pipeline lists them.
PHASES = ("canonicalize", "lower", "optimize", "cleanup")


@dataclass(frozen=True)
class RewriteSize:
    """How big one rewrite made one op: its largest activation and node count before and after.

    ``largest_before`` is the largest activation the replaced op reads or writes, ``largest_after``
    the largest one the new nodes write; ``nodes_after`` counts the new nodes except constants.
    """

    rule: str
    node: Node
    largest_before: int
    largest_after: int
    nodes_after: int


@dataclass
class RewriteLog:
    """What a pass run changed: (rule, spec location, replaced op, new op types), and the sizes of each rewrite."""

    entries: list[tuple[str, str, str, list[str]]] = field(default_factory=list)
    sizes: list[RewriteSize] = field(default_factory=list)

    def record(self, rule: str, old: Node, new_ops: list[str]) -> None:
        where = str(old.provenance.span) if old.provenance.span else "<generated>"
        self.entries.append((rule, where, old.op, new_ops))


Check = Callable[[Graph], list[str]]  # returns a list of violations (empty = holds)

EVERY_OP: Final = "every op"
"""The ``matches`` of a pass that looks at every node whatever its op (e.g. CSE, DCE, constant folding)."""

Matches = frozenset[str] | Literal["every op"] | None


@dataclass(frozen=True)
class Pass:
    """A graph rewrite.

    ``run(graph, log)`` returns the rewritten graph (it may mutate and return the same object).
    ``pre``/``post`` return lists of violated conditions; tests check them around ``run``.
    ``matches`` declares the IR ops the pass rewrites (a node pass is called on those nodes only),
    or :data:`EVERY_OP`; None is a pass that has not declared them yet.
    """

    name: str
    phase: str
    run: Callable[[Graph, RewriteLog], Graph]
    doc: str
    pre: Check | None = None
    post: Check | None = None
    matches: Matches = None


Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class WeightedPass:
    """A pass that reads or rewrites parameter values, which are data rather than IR.

    ``bind(weights)`` returns the :class:`Pass`; running it updates ``weights`` in place so that
    it keeps naming every parameter the rewritten graph uses (e.g. a folded conv weight).
    """

    name: str
    phase: str
    doc: str
    bind: Callable[[Weights], Pass]


def derived(node: Node, rule: str) -> Provenance:
    """Provenance for a node created by ``rule`` while rewriting ``node``."""
    return node.provenance.with_rule(rule)


@dataclass(frozen=True)
class OpsAbsent:
    """A postcondition: none of ``ops`` is left in the graph, except nodes ``kept`` says the pass may leave.

    Being data rather than a closure, it also says which IR ops a pass removes (:func:`removed_ops`),
    and under which condition (``when``, in words, e.g. "its indices are constants"), which the
    coverage report uses to name the targets that lower an op.
    """

    ops: frozenset[str]
    when: str = ""
    kept: Callable[[Graph, Node], bool] | None = None

    def __call__(self, graph: Graph) -> list[str]:
        return [f"{n.op} node {n.outputs[0]} left" for n in graph.nodes
                if n.op in self.ops and not (self.kept is not None and self.kept(graph, n))]


def ops_absent(*ops: str, when: str = "", kept: Callable[[Graph, Node], bool] | None = None) -> OpsAbsent:
    """A postcondition: none of ``ops`` is left in the graph; with ``kept``, except the nodes it accepts
    (those not matching ``when``, the condition under which the pass removes them)."""
    return OpsAbsent(frozenset(ops), when, kept)


def removed_ops(p: Pass | WeightedPass) -> OpsAbsent | None:
    """The IR ops a pass removes and when (its :func:`ops_absent` postcondition); None if it states none."""
    post = p.post if isinstance(p, Pass) else None
    return post if isinstance(post, OpsAbsent) else None
