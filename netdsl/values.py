"""Compile-time values of the front end: the tensor handle and how values are named and shown.

The bottom of the front end's import order (values <- signatures <- op catalogue and surface
ops <- initialisers <- init overrides <- elaborate): it imports nothing of netdsl, so every
front-end module can name a tensor or print a value without reaching into the elaborator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tensor:
    """A tensor value during elaboration: the name of an IR value or parameter."""

    name: str


def type_name(v: Any) -> str:
    """The language's name for a compile-time value's type."""
    if isinstance(v, Tensor):
        return "tensor"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        inner = {type_name(x) for x in v}
        return f"[{inner.pop()}]" if len(inner) == 1 else "list"
    return type(v).__name__


def show(v: Any) -> str:
    """A compile-time value as the user would write it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(show(x) for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v) if isinstance(v, float) else str(v)
