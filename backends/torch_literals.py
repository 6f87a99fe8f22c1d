"""Python literals, names and initialiser statements in generated PyTorch source."""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from netdsl.backends.torch_runtime import RUNTIME_FUNCTIONS, init_relative_position_index_, init_shift_kernels_
from netdsl.initializers import NP_DTYPES
from netdsl.ir import Init

TORCH_DTYPES = {
    "f32": "torch.float32",
    "f16": "torch.float16",
    "f64": "torch.float64",
    "i64": "torch.int64",
    "i32": "torch.int32",
    "bool": "torch.bool",
}

FLOAT_DTYPES = ("f32", "f16", "f64")

# Names the generated code itself uses; value names must not shadow them.
GENERATED_NAMES = frozenset({"self", "torch", "nn", "F", "getattr", "float"} | {f.__name__ for f in RUNTIME_FUNCTIONS})

# Attributes every nn.Module instance has: a child or parameter of that name would clobber them.
MODULE_ATTRIBUTES = frozenset(dir(nn.Module()))

# Methods and attributes the generated class defines on top of nn.Module.
CLASS_ATTRIBUTES = frozenset({"forward", "STATE_DICT_ORDER"})


def lit(value: Any) -> str:
    """A Python literal for an attribute value (numbers, strings, None, nested tuples/lists)."""
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_lit(float(value))
    if isinstance(value, (tuple, list, np.ndarray)):
        items = [lit(v) for v in value]
        return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted Python string literal
    if value is None:
        return "None"
    raise TypeError(f"no Python literal for {value!r}")


def _float_lit(value: float) -> str:
    if np.isfinite(value):
        return repr(value)
    return f'float("{value}")'


def pair_lit(value: Sequence[int]) -> str:
    """``3`` for (3, 3), ``(1, 2)`` otherwise: how PyTorch's layers read best."""
    a, b = value
    return lit(a) if a == b else lit((a, b))


def call_expr(fn: str, *args: str, **kwargs: str) -> str:
    return fn + "(" + ", ".join([*args, *(f"{k}={v}" for k, v in kwargs.items())]) + ")"


def is_identifier(name: str) -> bool:
    """True when ``name`` can be written as a Python attribute or variable name."""
    return name.isidentifier() and not keyword.iskeyword(name)


def sanitise(name: str) -> str:
    """``name`` made into an identifier: other characters become ``_``, a leading digit gets ``_``."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    return ident + "_" if keyword.iskeyword(ident) else ident


class Namer:
    """Unique identifiers for IR names, avoiding the ``reserved`` ones."""

    def __init__(self, reserved: frozenset[str] | set[str]):
        self._reserved = frozenset(reserved)
        self._taken = set(reserved)
        self._names: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self._names:
            base = sanitise(name)
            # "resize" -> "resize_", leaving "resize_1" to the IR value that has that name.
            if base in self._reserved:
                base += "_"
            ident, i = base, 1
            while ident in self._taken:
                ident, i = f"{base}_{i}", i + 1
            self._taken.add(ident)
            self._names[name] = ident
        return self._names[name]


def shape_args(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape) if shape else "()"


def dtype_kwarg(dtype: str) -> dict[str, str]:
    """``dtype=`` for a tensor constructor, omitted for PyTorch's default float32."""
    return {} if dtype == "f32" else {"dtype": TORCH_DTYPES[dtype]}


def _scalar_lit(value: Any, dtype: str) -> str:
    if dtype == "bool":
        return repr(bool(value))
    if dtype not in FLOAT_DTYPES:
        return repr(int(value))
    v = float(value)
    short = str(NP_DTYPES[dtype](value))
    # The shortest form of a float32/16 value, unless going through a Python float changes it.
    if np.isfinite(v) and NP_DTYPES[dtype](float(short)) == NP_DTYPES[dtype](value):
        return short
    return _float_lit(v)


def tensor_expr(value: np.ndarray, dtype: str, indent: str) -> str:
    """A torch expression building ``value`` (``torch.full`` when all elements are equal)."""
    arr = np.asarray(value).astype(NP_DTYPES[dtype])
    torch_dtype = TORCH_DTYPES[dtype]
    shape = lit(arr.shape) if arr.shape else "()"
    if arr.size == 0:
        return call_expr("torch.empty", shape, dtype=torch_dtype)
    first = arr.flat[0]
    if np.array_equal(arr, np.full_like(arr, first), equal_nan=dtype in FLOAT_DTYPES):
        return call_expr("torch.full", shape, _scalar_lit(first, dtype), dtype=torch_dtype)
    items = [_scalar_lit(v, dtype) for v in arr.ravel()]
    lines, line = [], ""
    for item in items:
        if line and len(line) + len(item) > 100:
            lines.append(line.rstrip())
            line = ""
        line += item + ", "
    lines.append(line.rstrip())
    body = "".join(f"\n{indent}    {ln}" for ln in lines)
    return f"torch.tensor([{body}\n{indent}], dtype={torch_dtype}).reshape({shape_args(arr.shape)})"


INIT_FUNCTIONS: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "shift": (init_shift_kernels_, "kernel"),
    "relative_position_index": (init_relative_position_index_, "window"),
}
"""Init kinds computed by a runtime function, with the function and its Init argument."""


def init_statement(target: str, init: Init) -> str:
    """A statement initialising the tensor ``target`` in place as ``init`` says."""
    kind = init.kind
    if kind == "fill":
        return f"nn.init.constant_({target}, {lit(init.arg('value'))})"
    if kind == "zeros":
        return f"nn.init.zeros_({target})"
    if kind == "ones":
        return f"nn.init.ones_({target})"
    if kind == "uniform_fan_in":
        bound = f"{lit(init.arg('fan_in'))} ** -0.5"
        return f"nn.init.uniform_({target}, -({bound}), {bound})"
    if kind == "normal":
        return f"nn.init.normal_({target}, std={lit(init.arg('std'))})"
    if kind == "trunc_normal":
        std, a, b = init.arg("std"), init.arg("a", -2.0), init.arg("b", 2.0)
        return f"nn.init.trunc_normal_({target}, std={lit(std)}, a={lit(a)}, b={lit(b)})"
    if kind == "kaiming_normal_fan_out":
        return f"nn.init.normal_({target}, std=(2 / {lit(init.arg('fan_out'))}) ** 0.5)"
    if kind in INIT_FUNCTIONS:
        fn, arg = INIT_FUNCTIONS[kind]
        return f"{fn.__name__}({target}, {arg}={lit(init.arg(arg))})"
    raise ValueError(f"unknown initializer kind {kind!r}")


def canonical_init(init: Init) -> tuple[Any, ...]:
    """Init as a comparable tuple, with fill(0)/fill(1) read as zeros/ones."""
    if init.kind == "fill" and init.arg("value") in (0, 1):
        return ("ones",) if init.arg("value") == 1 else ("zeros",)
    return (init.kind, *init.args)


def fan_in_default(fan_in: int) -> tuple[Any, ...]:
    return ("uniform_fan_in", ("fan_in", fan_in))
