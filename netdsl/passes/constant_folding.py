"""Constant folding: input-independent nodes -> ``const`` nodes, evaluated by the interpreter.

A node is folded when every input is computed by a ``const`` node (sources without inputs, such
as ``grid`` positional tables, fold too); its value comes from :func:`netdsl.interp.eval_node`,
i.e. exactly the op's documented semantics. Repeating this in graph order folds whole constant
subgraphs. Inputs that end up unused are dropped.

Parameters are not constants: they are trained and loaded by name, so ``constant_folding``
keeps them. For inference targets, ``fold_params`` (:mod:`netdsl.passes.fold_params`, built with the
weights by :func:`make_constant_folding`) also treats parameters and buffers as known values, e.g. a
positional encoding ``conv(grid, weight, bias)`` or a relative-position bias gathered from a
table by an index buffer becomes one constant; the parameters it no longer needs are left to
``dce``. Results larger than ``max_elements`` are not folded, so a broadcast cannot turn a few
numbers into a huge constant.
"""

from __future__ import annotations

import numpy as np

from netdsl.initializers import NP_DTYPES
from netdsl.interp import eval_node
from netdsl.ir import Graph, Node
from netdsl.passes.base import EVERY_OP, Pass, Weights
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "constant_folding"
PARAMS_RULE = "fold_params"
MAX_ELEMENTS = 1 << 24


def make_constant_folding(weights: Weights | None = None, max_elements: int = MAX_ELEMENTS) -> Pass:
    """The folding pass; with ``weights``, parameters count as constants (rule ``fold_params``)."""
    rule = RULE if weights is None else PARAMS_RULE

    def known(graph: Graph, value: str, const_of: dict[str, np.ndarray]) -> np.ndarray | None:
        if value in const_of:
            return const_of[value]
        if weights is not None and value in graph.params:
            # In the parameter's dtype: a weight held in float16 for a float16 model is folded in float32.
            return np.asarray(weights[value], dtype=NP_DTYPES[graph.params[value].type.dtype])
        return None

    def foldable(graph: Graph, node: Node, const_of: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """The input values of ``node`` if it can be folded, else None."""
        if node.op == "const" or sum(graph.values[o].numel for o in node.outputs) > max_elements:
            return None
        args = []
        for i in node.inputs:
            value = known(graph, i, const_of)
            if value is None:
                return None
            args.append(value)
        return args

    def fold(node: Node, em: Emitter) -> list[str] | None:
        const_nodes = [n for i in node.inputs if (n := em.producer(i)) is not None and n.op == "const"]
        args = foldable(em.graph, node, {n.outputs[0]: n.attrs["value"] for n in const_nodes})
        if args is None:
            return None
        for const in const_nodes:
            em.absorb(const)
        values = eval_node(node, args)
        return [em.const(v, em.graph.values[o].dtype, "folded") for v, o in zip(values, node.outputs)]

    def post(graph: Graph) -> list[str]:
        const_of = {n.outputs[0]: n.attrs["value"] for n in graph.nodes if n.op == "const"}
        return [f"{n.op} node {n.outputs[0]} has only constant inputs" for n in graph.nodes
                if foldable(graph, n, const_of) is not None]

    return node_pass(rule, "optimize", fold, __doc__ or "", post=post, matches=EVERY_OP)


PASS = make_constant_folding()
