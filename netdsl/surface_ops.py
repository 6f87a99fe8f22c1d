"""The ops a spec can call, and how each becomes IR nodes.

Most spec ops are one IR op with their arguments passed through: those are declared once, in
the op catalogue (:mod:`netdsl.opdefs`, ``surface=True``), and bound here from that
declaration. This module holds the ops that do something at elaboration -- create parameters,
compute defaults or attributes from the input types, build constants, or map onto another IR
op -- each declared with :func:`surface` and a signature of :class:`~netdsl.signatures.Arg`s.
:func:`~netdsl.signatures.bind` checks every call against its signature with located errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netdsl import ast
from netdsl.ir import DTYPES, Init, Provenance, TensorType
from netdsl.opdefs import OPS, OpDef
from netdsl.signatures import Arg, Bound, bind, frozen
from netdsl.values import Tensor, type_name

if TYPE_CHECKING:
    from netdsl.elaborate import Elaborator, Scope

OpBody = Callable[["Elaborator", "Scope", Bound], Any]


@dataclass(frozen=True)
class SurfaceOp:
    """An op a spec can call: its signature, its body, and the roles of the parameters it creates."""

    name: str
    args: tuple[Arg, ...]
    body: OpBody
    doc: str
    roles: tuple[str, ...]  # parameter roles it may create (NAME.weight, ...); selectors of `with init`

    @property
    def named(self) -> bool:
        """Whether the op owns parameters (and so takes an 'as' name)."""
        return bool(self.roles)


SURFACE_OPS: dict[str, SurfaceOp] = {}


def surface(name: str, *args: Arg, roles: tuple[str, ...] = ()) -> Callable[[OpBody], OpBody]:
    """Register the decorated function as the body of surface op ``name``."""

    def register(fn: OpBody) -> OpBody:
        SURFACE_OPS[name] = SurfaceOp(name, args, fn, (fn.__doc__ or "").strip(), roles)
        return fn

    return register


def call_op(el: Elaborator, scope: Scope, call: ast.Call) -> Any:
    """Bind ``call`` to its surface op's signature and run the op's body; returns its result."""
    op = SURFACE_OPS[call.func]
    return op.body(el, scope, bind(el, scope, op, call))


# ----------------------------------------------------------------------------- helpers for bodies


def _emit(el: Elaborator, scope: Scope, b: Bound, op: str, inputs: list[Tensor], tensor_args: list[str],
          **attrs: Any) -> Any:
    """Emit ``op``; type errors on input i point at the argument named tensor_args[i]."""
    spans = [b.spans.get(n, b.call.span) for n in tensor_args]
    return el.emit(scope, op, inputs, b.call.span, arg_spans=spans, kw_spans=b.spans, **attrs)


def _layer_prefix(el: Elaborator, scope: Scope, b: Bound, op: str) -> str:
    local = el.eval_path(b.call.name, scope) if b.call.name else scope.auto_name(op)
    return scope.local_name(local)


def _new_param(el: Elaborator, scope: Scope, b: Bound, prefix: str, role: str, t: TensorType, init: Init,
               kind: str = "param") -> Tensor:
    """Create parameter ``prefix.role`` with its declared ``init``, unless an active ``with init``
    clause selects ``op.role``: then the clause's initialiser, recorded in the provenance."""
    op = SURFACE_OPS[b.call.func]
    assert role in op.roles, f"{op.name} creates '{role}' but does not declare it"  # keeps selectors in sync
    name = f"{prefix}.{role}"
    shared = scope.shared or (b.call.name is not None and b.call.name.shared)
    if el.reuse_param(scope, name, t, kind, shared, (b.call.name or b.call).span):
        return Tensor(name)
    el.check_size(scope, t, b.call.span)
    init, rule = el.init_overrides.apply(el, op.name, role, name, t, init, b.call.span)
    el.builder.param(name, t, init, kind, Provenance(b.call.span, scope.chain, (rule,) if rule else ()))
    return Tensor(name)


def _need_rank(el: Elaborator, scope: Scope, b: Bound, op: str, rank: int) -> None:
    t = el.tensor_type(b["x"])
    if t.rank < rank:
        raise el.error(scope, f"{op} needs a tensor of rank {rank} or more, found {t}", b.spans["x"])


def _fan_in_init(fan_in: int) -> Init:
    return Init("uniform_fan_in", (("fan_in", fan_in),))


def _weight_init(el: Elaborator, scope: Scope, b: Bound, fan_in: int, fan_out: int, kernel: int) -> Init:
    kind = b["init"]
    if kind == "default":
        return _fan_in_init(fan_in)
    if kind == "shift":
        return Init("shift", (("kernel", kernel),))
    if kind == "trunc_normal":
        return Init("trunc_normal", (("std", b["std"]), ("a", -2.0), ("b", 2.0)))
    if kind == "normal":
        return Init("normal", (("std", b["std"]),))
    if kind == "kaiming_fan_out":
        return Init("kaiming_normal_fan_out", (("fan_out", fan_out),))
    return Init("zeros")


INIT_CHOICES = ("default", "shift", "trunc_normal", "normal", "kaiming_fan_out", "zeros")


def _dtype(el: Elaborator, t: Tensor) -> str:
    return el.tensor_type(t).dtype


# ----------------------------------------------------------------------------- layers with parameters


@surface("conv", Arg("x", "tensor"), Arg("out", "int"), Arg("kernel", "pair"), Arg("stride", "pair", 1),
         Arg("padding", "pads", 0), Arg("dilation", "pair", 1), Arg("groups", "int", 1), Arg("bias", "bool", True),
         Arg("init", "str", "default", INIT_CHOICES), Arg("std", "float", 0.02),
         Arg("bias_init", "str", "default", ("default", "zeros")), roles=("weight", "bias"))
def conv(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """2-D convolution; parameters ``NAME.weight`` [out, in/groups, kh, kw] and ``NAME.bias`` [out]."""
    x = b["x"]
    xt = el.tensor_type(x)
    if xt.rank != 4:
        raise el.error(scope, f"conv input must be NCHW (rank 4), found {xt}", b.spans["x"])
    cin, groups, out = xt.shape[1], b["groups"], b["out"]
    if groups < 1 or cin % groups or out % groups:
        raise el.error(scope, f"conv groups ({groups}) must divide the input channels ({cin}) and the output "
                       f"channels ({out})", b.spans.get("groups", b.call.span))
    if out < 1 or min(b["kernel"]) < 1 or min(b["stride"]) < 1 or min(b["dilation"]) < 1 or min(b["padding"]) < 0:
        raise el.error(scope, "conv sizes must be positive (padding non-negative)", b.call.span)
    kh, kw = b["kernel"]
    prefix = _layer_prefix(el, scope, b, "conv")
    fan_in = cin // groups * kh * kw
    w = _new_param(el, scope, b, prefix, "weight", TensorType(xt.dtype, (out, cin // groups, kh, kw)),
                   _weight_init(el, scope, b, fan_in, out * kh * kw, kh))
    inputs = [x, w]
    if b["bias"]:
        binit = _fan_in_init(fan_in) if b["bias_init"] == "default" and b["init"] == "default" else Init("zeros")
        inputs.append(_new_param(el, scope, b, prefix, "bias", TensorType(xt.dtype, (out,)), binit))
    return _emit(el, scope, b, "conv", inputs, ["x", "x", "x"], stride=b["stride"], pads=b["padding"],
                 dilation=b["dilation"], groups=groups)


@surface("linear", Arg("x", "tensor"), Arg("out", "int"), Arg("bias", "bool", True),
         Arg("init", "str", "default", INIT_CHOICES), Arg("std", "float", 0.02), roles=("weight", "bias"))
def linear(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Affine map over the last axis; parameters ``NAME.weight`` [out, in], ``NAME.bias`` [out]."""
    x = b["x"]
    xt = el.tensor_type(x)
    _need_rank(el, scope, b, "linear", 1)
    prefix = _layer_prefix(el, scope, b, "linear")
    fan_in = xt.shape[-1]
    w = _new_param(el, scope, b, prefix, "weight", TensorType(xt.dtype, (b["out"], fan_in)),
                   _weight_init(el, scope, b, fan_in, b["out"], 1))
    inputs = [x, w]
    if b["bias"]:
        binit = _fan_in_init(fan_in) if b["init"] == "default" else Init("zeros")
        inputs.append(_new_param(el, scope, b, prefix, "bias", TensorType(xt.dtype, (b["out"],)), binit))
    return _emit(el, scope, b, "linear", inputs, ["x", "x", "x"])


@surface("batchnorm", Arg("x", "tensor"), Arg("eps", "float", 1e-5), Arg("momentum", "float", 0.1),
         roles=("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
def batchnorm(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Batch norm over axis 1 with running statistics (PyTorch BatchNorm2d names and defaults)."""
    x = b["x"]
    xt = el.tensor_type(x)
    if xt.rank < 2:
        raise el.error(scope, f"batchnorm needs a channel axis, found {xt}", b.spans["x"])
    c = xt.shape[1]
    prefix = _layer_prefix(el, scope, b, "batchnorm")
    vec = TensorType(xt.dtype, (c,))
    ins = [x, _new_param(el, scope, b, prefix, "weight", vec, Init("ones")),
           _new_param(el, scope, b, prefix, "bias", vec, Init("zeros")),
           _new_param(el, scope, b, prefix, "running_mean", vec, Init("zeros"), "buffer"),
           _new_param(el, scope, b, prefix, "running_var", vec, Init("ones"), "buffer")]
    _new_param(el, scope, b, prefix, "num_batches_tracked", TensorType("i64", ()), Init("zeros"), "buffer")
    return _emit(el, scope, b, "batchnorm", ins, ["x"], eps=b["eps"], momentum=b["momentum"])


@surface("layernorm", Arg("x", "tensor"), Arg("axis", "int", -1), Arg("eps", "float", 1e-5),
         Arg("affine", "bool", True), roles=("weight", "bias"))
def layernorm(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Layer norm over one axis (-1: channels-last, 1: channels-first); ``NAME.weight``, ``NAME.bias``."""
    x = b["x"]
    xt = el.tensor_type(x)
    _need_rank(el, scope, b, "layernorm", 1)
    if not -xt.rank <= b["axis"] < xt.rank:
        raise el.error(scope, f"layernorm axis {b['axis']} out of range for {xt}", b.spans.get("axis", b.call.span))
    ins = [x]
    if b["affine"]:
        prefix = _layer_prefix(el, scope, b, "layernorm")
        vec = TensorType(xt.dtype, (xt.shape[b["axis"]],))
        ins += [_new_param(el, scope, b, prefix, "weight", vec, Init("ones")),
                _new_param(el, scope, b, prefix, "bias", vec, Init("zeros"))]
    return _emit(el, scope, b, "layernorm", ins, ["x"], axis=b["axis"], eps=b["eps"])


@surface("groupnorm", Arg("x", "tensor"), Arg("groups", "int"), Arg("eps", "float", 1e-5), roles=("weight", "bias"))
def groupnorm(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Group norm; ``NAME.weight``, ``NAME.bias`` of the channel count."""
    x = b["x"]
    xt = el.tensor_type(x)
    _need_rank(el, scope, b, "groupnorm", 2)
    prefix = _layer_prefix(el, scope, b, "groupnorm")
    vec = TensorType(xt.dtype, (xt.shape[1],))
    ins = [x, _new_param(el, scope, b, prefix, "weight", vec, Init("ones")),
           _new_param(el, scope, b, prefix, "bias", vec, Init("zeros"))]
    return _emit(el, scope, b, "groupnorm", ins, ["x"], groups=b["groups"], eps=b["eps"])


@surface("instancenorm", Arg("x", "tensor"), Arg("eps", "float", 1e-5), Arg("affine", "bool", False),
         roles=("weight", "bias"))
def instancenorm(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Instance norm (PyTorch InstanceNorm2d: no running statistics, ``affine=false`` by default): a group
    norm with one channel per group; ``NAME.weight``, ``NAME.bias`` of the channel count when affine."""
    x = b["x"]
    xt = el.tensor_type(x)
    _need_rank(el, scope, b, "instancenorm", 3)
    ins = [x]
    if b["affine"]:
        prefix = _layer_prefix(el, scope, b, "instancenorm")
        vec = TensorType(xt.dtype, (xt.shape[1],))
        ins += [_new_param(el, scope, b, prefix, "weight", vec, Init("ones")),
                _new_param(el, scope, b, prefix, "bias", vec, Init("zeros"))]
    return _emit(el, scope, b, "groupnorm", ins, ["x"], groups=xt.shape[1], eps=b["eps"])


# ----------------------------------------------------------------------------- element-wise


def _range_attr(b: Bound) -> dict[str, Any]:
    """The IR ``range`` attribute of a ``range=[lo, hi]`` argument (none when it is not given)."""
    return {} if b["range"] is None else {"range": tuple(float(v) for v in b["range"])}


@surface("sqrt", Arg("x", "any"), Arg("range", "floats", None))
def sqrt(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Square root; ``range=[lo, hi]`` declares the bounds of x, for which restricted targets build its lowering.

    On a compile-time number (``sqrt(dim)``) it is the built-in function: the number's square root.
    """
    x = b["x"]
    if isinstance(x, Tensor):
        return _emit(el, scope, b, "sqrt", [x], ["x"], **_range_attr(b))
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise el.error(scope, f"argument 'x' of sqrt() must be a tensor or a number, found {type_name(x)}",
                       b.spans["x"])
    if b["range"] is not None:
        raise el.error(scope, "range= applies to a tensor's square root, not to a number's", b.spans["range"])
    if x < 0:
        raise el.error(scope, f"sqrt() of a negative number ({x})", b.spans["x"])
    return math.sqrt(x)


# ----------------------------------------------------------------------------- shape ops


@surface("reshape", Arg("x", "tensor"), Arg("shape", "ints"))
def reshape(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Row-major reshape; one entry may be -1 (inferred)."""
    xt = el.tensor_type(b["x"])
    shape = list(b["shape"])
    if shape.count(-1) > 1 or any(d < -1 or d == 0 for d in shape):
        raise el.error(scope, f"reshape target {shape} may hold positive dims and at most one -1", b.spans["shape"])
    if -1 in shape:
        known = 1
        for d in shape:
            if d != -1:
                known *= d
        if xt.numel % known:
            raise el.error(scope, f"cannot reshape {xt} ({xt.numel} elements) to {shape}: {xt.numel} is not "
                           f"divisible by {known}", b.spans["shape"])
        shape[shape.index(-1)] = xt.numel // known
    return _emit(el, scope, b, "reshape", [b["x"]], ["x"], shape=tuple(shape))


@surface("flatten", Arg("x", "tensor"), Arg("start", "int", 1), Arg("end", "int", -1))
def flatten(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Merge axes start..end (inclusive) into one."""
    _need_rank(el, scope, b, "flatten", 1)
    shape = el.tensor_type(b["x"]).shape
    s, e = b["start"] % len(shape), b["end"] % len(shape)
    if s > e:
        raise el.error(scope, f"flatten start ({b['start']}) is after end ({b['end']})", b.call.span)
    merged = 1
    for d in shape[s:e + 1]:
        merged *= d
    return _emit(el, scope, b, "reshape", [b["x"]], ["x"], shape=tuple(shape[:s]) + (merged,) + tuple(shape[e + 1:]))


@surface("squeeze", Arg("x", "tensor"), Arg("axes", "ints", None))
def squeeze(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Drop size-1 axes (all of them when ``axes`` is not given)."""
    _need_rank(el, scope, b, "squeeze", 1)
    shape = el.tensor_type(b["x"]).shape
    axes = [a % len(shape) for a in b["axes"]] if b["axes"] is not None else [i for i, d in enumerate(shape) if d == 1]
    for a in axes:
        if shape[a] != 1:
            raise el.error(scope, f"cannot squeeze axis {a} of size {shape[a]}", b.spans.get("axes", b.call.span))
    return _emit(el, scope, b, "reshape", [b["x"]], ["x"], shape=tuple(d for i, d in enumerate(shape) if i not in axes))


@surface("unsqueeze", Arg("x", "tensor"), Arg("axis", "int"))
def unsqueeze(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Insert a size-1 axis at ``axis``."""
    shape = list(el.tensor_type(b["x"]).shape)
    axis = b["axis"] % (len(shape) + 1)
    shape.insert(axis, 1)
    return _emit(el, scope, b, "reshape", [b["x"]], ["x"], shape=tuple(shape))


# ----------------------------------------------------------------------------- attention, pooling, resize


@surface("attention", Arg("q", "tensor"), Arg("k", "tensor"), Arg("v", "tensor"), Arg("scale", "float", None),
         Arg("bias", "tensor", None))
def attention(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """softmax(scale * q @ k^T + bias) @ v on [B, heads, L, d] tensors (default scale d^-1/2)."""
    qt = el.tensor_type(b["q"])
    scale = b["scale"] if b["scale"] is not None else qt.shape[-1] ** -0.5
    ins = [b["q"], b["k"], b["v"]] + ([b["bias"]] if b["bias"] is not None else [])
    return _emit(el, scope, b, "attention", ins, ["q", "k", "v", "bias"], scale=scale)


@surface("local_attention", Arg("q", "tensor"), Arg("k", "tensor"), Arg("v", "tensor"), Arg("heads", "int"),
         Arg("kernel", "int"), Arg("stride", "int", 1), Arg("pos", "tensor", None), Arg("scale", "float", None))
def local_attention(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Sliding-window multi-head attention (ACmix/SASA), reflection-padded windows, optional positional term."""
    qt = el.tensor_type(b["q"])
    heads = b["heads"]
    scale = b["scale"]
    if scale is None:
        # The default is d^-1/2 for heads of width d; a heads count that does not divide the channels is
        # the type checker's error (one check, in the op catalogue), reported whatever the scale.
        scale = max(qt.shape[1] // heads if heads >= 1 and qt.rank == 4 else 1, 1) ** -0.5
    ins = [b["q"], b["k"], b["v"]] + ([b["pos"]] if b["pos"] is not None else [])
    return _emit(el, scope, b, "local_attention", ins, ["q", "k", "v", "pos"], heads=heads, kernel=b["kernel"],
                 stride=b["stride"], scale=scale)


def _pool(name: str, *flags: Arg) -> None:
    def body(el: Elaborator, scope: Scope, b: Bound) -> Any:
        stride = b["stride"] if b["stride"] is not None else b["kernel"]
        # A flag at its default is left out of the node: the IR of a pool written without it stays as it was.
        options = {a.name: b[a.name] for a in flags if b[a.name] != a.default}
        spans = {**b.spans, "pads": b.spans["padding"]} if "padding" in b.spans else b.spans
        return el.emit(scope, name, [b["x"]], b.call.span, arg_spans=[b.spans["x"]], kw_spans=spans,
                       kernel=b["kernel"], stride=stride, pads=b["padding"], **options)

    body.__doc__ = f"{name[:3]} pooling over kernel x kernel windows (stride defaults to the kernel)"
    surface(name, Arg("x", "tensor"), Arg("kernel", "pair"), Arg("stride", "pair", None),
            Arg("padding", "pads", 0), *flags)(body)


_pool("avgpool", Arg("ceil_mode", "bool", False), Arg("count_include_pad", "bool", True))
_pool("maxpool", Arg("ceil_mode", "bool", False))


def _reduce(name: str, ir_op: str) -> None:
    def body(el: Elaborator, scope: Scope, b: Bound) -> Any:
        _need_rank(el, scope, b, name, 1)
        rank = el.tensor_type(b["x"]).rank
        for a in b["axes"]:
            if not -rank <= a < rank:
                raise el.error(scope, f"axis {a} out of range for rank {rank}", b.spans.get("axes", b.call.span))
        return _emit(el, scope, b, ir_op, [b["x"]], ["x"], axes=tuple(sorted(a % rank for a in b["axes"])),
                     keepdims=b["keepdims"])

    body.__doc__ = f"{ir_op.split('_')[1]} over ``axes`` (rank >= 1)"
    surface(name, Arg("x", "tensor"), Arg("axes", "ints"), Arg("keepdims", "bool", False))(body)


_reduce("reduce_mean", "reduce_mean")
_reduce("reduce_sum", "reduce_sum")
_reduce("reduce_max", "reduce_max")
_reduce("reduce_min", "reduce_min")


@surface("global_avgpool", Arg("x", "tensor"))
def global_avgpool(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Mean over H and W, keeping them as size-1 axes."""
    _need_rank(el, scope, b, "global_avgpool", 4)
    return _emit(el, scope, b, "reduce_mean", [b["x"]], ["x"], axes=(2, 3), keepdims=True)


@surface("resize", Arg("x", "tensor"), Arg("scale", "floats", None), Arg("size", "ints", None),
         Arg("mode", "str", "linear", ("linear", "nearest")))
def resize(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Resize H and W by float64 factors (PyTorch rule: size = trunc(L * factor)) or to a size."""
    xt = el.tensor_type(b["x"])
    if xt.rank != 4:
        raise el.error(scope, f"resize input must be NCHW, found {xt}", b.spans["x"])
    h, w = xt.shape[2], xt.shape[3]
    if (b["scale"] is None) == (b["size"] is None):
        raise el.error(scope, "resize needs exactly one of scale= or size=", b.call.span)
    if b["scale"] is not None:
        sc = b["scale"] * 2 if len(b["scale"]) == 1 else b["scale"]
        if len(sc) != 2 or min(sc) <= 0 or max(h * sc[0], w * sc[1]) > 2**31:
            raise el.error(scope, f"resize scale must be one or two positive factors giving a map under 2^31 "
                       f"pixels a side, found {b['scale']}",
                           b.spans["scale"])
        sizes = (int(h * sc[0]), int(w * sc[1]))  # trunc in float64, as PyTorch computes it
        scales = (float(sc[0]), float(sc[1]))
    else:
        sz = b["size"] * 2 if len(b["size"]) == 1 else b["size"]
        if len(sz) != 2 or min(sz) < 1:
            raise el.error(scope, f"resize size must be one or two positive ints, found {b['size']}", b.spans["size"])
        sizes = (sz[0], sz[1])
        scales = (sz[0] / h, sz[1] / w)
    if b["mode"] == "nearest" and not all(math.log2(f).is_integer() for f in scales):
        raise el.error(scope, f"nearest resize needs power-of-two factors, found {list(scales)}",
                       b.spans.get("scale", b.spans.get("size", b.call.span)),
                       help="other factors round differently across runtimes; use mode=\"linear\"")
    return _emit(el, scope, b, "resize", [b["x"]], ["x"], mode=b["mode"], scales=scales, sizes=sizes)


@surface("grid", Arg("height", "int"), Arg("width", "int"))
def grid(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Positional grid f32[1, 2, height, width]: (x, y) coordinates in [-1, 1]."""
    if b["height"] < 1 or b["width"] < 1:
        raise el.error(scope, "grid sizes must be positive", b.call.span)
    return _emit(el, scope, b, "grid", [], [], height=b["height"], width=b["width"])


@surface("constant", Arg("value", "float"), Arg("shape", "ints", []), Arg("dtype", "str", "f32"))
def constant(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """A constant tensor filled with ``value``."""
    if b["dtype"] not in DTYPES:
        raise el.error(scope, f"unknown dtype '{b['dtype']}'", b.spans.get("dtype", b.call.span))
    if any(d < 1 for d in b["shape"]):
        raise el.error(scope, f"constant shape {b['shape']} needs positive dims", b.spans.get("shape", b.call.span))
    el.check_size(scope, TensorType(b["dtype"], tuple(b["shape"])), b.call.span)  # before numpy allocates
    el.check_fits(scope, b["value"], b["dtype"], b.spans.get("value", b.call.span))
    from netdsl.const_values import filled  # numpy, only for specs with constants (see netdsl.const_values)

    arr = filled(tuple(b["shape"]), b["value"], b["dtype"])
    return _emit(el, scope, b, "const", [], [], value=arr, dtype=b["dtype"])


@surface("swin_mask", Arg("height", "int"), Arg("width", "int"), Arg("window", "int"), Arg("shift", "int"),
         Arg("batch", "int", 1))
def swin_mask(el: Elaborator, scope: Scope, b: Bound) -> Any:
    """Shifted-window attention mask as a constant f32[batch*nW, 1, N, N] (0 within a region, -100 across)."""
    h, w, ws, sh = b["height"], b["width"], b["window"], b["shift"]
    if ws < 1 or h % ws or w % ws or not 0 <= sh < ws:
        raise el.error(scope, f"swin_mask needs a window dividing {h}x{w} and 0 <= shift < window, "
                       f"found window {ws}, shift {sh}", b.call.span)
    from netdsl.const_values import swin_mask as mask_array  # numpy, only for specs with constants

    mask = mask_array(h, w, ws, sh, b["batch"])
    return _emit(el, scope, b, "const", [], [], value=mask, dtype="f32")


# ----------------------------------------------------------------------------- ops declared in the catalogue


def _passthrough(op: OpDef) -> OpBody:
    """The body of a spec op that is ``op`` with its arguments passed through: tensor arguments become the
    inputs (type errors point at them), the others the attributes (lists as tuples; an absent optional one
    is left out)."""

    def body(el: Elaborator, scope: Scope, b: Bound) -> Any:
        inputs: list[Tensor] = []
        spans = []
        attrs: dict[str, Any] = {}
        for a in op.args:
            v = b[a.name]
            if a.kind == "tensors":
                inputs += v
                spans += [b.spans[a.name]] * len(v)
            elif a.kind == "tensor" and v is not None:
                inputs.append(v)
                spans.append(b.spans.get(a.name, b.call.span))
            elif v is not None:
                attrs[a.ir_name] = frozen(v)
        return el.emit(scope, op.name, inputs, b.call.span, arg_spans=spans, kw_spans=b.spans,
                       n_outputs=op.outputs, **attrs)

    return body


for _op in OPS.values():
    for _name in _op.surface:
        SURFACE_OPS[_name] = SurfaceOp(_name, _op.args, _passthrough(_op), _op.doc, ())
