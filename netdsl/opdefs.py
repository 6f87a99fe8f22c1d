"""The IR op catalogue: exact semantics and type inference of every op.

One job, one file: the catalogue is long because it lists every op, each a short declaration.

Each op is an :class:`OpDef` whose ``infer`` function takes the input types and the
attributes and returns the output types, or raises :class:`OpTypeError` naming the
offending input (by index) or attribute, so diagnostics can point at the argument.

Layout conventions: images are NCHW; ``pads`` are ``(top, left, bottom, right)``;
``stride``/``dilation``/``kernel`` are ``(h, w)`` pairs. Every backend (ONNX, PyTorch,
the numpy interpreter) implements exactly the semantics written in each docstring.

Each op also declares its arguments (:class:`~netdsl.signatures.Arg`: inputs and typed
attributes with defaults and constraints). :func:`infer_types` checks a node's attributes
against them before inferring, so the elaborator and the verifier check the same declaration.
An op declared ``surface=True`` is also a spec op whose call only passes its arguments through
(:mod:`netdsl.surface_ops` binds it from the declaration); the other spec ops live there.

The module is long because it has one job, the whole catalogue: one declaration and one
inference function per op, each short, kept together so the semantics of every op are read in
one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netdsl.ir import TensorType
from netdsl.signatures import POSITIVE, Arg, AttrError, check_attrs


class OpTypeError(Exception):
    """A type error in an op application; ``arg`` is an input index or attribute name."""

    def __init__(self, message: str, arg: int | str | None = None, note: str | None = None):
        super().__init__(message)
        self.message = message
        self.arg = arg
        self.note = note


Infer = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    """An IR op: name, input arity (min, max; None = variadic), semantics, type inference, and its
    declared arguments (tensor inputs and attributes, in the order a spec writes them).

    ``surface`` names the spec ops that are this op with its arguments passed through (empty: the
    spec reaches it another way, see :mod:`netdsl.surface_ops`)."""

    name: str
    min_inputs: int
    max_inputs: int | None
    infer: Infer
    doc: str
    outputs: int = 1  # -1: given by attrs (split)
    args: tuple[Arg, ...] = ()
    surface: tuple[str, ...] = ()

    @property
    def attrs(self) -> tuple[Arg, ...]:
        """The declared attributes (the arguments that are not tensor inputs)."""
        return tuple(a for a in self.args if not a.is_input)


OPS: dict[str, OpDef] = {}


def _op(name: str, min_inputs: int, max_inputs: int | None, outputs: int = 1, args: tuple[Arg, ...] = (),
        surface: bool | tuple[str, ...] = False) -> Callable[[Infer], Infer]:
    """Register the decorated inference function as op ``name``; ``surface=True`` makes it a spec op of the
    same name (a tuple: of these names)."""

    def register(fn: Infer) -> Infer:
        names = (name,) if surface is True else surface or ()
        OPS[name] = OpDef(name, min_inputs, max_inputs, fn, (fn.__doc__ or "").strip(), outputs, args, names)
        return fn

    return register


X = Arg("x", "tensor")
"""The usual single tensor input."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _rank(t: TensorType, rank: int, arg: int, what: str) -> None:
    if t.rank != rank:
        raise OpTypeError(f"{what} must have rank {rank}, found {t} (rank {t.rank})", arg)


def _same_dtype(types: list[TensorType]) -> str:
    dt = types[0].dtype
    for i, t in enumerate(types[1:], 1):
        if t.dtype != dt:
            raise OpTypeError(f"dtype mismatch: expected {dt}, found {t.dtype} ({t})", i)
    return dt


def conv_out_len(n: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    """Output length of a convolution/pooling window along one axis (floor mode)."""
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


def pool_out_len(n: int, k: int, s: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis, PyTorch's rule: in ceil mode the size rounds up,
    but the last window must start inside the input or its leading padding (``p0``)."""
    if not ceil_mode:
        return conv_out_len(n, k, s, p0, p1, 1)
    out = -(-(n + p0 + p1 - k) // s) + 1
    return out - 1 if (out - 1) * s >= n + p0 else out


def ceil_extra(n: int, k: int, s: int, p0: int, p1: int) -> int:
    """Trailing padding to add to ``p1`` so that floor mode gives ceil mode's output length."""
    out = pool_out_len(n, k, s, p0, p1, True)
    return max(0, (out - 1) * s + k - (n + p0 + p1))


def window_counts(n: int, k: int, s: int, p0: int, p1: int, ceil_mode: bool, count_include_pad: bool) -> list[int]:
    """Divisor of each average-pooling window along one axis (PyTorch's ``avg_pool2d``): the window
    clipped to the padded input, or to the input itself without ``count_include_pad``. A 2-D window's
    divisor is the product of its two axes' counts."""
    counts = []
    for i in range(pool_out_len(n, k, s, p0, p1, ceil_mode)):
        start = i * s - p0
        end = min(start + k, n + p1)
        counts.append(end - start if count_include_pad else min(end, n) - max(start, 0))
    return counts


def floor_mode_pads(attrs: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int]:
    """A pool's (top, left, bottom, right) padding over a ``height`` x ``width`` map, with ceil mode's cut
    windows made whole by extra trailing padding (:func:`ceil_extra`): floor mode over it gives the pool's
    output size."""
    t, l, b, r = attrs["pads"]
    if not attrs.get("ceil_mode"):
        return t, l, b, r
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    return t, l, b + ceil_extra(height, kh, sh, t, b), r + ceil_extra(width, kw, sw, l, r)


def window_divisors(attrs: dict[str, Any], height: int, width: int) -> tuple[list[int], list[int]]:
    """An average pool's :func:`window_counts` along the rows and the columns of a ``height`` x ``width`` map;
    window (i, j) divides by ``rows[i] * cols[j]``."""
    (kh, kw), (sh, sw), (t, l, b, r) = attrs["kernel"], attrs["stride"], attrs["pads"]
    ceil, include = bool(attrs.get("ceil_mode")), bool(attrs.get("count_include_pad", True))
    return (window_counts(height, kh, sh, t, b, ceil, include), window_counts(width, kw, sw, l, r, ceil, include))


def _window_out(types: list[TensorType], attrs: dict[str, Any], what: str) -> tuple[int, int]:
    x = types[0]
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, pb, pr = attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    for key, vals in (("kernel", (kh, kw)), ("stride", (sh, sw)), ("dilation", (dh, dw))):
        if min(vals) < 1:
            raise OpTypeError(f"{what} {key} must be positive, found {list(vals)}", key)
    if min(pt, pl, pb, pr) < 0:
        raise OpTypeError(f"{what} padding must not be negative, found {[pt, pl, pb, pr]}", "pads")
    if attrs.get("ceil_mode"):
        ho = pool_out_len(x.shape[2], kh, sh, pt, pb, True)
        wo = pool_out_len(x.shape[3], kw, sw, pl, pr, True)
    else:
        ho = conv_out_len(x.shape[2], kh, sh, pt, pb, dh)
        wo = conv_out_len(x.shape[3], kw, sw, pl, pr, dw)
    if ho < 1 or wo < 1:
        raise OpTypeError(
            f"{what} window {kh}x{kw} (dilation {dh}x{dw}, padding {pt},{pl},{pb},{pr}) does not fit "
            f"the {x.shape[2]}x{x.shape[3]} input",
            "kernel",
        )
    return ho, wo


@_op("conv", 2, 3, args=(X, Arg("stride", "pair"), Arg("pads", "pads"), Arg("dilation", "pair", 1),
                           Arg("groups", "int")))
def _conv(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """2-D convolution (cross-correlation), zero padding.

    inputs: x[B,Ci,H,W], weight[Co,Ci/groups,kh,kw], bias[Co] (optional).
    attrs: stride (sh,sw), pads (t,l,b,r), dilation (dh,dw), groups.
    y[b,o,i,j] = bias[o] + sum_{c,u,v} w[o,c,u,v] * xpad[b, g*Ci/groups + c, i*sh+u*dh, j*sw+v*dw]
    with g = o // (Co/groups). Output H = (H+t+b-dh*(kh-1)-1)//sh+1 (same for W).
    """
    x, w = types[0], types[1]
    _rank(x, 4, 0, "conv input")
    _rank(w, 4, 1, "conv weight")
    g = attrs["groups"]
    if x.shape[1] % g:
        raise OpTypeError(f"input channels ({x.shape[1]}) must be divisible by groups ({g})", "groups")
    if w.shape[0] % g:
        raise OpTypeError(f"output channels ({w.shape[0]}) must be divisible by groups ({g})", "groups")
    if w.shape[1] * g != x.shape[1]:
        raise OpTypeError(
            f"conv weight expects {w.shape[1] * g} input channels ({w.shape[1]} per group x {g} groups), "
            f"found {x.shape[1]} in {x}",
            0,
        )
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise OpTypeError(f"conv bias must be [{w.shape[0]}], found {types[2]}", 2)
    ho, wo = _window_out(types, {**attrs, "kernel": w.shape[2:]}, "conv")
    return [TensorType(_same_dtype(types), (x.shape[0], w.shape[0], ho, wo))]


@_op("linear", 2, 3)
def _linear(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Affine map over the last axis: y = x @ weight^T + bias.

    inputs: x[..., in], weight[out, in], bias[out] (optional).
    """
    x, w = types[0], types[1]
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise OpTypeError(f"linear expects last axis {w.shape[1]}, found {x}", 0)
    return [TensorType(_same_dtype(types), x.shape[:-1] + (w.shape[0],))]


@_op("matmul", 2, 2, args=(Arg("a", "tensor"), Arg("b", "tensor")), surface=True)
def _matmul(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Batched matrix product with numpy broadcasting of the leading axes (both rank >= 2)."""
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise OpTypeError(f"matmul needs rank >= 2 operands, found {a} and {b}", 0)
    if a.shape[-1] != b.shape[-2]:
        raise OpTypeError(f"matmul inner dimensions differ: {a} @ {b} ({a.shape[-1]} vs {b.shape[-2]})", 1)
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return [TensorType(_same_dtype(types), batch + (a.shape[-2], b.shape[-1]))]


@_op("batchnorm", 5, 5, args=(X, Arg("eps", "float"), Arg("momentum", "float", 0.1)))
def _batchnorm(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Batch normalisation over axis 1 (inference form, running statistics).

    inputs: x[B,C,...], weight[C], bias[C], running_mean[C], running_var[C]; attrs: eps, momentum.
    y = (x - mean) / sqrt(var + eps) * weight + bias. In training, the PyTorch backend uses batch
    statistics and updates the running ones (nn.BatchNorm2d).
    """
    x = types[0]
    if x.rank < 2:
        raise OpTypeError(f"batchnorm needs a channel axis, found {x}", 0)
    for i, t in enumerate(types[1:], 1):
        if t.shape != (x.shape[1],):
            raise OpTypeError(f"batchnorm statistics must be [{x.shape[1]}], found {t}", i)
    return [x]


@_op("layernorm", 1, 3, args=(X, Arg("axis", "int"), Arg("eps", "float")))
def _layernorm(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Layer normalisation over one axis (``axis``; -1 for channels-last, 1 for channels-first).

    inputs: x, weight[C], bias[C]; attrs: axis, eps. Biased variance, as PyTorch.
    """
    x = types[0]
    axis = attrs["axis"] % x.rank
    for i, t in enumerate(types[1:], 1):
        if t.shape != (x.shape[axis],):
            raise OpTypeError(f"layernorm scale/shift must be [{x.shape[axis]}], found {t}", i)
    return [x]


@_op("groupnorm", 1, 3, args=(X, Arg("groups", "int"), Arg("eps", "float")))
def _groupnorm(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Group normalisation over (C/groups, spatial...) per group; inputs x[B,C,...], weight[C] and bias[C] or neither.

    attrs: groups, eps. Biased variance, as PyTorch; groups = C is instance norm.
    """
    x = types[0]
    if len(types) == 2:
        raise OpTypeError("groupnorm takes both weight and bias or neither", 1)
    if attrs["groups"] < 1:
        raise OpTypeError(f"groupnorm groups must be positive, found {attrs['groups']}", "groups")
    if x.shape[1] % attrs["groups"]:
        raise OpTypeError(f"channels ({x.shape[1]}) must be divisible by groups ({attrs['groups']})", "groups")
    per_group = x.shape[1] // attrs["groups"] * math.prod(x.shape[2:])
    if per_group == 1:
        # Each value would be its group's mean: the output is the bias whatever the input, and PyTorch's
        # group_norm refuses it (one value per channel of its view), so the torch target could not run it.
        raise OpTypeError(f"groupnorm groups of one value ({x.shape[1]} channels in {attrs['groups']} groups, "
                          f"map {'x'.join(map(str, x.shape[2:])) or 'none'}) normalise every value to 0", "groups")
    return [x]


def _same_type(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [types[0]]


def _unary(name: str, doc: str, surface: tuple[str, ...]) -> None:
    OPS[name] = OpDef(name, 1, 1, _same_type, doc, args=(X,), surface=surface)


for _name, _doc, _surface in [
    ("relu", "max(x, 0)", ("relu",)),
    ("gelu", "x * Phi(x) with the exact erf form", ("gelu",)),
    ("sigmoid", "1 / (1 + exp(-x))", ("sigmoid",)),
    ("silu", "x * sigmoid(x) (Swish)", ("silu", "swish")),
    ("hardswish", "x * clip(x + 3, 0, 6) / 6 (PyTorch's hardswish)", ("hardswish",)),
    ("relu6", "clip(x, 0, 6) = min(max(x, 0), 6)", ("relu6",)),
    ("hardsigmoid", "clip(x + 3, 0, 6) / 6 (PyTorch's hardsigmoid: relu6(x + 3) / 6)", ("hardsigmoid",)),
    ("tanh", "tanh(x)", ("tanh",)),
    ("exp", "exp(x)", ("exp",)),
    ("erf", "the error function erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt", ("erf",)),
    ("neg", "-x", ()),
    ("identity", "x", ("identity",)),
]:
    _unary(_name, _doc, _surface)


@_op("clamp", 1, 1, args=(X, Arg("min", "float", None), Arg("max", "float", None)), surface=True)
def _clamp(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """min(max(x, min), max) with constant float bounds, either of which may be absent (then unbounded).

    attrs: min, max (at least one; min <= max). Equal bounds give a constant.
    """
    lo, hi = attrs.get("min"), attrs.get("max")
    if lo is None and hi is None:
        raise OpTypeError("clamp needs min=, max= or both")
    if lo is not None and hi is not None and lo > hi:
        raise OpTypeError(f"clamp min ({lo:g}) is greater than max ({hi:g})", "min")
    return [types[0]]


def check_valid_range(attrs: dict[str, Any]) -> tuple[float, float] | None:
    """The optional ``range`` attribute ``(lo, hi)``: bounds a producer guarantees for the input.

    A pass that emits a range-limited op (``sqrt``, a fractional ``pow``) on a value it knows to be
    bounded, e.g. ``var + eps >= eps``, records the bounds here so that the op's lowering can be
    built for that range instead of its default one. Raises OpTypeError unless 0 < lo <= hi < inf.
    """
    if "range" not in attrs:
        return None
    bounds = attrs["range"]
    if len(bounds) != 2:
        raise OpTypeError(f"range must be a pair (lo, hi), found {list(bounds)}", "range")
    lo, hi = (float(b) for b in bounds)
    if not (0.0 < lo <= hi < math.inf):
        raise OpTypeError(f"range ({lo:g}, {hi:g}) must satisfy 0 < lo <= hi < inf", "range")
    return lo, hi


@_op("sqrt", 1, 1, args=(X, Arg("range", "floats", None)))
def _sqrt(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """sqrt(x); attrs: range (optional ``(lo, hi)``, the bounds of x its producer guarantees)."""
    check_valid_range(attrs)
    return [types[0]]


@_op("pow", 1, 1, args=(X, Arg("exponent", "float"), Arg("range", "floats", None)), surface=True)
def _pow(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """x ** exponent with a constant float ``exponent``; attrs: exponent, range (optional, as for sqrt)."""
    exponent = attrs["exponent"]
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not math.isfinite(exponent):
        raise OpTypeError(f"pow exponent must be a finite number, found {exponent!r}", "exponent")
    check_valid_range(attrs)
    return [types[0]]


@_op("softmax", 1, 1, args=(X, Arg("axis", "int", -1)), surface=True)
def _softmax(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    x = types[0]
    if not -x.rank <= attrs["axis"] < x.rank:
        raise OpTypeError(f"softmax axis {attrs['axis']} out of range for {x}", "axis")
    return [x]


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of two shapes; raises OpTypeError(arg=1) when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and da != 1 and db != 1:
            raise OpTypeError(
                f"shapes {fmt_shape(a)} and {fmt_shape(b)} do not broadcast: axis {-i} is {da} vs {db}", 1
            )
        out.append(max(da, db) if 1 in (da, db) else da)
    return tuple(reversed(out))


def _binary(name: str, doc: str, surface: tuple[str, ...] = ()) -> None:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        return [TensorType(_same_dtype(types), broadcast_shapes(types[0].shape, types[1].shape))]

    OPS[name] = OpDef(name, 2, 2, infer, doc, args=(Arg("a", "tensor"), Arg("b", "tensor")), surface=surface)


for _name, _doc in {"add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b"}.items():
    _binary(_name, _doc + " with numpy broadcasting")
_binary("minimum", "elementwise min(a, b) of two tensors with numpy broadcasting", ("minimum",))
_binary("maximum", "elementwise max(a, b) of two tensors with numpy broadcasting", ("maximum",))


@_op("where", 3, 3, args=(Arg("mask", "tensor"), Arg("a", "tensor"), Arg("b", "tensor")), surface=True)
def _where(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Elementwise select: ``a`` where ``cond`` is nonzero (true), else ``b``; numpy broadcasting of all three.

    inputs: cond (any dtype), a, b (the same dtype, which the result has).
    """
    cond, a, b = types
    if a.dtype != b.dtype:
        raise OpTypeError(f"where branches need one dtype, found {a} and {b}", 2)
    shape = broadcast_shapes(a.shape, b.shape)
    try:
        shape = broadcast_shapes(cond.shape, shape)
    except OpTypeError:
        raise OpTypeError(f"where condition {cond} does not broadcast to {fmt_shape(shape)}", 0) from None
    return [TensorType(a.dtype, shape)]


@_op("const", 0, 0, args=(Arg("value", "any"), Arg("dtype", "str")))
def _const(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """A constant tensor; attrs: value (numpy array), dtype (IR dtype name)."""
    return [TensorType(attrs["dtype"], tuple(attrs["value"].shape))]


@_op("reshape", 1, 1, args=(X, Arg("shape", "ints")))
def _reshape(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Row-major reshape to the concrete ``shape`` (no -1 left after elaboration)."""
    x = types[0]
    shape = tuple(attrs["shape"])
    n = 1
    for d in shape:
        n *= d
    if n != x.numel:
        raise OpTypeError(f"cannot reshape {x} ({x.numel} elements) to {fmt_shape(shape)} ({n} elements)", "shape")
    return [x.with_shape(shape)]


@_op("transpose", 1, 1, args=(X, Arg("perm", "ints")), surface=True)
def _transpose(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Axis permutation: y.shape[i] = x.shape[perm[i]]."""
    x = types[0]
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise OpTypeError(f"perm {list(perm)} is not a permutation of the {x.rank} axes of {x}", "perm")
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


@_op("rotate", 1, 1, args=(X, Arg("heads", "int", 1, check=POSITIVE)), surface=True)
def _rotate(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """CSA rotation: per head, transpose the (S channels) x (S positions) matrix.

    x[B, heads*S, h, w] with h*w == S; attrs: heads.
    y[b, n*S + c, yy, xx] = x[b, n*S + (yy*w + xx), c // w, c % w].
    """
    x = types[0]
    _rank(x, 4, 0, "rotate input")
    heads = attrs["heads"]
    if x.shape[1] % heads:
        raise OpTypeError(f"channels ({x.shape[1]}) must be divisible by heads ({heads})", "heads")
    s = x.shape[1] // heads
    if x.shape[2] * x.shape[3] != s:
        raise OpTypeError(
            f"rotate needs channels per head == H*W: {s} channels per head but the map is "
            f"{x.shape[2]}x{x.shape[3]} = {x.shape[2] * x.shape[3]} positions",
            0,
        )
    return [x]


@_op("shift", 1, 1, args=(X, Arg("offsets", "offsets")), surface=True)
def _shift(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Per-channel-group spatial shift with zero fill.

    attrs: offsets ((dy, dx), ...), one per equal channel group; channel c is in group
    c // (C / len(offsets)). y[b,c,i,j] = x[b,c,i-dy,j-dx] (0 outside): content moves down/right.
    """
    x = types[0]
    _rank(x, 4, 0, "shift input")
    g = len(attrs["offsets"])
    if g == 0 or x.shape[1] % g:
        raise OpTypeError(f"channels ({x.shape[1]}) must split into {g} equal shift groups", "offsets")
    return [x]


@_op("unfold", 1, 1, args=(X, Arg("kernel", "pair"), Arg("stride", "pair", 1), Arg("padding", "pads", 0, attr="pads"),
                          Arg("dilation", "pair", 1)), surface=True)
def _unfold(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Sliding windows (im2col) with zero padding.

    x[B,C,H,W] -> y[B, C*kh*kw, Ho, Wo]; attrs kernel, stride, pads, dilation.
    y[b, c*kh*kw + u*kw + v, i, j] = xpad[b, c, i*sh + u*dh, j*sw + v*dw].
    """
    x = types[0]
    _rank(x, 4, 0, "unfold input")
    kh, kw = attrs["kernel"]
    ho, wo = _window_out(types, attrs, "unfold")
    return [x.with_shape((x.shape[0], x.shape[1] * kh * kw, ho, wo))]


@_op("attention", 3, 4, args=(Arg("q", "tensor"), Arg("k", "tensor"), Arg("v", "tensor"), Arg("scale", "float", None),
                             Arg("bias", "tensor", None)))
def _attention(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Multi-head scaled dot-product attention.

    inputs: q[B,h,Lq,d], k[B,h,Lk,d], v[B,h,Lk,dv], bias (optional, broadcastable to [B,h,Lq,Lk]).
    attrs: scale. y = softmax(scale * q @ k^T + bias, axis=-1) @ v -> [B,h,Lq,dv].
    """
    q, k, v = types[:3]
    for i, t in enumerate((q, k, v)):
        _rank(t, 4, i, ["query", "key", "value"][i])
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise OpTypeError(f"query, key and value need the same batch and heads: {q}, {k}, {v}", 1)
    if k.shape[3] != q.shape[3]:
        raise OpTypeError(f"key width {k.shape[3]} differs from query width {q.shape[3]}", 1)
    if v.shape[2] != k.shape[2]:
        raise OpTypeError(f"value length {v.shape[2]} differs from key length {k.shape[2]}", 2)
    if len(types) == 4:
        logits = q.shape[:3] + (k.shape[2],)
        if broadcast_shapes(logits, types[3].shape) != logits:
            raise OpTypeError(f"attention bias {types[3]} does not broadcast to {fmt_shape(logits)}", 3)
    return [TensorType(_same_dtype(types), q.shape[:3] + (v.shape[3],))]


@_op("local_attention", 3, 4, args=(Arg("q", "tensor"), Arg("k", "tensor"), Arg("v", "tensor"),
                                   Arg("heads", "int", check=POSITIVE), Arg("kernel", "int", check=POSITIVE),
                                   Arg("stride", "int", 1, check=POSITIVE), Arg("pos", "tensor", None),
                                   Arg("scale", "float", None)))
def _local_attention(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Sliding-window (SASA/ACmix) multi-head attention over a kernel x kernel neighbourhood.

    inputs: q, k, v [B, C, H, W]; pos [1, d, H, W] (optional positional encoding, d = C / heads).
    attrs: heads, kernel (odd), stride, scale.
    Heads: channel c = h*d + e. With p = (kernel-1)//2 and reflect padding by p of k, v and pos,
    for output (i, j) (Ho = H // stride) and window slot n = a*kernel + b, neighbour
    r = reflect(stride*i + a - p, stride*j + b - p):
      logit[n] = sum_e scale*q[h*d+e, si, sj] * (k[h*d+e, r] + pos[e, si, sj] - pos[e, r])
      y[h*d+e, i, j] = sum_n softmax_n(logit)[n] * v[h*d+e, r]
    (si, sj = stride*i, stride*j). This is ACmix's attention path exactly.
    """
    q, k, v = types[:3]
    for i, t in enumerate(types[:3]):
        _rank(t, 4, i, ["query", "key", "value"][i])
    for i, t in ((1, k), (2, v)):
        if t.shape != q.shape:
            raise OpTypeError(f"{['key', 'value'][i - 1]} {t} must have the query's shape {fmt_shape(q.shape)}", i)
    heads, kern, s = attrs["heads"], attrs["kernel"], attrs["stride"]
    b, c, h, w = q.shape
    if c % heads:
        raise OpTypeError(f"channels ({c}) must be divisible by heads ({heads})", "heads")
    if kern % 2 == 0:
        raise OpTypeError(f"attention kernel must be odd, found {kern}", "kernel")
    p = (kern - 1) // 2
    if p >= h or p >= w:
        raise OpTypeError(f"reflection padding {p} needs a map larger than {p}, found {h}x{w}", "kernel")
    if h % s or w % s:
        raise OpTypeError(f"map {h}x{w} must be divisible by the stride {s}", "stride")
    if len(types) == 4 and types[3].shape != (1, c // heads, h, w):
        raise OpTypeError(f"positional encoding must be [1, {c // heads}, {h}, {w}], found {types[3]}", 3)
    return [q.with_shape((b, c, h // s, w // s))]


def _pool(name: str, doc: str, flags: tuple[Arg, ...]) -> None:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = types[0]
        _rank(x, 4, 0, f"{name} input")
        if attrs.get("ceil_mode") or not attrs.get("count_include_pad", True):
            # PyTorch's rule, which keeps every window on some input: with these options a window of
            # padding alone would have no divisor (and ceil mode's cut windows assume it).
            (kh, kw), (pt, pl, pb, pr) = attrs["kernel"], attrs["pads"]
            if max(pt, pb) > kh // 2 or max(pl, pr) > kw // 2:
                raise OpTypeError(f"{name} padding {[pt, pl, pb, pr]} must be at most half the kernel "
                                  f"{kh}x{kw} with ceil_mode or count_include_pad=false", "pads")
            if tuple(attrs.get("dilation", (1, 1))) != (1, 1):
                raise OpTypeError(f"{name} ceil_mode and count_include_pad take no dilation", "kernel")
        ho, wo = _window_out(types, attrs, name)
        return [x.with_shape((x.shape[0], x.shape[1], ho, wo))]

    OPS[name] = OpDef(name, 1, 1, infer, doc,
                      args=(X, Arg("kernel", "pair"), Arg("stride", "pair"), Arg("pads", "pads"), *flags))


_CEIL_MODE = Arg("ceil_mode", "bool", False)
_pool("avgpool", """Average pooling, PyTorch's ``avg_pool2d``; attrs kernel, stride, pads, ceil_mode, count_include_pad.

Each window's sum is divided by its size clipped to the padded input (count_include_pad, the
default: padded zeros count) or by the number of input elements in it (count_include_pad false).
ceil_mode rounds the output size up (:func:`pool_out_len`); windows past the padded input are cut.""",
      (_CEIL_MODE, Arg("count_include_pad", "bool", True)))
_pool("maxpool", """Max pooling; attrs kernel, stride, pads, ceil_mode (as avgpool's); padding never wins the max.""",
      (_CEIL_MODE,))


def _reduce(name: str, doc: str) -> None:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = types[0]
        if x.rank == 0:
            raise OpTypeError(f"{name} needs a tensor of rank 1 or more, found {x}", 0)
        axes = [a % x.rank for a in attrs["axes"]]
        if attrs["keepdims"]:
            return [x.with_shape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))]
        return [x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in axes))]

    OPS[name] = OpDef(name, 1, 1, infer, doc, args=(X, Arg("axes", "ints"), Arg("keepdims", "bool")))


_reduce("reduce_mean", "Mean over ``axes``; attrs axes, keepdims.")
_reduce("reduce_sum", "Sum over ``axes``; attrs axes, keepdims.")
_reduce("reduce_max", "Max over ``axes``; attrs axes, keepdims.")
_reduce("reduce_min", "Min over ``axes``; attrs axes, keepdims.")


@_op("concat", 1, None, args=(Arg("xs", "tensors"), Arg("axis", "int", 1)), surface=True)
def _concat(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Concatenation along ``axis``; all other axes equal."""
    first = types[0]
    axis = attrs["axis"] % first.rank
    total = 0
    for i, t in enumerate(types):
        if t.rank != first.rank or any(a != b for j, (a, b) in enumerate(zip(t.shape, first.shape)) if j != axis):
            raise OpTypeError(f"concat along axis {axis}: {t} does not match {first} off that axis", i)
        total += t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return [first.with_shape(tuple(shape))]


@_op("split", 1, 1, outputs=-1, args=(X, Arg("sizes", "ints"), Arg("axis", "int", 1)), surface=True)
def _split(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Split along ``axis`` into pieces of ``sizes``."""
    x = types[0]
    axis = attrs["axis"] % x.rank
    if sum(attrs["sizes"]) != x.shape[axis]:
        raise OpTypeError(
            f"split sizes {list(attrs['sizes'])} do not add up to {x.shape[axis]} (axis {axis} of {x})", "sizes")
    out = []
    for s in attrs["sizes"]:
        shape = list(x.shape)
        shape[axis] = s
        out.append(x.with_shape(tuple(shape)))
    return out


@_op("slice", 1, 1, args=(X, Arg("axis", "int"), Arg("start", "int"), Arg("end", "int"),
                         Arg("step", "int", 1, check=POSITIVE)), surface=True)
def _slice(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Strided slice on one axis: attrs axis, start, end, step (> 0), Python semantics after clamping."""
    x = types[0]
    axis = attrs["axis"] % x.rank
    n = len(range(*slice(attrs["start"], attrs["end"], attrs["step"]).indices(x.shape[axis])))
    if n == 0:
        raise OpTypeError(
            f"slice {attrs['start']}:{attrs['end']}:{attrs['step']} of axis {axis} ({x}) is empty", "start")
    shape = list(x.shape)
    shape[axis] = n
    return [x.with_shape(tuple(shape))]


@_op("pad", 1, 1, args=(X, Arg("pads", "pads"), Arg("mode", "str", "zero", ("zero", "reflect", "edge"))), surface=True)
def _pad(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Padding of the two spatial axes: attrs pads (t,l,b,r), mode zero|reflect|edge.

    reflect mirrors without repeating the edge (index -t -> t); needs each pad < that axis length.
    """
    x = types[0]
    _rank(x, 4, 0, "pad input")
    t, l, b, r = attrs["pads"]
    if min(t, l, b, r) < 0:
        raise OpTypeError(f"padding must not be negative, found {[t, l, b, r]}", "pads")
    if attrs["mode"] not in ("zero", "reflect", "edge"):
        raise OpTypeError(f"pad mode must be zero, reflect or edge, found {attrs['mode']!r}", "mode")
    if attrs["mode"] == "reflect" and (max(t, b) >= x.shape[2] or max(l, r) >= x.shape[3]):
        raise OpTypeError(
            f"reflection padding {t},{l},{b},{r} must be smaller than the map {x.shape[2]}x{x.shape[3]}", "pads")
    return [x.with_shape((x.shape[0], x.shape[1], x.shape[2] + t + b, x.shape[3] + l + r))]


@_op("resize", 1, 1, args=(X, Arg("mode", "str"), Arg("scales", "floats"), Arg("sizes", "ints")))
def _resize(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Spatial resize, PyTorch ``interpolate`` semantics with align_corners=False.

    attrs: mode (linear|nearest), scales (sh, sw) as float64 factors, sizes (Ho, Wo).
    Sizes are trunc(L * scale) computed in float64 (PyTorch's rule); sampling uses the factors:
    linear: src = (d + 0.5) / scale - 0.5, clamped at 0, two-tap interpolation (half_pixel);
    nearest: src = floor(d / scale) clamped to L-1, with power-of-two factors only (the front end
    enforces it) so that every runtime's float rounding picks the same pixel.
    When built from a size, scales = Lout/L.
    """
    x = types[0]
    _rank(x, 4, 0, "resize input")
    if attrs["mode"] not in ("linear", "nearest"):
        raise OpTypeError(f"resize mode must be linear or nearest, found {attrs['mode']!r}", "mode")
    ho, wo = attrs["sizes"]
    if ho < 1 or wo < 1:
        raise OpTypeError(f"resize of {x.shape[2]}x{x.shape[3]} gives an empty {ho}x{wo} map", "scales")
    return [x.with_shape((x.shape[0], x.shape[1], ho, wo))]


@_op("grid", 0, 0, args=(Arg("height", "int"), Arg("width", "int")))
def _grid(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Positional grid f32[1, 2, H, W]: channel 0 = linspace(-1, 1, W) along the width,
    channel 1 = linspace(-1, 1, H) along the height (n = 1 gives [-1]). attrs: height, width."""
    return [TensorType("f32", (1, 2, attrs["height"], attrs["width"]))]


@_op("roll", 1, 1, args=(X, Arg("shifts", "ints"), Arg("axes", "ints")), surface=True)
def _roll(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Cyclic shift: attrs shifts, axes (numpy.roll semantics)."""
    if len(attrs["shifts"]) != len(attrs["axes"]):
        raise OpTypeError("roll needs one shift per axis")
    return [types[0]]


@_op("gather", 2, 2, args=(Arg("table", "tensor"), Arg("index", "tensor")), surface=True)
def _gather(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Row gather: table[T, ...] indexed by an integer tensor idx -> [*idx.shape, ...]."""
    table, idx = types
    if idx.dtype not in ("i64", "i32"):
        raise OpTypeError(f"gather index must be an integer tensor, found {idx}", 1)
    return [table.with_shape(idx.shape + table.shape[1:])]


def infer_types(op: str, types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Output types of ``op`` applied to ``types`` with ``attrs``; raises OpTypeError."""
    d = OPS[op]
    if len(types) < d.min_inputs or (d.max_inputs is not None and len(types) > d.max_inputs):
        raise OpTypeError(f"{op} takes {d.min_inputs}..{d.max_inputs} inputs, found {len(types)}")
    try:
        check_attrs(op, d.args, attrs)
    except AttrError as err:
        raise OpTypeError(err.message, err.arg) from None
    return d.infer(types, attrs)
