"""``pow`` with a constant exponent -> products, a reciprocal and square roots.

ONNX Pow (TensorRT's kPOW) is not in the restricted layer set. For ``x ** e``:

* ``e`` an integer n: ``x ** |n|`` by repeated squaring (about log2 |n| squarings and one product
  per set bit of |n|), then ``1 / that`` when n < 0 (the reciprocal ``x ** -1`` is one Div);
  ``e = 0`` is the constant 1 and ``e = 1`` is x itself. Valid for every x; the result is within
  about (|n| - 1) / 2 + 1 ulp (one rounding per product, plus the division);
* ``e`` a multiple of 1/8 (1/2, 1/4, 3/4, 1.5, -0.5, ...): ``x ** floor|e|`` times nested square
  roots ``x ** (1/2)``, ``x ** (1/4)``, ``x ** (1/8)`` for the set bits of the fraction, then the
  reciprocal for e < 0: ``x ** -0.5`` (the reciprocal square root) is ``1 / sqrt(x)``. The
  ``sqrt`` nodes carry the pow's ``range`` attribute (or, without one, sqrt's default range,
  narrowed by each nesting), and ``sqrt_decompose`` lowers them, with its error bound and its
  range check;
* any other exponent has no exact form in the restricted set: a located compile error.
"""

from __future__ import annotations

import math

import numpy as np

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.rewriter import Emitter, node_pass
from netdsl.passes.sqrt_decompose import input_range

RULE = "pow_decompose"

ROOT_BITS = 3
"""Fractions of the exponent with a form: multiples of 2^-ROOT_BITS (nested square roots)."""


def _integer_power(em: Emitter, x: str, n: int) -> str | None:
    """``x ** n`` for n >= 1 by repeated squaring (None for n = 0)."""
    result: str | None = None
    square = x
    while n:
        if n & 1:
            result = square if result is None else em.op("mul", [result, square])
        n >>= 1
        if n:
            square = em.op("mul", [square, square])
    return result


def _decompose_pow(node: Node, em: Emitter) -> list[str] | None:
    x = node.inputs[0]
    exponent = float(node.attrs["exponent"])
    scaled = abs(exponent) * 2**ROOT_BITS
    if scaled != math.floor(scaled):
        prov = node.provenance
        raise NetdslError(Diagnostic(
            f"pow with the exponent {exponent:g} has no exact lowering to the restricted layer set ({RULE})",
            prov.span, chain=prov.chain,
            notes=[f"exact forms exist for integer exponents and multiples of 1/{2**ROOT_BITS} "
                   "(products, a reciprocal and square roots)"],
            help="use such an exponent, or compute the power with other ops (e.g. exp and a known log)"))
    whole, fraction = divmod(int(scaled), 2**ROOT_BITS)
    result = _integer_power(em, x, whole)
    root, (lo, hi) = x, input_range(node)
    for bit in range(ROOT_BITS - 1, -1, -1):
        if not fraction:
            break
        root = em.op("sqrt", [root], "root", range=(lo, hi))
        lo, hi = math.sqrt(lo), math.sqrt(hi)
        if fraction >> bit & 1:
            result = root if result is None else em.op("mul", [result, root])
        fraction &= (1 << bit) - 1
    if result is None:  # x ** 0
        t = em.graph.type_of(x)
        return [em.const(np.ones(t.shape), t.dtype, "one")]
    if exponent < 0:
        result = em.op("div", [em.scalar(1.0, x), result], "reciprocal")
    return [result]


PASS = node_pass(RULE, "lower", _decompose_pow, __doc__ or "", matches=("pow",), post=ops_absent("pow"))
