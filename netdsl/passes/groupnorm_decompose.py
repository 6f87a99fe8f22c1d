"""``groupnorm`` (and instance norm, its ``groups = C`` case) -> means by ``reduce_mean``, ``sqrt``, elementwise ops.

Restricted TensorRT and DLA have no normalisation layer. ``x[B, C, *S]`` with G groups is viewed
as ``[B, G, R1, R2]`` (R1 * R2 = C/G * prod(S), each within the view limits; a rank-4 view
because DLA runs elementwise layers on rank-4 tensors only) and normalised over axes 2 and 3
exactly as ``layernorm_decompose`` normalises its axis: two-pass, re-centred variance, ``sqrt``
of ``var + eps`` and a ``div`` (see that pass for why and for the error bound, with n the
group's element count). The group means are ``reduce_mean`` nodes for ``reduce_to_conv``, which
pools them (windows within DLA's 8 x 8) on the view, so this pass runs before it. The per-channel
affine map is applied on the view ``[B, C, T1, T2]`` of the result.
"""

from __future__ import annotations

import math

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.layernorm_decompose import affine, normalise
from netdsl.passes.rank4_view import rank4_shape, split_extent, view_as
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "groupnorm_decompose"


def _decompose_groupnorm(node: Node, em: Emitter) -> list[str] | None:
    x, *params = node.inputs
    shape = em.graph.type_of(x).shape
    batch, channels, groups = shape[0], shape[1], node.attrs["groups"]
    per_group = channels // groups * math.prod(shape[2:])
    grouped = view_as(em, x, (batch, groups, *(split_extent(per_group) or (per_group, 1))))
    y = normalise(em, grouped, (2, 3), node.attrs["eps"])
    map_view = rank4_shape(shape, (batch, channels))
    weight, bias = (params + [None, None])[:2]
    return [view_as(em, affine(em, view_as(em, y, map_view), weight, bias), shape)]


PASS = node_pass(RULE, "lower", _decompose_groupnorm, __doc__ or "", matches=("groupnorm",),
                 post=ops_absent("groupnorm"))
