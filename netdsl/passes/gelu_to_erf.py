"""Exact ``gelu`` -> ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (``div``, ``erf``, ``mul``, ``add``), for runtimes with Erf.

ONNX has Gelu only from opset 20 on and standard TensorRT parses the erf form; the op's definition
``x * Phi(x)`` with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` is written here as ``div`` by sqrt(2),
``erf``, ``mul`` of x by 0.5, ``add`` of 1 and the final ``mul``. The division (not a product by
1/sqrt 2) and this order are the pattern ONNX Runtime fuses back into one Gelu kernel (Div, Erf,
Add, Mul, Mul), so the decomposed form costs one kernel there. Exact up to the rounding of erf.
The restricted TensorRT targets, which have no Erf, lower ``gelu`` with ``erf_decompose`` instead.
"""

from __future__ import annotations

import math

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "gelu_to_erf"


def _to_erf(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    dtype = em.graph.type_of(x).dtype
    erf = em.op("erf", [em.op("div", [x, em.const(math.sqrt(2.0), dtype, "sqrt2")])])
    half_x = em.op("mul", [x, em.const(0.5, dtype, "half")])
    return [em.op("mul", [half_x, em.op("add", [erf, em.const(1.0, dtype, "one")])])]


PASS = node_pass(RULE, "lower", _to_erf, __doc__ or "", matches=("gelu",), post=ops_absent("gelu"))
