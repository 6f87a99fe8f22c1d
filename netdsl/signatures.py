"""Signatures: the declared arguments of ops and initialisers, and how a call binds to them.

An :class:`Arg` names one argument, its kind, its default and an optional :class:`Constraint`.
The op catalogue (:mod:`netdsl.opdefs`) declares each op's arguments this way next to its type
inference; from that one declaration come the surface binding of the ops that only pass their
arguments through, the attribute checks every IR node gets (:func:`check_attrs`, run by type
inference and so by the verifier), and the generated op reference of docs/language.md.
:func:`bind` matches a spec's call to a signature, with located errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netdsl import ast
from netdsl.diagnostics import did_you_mean
from netdsl.ir import Span
from netdsl.values import Tensor, show, type_name

if TYPE_CHECKING:
    from netdsl.elaborate import Elaborator, Scope

REQUIRED: Any = object()
"""The default of an argument a call must give."""

TENSOR_KINDS = ("tensor", "tensors")
"""Kinds of the arguments that become an op's inputs; every other argument is an attribute."""


@dataclass(frozen=True)
class Constraint:
    """A condition on an attribute's value: ``test`` holds, else "NAME must be ``words``"."""

    words: str
    test: Callable[[Any], bool]


def _numbers(v: Any) -> list[float]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


POSITIVE = Constraint("positive", lambda v: min(_numbers(v)) >= 1)
"""Every int of the value is at least 1 (sizes, strides, counts)."""

NON_NEGATIVE = Constraint("non-negative", lambda v: min(_numbers(v)) >= 0)
"""Every number of the value is at least 0 (paddings)."""


@dataclass(frozen=True)
class Arg:
    """One argument: name, kind, default (``REQUIRED`` if none), choices for strings, the IR attribute
    it sets when that is named differently (``padding`` -> ``pads``), and a constraint on its value."""

    name: str
    kind: str  # tensor | tensors | int | float | bool | str | pair | pads | ints | floats | offsets | any
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    attr: str | None = None
    check: Constraint | None = None

    @property
    def ir_name(self) -> str:
        """The name of the IR attribute (or input) the argument sets."""
        return self.attr or self.name

    @property
    def is_input(self) -> bool:
        """Whether the argument is a tensor input of the op rather than an attribute."""
        return self.kind in TENSOR_KINDS


class Signed:
    """Anything with a name and a signature that calls bind to: a surface op or an initialiser."""

    name: str
    args: tuple[Arg, ...]
    named: bool


@dataclass
class Bound:
    """Arguments of one call after binding: values, spans, and the call itself."""

    call: ast.Call
    values: dict[str, Any]
    spans: dict[str, Span]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def convert(kind: str, v: Any) -> tuple[bool, Any]:
    """Whether the spec value ``v`` has ``kind``, and its normalised form (an int pair from an int, ...)."""
    if kind == "any":
        return True, v
    if kind == "tensor":
        return isinstance(v, Tensor), v
    if kind == "tensors":
        return isinstance(v, list) and bool(v) and all(isinstance(x, Tensor) for x in v), v
    if kind == "int":
        return _is_int(v), v
    if kind == "float":
        return _is_num(v), float(v) if _is_num(v) else v
    if kind == "bool":
        return isinstance(v, bool), v
    if kind == "str":
        return isinstance(v, str), v
    if kind == "pair":
        if _is_int(v):
            return True, (v, v)
        return isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)), tuple(v) if isinstance(v, list) else v
    if kind == "pads":
        if _is_int(v):
            return True, (v, v, v, v)
        if isinstance(v, list) and all(map(_is_int, v)) and len(v) in (2, 4):
            return True, (v[0], v[1], v[0], v[1]) if len(v) == 2 else tuple(v)
        return False, v
    if kind == "ints":
        if _is_int(v):
            return True, [v]
        return isinstance(v, list) and all(map(_is_int, v)), v
    if kind == "floats":
        if _is_num(v):
            return True, [float(v)]
        return isinstance(v, list) and all(map(_is_num, v)), [float(x) for x in v] if isinstance(v, list) else v
    if kind == "offsets":
        ok = isinstance(v, list) and bool(v) and all(
            isinstance(p, list) and len(p) == 2 and all(map(_is_int, p)) for p in v)
        return ok, [tuple(p) for p in v] if ok else v
    raise ValueError(kind)


KIND_WORDS = {
    "tensor": "a tensor", "tensors": "a list of tensors", "int": "an int", "float": "a number", "bool": "a bool",
    "str": "a string", "pair": "an int or [h, w]", "pads": "an int, [h, w] or [top, left, bottom, right]",
    "ints": "a list of ints", "floats": "a list of numbers", "offsets": "a list of [dy, dx] pairs", "any": "a value",
}


def _ir_kind_ok(kind: str, v: Any) -> bool:
    """Whether an IR attribute value has ``kind`` (IR attributes hold tuples where specs write lists)."""
    seq = isinstance(v, (list, tuple))
    if kind == "pair":
        return seq and len(v) == 2 and all(map(_is_int, v))
    if kind == "pads":
        return seq and len(v) == 4 and all(map(_is_int, v))
    if kind == "ints":
        return seq and all(map(_is_int, v))
    if kind == "floats":
        return seq and all(map(_is_num, v))
    if kind == "offsets":
        return seq and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(map(_is_int, p)) for p in v)
    if kind == "bool":  # passes and tests may write a flag as 0 / 1
        return v in (0, 1)
    return kind == "any" or convert(kind, v)[0]


class AttrError(Exception):
    """An IR attribute that breaks its declaration; ``arg`` names it."""

    def __init__(self, message: str, arg: str):
        super().__init__(message)
        self.message = message
        self.arg = arg


def check_attrs(op: str, args: Sequence[Arg], attrs: dict[str, Any]) -> None:
    """Check the attributes of an ``op`` node against its declared arguments: each required one present,
    each present one of its kind, among its choices, and within its constraint. Raises AttrError."""
    for a in args:
        if a.is_input:
            continue
        key = a.ir_name
        if key not in attrs:
            if a.default is REQUIRED:
                raise AttrError(f"{op} has no attribute '{key}'", key)
            continue
        v = attrs[key]
        if v is None:
            continue
        if not _ir_kind_ok(a.kind, v):
            raise AttrError(f"{op} {key} must be {KIND_WORDS[a.kind]}, found {v!r}", key)
        if a.choices and v not in a.choices:
            raise AttrError(f"{op} {key} must be one of {', '.join(a.choices)}, found {v!r}", key)
        if a.check is not None and not a.check.test(v):
            shown = list(v) if isinstance(v, tuple) else v
            raise AttrError(f"{op} {key} must be {a.check.words}, found {shown}", key)


def frozen(v: Any) -> Any:
    """A bound value as an IR attribute: lists become tuples (IR attributes are immutable)."""
    return tuple(frozen(x) for x in v) if isinstance(v, (list, tuple)) else v


def bind(el: Elaborator, scope: Scope, op: Signed, call: ast.Call) -> Bound:
    """Match a call's arguments to the op's (or initialiser's) signature, with located errors."""
    sig = {a.name: a for a in op.args}
    values: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    raw: list[tuple[str, ast.Expr]] = []
    if len(call.args) > len(op.args):
        raise el.error(scope, f"{op.name}() takes at most {len(op.args)} argument{'s' * (len(op.args) != 1)}, "
                       f"found {len(call.args)}",
                       call.args[len(op.args)].span, help=signature_text(op))
    for a, e in zip(op.args, call.args):
        raw.append((a.name, e))
    for kw in call.kwargs:
        if kw.name not in sig:
            raise el.error(scope, f"{op.name}() has no argument '{kw.name}'", kw.span,
                           help=did_you_mean(kw.name, sig) or signature_text(op))
        if any(n == kw.name for n, _ in raw):
            raise el.error(scope, f"argument '{kw.name}' of {op.name}() given twice", kw.span)
        raw.append((kw.name, kw.value))
    for name, e in raw:
        a = sig[name]
        v = el.eval(e, scope)
        ok, cv = convert(a.kind, v)
        if not ok:
            shown = "a tensor" if type_name(v) == "tensor" else f"{type_name(v)} {show(v)}"
            raise el.error(scope, f"argument '{name}' of {op.name}() must be {KIND_WORDS[a.kind]}, found {shown}",
                           e.span)
        if a.choices and cv not in a.choices:
            raise el.error(scope, f"argument '{name}' of {op.name}() must be one of "
                           f"{', '.join(repr(c) for c in a.choices)}, found {show(cv)}", e.span,
                           help=did_you_mean(cv, a.choices))
        values[name] = cv
        spans[name] = e.span
    for a in op.args:
        if a.name not in values:
            if a.default is REQUIRED:
                raise el.error(scope, f"{op.name}() is missing its argument '{a.name}'", call.span,
                               help=signature_text(op))
            values[a.name] = convert(a.kind, a.default)[1] if a.default is not None else None
    if call.name is not None and not op.named:
        raise el.error(scope, f"{op.name}() has no parameters, so it cannot be named with 'as'", call.name.span)
    return Bound(call, values, spans)


def signature_text(op: Signed) -> str:
    """``conv(x, out, kernel, stride=1, ...)`` for help messages."""
    return f"signature: {op.name}({call_text(op.args)})"


def call_text(args: Sequence[Arg]) -> str:
    """The arguments of a signature as a spec writes them: ``x, kernel, stride=1``."""
    return ", ".join(a.name if a.default is REQUIRED else f"{a.name}={'none' if a.default is None else show(a.default)}"
                     for a in args)
