"""Shared machinery of the rewrite passes: replace nodes by new typed nodes in one sweep.

A pass describes a local rewrite as a function ``(node, em) -> replacement``: it returns None to
keep ``node``, or one value name per output of ``node`` after building the new nodes with the
:class:`Emitter` ``em``. :func:`node_pass` makes it a :class:`Pass` that declares the ops it
matches: the walker calls the function on nodes of those ops only, so rewrites need no guard of
their own. :func:`rewrite_nodes` applies it to every matching node in order and

* gives every new node the replaced node's provenance plus the rule name (:func:`derived`);
* keeps the replaced node's output names on the new nodes that compute them, so consumers,
  graph outputs and emitted ONNX names stay stable;
* redirects consumers when a replacement is an existing value (e.g. an identity's input);
* drops upstream nodes a rewrite absorbed (:meth:`Emitter.absorb`) once nothing reads them;
* records each rewrite in the :class:`RewriteLog`.

One sweep in graph order suffices for most rewrites, since each sees its inputs already
rewritten. A rewrite whose result can match it again (e.g. two transposes merged into one that
only moves axes of length 1, which is a reshape) declares ``repeat``: :func:`rewrite_until_settled`
sweeps until a sweep changes nothing, and a pass still rewriting after its cap of sweeps is an
internal error naming the nodes it kept rewriting, never a silent stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np

from netdsl.builder import typed_node
from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node, Parameter, Provenance
from netdsl.memory import nbytes
from netdsl.passes.base import EVERY_OP, Check, Matches, Pass, RewriteLog, RewriteSize, derived

MAX_SWEEPS = 8
"""Default cap on the sweeps of a repeating pass (a pass that needs more says so)."""


class Emitter:
    """Builds the typed nodes that replace ``origin``; every new node carries ``origin``'s provenance + ``rule``."""

    def __init__(self, graph: Graph, origin: Node, rule: str, producers: dict[str, Node],
                 consumers: dict[str, list[Node]]):
        self.graph = graph
        self.origin = origin
        self.rule = rule
        self.nodes: list[Node] = []
        self.absorbed: list[Node] = []
        self.source = origin  # the node whose provenance new nodes derive from
        self._producers = producers
        self._consumers = consumers

    def producer(self, value: str) -> Node | None:
        """The node computing ``value`` in the graph as rewritten so far (None for inputs and params)."""
        return self._producers.get(value)

    def readers(self, value: str) -> list[Node]:
        """The nodes reading ``value`` in the graph the pass started from (once per input slot)."""
        return list(self._consumers.get(value, ()))

    def used_once(self, value: str) -> bool:
        """True when a single node input reads ``value`` and it is not a graph output."""
        return len(self._consumers.get(value, ())) == 1 and value not in self.graph.outputs

    def const_value(self, value: str) -> np.ndarray | None:
        """The array of ``value`` if a ``const`` node computes it, else None."""
        node = self.producer(value)
        return node.attrs["value"] if node is not None and node.op == "const" else None

    def op_multi(self, op: str, inputs: Sequence[str], hints: Sequence[str] | None = None,
                 **attrs: Any) -> list[str]:
        """Append ``op(inputs) {attrs}``; return its output names (types inferred by :mod:`netdsl.opdefs`)."""
        node = typed_node(self.graph, op, inputs, attrs, self._provenance(), hints, f"{self.origin.outputs[0]}.")
        self.nodes.append(node)
        return node.outputs

    def _provenance(self) -> Provenance:
        """``source``'s provenance plus this rule, which a repeating rule rewriting its own result records once."""
        rules = self.source.provenance.rules
        return self.source.provenance if rules and rules[-1] == self.rule else derived(self.source, self.rule)

    def op(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any) -> str:
        """:meth:`op_multi` for a single-output op."""
        return self.op_multi(op, inputs, [hint] if hint else None, **attrs)[0]

    def const(self, value: np.ndarray, dtype: str, hint: str = "const") -> str:
        """A ``const`` node holding ``value`` as IR dtype ``dtype``."""
        array = np.ascontiguousarray(np.asarray(value).astype(NP_DTYPES[dtype]))
        return self.op("const", [], hint, value=array, dtype=dtype)

    def scalar(self, value: float, like: str) -> str:
        """A one-element constant with the rank and dtype of ``like`` (broadcasts without a rank change)."""
        t = self.graph.type_of(like)
        return self.const(np.full((1,) * t.rank, value), t.dtype, "scalar")

    def param(self, name: str, template: Parameter) -> str:
        """A new parameter named ``name`` (made unique) like ``template``, with this rule in its provenance."""
        fresh = self.graph.fresh_name(name)
        self.graph.params[fresh] = Parameter(fresh, template.type, template.init, template.kind,
                                             template.provenance.with_rule(self.rule))
        return fresh

    def absorb(self, node: Node) -> None:
        """Mark an upstream ``node`` as folded into this rewrite: it is dropped if nothing else reads it."""
        self.absorbed.append(node)


Replacement = Callable[[Node, Emitter], "list[str] | None"]


class RewriteDidNotSettle(RuntimeError):
    """A repeating pass still rewrote nodes after its cap of sweeps (an internal error: the rule does not converge)."""


def rewrite_nodes(graph: Graph, rule: str, log: RewriteLog, fn: Replacement, matches: Matches = None) -> Graph:
    """Apply ``fn`` to every node of ``graph`` whose op ``matches`` (all nodes for None or
    :data:`EVERY_OP`), in order (see the module docstring); returns ``graph``."""
    _sweep(graph, rule, log, fn, matches)
    return graph


def rewrite_until_settled(graph: Graph, rule: str, log: RewriteLog, fn: Replacement, matches: Matches = None,
                          max_sweeps: int = MAX_SWEEPS) -> Graph:
    """:func:`rewrite_nodes` repeated until a sweep rewrites nothing; returns ``graph``.

    At most ``max_sweeps`` sweeps may rewrite: when the one after them still does,
    :class:`RewriteDidNotSettle` names the rule and where the nodes it rewrote come from.
    """
    for _ in range(max_sweeps):
        if not _sweep(graph, rule, log, fn, matches):
            return graph
    again = _sweep(graph, rule, log, fn, matches)
    if not again:
        return graph
    where = ", ".join(f"{n.op} at {n.provenance.span or '<generated>'}" for n in again[:5])
    more = f" and {len(again) - 5} more" if len(again) > 5 else ""
    raise RewriteDidNotSettle(f"rule {rule} still rewrote {len(again)} node(s) after {max_sweeps} sweeps: "
                              f"{where}{more}")


def _sweep(graph: Graph, rule: str, log: RewriteLog, fn: Replacement, matches: Matches) -> list[Node]:
    """One pass of ``fn`` over the matching nodes of ``graph``; returns the nodes it replaced."""
    wanted = matches if isinstance(matches, frozenset) else None
    consumers = graph.consumers()
    producers: dict[str, Node] = {}
    aliases: dict[str, str] = {}
    alias_origin: dict[str, Node] = {}
    absorbed: list[Node] = []
    kept: list[Node] = []
    replaced: list[Node] = []
    for node in list(graph.nodes):
        node.inputs = [_resolve(aliases, i) for i in node.inputs]
        em = Emitter(graph, node, rule, producers, consumers) if wanted is None or node.op in wanted else None
        result = fn(node, em) if em is not None else None
        if em is None or result is None:
            new_nodes = [node]
        else:
            for old_name in _bind_outputs(graph, node, em.nodes, result, aliases):
                alias_origin[old_name] = node
            new_nodes = em.nodes
            absorbed.extend(em.absorbed)
            replaced.append(node)
            log.record(rule, node, [n.op for n in em.nodes])
            log.sizes.append(_rewrite_size(graph, rule, node, em.nodes))
        for n in new_nodes:
            kept.append(n)
            producers.update((o, n) for o in n.outputs)
    graph.nodes = kept
    _bind_graph_outputs(graph, rule, aliases, alias_origin)
    drop_unused(graph, absorbed)
    return replaced


def _rewrite_size(graph: Graph, rule: str, old: Node, new_nodes: list[Node]) -> RewriteSize:
    """The largest activation of ``old`` (inputs and outputs) and of ``new_nodes`` (outputs), and their node count."""
    def largest(values: list[str]) -> int:
        return max((nbytes(graph.values[v]) for v in values if v in graph.values), default=0)

    made = [n for n in new_nodes if n.op != "const"]
    return RewriteSize(rule, old, largest([*old.inputs, *old.outputs]), largest([o for n in made for o in n.outputs]),
                       len(made))


def _resolve(aliases: dict[str, str], name: str) -> str:
    while name in aliases:
        name = aliases[name]
    return name


def _bind_outputs(graph: Graph, old: Node, new_nodes: list[Node], result: list[str],
                  aliases: dict[str, str]) -> list[str]:
    """Give the replacement values the old output names, or alias the old names to existing values.

    Returns the old names that became aliases.
    """
    if len(result) != len(old.outputs):
        raise ValueError(f"a rewrite of {old.op} gave {len(result)} values for {len(old.outputs)} outputs")
    created = {o for n in new_nodes for o in n.outputs}
    aliased = []
    for old_name, new_name in zip(old.outputs, result):
        if graph.type_of(new_name) != graph.values[old_name]:
            raise ValueError(f"a rewrite of {old.op} changed the type of '{old_name}' from "
                             f"{graph.values[old_name]} to {graph.type_of(new_name)}")
        if new_name in created:
            rename_value(new_nodes, new_name, old_name)
            del graph.values[new_name]
        else:
            aliases[old_name] = new_name
            aliased.append(old_name)
    return aliased


def _bind_graph_outputs(graph: Graph, rule: str, aliases: dict[str, str], origin: dict[str, Node]) -> None:
    """A graph output that now aliases another value keeps its name: rename that value, or copy it.

    Renaming is possible when the value is computed by a node and is not itself a graph input or
    output; otherwise an ``identity`` node copies it under the output's name.
    """
    renamed: dict[str, str] = {}
    for name in dict.fromkeys(graph.outputs):
        if name not in aliases:
            continue
        target = _resolve(aliases, name)
        target = renamed.get(target, target)
        if target in graph.values and target not in graph.inputs and target not in graph.outputs:
            rename_value(graph.nodes, target, name)
            del graph.values[target]
            renamed[target] = name
        else:
            graph.nodes.append(Node("identity", [target], [name], {}, derived(origin[name], rule)))
    for name in aliases:
        if name not in graph.outputs:
            del graph.values[name]


def rename_value(nodes: list[Node], old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` in the outputs and inputs of ``nodes``."""
    for n in nodes:
        n.outputs = [new if o == old else o for o in n.outputs]
        n.inputs = [new if i == old else i for i in n.inputs]


def drop_unused(graph: Graph, candidates: list[Node]) -> None:
    """Remove those of ``candidates`` whose outputs nothing reads (repeatedly, for chains)."""
    pending = {id(n) for n in candidates}
    while pending:
        read = {i for n in graph.nodes for i in n.inputs} | set(graph.outputs)
        unread = {id(n) for n in graph.nodes if id(n) in pending and not any(o in read for o in n.outputs)}
        if not unread:
            return
        for node in graph.nodes:
            if id(node) in unread:
                for o in node.outputs:
                    del graph.values[o]
        graph.nodes = [n for n in graph.nodes if id(n) not in unread]
        pending -= unread


def node_pass(rule: str, phase: str, fn: Replacement, doc: str, post: Check | None = None,
              pre: Check | None = None, *, matches: Iterable[str] | Literal["every op"] | None = None,
              repeat: bool = False, max_sweeps: int = MAX_SWEEPS) -> Pass:
    """A :class:`Pass` named ``rule`` that applies the local rewrite ``fn`` to the nodes whose op it ``matches``.

    ``matches`` lists the IR ops ``fn`` rewrites (or is :data:`EVERY_OP`); None, the form of passes
    written before declarations, calls ``fn`` on every node. With ``repeat``, the pass sweeps
    until nothing changes (:func:`rewrite_until_settled`, at most ``max_sweeps`` rewriting sweeps).
    """
    declared: Matches = matches if matches is None or matches == EVERY_OP else frozenset(matches)

    def run(graph: Graph, log: RewriteLog) -> Graph:
        if repeat:
            return rewrite_until_settled(graph, rule, log, fn, declared, max_sweeps)
        return rewrite_nodes(graph, rule, log, fn, declared)

    return Pass(rule, phase, run, doc.strip(), pre, post, declared)
