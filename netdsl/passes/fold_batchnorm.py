"""Batch-norm folding: ``batchnorm(conv(x, W, b))`` -> ``conv(x, W', b')`` (inference).

With s = gamma / sqrt(running_var + eps): ``W'[o] = W[o] * s[o]`` and
``b' = (b - running_mean) * s + beta`` (b = 0 for a conv without bias). One Conv layer instead of
Conv + Scale, and no BatchNormalization left for the restricted profile to doubt.

A batch norm with no conv before it folds into the conv after it instead (``conv(batchnorm(x))``,
e.g. the CSA classifier's norm on the pooled map before its 1x1 head), when that conv has no
padding (padded zeros would not go through the norm's shift): with t = beta - running_mean * s,
``W'[o, i] = W[o, i] * s[i]`` and ``b'[o] = b[o] + sum_i,kh,kw W[o, i, kh, kw] * t[i]``, input
channel i counted within the conv's group.

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

from netdsl.ir import Graph, Init, Node, Parameter, TensorType
from netdsl.passes.base import Pass, WeightedPass, Weights
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "fold_batchnorm"


def foldable_conv(graph: Graph, bn: Node, producer: Node | None, single_use: bool) -> bool:
    """True when batch norm ``bn`` can be folded into ``producer``, the node computing its input."""
    return (bn.op == "batchnorm" and producer is not None and producer.op == "conv" and single_use
            and all(graph.is_param(i) for i in producer.inputs[1:] + bn.inputs[1:]))


def foldable_into_next(graph: Graph, conv: Node, producer: Node | None, single_use: bool) -> bool:
    """True when ``producer``, the node computing the input of ``conv``, is a batch norm that folds into it."""
    return (conv.op == "conv" and producer is not None and producer.op == "batchnorm" and single_use
            and not any(conv.attrs["pads"]) and all(graph.is_param(i) for i in conv.inputs[1:] + producer.inputs[1:]))


def folded_input_parameters(weight: np.ndarray, bias: np.ndarray | None, groups: int, gamma: np.ndarray,
                            beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                            eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') of a batch norm followed by a conv with ``groups`` groups, computed in float64."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    co, ci_per_group = weight.shape[:2]
    grouped = weight.astype(np.float64).reshape(groups, co // groups, ci_per_group, *weight.shape[2:])
    by_input = (groups, 1, ci_per_group) + (1,) * (weight.ndim - 2)
    new_w = (grouped * scale.reshape(by_input)).reshape(weight.shape)
    b = np.zeros(co) if bias is None else bias.astype(np.float64)
    new_b = b + (grouped * shift.reshape(by_input)).reshape(co, -1).sum(axis=1)
    return new_w.astype(weight.dtype), new_b.astype(weight.dtype)


def conv_parameters(conv: Node) -> tuple[str, str | None]:
    """The kernel and (if any) bias parameter names of ``conv``."""
    return conv.inputs[1], (conv.inputs[2] if len(conv.inputs) == 3 else None)


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

    def target_name(em: Emitter, name: str, template: Parameter) -> str:
        """``name`` itself if only this conv reads it, else a fresh parameter like ``template``."""
        if em.graph.is_param(name) and em.used_once(name):
            p = em.graph.params[name]
            p.provenance = p.provenance.with_rule(RULE)
            return name
        return em.param(name, template)

    def operands(conv: Node, bn: Node) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray], float]:
        """The conv's kernel and bias (None without one), the norm's gamma, beta, mean and variance, and its eps."""
        w_name, bias_name = conv_parameters(conv)
        return (weights[w_name], weights[bias_name] if bias_name else None, [weights[i] for i in bn.inputs[1:]],
                float(bn.attrs["eps"]))

    def fold(node: Node, em: Emitter) -> list[str] | None:
        if node.op == "conv":
            return fold_into_next(node, em)
        conv = em.producer(node.inputs[0])
        if not foldable_conv(em.graph, node, conv, em.used_once(node.inputs[0])):
            return None
        assert conv is not None
        kernel, bias, stats, eps = operands(conv, node)
        new_w, new_b = folded_parameters(kernel, bias, *stats, eps)
        em.absorb(conv)
        em.source = conv
        return [emit_conv(em, conv, conv.inputs[0], new_w, new_b)]

    def fold_into_next(conv: Node, em: Emitter) -> list[str] | None:
        bn = em.producer(conv.inputs[0])
        if not foldable_into_next(em.graph, conv, bn, em.used_once(conv.inputs[0])):
            return None
        assert bn is not None
        kernel, bias, stats, eps = operands(conv, bn)
        new_w, new_b = folded_input_parameters(kernel, bias, int(conv.attrs["groups"]), *stats, eps)
        em.absorb(bn)
        return [emit_conv(em, conv, bn.inputs[0], new_w, new_b)]

    def emit_conv(em: Emitter, conv: Node, x: str, new_w: np.ndarray, new_b: np.ndarray) -> str:
        """``conv`` on ``x`` with the folded kernel and bias, stored under its own names where only it reads them
        (a conv without bias gains ``<prefix>.bias``)."""
        w_name, bias_name = conv_parameters(conv)
        kernel = em.graph.params[w_name]
        prefix = w_name.removesuffix(".weight")
        bias_type = TensorType(kernel.type.dtype, (kernel.type.shape[0],))
        w_out = target_name(em, w_name, kernel)
        b_out = target_name(em, bias_name or f"{prefix}.bias",
                            Parameter(f"{prefix}.bias", bias_type, Init("zeros"), "param", kernel.provenance))
        weights[w_out], weights[b_out] = new_w, new_b
        return em.op("conv", [x, w_out, b_out], **conv.attrs)

    def post(graph: Graph) -> list[str]:
        producers, consumers = graph.producers(), graph.consumers()

        def single_use(value: str) -> bool:
            return len(consumers.get(value, [])) == 1 and value not in graph.outputs

        return ([f"batchnorm {n.outputs[0]} still follows conv {n.inputs[0]}" for n in graph.nodes
                 if foldable_conv(graph, n, producers.get(n.inputs[0]), single_use(n.inputs[0]))]
                + [f"batchnorm {n.inputs[0]} still precedes conv {n.outputs[0]}" for n in graph.nodes
                   if foldable_into_next(graph, n, producers.get(n.inputs[0]), single_use(n.inputs[0]))])

    return node_pass(RULE, "optimize", fold, __doc__ or "", post=post, matches=("batchnorm", "conv"))


PASS = WeightedPass(RULE, "optimize", (__doc__ or "").strip(), make_fold_batchnorm)
