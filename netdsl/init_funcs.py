"""Initialisers a spec can call: in a ``param`` declaration or a ``with init(...)`` clause.

Each :class:`InitFunc` has a signature bound like an op's (:func:`netdsl.signatures.bind`), says
why a tensor cannot take it, and makes the :class:`~netdsl.ir.Init` that
:mod:`netdsl.initializers` draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netdsl.ir import Init, TensorType
from netdsl.signatures import Arg

# Why a tensor cannot take an initialiser with these arguments, or None when it can.
InitNeed = Callable[[TensorType, dict[str, Any]], "str | None"]


def _any_tensor(t: TensorType, values: dict[str, Any]) -> str | None:
    return None


def _float_tensor(t: TensorType, values: dict[str, Any]) -> str | None:
    return None if t.dtype.startswith("f") else f"it draws random numbers, so it needs a float tensor, not {t.dtype}"


def _fan_out_tensor(t: TensorType, values: dict[str, Any]) -> str | None:
    if t.rank < 2:
        return "its fan-out is read from a weight shape [out, in, ...], which needs rank 2 or more"
    return _float_tensor(t, values)


def _fan_out(t: TensorType) -> tuple[tuple[str, Any], ...]:
    # PyTorch's fan-out: the output count times the receptive field (the product of the dims after 'in').
    return (("fan_out", t.shape[0] * math.prod(t.shape[2:])),)


def _shift_tensor(t: TensorType, values: dict[str, Any]) -> str | None:
    k = values["kernel"]
    if t.rank != 4 or t.shape[2:] != (k, k) or t.shape[1] > k * k:
        return f"shift kernels need a conv weight [out, in, {k}, {k}] with in <= {k * k}"
    return None


def _index_tensor(t: TensorType, values: dict[str, Any]) -> str | None:
    n = values["window"] ** 2
    if t.shape != (n, n) or not t.dtype.startswith("i"):
        return f"the index table of a {values['window']}x{values['window']} window is an integer tensor [{n}, {n}]"
    return None


@dataclass(frozen=True)
class InitFunc:
    """An initialiser a spec can call, in a ``param`` declaration or a ``with init(...)`` clause.

    Its arguments are bound like an op's (:func:`bind`); ``needs`` says why a tensor cannot take it;
    ``derived`` reads further :class:`Init` arguments off the tensor's shape (e.g. the fan-out).
    """

    name: str
    kind: str  # the Init kind it makes
    args: tuple[Arg, ...] = ()
    needs: InitNeed = _any_tensor
    derived: Callable[[TensorType], tuple[tuple[str, Any], ...]] | None = None

    named = False  # an initialiser owns no parameters: it takes no 'as' name

    def problem(self, t: TensorType, values: dict[str, Any]) -> str | None:
        """Why a tensor of type ``t`` cannot take this initialiser with these argument values (None: it can)."""
        for a in self.args:
            v = values[a.name]
            bad_float = isinstance(v, float) and not (math.isfinite(v) and v >= 0)
            if bad_float or (isinstance(v, int) and v < 1):
                shown = "a non-negative finite number" if isinstance(v, float) else "a positive int"
                return f"argument '{a.name}' must be {shown}, found {v}"
        return self.needs(t, values)

    def make(self, t: TensorType, values: dict[str, Any]) -> Init:
        """The :class:`Init` for a tensor of type ``t`` (check :meth:`problem` first).

        Arguments with fixed choices (kaiming_normal's ``mode``) only select the kind: they are not
        arguments of the Init."""
        own = tuple((a.name, values[a.name]) for a in self.args if a.name in values and not a.choices)
        return Init(self.kind, own + (self.derived(t) if self.derived else ()))


INIT_FUNCS: dict[str, InitFunc] = {f.name: f for f in (
    InitFunc("zeros", "zeros"),
    InitFunc("ones", "ones"),
    InitFunc("normal", "normal", (Arg("std", "float"),), _float_tensor),
    InitFunc("trunc_normal", "trunc_normal", (Arg("std", "float"),), _float_tensor),
    InitFunc("uniform_fan_in", "uniform_fan_in", (Arg("fan_in", "int"),), _float_tensor),
    # Kaiming-normal with the ReLU gain: std = sqrt(2 / fan_out), as torchvision's ResNet initialises convs.
    InitFunc("kaiming_normal", "kaiming_normal_fan_out", (Arg("mode", "str", choices=("fan_out",)),),
             _fan_out_tensor, _fan_out),
    InitFunc("shift_kernels", "shift", (Arg("kernel", "int"),), _shift_tensor),
    InitFunc("relative_position_index", "relative_position_index", (Arg("window", "int"),), _index_tensor),
)}
