"""Per-pixel affine maps folded into the conv after them: ``conv(P(x))`` -> ``conv(x, W')`` (+ a constant map).

``P`` is a chain of 1x1 convs (stride 1, no padding), reshapes, transposes, concats, slices and splits from one NCHW map
``x`` [B, Cx, H, W] to the conv's input ``z`` [B, Cz, H, W] that maps the channels of each pixel
affinely and on their own: ``z[b, :, i, j] = A x[b, :, i, j] + β``. For a conv with kernel ``W``
(``G`` groups of ``Cz / G`` input channels, output channel ``o`` in group ``g(o)``),
``conv(z) = conv(x, W') + conv(β, W)`` with the ungrouped kernel
``W'[o, c] = Σ_m W[o, m] · A[g(o)·Cz/G + m, c]`` (same kernel size, stride, padding and dilation).
The second term is a constant: a bias when it is the same at every output pixel, else (zero padding
meets ``β`` at the borders) a constant map added after the conv.

Why: ACmix's convolution path is such a chain. ``fc``, a 1x1 conv over the q, k and v projections
viewed as a ``[B, 3·heads, d, H·W]`` map, then a transpose, then ``dep_conv``, a 3x3 conv with
``groups = d`` (nine input channels per group): ONNX Runtime (1.32, CPU) runs the two small convs far
below its dense-conv speed. At stride 2 (64 channels, 56x56) they take 9.5 M multiply-adds and ~2 ms
of a ~7 ms block (plus a concat, a transpose and two layout reorders), where the folded dense 3x3
stride-2 conv of ``x`` takes 28.9 M in ~0.5 ms (docs/benchmarks.md, "ACmix at stride 2").

How ``A`` and ``β`` are found: the interpreter evaluates the chain in float64 on probes. Zeros give
``β`` (which must be the same at every pixel); unit vectors at ``Cx`` distinct pixels give the columns
of ``A``; a random map must then give ``A x + β`` at every pixel, so a chain that moves pixels (a
reshape across the spatial axes, a spatial slice) is refused.

When: the folded conv does ``Co·Cx·kh·kw`` multiply-adds per output pixel, possibly far more than the
grouped conv it replaces. Only a fold that frees at least one conv of the chain (nothing else reads
it) is made, and only when the folded conv does no more multiply-adds than the convs it frees, or, for
a grouped conv (which ONNX Runtime runs far below its dense speed), at most :data:`MAC_RATIO` times
as many (ACmix, 64 channels: 3.0x at stride 2, folded; 5.3x at stride 1, not folded, where a fold
measured no faster). So a linear 1x1 conv feeding another (MobileNetV2's projection before the next
block's expansion, 96 -> 24 -> 144 channels) stays: folded, it would do 2.4 times the work.
Exact up to float32 rounding: the products of the kernels are computed once in float64, and the sums
run in another order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from netdsl.interp import eval_node
from netdsl.ir import Graph, Node
from netdsl.passes.base import Pass, WeightedPass, Weights
from netdsl.passes.conv_before_resize import is_pointwise
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "fold_pointwise_into_conv"
# Ops of the chain: affine in their first input (a conv's kernel and bias must be known values).
AFFINE_OPS = frozenset({"conv", "reshape", "transpose", "concat", "slice", "split"})
MAX_CHAIN = 32  # nodes of the chain, at most
MAC_RATIO = 4  # the folded conv's multiply-adds over those of the convs it frees, at most
Known = Callable[[str], "np.ndarray | None"]


@dataclass(frozen=True)
class _Chain:
    """The nodes computing ``output`` from ``source`` (each after the nodes it reads)."""

    source: str
    output: str
    nodes: list[Node]

    def evaluate(self, x: np.ndarray, known: Known) -> np.ndarray:
        """``output`` for ``source = x``, in float64."""
        values = {self.source: x}
        for node in self.nodes:
            args = [values[i] if i in values else np.asarray(known(i), np.float64) for i in node.inputs]
            values.update(zip(node.outputs, eval_node(node, args), strict=True))
        return values[self.output]


def _chain(em: Emitter, z: str, known: Known) -> _Chain | None:
    """The affine chain computing ``z`` from a single map, or None (no chain, another source, too long)."""
    nodes: list[Node] = []
    sources: set[str] = set()
    seen: set[str] = set()

    def visit(value: str) -> None:
        if value in seen:
            return
        seen.add(value)
        node = em.producer(value)
        data = [] if node is None else node.inputs[:1] if node.op == "conv" else node.inputs
        # A conv that mixes pixels (a 3x3 stem, a strided conv) starts the chain: its output is the source.
        if node is None or node.op not in AFFINE_OPS or (node.op == "conv" and not is_pointwise(em, node)) \
                or any(known(i) is None for i in node.inputs[len(data):]):
            sources.add(value)
            return
        for i in data:
            visit(i)
        nodes.append(node)

    visit(z)
    if len(sources) != 1 or not nodes or len(nodes) > MAX_CHAIN:
        return None
    source = sources.pop()
    return _Chain(source, z, nodes) if known(source) is None else None


def _affine_map(chain: _Chain, shape: tuple[int, ...], known: Known) -> tuple[np.ndarray, np.ndarray] | None:
    """(A [Cz, Cx], β [Cz]) with ``z[b, :, i, j] = A x[b, :, i, j] + β`` for ``x`` of ``shape``, or None."""
    _, cx, _, w = shape
    beta = chain.evaluate(np.zeros(shape), known)
    if not np.array_equal(beta, np.broadcast_to(beta[:1, :, :1, :1], beta.shape)):
        return None
    beta = beta[0, :, 0, 0]
    rows, cols = np.divmod(np.arange(cx), w)
    units = np.zeros(shape)
    units[:, np.arange(cx), rows, cols] = 1.0
    a = chain.evaluate(units, known)[0][:, rows, cols] - beta[:, None]
    probe = np.random.default_rng(0).standard_normal(shape)
    got = chain.evaluate(probe, known)
    want = np.einsum("zc,bchw->bzhw", a, probe) + beta[None, :, None, None]
    return (a, beta) if np.allclose(got, want, rtol=1e-9, atol=1e-9 * float(np.abs(want).max(initial=1.0))) else None


def _macs(graph: Graph, conv: Node) -> int:
    """Multiply-adds of ``conv``."""
    return math.prod(graph.type_of(conv.outputs[0]).shape) * math.prod(graph.type_of(conv.inputs[1]).shape[1:])


def _freed(em: Emitter, chain: _Chain, conv: Node) -> list[Node]:
    """The chain's nodes that only the conv (and freed nodes) read: they go when the conv reads ``x``."""
    gone = {id(conv)}
    for node in reversed(chain.nodes):
        readers = [r for o in node.outputs for r in em.readers(o)]
        if not any(o in em.graph.outputs for o in node.outputs) and all(id(r) in gone for r in readers):
            gone.add(id(node))
    return [n for n in chain.nodes if id(n) in gone]


def _folded(conv: Node, weight: np.ndarray, bias: np.ndarray | None, a: np.ndarray, beta: np.ndarray,
            spatial: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(W' [Co, Cx, kh, kw], the constant ``conv(β, W) + bias`` [1, Co, Ho, Wo]), in float64."""
    co, per_group = weight.shape[:2]
    groups = int(conv.attrs["groups"])
    rows = a.reshape(groups, per_group, a.shape[1])[np.arange(co) // (co // groups)]  # [Co, per group, Cx]
    kernel = np.einsum("omuv,omc->ocuv", weight, rows)
    beta_map = np.broadcast_to(beta[None, :, None, None], (1, len(beta), *spatial))
    constant = eval_node(conv, [beta_map, weight, *([] if bias is None else [bias])])[0]
    return kernel, constant


def make_fold_pointwise_into_conv(weights: Weights) -> Pass:
    """The pass, reading parameter values from ``weights`` (see the module docstring)."""

    def fold(conv: Node, em: Emitter) -> list[str] | None:
        def known(value: str) -> np.ndarray | None:
            return weights.get(value) if em.graph.is_param(value) else em.const_value(value)

        z = em.graph.type_of(conv.inputs[0])
        chain = _chain(em, conv.inputs[0], known) if z.rank == 4 and known(conv.inputs[1]) is not None else None
        if chain is None:
            return None
        x = em.graph.type_of(chain.source)
        if x.rank != 4 or x.shape[:1] + x.shape[2:] != z.shape[:1] + z.shape[2:] or x.shape[1] > math.prod(x.shape[2:]):
            return None
        freed = [n for n in _freed(em, chain, conv) if n.op == "conv"]
        folded_macs = math.prod(em.graph.type_of(conv.outputs[0]).shape) * x.shape[1] * math.prod(
            em.graph.type_of(conv.inputs[1]).shape[2:])
        limit = MAC_RATIO if conv.attrs["groups"] > 1 else 1
        if not freed or folded_macs > limit * (_macs(em.graph, conv) + sum(_macs(em.graph, n) for n in freed)):
            return None
        affine = _affine_map(chain, x.shape, known)
        if affine is None:
            return None
        weight = np.asarray(known(conv.inputs[1]), np.float64)
        bias = None if len(conv.inputs) < 3 else np.asarray(known(conv.inputs[2]), np.float64)
        kernel, constant = _folded(conv, weight, bias, *affine, spatial=z.shape[2:])
        for node in chain.nodes:
            em.absorb(node)
        attrs = {**conv.attrs, "groups": 1}
        folded_kernel = em.const(kernel, z.dtype, "folded_kernel")
        if np.array_equal(constant, np.broadcast_to(constant[:, :, :1, :1], constant.shape)):
            return [em.op("conv", [chain.source, folded_kernel, em.const(constant[0, :, 0, 0], z.dtype, "folded_bias")],
                          **attrs)]
        return [em.op("add", [em.op("conv", [chain.source, folded_kernel], **attrs),
                              em.const(constant, z.dtype, "folded_bias")])]

    return node_pass(RULE, "optimize", fold, __doc__ or "", matches=("conv",))


PASS = WeightedPass(RULE, "optimize", (__doc__ or "").strip(), make_fold_pointwise_into_conv)
