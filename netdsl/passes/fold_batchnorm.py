"""Batch-norm folding: ``batchnorm(conv(x, W, b))`` -> ``conv(x, W', b')`` (inference).

With s = gamma / sqrt(running_var + eps): ``W'[o] = W[o] * s[o]`` and
``b' = (b - running_mean) * s + beta`` (b = 0 for a conv without bias). One Conv layer instead of
Conv + Scale, and no BatchNormalization left for the restricted profile to doubt.

Weights are data, not IR, so this pass is built with the weights dict
(:func:`make_fold_batchnorm`) and rewrites it in place: the folded kernel and bias replace the
conv's own entries when nothing else reads them (so the conv keeps its parameter names, e.g.
``q.weight`` / ``q.bias``), and are stored under fresh names otherwise (a shared kernel, or a
conv without bias: ``q.bias`` is created). The batch-norm statistics become unused; ``dce``
removes them from the graph and the pipeline from the weights. A folded parameter keeps its
``Init`` (for default weights the fold is close to the identity) and gains this rule in its
provenance.

Only a conv whose output feeds nothing but the batch norm is folded, with parameters (not
computed tensors) as its kernel, bias and statistics. Not for training: the batch statistics
of a training-mode batch norm cannot be folded (the ``torch`` pipeline never runs this pass).
"""

from __future__ import annotations

import numpy as np

from netdsl.ir import Graph, Node
from netdsl.passes.base import Pass, WeightedPass, Weights
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "fold_batchnorm"


def foldable_conv(graph: Graph, bn: Node, producer: Node | None, single_use: bool) -> bool:
    """True when batch norm ``bn`` can be folded into ``producer``, the node computing its input."""
    return (bn.op == "batchnorm" and producer is not None and producer.op == "conv" and single_use
            and all(graph.is_param(i) for i in producer.inputs[1:] + bn.inputs[1:]))


def folded_parameters(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
                      mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') of a conv followed by a batch norm, computed in float64, returned in the weight's dtype."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    b = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
    # The product is computed in float64 and rounded straight into the result: no float64 copies of the kernel.
    new_w = np.empty(weight.shape, weight.dtype)
    np.multiply(weight, scale[:, None, None, None], out=new_w, dtype=np.float64, casting="same_kind")
    new_b = (b - mean) * scale + beta
    return new_w, new_b.astype(weight.dtype)


def make_fold_batchnorm(weights: Weights) -> Pass:
    """The folding pass over ``weights``, which it updates in place (see the module docstring)."""

    def target_name(em: Emitter, name: str, template_name: str) -> str:
        """``name`` itself if only this conv reads it, else a fresh parameter like ``template_name``."""
        if em.graph.is_param(name) and em.used_once(name):
            p = em.graph.params[name]
            p.provenance = p.provenance.with_rule(RULE)
            return name
        return em.param(name, em.graph.params[template_name])

    def fold(node: Node, em: Emitter) -> list[str] | None:
        if node.op != "batchnorm":
            return None
        conv = em.producer(node.inputs[0])
        if not foldable_conv(em.graph, node, conv, em.used_once(node.inputs[0])):
            return None
        assert conv is not None
        w_name, bias_name = conv.inputs[1], (conv.inputs[2] if len(conv.inputs) == 3 else None)
        gamma, beta, mean, var = (weights[i] for i in node.inputs[1:])
        new_w, new_b = folded_parameters(weights[w_name], weights[bias_name] if bias_name else None,
                                         gamma, beta, mean, var, float(node.attrs["eps"]))
        prefix = w_name.removesuffix(".weight")
        w_out = target_name(em, w_name, w_name)
        b_out = target_name(em, bias_name or f"{prefix}.bias", node.inputs[2])
        weights[w_out], weights[b_out] = new_w, new_b
        em.absorb(conv)
        em.source = conv
        return [em.op("conv", [conv.inputs[0], w_out, b_out], **conv.attrs)]

    def post(graph: Graph) -> list[str]:
        producers, consumers = graph.producers(), graph.consumers()
        return [f"batchnorm {n.outputs[0]} still follows conv {n.inputs[0]}" for n in graph.nodes
                if n.op == "batchnorm" and foldable_conv(graph, n, producers.get(n.inputs[0]),
                                 len(consumers.get(n.inputs[0], [])) == 1 and n.inputs[0] not in graph.outputs)]

    return node_pass(RULE, "optimize", fold, __doc__ or "", post=post)


PASS = WeightedPass(RULE, "optimize", (__doc__ or "").strip(), make_fold_batchnorm)
