"""``groupnorm`` with fewer groups than channels -> ``reshape``, a ``groupnorm`` of one group per channel, ``reshape``,
the affine map, for runtimes with an instance norm.

ONNX has InstanceNormalization (one group per channel, an optional per-channel scale and bias), and
ONNX Runtime runs it as one kernel; netdsl's ``groupnorm`` with ``groups = C`` is exactly that op
and the ONNX emitter writes it as one. A group norm of G < C groups normalises each (batch, group)
slice of ``C/G * prod(spatial)`` values: that is the instance norm of ``x`` viewed as
``[B, G, C/G * prod(spatial)]`` (G "channels" of one group each), without affine map; the result is
viewed back as ``x`` and the per-channel ``weight`` and ``bias`` (viewed as ``[C, 1, ...]``) apply
after. Exact: the same statistics over the same values. The restricted TensorRT targets, which
have no normalisation layer, use ``groupnorm_decompose`` instead.
"""

from __future__ import annotations

from netdsl.ir import Graph, Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "groupnorm_to_instancenorm"


def instance_form(graph: Graph, node: Node) -> bool:
    """True for a ``groupnorm`` of one group per channel: an instance norm (its shape checks guarantee
    spatial axes, since a group of one value is refused)."""
    return node.attrs["groups"] == graph.type_of(node.inputs[0]).shape[1]


def _to_instancenorm(node: Node, em: Emitter) -> list[str] | None:
    if instance_form(em.graph, node):
        return None
    x, *affine = node.inputs
    shape = em.graph.type_of(x).shape
    groups = node.attrs["groups"]
    per_group = em.graph.type_of(x).numel // (shape[0] * groups)
    grouped = em.op("reshape", [x], "grouped", shape=(shape[0], groups, per_group))
    normed = em.op("groupnorm", [grouped], "normed", groups=groups, eps=node.attrs["eps"])
    y = em.op("reshape", [normed], shape=shape)
    if affine:
        per_channel = (shape[1],) + (1,) * (len(shape) - 2)
        weight, bias = (em.op("reshape", [p], shape=per_channel) for p in affine)
        y = em.op("add", [em.op("mul", [y, weight], "scaled"), bias])
    return [y]


PASS = node_pass(RULE, "lower", _to_instancenorm, __doc__ or "", matches=("groupnorm",),
                 post=ops_absent("groupnorm", when="it has fewer groups than channels", kept=instance_form))
