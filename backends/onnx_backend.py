"""ONNX emitter: a typed IR graph plus weights -> a self-contained, checked, deterministic ONNX model.

Every IR op (see :mod:`netdsl.opdefs`) is lowered to standard ONNX ops with exactly the semantics
of its docstring. The model is built with onnx's own helpers; names are deterministic:

* graph inputs and outputs, and every IR value, keep their IR names;
* each parameter becomes an initializer named by its IR parameter name (``stages.0.1.v.weight``);
* each ONNX node is named after the IR node it lowers (``<block path>/<op>_<index>``, plus
  ``/<OnnxOp>`` when one IR node becomes several ONNX nodes) and carries that IR node's
  provenance in its ``doc_string`` and ``metadata_props`` (``netdsl.span``, ``netdsl.block``,
  ``netdsl.rules``), so a runtime error can be traced back to a spec line.

Resizes are emitted with a ``scales`` input (restricted TensorRT has no resize-to-size) holding,
per axis, a float32 factor chosen so that every runtime's size rule gives the IR's size. A linear
resize that is not a whole-factor upsample can be emitted channels-last, together with the
elementwise ops and rotations that follow it (``to_onnx(channels_last_resize=True)``, what the
``onnx`` target does; see "channels-last regions" below): ONNX Runtime's channels-last linear Resize
is several times faster than its channels-first one, and its layout transformer folds the Transposes
into and out of NHWC into the blocked-layout reorders of neighbouring convs. Each such Transpose has
a Reshape to the same shape on its NHWC side, which keeps ONNX Runtime's transpose optimizer from
cancelling or moving it. The TensorRT targets keep the single Resize layer.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from netdsl import __version__
from netdsl.atomic_write import atomic_paths, atomic_write_bytes
from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node, Provenance, TensorType

MIN_OPSET = 17  # LayerNormalization
MAX_OPSET = 21
MIN_IR_VERSION = 10  # node metadata_props
PROTOBUF_LIMIT = 2**31 - 1  # a serialised ModelProto must stay below 2 GiB
PAYLOAD_MIN_BYTES = 1024  # initializers above this size are kept as arrays by to_onnx_parts

META_SPAN = "netdsl.span"
META_BLOCK = "netdsl.block"
META_RULES = "netdsl.rules"

_UNARY = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "hardswish": "HardSwish",
    "tanh": "Tanh",
    "exp": "Exp",
    "erf": "Erf",
    "neg": "Neg",
    "sqrt": "Sqrt",
    "identity": "Identity",
}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}
_REDUCE = {"reduce_mean": "ReduceMean", "reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}
_PAD_MODES = {"zero": "constant", "reflect": "reflect", "edge": "edge"}


def exact_resize_scale(l_in: int, l_out: int, scale: float) -> np.float32:
    """The float32 resize factor for one axis that every runtime sizes to ``l_out``.

    Starting from float32(``scale``), the factor is nudged by ulps until ``l_in * f`` lies in
    ``[l_out, l_out + 1)`` both exactly (float64 arithmetic on the float32 value is exact here)
    and when the product is rounded to float32, so floor or trunc in float or double all give
    ``l_out``. When ``scale`` is ``l_out / l_in`` this is the smallest float32 with
    ``l_in * f >= l_out``. Raises ValueError when ``scale`` cannot produce ``l_out``.
    """
    product = l_in * scale
    if not (l_out <= product * (1 + 1e-9) and product < l_out + 1):
        raise ValueError(f"resize factor {scale!r} does not size {l_in} to {l_out}")
    f = np.float32(scale)
    while float(f) * l_in < l_out:
        f = np.nextafter(f, np.float32(np.inf))
    while float(f) * l_in >= l_out + 1 or np.float32(l_in) * f >= l_out + 1:
        f = np.nextafter(f, np.float32(0))
    if float(f) * l_in < l_out:
        raise ValueError(f"no float32 resize factor sizes {l_in} to {l_out}")
    return f


def _pads4(pads: Sequence[int]) -> list[int]:
    """IR (t, l, b, r) pads of the two spatial axes -> ONNX Pad pads of a rank-4 tensor."""
    t, l, b, r = pads
    return [0, 0, t, l, 0, 0, b, r]


@dataclass(slots=True, eq=False)
class _Tensor:
    """An ONNX tensor while the model is built.

    An initializer when ``array`` is set; otherwise a variable, typed (``dtype`` and ``shape``,
    listed in the model's value infos) or not (an intermediate of a multi-node lowering).
    """

    name: str
    array: np.ndarray | None = None
    dtype: type | None = None
    shape: list[int] | None = None


_EMPTY = _Tensor("")  # an omitted optional input


@dataclass(slots=True, eq=False)
class _OnnxNode:
    """One ONNX node while the model is built."""

    op: str
    name: str
    attrs: dict[str, Any]
    inputs: list[_Tensor]
    outputs: list[_Tensor] = field(default_factory=list)


class _Emitter:
    """Lowers IR nodes one by one into a list of ONNX nodes with deterministic names."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], opset: int, channels_last_resize: bool,
                 held_float16: bool = False):
        self.graph = graph
        self.weights = weights
        self.held_float16 = held_float16
        self.opset = opset
        self.tensors: dict[str, _Tensor] = {}
        self.layout = _ChannelsLastPlan.of(graph) if channels_last_resize else _ChannelsLastPlan()
        # IR value -> its channels-last (NHWC) tensor, for the values in ``layout.values``
        self.nhwc: dict[str, _Tensor] = {}
        self.nodes: list[_OnnxNode] = []
        # ONNX node name -> (doc_string, metadata_props) of the IR node it lowers
        self.provenance: dict[str, tuple[str, list[onnx.StringStringEntryProto]]] = {}
        self._used: set[str] = set(graph.values) | set(graph.params)
        self._shared_consts: dict[tuple[str, tuple[int, ...], bytes], _Tensor] = {}
        self._base = ""
        self._op_counts: dict[str, int] = {}
        for name in graph.inputs:
            self.tensors[name] = self._typed_variable(name)

    # ---- names and tensors ------------------------------------------------------------------

    def _fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            name = f"{hint}_{i}"
            i += 1
        self._used.add(name)
        return name

    def _typed_variable(self, name: str) -> _Tensor:
        t = self.graph.values[name]
        return _Tensor(name, dtype=NP_DTYPES[t.dtype], shape=list(t.shape))

    def type_of(self, name: str) -> TensorType:
        return self.graph.type_of(name)

    def np_dtype(self, name: str) -> type:
        return NP_DTYPES[self.type_of(name).dtype]

    def value(self, name: str) -> _Tensor:
        """The tensor of an IR value, or the initializer of a parameter (created on first use)."""
        if name not in self.tensors:
            param = self.graph.params[name]
            if name not in self.weights:
                raise ValueError(f"no weight given for parameter {name} {param.type}")
            data = np.asarray(self.weights[name], order="C")
            if not (self.held_float16 and data.dtype == np.float16):
                data = data.astype(NP_DTYPES[param.type.dtype], copy=False)
            if data.shape != param.type.shape:
                raise ValueError(f"weight {name} has shape {list(data.shape)}, the graph declares {param.type}")
            self.tensors[name] = _Tensor(name, data)
        return self.tensors[name]

    def zero_pad_produces(self, x: _Tensor) -> bool:
        """True when ``x`` is the output of a constant-mode Pad with the default (zero) fill."""
        producer = next((n for n in reversed(self.nodes) if x in n.outputs), None)
        return (producer is not None and producer.op == "Pad" and producer.attrs.get("mode") == "constant"
                and len(producer.inputs) == 2)

    def const(self, values: Any, dtype: type = np.int64) -> _Tensor:
        """A small constant (shapes, axes, scalars), shared by every user of the same value."""
        array = np.asarray(values, dtype=dtype, order="C")
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._shared_consts:
            if array.size <= 8:
                label = "[" + ",".join(repr(v) for v in array.ravel().tolist()) + "]"
            else:  # long constants are named by a digest of their content, still deterministic
                label = "." + hashlib.sha256(key[2]).hexdigest()[:12]
            self._shared_consts[key] = _Tensor(self._fresh(f"const.{array.dtype.name}{label}"), array)
        return self._shared_consts[key]

    def bind_constant(self, name: str, array: np.ndarray, out: _Tensor) -> None:
        """Make IR value ``name`` the initializer ``array`` (through an Identity if it is a graph output)."""
        if name in self.graph.outputs:
            self.emit("Identity", [_Tensor(self._fresh(f"{name}.value"), array)], out=out)
        else:
            self.tensors[name] = _Tensor(name, array)

    # ---- node emission ----------------------------------------------------------------------

    def emit(self, op: str, inputs: Sequence[_Tensor], attrs: dict[str, Any] | None = None,
             out: _Tensor | None = None) -> _Tensor:
        """Append one ONNX node; returns its output (``out`` or a fresh untyped variable)."""
        return self.emit_multi(op, inputs, attrs, [out] if out is not None else 1)[0]

    def emit_multi(self, op: str, inputs: Sequence[_Tensor], attrs: dict[str, Any] | None,
                   outputs: list[_Tensor] | int) -> list[_Tensor]:
        """Append one ONNX node with several outputs (given, or this many fresh ones)."""
        k = self._op_counts.get(op, 0)
        self._op_counts[op] = k + 1
        name = f"{self._base}/{op}" + (f"_{k}" if k else "")
        if isinstance(outputs, int):
            outputs = [_Tensor(self._fresh(name if outputs == 1 else f"{name}.{j}")) for j in range(outputs)]
        self.nodes.append(_OnnxNode(op, name, dict(attrs or {}), list(inputs), outputs))
        return outputs

    def lower(self, index: int, node: Node) -> None:
        """Emit the ONNX nodes of IR node ``node`` (the ``index``-th of the graph)."""
        block = node.provenance.block_path
        self._base = f"{block}/{node.op}_{index}" if block else f"{node.op}_{index}"
        first = len(self.nodes)
        self._op_counts = {}
        outs = [self._typed_variable(o) for o in node.outputs]
        for o, var in zip(node.outputs, outs, strict=True):
            self.tensors[o] = var
        if node.outputs[0] in self.layout.values:
            self._lower_channels_last(node, outs[0])
        else:
            _LOWERINGS[node.op](self, node, outs)
        emitted = self.nodes[first:]
        if len(emitted) == 1:
            emitted[0].name = self._base
        meta = _provenance_meta(node.provenance)
        for n in emitted:
            self.provenance[n.name] = meta

    def _lower_channels_last(self, node: Node, y: _Tensor) -> None:
        """Emit ``node`` on channels-last tensors, then its channels-first output ``y`` if anything reads it."""
        (name,) = node.outputs
        b, c, h, w = self.type_of(name).shape
        self.nhwc[name] = _CHANNELS_LAST_LOWERINGS[node.op](self, node)
        if name in self.layout.channels_first_read:
            # The same-shape Reshape keeps ONNX Runtime's transpose optimizer from moving this Transpose
            # (see the module docstring).
            self.transpose(self.reshape(self.nhwc[name], (b, h, w, c)), (0, 3, 1, 2), out=y)

    def channels_last(self, name: str) -> _Tensor:
        """The NHWC tensor of IR value ``name``: its channels-last form, else a Transpose of it (made once)."""
        if name not in self.nhwc:
            # The same-shape Reshape keeps ONNX Runtime's transpose optimizer from moving the Transpose;
            # next to a conv, its layout transformer folds it into the conv's blocked-layout reorder.
            b, c, h, w = self.type_of(name).shape
            self.nhwc[name] = self.reshape(self.transpose(self.value(name), (0, 2, 3, 1)), (b, h, w, c))
        return self.nhwc[name]

    # ---- building blocks shared by several lowerings -----------------------------------------

    def inputs(self, node: Node) -> list[_Tensor]:
        return [self.value(i) for i in node.inputs]

    def reshape(self, x: _Tensor, shape: Sequence[int], out: _Tensor | None = None) -> _Tensor:
        return self.emit("Reshape", [x, self.const(shape)], out=out)

    def transpose(self, x: _Tensor, perm: Sequence[int], out: _Tensor | None = None) -> _Tensor:
        return self.emit("Transpose", [x], {"perm": [int(p) for p in perm]}, out=out)

    def slice(self, x: _Tensor, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None, out: _Tensor | None = None) -> _Tensor:
        ins = [x, self.const(starts), self.const(ends), self.const(axes)]
        if steps is not None:
            ins.append(self.const(steps))
        return self.emit("Slice", ins, out=out)

    def pad(self, x: _Tensor, pads: Sequence[int], mode: str, out: _Tensor | None = None) -> _Tensor:
        """Pad the spatial axes of a rank-4 tensor by IR (t, l, b, r) pads; mode is an ONNX Pad mode."""
        if not any(pads) and out is None:
            return x
        return self.emit("Pad", [x, self.const(_pads4(pads))], {"mode": mode}, out=out)

    def reduce(self, op: str, x: _Tensor, axes: Sequence[int], keepdims: bool,
               out: _Tensor | None = None) -> _Tensor:
        # ReduceSum takes its axes as an input since opset 13, the other reductions since 18.
        attrs: dict[str, Any] = {"keepdims": int(keepdims)}
        axes = [int(a) for a in axes]
        if op == "ReduceSum" or self.opset >= 18:
            return self.emit(op, [x, self.const(axes)], attrs, out=out)
        return self.emit(op, [x], {**attrs, "axes": axes}, out=out)

    def concat(self, parts: Sequence[_Tensor], axis: int, out: _Tensor | None = None) -> _Tensor:
        return self.emit("Concat", parts, {"axis": int(axis)}, out=out)

    def scalar(self, value: float, like: str) -> _Tensor:
        """A scalar constant of the dtype of IR value ``like``."""
        return self.const(value, self.np_dtype(like))


Lowering = Callable[[_Emitter, Node, list[_Tensor]], None]
_LOWERINGS: dict[str, Lowering] = {}
# IR op -> the ONNX op types its lowering may emit (outside channels-last regions), declared beside
# each lowering; the coverage report reads it backwards to tell which IR op an ONNX node came from.
_EMITS: dict[str, frozenset[str]] = {}


def _lowers(*ops: str, emits: Sequence[str] | Mapping[str, str] = ()) -> Callable[[Lowering], Lowering]:
    """Register a lowering of ``ops``; ``emits`` lists the ONNX op types it may emit (per op for a mapping)."""

    def register(fn: Lowering) -> Lowering:
        for op in ops:
            _LOWERINGS[op] = fn
            _EMITS[op] = frozenset([emits[op]] if isinstance(emits, Mapping) else emits)
        return fn

    return register


# ---- dense ops ---------------------------------------------------------------------------------


@_lowers("conv", emits=["Conv"])
def _conv(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    a = node.attrs
    w = em.type_of(node.inputs[1])
    em.emit("Conv", em.inputs(node), {
        "kernel_shape": list(w.shape[2:]),
        "strides": [int(s) for s in a["stride"]],
        "pads": [int(p) for p in a["pads"]],
        "dilations": [int(d) for d in a.get("dilation", (1, 1))],
        "group": int(a["groups"]),
    }, out=ys[0])


@_lowers("linear", emits=["Gemm", "MatMul", "Transpose", "Add"])
def _linear(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    x, w, *bias = em.inputs(node)
    if em.type_of(node.inputs[0]).rank == 2:
        em.emit("Gemm", [x, w, *bias], {"transB": 1}, out=ys[0])
        return
    y = em.emit("MatMul", [x, em.transpose(w, (1, 0))], out=None if bias else ys[0])
    if bias:
        em.emit("Add", [y, bias[0]], out=ys[0])


@_lowers("matmul", emits=["MatMul"])
def _matmul(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.emit("MatMul", em.inputs(node), out=ys[0])


# ---- normalisations ----------------------------------------------------------------------------


@_lowers("batchnorm", emits=["BatchNormalization"])
def _batchnorm(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.emit("BatchNormalization", em.inputs(node), {"epsilon": float(node.attrs["eps"])}, out=ys[0])


@_lowers("layernorm", emits=["LayerNormalization", "Transpose"])
def _layernorm(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    x, *affine = em.inputs(node)
    xt = em.type_of(node.inputs[0])
    axis = node.attrs["axis"] % xt.rank
    if not affine:  # LayerNormalization requires a scale
        affine = [em.const(np.ones(xt.shape[axis]), em.np_dtype(node.inputs[0]))]
    attrs = {"axis": -1, "epsilon": float(node.attrs["eps"])}
    if axis == xt.rank - 1:
        em.emit("LayerNormalization", [x, *affine], attrs, out=ys[0])
        return
    # LayerNormalization normalises every axis from `axis` on; move the one axis last and back.
    perm = [i for i in range(xt.rank) if i != axis] + [axis]
    normed = em.emit("LayerNormalization", [em.transpose(x, perm), *affine], attrs)
    em.transpose(normed, list(np.argsort(perm)), out=ys[0])


@_lowers("groupnorm", emits=["Reshape", "InstanceNormalization", "Mul", "Add"])
def _groupnorm(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    x, *affine = em.inputs(node)
    xt = em.type_of(node.inputs[0])
    groups = node.attrs["groups"]
    dtype = em.np_dtype(node.inputs[0])
    # Normalise each (batch, group) slice as one instance; then the per-channel affine map.
    grouped = em.reshape(x, (xt.shape[0], groups, xt.numel // (xt.shape[0] * groups)))
    normed = em.emit("InstanceNormalization", [grouped, em.const(np.ones(groups), dtype),
                                               em.const(np.zeros(groups), dtype)],
                     {"epsilon": float(node.attrs.get("eps", 1e-5))})
    if not affine:
        em.reshape(normed, xt.shape, out=ys[0])
        return
    per_channel = (xt.shape[1],) + (1,) * (xt.rank - 2)
    scaled = em.emit("Mul", [em.reshape(normed, xt.shape), em.reshape(affine[0], per_channel)])
    em.emit("Add", [scaled, em.reshape(affine[1], per_channel)], out=ys[0])


# ---- element-wise ------------------------------------------------------------------------------


@_lowers(*_UNARY, emits=_UNARY)
def _unary(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.emit(_UNARY[node.op], em.inputs(node), out=ys[0])


@_lowers("silu", emits=["Mul", "Sigmoid"])
def _silu(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    (x,) = em.inputs(node)
    em.emit("Mul", [x, em.emit("Sigmoid", [x])], out=ys[0])


@_lowers("gelu", emits=["Gelu", "Div", "Erf", "Mul", "Add"])
def _gelu(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    (x,) = em.inputs(node)
    if em.opset >= 20:
        em.emit("Gelu", [x], {"approximate": "none"}, out=ys[0])
        return
    like = node.inputs[0]
    # x / sqrt(2) as a Div: ONNX Runtime fuses Div-Erf-Add-Mul-Mul into one Gelu kernel, not a Mul by 1/sqrt(2)
    erf = em.emit("Erf", [em.emit("Div", [x, em.scalar(np.sqrt(2.0), like)])])
    half_x = em.emit("Mul", [x, em.scalar(0.5, like)])
    em.emit("Mul", [half_x, em.emit("Add", [erf, em.scalar(1.0, like)])], out=ys[0])


@_lowers("pow", emits=["Pow"])
def _pow(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    (x,) = em.inputs(node)
    em.emit("Pow", [x, em.scalar(float(node.attrs["exponent"]), node.inputs[0])], out=ys[0])


@_lowers("softmax", emits=["Softmax"])
def _softmax(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.emit("Softmax", em.inputs(node), {"axis": int(node.attrs["axis"])}, out=ys[0])


@_lowers(*_BINARY, emits=_BINARY)
def _binary(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.emit(_BINARY[node.op], em.inputs(node), out=ys[0])


# ---- constants ---------------------------------------------------------------------------------


@_lowers("const", emits=["Identity"])
def _const(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    value = np.asarray(node.attrs["value"], dtype=NP_DTYPES[node.attrs["dtype"]], order="C")
    em.bind_constant(node.outputs[0], value, ys[0])


def grid_values(height: int, width: int) -> np.ndarray:
    """The IR ``grid`` op's value: f32[1, 2, H, W], channel 0 = x (width) and 1 = y (height) in [-1, 1]."""
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)
    out = np.empty((1, 2, height, width), dtype=np.float32)
    out[0, 0] = xs[None, :]
    out[0, 1] = ys[:, None]
    return out


@_lowers("grid", emits=["Identity"])
def _grid(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.bind_constant(node.outputs[0], grid_values(node.attrs["height"], node.attrs["width"]), ys[0])


# ---- shape ops ---------------------------------------------------------------------------------


@_lowers("reshape", emits=["Reshape"])
def _reshape(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.reshape(em.inputs(node)[0], node.attrs["shape"], out=ys[0])


@_lowers("transpose", emits=["Transpose"])
def _transpose(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.transpose(em.inputs(node)[0], node.attrs["perm"], out=ys[0])


@_lowers("rotate", emits=["Reshape", "Transpose"])
def _rotate(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    # Per head, x is an (S channels) x (S positions) matrix; rotation is its transpose.
    b, c, h, w = em.type_of(node.inputs[0]).shape
    heads = node.attrs["heads"]
    per_head = em.reshape(em.inputs(node)[0], (b, heads, c // heads, h * w))
    em.reshape(em.transpose(per_head, (0, 1, 3, 2)), (b, c, h, w), out=ys[0])


@_lowers("shift", emits=["Pad", "Slice", "Concat"])
def _shift(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    # Pad once by the largest shift in each direction, then cut each channel group's window:
    # y[i] = x[i - dy] = xpad[i - dy + top].
    b, c, h, w = em.type_of(node.inputs[0]).shape
    offsets = [(int(dy), int(dx)) for dy, dx in node.attrs["offsets"]]
    top = max(0, *(dy for dy, _ in offsets))
    left = max(0, *(dx for _, dx in offsets))
    bottom = max(0, *(-dy for dy, _ in offsets))
    right = max(0, *(-dx for _, dx in offsets))
    padded = em.pad(em.inputs(node)[0], (top, left, bottom, right), "constant")
    size = c // len(offsets)
    parts = [
        em.slice(padded, (g * size, top - dy, left - dx), ((g + 1) * size, top - dy + h, left - dx + w), (1, 2, 3))
        for g, (dy, dx) in enumerate(offsets)
    ]
    em.concat(parts, 1, out=ys[0])


def _window_slices(em: _Emitter, x: _Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                   dilation: tuple[int, int], out_hw: tuple[int, int], axes: tuple[int, int]) -> list[_Tensor]:
    """One strided Slice per kernel offset (row-major): slot (u, v) holds x[.., i*sh + u*dh, j*sw + v*dw]."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    return [
        em.slice(x, (u * dh, v * dw), (u * dh + (ho - 1) * sh + 1, v * dw + (wo - 1) * sw + 1), axes, (sh, sw))
        for u in range(kh)
        for v in range(kw)
    ]


@_lowers("unfold", emits=["Pad", "Slice", "Concat", "Reshape", "Transpose"])
def _unfold(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    a = node.attrs
    b, c, _, _ = em.type_of(node.inputs[0]).shape
    _, _, ho, wo = em.type_of(node.outputs[0]).shape
    kh, kw = a["kernel"]
    padded = em.pad(em.inputs(node)[0], a["pads"], "constant")
    windows = _window_slices(em, padded, (kh, kw), a["stride"], a.get("dilation", (1, 1)), (ho, wo), (2, 3))
    # Concat gives slot-major channels (n*C + c); the IR wants channel-major (c*K + n).
    slot_major = em.reshape(em.concat(windows, 1), (b, kh * kw, c, ho * wo))
    em.reshape(em.transpose(slot_major, (0, 2, 1, 3)), (b, c * kh * kw, ho, wo), out=ys[0])


# ---- attention ---------------------------------------------------------------------------------


@_lowers("attention", emits=["MatMul", "Transpose", "Mul", "Add", "Softmax"])
def _attention(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    q, k, v, *bias = em.inputs(node)
    logits = em.emit("Mul", [em.emit("MatMul", [q, em.transpose(k, (0, 1, 3, 2))]),
                             em.scalar(node.attrs["scale"], node.inputs[0])])
    if bias:
        logits = em.emit("Add", [logits, bias[0]])
    em.emit("MatMul", [em.emit("Softmax", [logits], {"axis": -1}), v], out=ys[0])


@_lowers("local_attention", emits=["Slice", "Pad", "Reshape", "Mul", "Add", "Sub", "ReduceSum", "Softmax",
                                    "Concat"])
def _local_attention(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    """ACmix attention without materialising unfolded windows.

    Heads live on axis 1 and the in-head dim on axis 2 of [B, heads, d, H, W] views. Keys,
    values and positions are reflect-padded once; window slot n = (a, b) is then one strided
    Slice. logit_n = sum_e (scale*q_s) * (K_n + (pos_s - R_n)), a ReduceSum over d; softmax over
    the slot axis; y = sum_n A_n * V_n.
    """
    q, k, v, *pos = em.inputs(node)
    b, c, h, w = em.type_of(node.inputs[0]).shape
    heads, kern, s = node.attrs["heads"], node.attrs["kernel"], node.attrs["stride"]
    d, p, ho, wo = c // heads, (kern - 1) // 2, h // s, w // s
    pads = (p, p, p, p)

    def at_outputs(t: _Tensor) -> _Tensor:
        return t if s == 1 else em.slice(t, (0, 0), (h, w), (2, 3), (s, s))

    def windows(t: _Tensor, lead: tuple[int, int]) -> list[_Tensor]:
        padded = em.reshape(em.pad(t, pads, "reflect"), (*lead, d, h + 2 * p, w + 2 * p))
        return _window_slices(em, padded, (kern, kern), (s, s), (1, 1), (ho, wo), (3, 4))

    query = em.reshape(em.emit("Mul", [at_outputs(q), em.scalar(node.attrs["scale"], node.inputs[0])]),
                       (b, heads, d, ho, wo))
    keys = windows(k, (b, heads))
    if pos:
        pos_at_query = em.reshape(at_outputs(pos[0]), (1, 1, d, ho, wo))
        keys = [em.emit("Add", [key, em.emit("Sub", [pos_at_query, pos_n])])
                for key, pos_n in zip(keys, windows(pos[0], (1, 1)), strict=True)]
    logits = [em.reduce("ReduceSum", em.emit("Mul", [query, key]), (2,), True) for key in keys]
    attn = em.emit("Softmax", [em.concat(logits, 2)], {"axis": 2})
    out = None
    for n, value in enumerate(windows(v, (b, heads))):
        term = em.emit("Mul", [em.slice(attn, (n,), (n + 1,), (2,)), value])
        out = term if out is None else em.emit("Add", [out, term])
    em.reshape(out, (b, c, ho, wo), out=ys[0])


# ---- pooling and reductions --------------------------------------------------------------------


@_lowers("avgpool", emits=["Reshape", "AveragePool"])
@_lowers("maxpool", emits=["Reshape", "MaxPool"])
def _pool(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    a = node.attrs
    (x,) = em.inputs(node)
    if em.zero_pad_produces(x):
        # ONNX Runtime's pad fusion would merge that Pad into this pool's `pads`: wrong for MaxPool, whose
        # own padding never wins the max, and an invalid model for AveragePool once a side reaches the
        # kernel. It only fuses a Pad that feeds the pool directly, so a same-shape Reshape stands between.
        x = em.reshape(x, em.type_of(node.inputs[0]).shape)
    attrs: dict[str, Any] = {
        "kernel_shape": [int(k) for k in a["kernel"]],
        "strides": [int(s) for s in a["stride"]],
        "pads": [int(p) for p in a["pads"]],
    }
    dilation = [int(d) for d in a.get("dilation", (1, 1))]
    if node.op == "maxpool":
        em.emit("MaxPool", [x], {**attrs, "dilations": dilation}, out=ys[0])
        return
    if dilation != [1, 1]:
        if em.opset < 19:
            raise ValueError(f"dilated average pooling needs opset 19 or later (asked for {em.opset})")
        attrs["dilations"] = dilation
    em.emit("AveragePool", [x], {**attrs, "count_include_pad": 1}, out=ys[0])


@_lowers(*_REDUCE, emits=_REDUCE)
def _reduce(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.reduce(_REDUCE[node.op], em.inputs(node)[0], node.attrs["axes"], node.attrs["keepdims"], out=ys[0])


# ---- joining, splitting, slicing, padding ------------------------------------------------------


@_lowers("concat", emits=["Concat"])
def _concat(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.concat(em.inputs(node), node.attrs["axis"], out=ys[0])


@_lowers("split", emits=["Split"])
def _split(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    (x,) = em.inputs(node)
    em.emit_multi("Split", [x, em.const(node.attrs["sizes"])], {"axis": int(node.attrs["axis"])}, ys)


@_lowers("slice", emits=["Slice"])
def _slice(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    a = node.attrs
    xt = em.type_of(node.inputs[0])
    axis = a["axis"] % xt.rank
    # Resolve Python slice semantics here so the emitted bounds are plain non-negative numbers.
    start, stop, step = slice(a["start"], a["end"], a["step"]).indices(xt.shape[axis])
    em.slice(em.inputs(node)[0], (start,), (stop,), (axis,), (step,), out=ys[0])


@_lowers("pad", emits=["Pad"])
def _pad(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.pad(em.inputs(node)[0], node.attrs["pads"], _PAD_MODES[node.attrs["mode"]], out=ys[0])


def _whole_upsample(l_in: int, l_out: int) -> bool:
    """An axis enlarged by a whole factor: ONNX Runtime's channels-first kernel is already fast there."""
    return l_out >= l_in and l_out % l_in == 0


def _resize_factors_and_attrs(node: Node, in_shape: Sequence[int]) -> tuple[np.float32, np.float32, dict[str, Any]]:
    """The exact float32 height and width factors and the ONNX Resize attributes of IR resize ``node``."""
    a = node.attrs
    h, w = in_shape[2:]
    (ho, wo), (sh, sw) = a["sizes"], a["scales"]
    if a["mode"] == "linear":
        attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    else:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return exact_resize_scale(h, ho, sh), exact_resize_scale(w, wo, sw), attrs


@_lowers("resize", emits=["Resize"])
def _resize(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    fh, fw, attrs = _resize_factors_and_attrs(node, em.type_of(node.inputs[0]).shape)
    x = em.inputs(node)[0]
    em.emit("Resize", [x, _EMPTY, em.const([1.0, 1.0, fh, fw], np.float32)], attrs, out=ys[0])


# ---- channels-last regions ---------------------------------------------------------------------
#
# ONNX Runtime interpolates channels-last several times faster than channels-first, so the ``onnx``
# target emits each linear resize other than a whole-factor upsample on NHWC tensors and keeps that
# layout through the rotations and elementwise ops that read its result (an elementwise op's other
# inputs are transposed to NHWC). A value goes back to NCHW only where something else reads it.
# Transposes next to convs cost nothing (ONNX Runtime folds them into its blocked-layout reorders);
# elsewhere they are copies. Measured in CSA at 224 input (ONNX Runtime 2 threads, per-node kernel
# times): stage 2's path resize -> q * rot(q) -> resize back had, with each resize channels-last on
# its own, 0.23 ms of Transposes per block (back to NCHW after the first resize, the rotation's, to
# NHWC before the second); as one region it has 0.09 ms (the rotation's Transpose and row Gather).
# In stage 1 the up-resize, its sigmoid and the product with ``v`` run channels-last with no
# Transpose at all (it was 0.07 ms per block). Whole model: 0.8 to 1.1 ms less per image (median of
# interleaved runs, ~44 ms). Whole-factor upsamples stay channels-first: as regions too (stage 0's
# 14 -> 56), the model was 0.4 to 0.8 ms slower.

_CHANNELS_LAST_ELEMENTWISE = frozenset(_UNARY) | frozenset(_BINARY)


def _channels_last_resize(node: Node, in_shape: Sequence[int]) -> bool:
    """A linear resize that is not a whole-factor upsample on both axes (those are fast channels-first)."""
    (h, w), (ho, wo) = in_shape[2:], node.attrs["sizes"]
    return node.attrs["mode"] == "linear" and not (_whole_upsample(h, ho) and _whole_upsample(w, wo))


@dataclass(frozen=True, slots=True)
class _ChannelsLastPlan:
    """Which IR values are emitted channels-last, and which of them are also read channels-first."""

    values: frozenset[str] = frozenset()
    channels_first_read: frozenset[str] = frozenset()

    @staticmethod
    def of(graph: Graph) -> _ChannelsLastPlan:
        """Channels-last: the outputs of channels-last resizes, then of every rotation of a channels-last
        value and of every elementwise op on rank-4 inputs of which one or more are channels-last. Read
        channels-first: by any other node, or as a graph output."""
        values: set[str] = set()
        for node in graph.nodes:
            if node.op == "resize":
                takes = _channels_last_resize(node, graph.type_of(node.inputs[0]).shape)
            elif node.op == "rotate":
                takes = node.inputs[0] in values
            else:
                takes = (node.op in _CHANNELS_LAST_ELEMENTWISE and not values.isdisjoint(node.inputs)
                         and all(graph.type_of(name).rank == 4 for name in node.inputs))
            if takes:
                values.add(node.outputs[0])
        read = {name for name in graph.outputs if name in values}
        for node in graph.nodes:
            if node.outputs[0] not in values:
                read.update(name for name in node.inputs if name in values)
        return _ChannelsLastPlan(frozenset(values), frozenset(read))


def _resize_nhwc(em: _Emitter, node: Node) -> _Tensor:
    # The factors are unchanged, so the sizes and the values are too.
    fh, fw, attrs = _resize_factors_and_attrs(node, em.type_of(node.inputs[0]).shape)
    scales = em.const([1.0, fh, fw, 1.0], np.float32)
    return em.emit("Resize", [em.channels_last(node.inputs[0]), _EMPTY, scales], attrs)


def _rotate_nhwc(em: _Emitter, node: Node) -> _Tensor:
    # With P = h*w positions and S = P channels per head, the NHWC tensor is x[b, p, n, s]; the
    # rotation (see the channels-first lowering) is y[b, p, n, s] = x[b, s, n, p]. ONNX Runtime
    # runs that single permutation element by element (0.57 ms at 196 x 4 x 196), so it is a 2-D
    # transpose z[b, n*P + p, s] = x[b, s, n, p], then a Gather of whole rows of S: y row p*heads + n
    # is z row n*P + p (a second Transpose would be merged into the first by ONNX Runtime).
    b, c, h, w = em.type_of(node.inputs[0]).shape
    heads, positions = node.attrs["heads"], h * w
    rows = em.transpose(em.reshape(em.channels_last(node.inputs[0]), (b, positions, c)), (0, 2, 1))
    order = np.arange(c).reshape(heads, positions).T.reshape(-1)
    return em.reshape(em.emit("Gather", [rows, em.const(order)], {"axis": 1}), (b, h, w, c))


def _elementwise_nhwc(em: _Emitter, node: Node) -> _Tensor:
    # All inputs are rank 4, so their NHWC forms broadcast as their NCHW forms do.
    return em.emit(_UNARY.get(node.op) or _BINARY[node.op], [em.channels_last(i) for i in node.inputs])


# IR op -> its channels-last lowering: it returns the NHWC output; the plan says which ops qualify.
_CHANNELS_LAST_LOWERINGS: dict[str, Callable[[_Emitter, Node], _Tensor]] = {
    "resize": _resize_nhwc,
    "rotate": _rotate_nhwc,
    **{op: _elementwise_nhwc for op in _CHANNELS_LAST_ELEMENTWISE},
}


@_lowers("roll", emits=["Identity", "Slice", "Concat"])
def _roll(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    xt = em.type_of(node.inputs[0])
    # numpy.roll broadcasts shifts against axes; each (shift, axis) pair applies in turn.
    shifts, axes = np.broadcast_arrays(np.atleast_1d(node.attrs["shifts"]), np.atleast_1d(node.attrs["axes"]))
    # numpy.roll: y[i] = x[(i - k) mod n], i.e. the last k entries move to the front.
    moves = [(int(ax) % xt.rank, int(sh) % xt.shape[ax]) for sh, ax in zip(shifts, axes, strict=True)]
    moves = [(ax, k) for ax, k in moves if k]
    cur = em.inputs(node)[0]
    if not moves:
        em.emit("Identity", [cur], out=ys[0])
        return
    for j, (ax, k) in enumerate(moves):
        n = xt.shape[ax]
        head = em.slice(cur, (n - k,), (n,), (ax,))
        tail = em.slice(cur, (0,), (n - k,), (ax,))
        cur = em.concat([head, tail], ax, out=ys[0] if j == len(moves) - 1 else None)


@_lowers("gather", emits=["Gather"])
def _gather(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    em.emit("Gather", em.inputs(node), {"axis": 0}, out=ys[0])


@_lowers("where", emits=["Cast", "Where"])
def _where(em: _Emitter, node: Node, ys: list[_Tensor]) -> None:
    cond, a, b = em.inputs(node)
    if em.type_of(node.inputs[0]).dtype != "bool":  # nonzero selects a, as ONNX's Cast to bool gives
        cond = em.emit("Cast", [cond], {"to": onnx.TensorProto.BOOL})
    em.emit("Where", [cond, a, b], out=ys[0])


def supported_ops() -> frozenset[str]:
    """The IR ops this backend can lower."""
    return frozenset(_LOWERINGS)


def emitted_ops(op: str) -> frozenset[str]:
    """The ONNX op types the lowering of IR op ``op`` may emit (empty when it declares none)."""
    return _EMITS.get(op, frozenset())


# ---- model assembly ----------------------------------------------------------------------------


def _provenance_meta(prov: Provenance) -> tuple[str, list[onnx.StringStringEntryProto]]:
    """The ``doc_string`` and ``metadata_props`` of every ONNX node lowering an IR node of provenance ``prov``."""
    props = [
        onnx.StringStringEntryProto(key=key, value=value)
        for key, value in (
            (META_SPAN, str(prov.span) if prov.span else ""),
            (META_BLOCK, prov.block_path),
            (META_RULES, ">".join(prov.rules)),
        )
    ]
    return str(prov), props


def _tensor_dtype(dtype: Any) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _value_info(t: _Tensor) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, _tensor_dtype(t.dtype), t.shape)


class _AttributeCache:
    """AttributeProtos by name and value: the same few attributes recur on thousands of nodes."""

    def __init__(self) -> None:
        self._protos: dict[tuple[str, str, str], onnx.AttributeProto] = {}

    def get(self, key: str, value: Any) -> onnx.AttributeProto:
        # repr tells apart what equality does not (1 and 1.0 and True, 0.0 and -0.0): each makes a different proto.
        cache_key = (key, type(value).__name__, repr(value))
        proto = self._protos.get(cache_key)
        if proto is None:
            proto = self._protos[cache_key] = helper.make_attribute(key, value)
        return proto


def _assemble(em: _Emitter, graph: Graph, opset: int,
              payloads: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The ModelProto of the emitted nodes, built in place (each weight is copied once, into the proto).

    With ``payloads`` given, initializers of more than :data:`PAYLOAD_MIN_BYTES` are left without
    data and their arrays collected in it instead, by name (see :func:`to_onnx_parts`).

    Initializers and value infos are listed in order of first use: graph inputs, then each node's
    inputs and outputs in node order, then graph outputs. Value infos are the typed variables
    other than the graph's inputs and outputs.
    """
    inputs = [em.tensors[name] for name in graph.inputs]
    outputs = [em.tensors[name] for name in graph.outputs]
    model = onnx.ModelProto(ir_version=onnx.IR_VERSION, producer_name="netdsl", producer_version=__version__)
    model.opset_import.append(helper.make_opsetid("", opset))
    proto = model.graph
    proto.name = graph.name
    by_name: dict[str, _Tensor] = {}  # every named tensor, in order of first use (a later one of a name wins)
    for t in inputs:
        by_name[t.name] = t
    attributes = _AttributeCache()
    for node in em.nodes:
        for t in node.inputs:
            if t.name:
                by_name[t.name] = t
        for t in node.outputs:
            if t.name:
                by_name[t.name] = t
        doc_string, props = em.provenance[node.name]
        proto.node.add(
            op_type=node.op, name=node.name, doc_string=doc_string, metadata_props=props,
            input=[t.name for t in node.inputs], output=[t.name for t in node.outputs],
            attribute=[attributes.get(key, value) for key, value in node.attrs.items()],
        )
    for t in outputs:
        by_name[t.name] = t
    proto.input.extend(_value_info(t) for t in inputs)
    proto.output.extend(_value_info(t) for t in outputs)
    for t in by_name.values():
        if t.array is None:
            continue
        tensor = proto.initializer.add(name=t.name, data_type=_tensor_dtype(t.array.dtype), dims=t.array.shape)
        if payloads is not None and t.array.nbytes > PAYLOAD_MIN_BYTES:
            payloads[t.name] = t.array
        else:
            tensor.raw_data = t.array.tobytes()
    io_names = {t.name for t in inputs} | {t.name for t in outputs}
    proto.value_info.extend(_value_info(t) for t in by_name.values()
                            if t.array is None and t.dtype is not None and t.name not in io_names)
    return model


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    Emission allocates tens of thousands of small acyclic objects; each allocation burst would
    otherwise trigger collections that walk the caller's whole heap (a large share of the emit
    time in a process that also holds a PyTorch model).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def to_onnx(graph: Graph, weights: dict[str, np.ndarray], opset: int = 17,
            channels_last_resize: bool = False) -> onnx.ModelProto:
    """Lower ``graph`` with ``weights`` (by parameter name) to an ONNX model of the given opset.

    The result passes ``onnx.checker.check_model(full_check=True)``, runs in ONNX Runtime, and is
    byte-identical for the same inputs in any process. ``channels_last_resize`` emits linear resizes
    other than whole-factor upsamples, and the rotations and elementwise ops reading them,
    channels-last (same values; faster in ONNX Runtime on CPU).
    Raises ValueError for an unsupported opset, a missing or mis-shaped weight, or an op with no
    lowering.
    """
    return _emit(graph, weights, opset, channels_last_resize, None, False)


def to_onnx_parts(graph: Graph, weights: dict[str, np.ndarray], opset: int = 17, channels_last_resize: bool = False,
                  held_float16: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """:func:`to_onnx`'s model with its large initializers left empty, and their arrays by name.

    The arrays are the given weights themselves (not copies), so a model written with
    :func:`netdsl.backends.onnx_stream.write_onnx_parts` holds each weight once in memory.
    Initializers of at most :data:`PAYLOAD_MIN_BYTES` (shapes, axes, scales) keep their data,
    so the model's constants can still be read (the TensorRT coverage check does).
    With ``held_float16`` (weights held for a float16 model, :mod:`netdsl.float16_weights`), float16 arrays
    of float32 parameters become float16 initializers as they are, for
    :func:`netdsl.backends.onnx_float16.to_float16` to take over unconverted.
    """
    payloads: dict[str, np.ndarray] = {}
    return _emit(graph, weights, opset, channels_last_resize, payloads, held_float16), payloads


def _emit(graph: Graph, weights: dict[str, np.ndarray], opset: int, channels_last_resize: bool,
          payloads: dict[str, np.ndarray] | None, held_float16: bool) -> onnx.ModelProto:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported (use {MIN_OPSET}..{MAX_OPSET})")
    unknown = sorted({n.op for n in graph.nodes} - set(_LOWERINGS))
    if unknown:
        raise ValueError(f"no ONNX lowering for op(s): {', '.join(unknown)}")
    with _gc_paused():
        em = _Emitter(graph, weights, opset, channels_last_resize, held_float16)
        for index, node in enumerate(graph.nodes):
            em.lower(index, node)
        model = _assemble(em, graph, opset, payloads)
    model.ir_version = max(MIN_IR_VERSION, helper.find_min_ir_version_for(list(model.opset_import)))
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str], max_proto_bytes: int = PROTOBUF_LIMIT) -> None:
    """Write ``model`` to ``path`` atomically.

    A model larger than ``max_proto_bytes`` (protobuf's 2 GiB limit by default) is saved with
    its large tensors in ONNX external data, in ``<file name>.data`` next to ``path``; both files
    are published only once both are complete.
    """
    target = Path(path)
    if model.ByteSize() <= max_proto_bytes:
        atomic_write_bytes(target, model.SerializeToString())
        return
    data_name = f"{target.name}.data"
    staged_model = onnx.ModelProto()
    staged_model.CopyFrom(model)  # onnx.save_model moves tensor data out of the proto it is given
    # Data first: the model file must never point at a data file that is not there yet.
    with atomic_paths(target.with_name(data_name), target) as (_, tmp_model):
        onnx.save_model(staged_model, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
