"""The ONNX lowering of every IR op, one function per op (or family of ops), and their registry.

The emitter is one-to-one: each lowering emits the op as one ONNX compute op with exactly the
semantics of the op's docstring in :mod:`netdsl.opdefs`, plus at most layout and type adapters
(:data:`ADAPTERS`: Reshape, Transpose, Cast) and constant operands. A decomposition into several
compute ops is a rewrite pass on the IR, run by the targets that need it
(:mod:`netdsl.passes.pipeline`), never a lowering here: an op with no ONNX counterpart has no
lowering, and one whose counterpart covers only some of its nodes declares which (``only=``,
:class:`Covers`); the backend refuses the others, naming the pass. Each lowering declares
(``emits=``) the ONNX op types it may emit, which the coverage report reads backwards to tell
which IR op an ONNX node came from. Adding an op's ONNX form means adding one ``@_lowers`` function here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from netdsl.backends.onnx_builder import EMPTY, Lowering, OnnxGraphBuilder, OnnxTensor
from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node
from netdsl.passes.groupnorm_to_instancenorm import instance_form

UNARY = {
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
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "minimum": "Min", "maximum": "Max"}
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


ADAPTERS = frozenset({"Reshape", "Transpose", "Cast"})
"""ONNX ops a lowering may emit around its one compute op: they move or retype values, computing nothing."""


@dataclass(frozen=True)
class Covers:
    """The nodes of an op whose ONNX counterpart is one op: ``holds(graph, node, opset)``; ``others`` says
    which nodes it does not cover, in words ("below opset 20"), for the error naming the pass."""

    holds: Callable[[Graph, Node, int], bool]
    others: str


LOWERINGS: dict[str, Lowering] = {}
"""IR op -> its lowering (outside channels-last regions, see :mod:`netdsl.backends.onnx_layout`)."""
# IR op -> the ONNX op types its lowering may emit (outside channels-last regions), declared beside
# each lowering; the coverage report reads it backwards to tell which IR op an ONNX node came from.
_EMITS: dict[str, frozenset[str]] = {}
# IR op -> the nodes its lowering covers, for ops whose ONNX counterpart does not cover all of them.
_COVERS: dict[str, Covers] = {}


def _lowers(*ops: str, emits: Sequence[str] | Mapping[str, str] = (),
            only: Covers | None = None) -> Callable[[Lowering], Lowering]:
    """Register a lowering of ``ops``; ``emits`` lists the ONNX op types it may emit (per op for a mapping);
    ``only`` limits it to the nodes it covers."""

    def register(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
            _EMITS[op] = frozenset([emits[op]] if isinstance(emits, Mapping) else emits)
            if only is not None:
                _COVERS[op] = only
        return fn

    return register


def not_covered(graph: Graph, node: Node, opset: int) -> str | None:
    """None when the emitter lowers ``node`` at ``opset``; else which nodes of its op it does not lower, in
    words ("" for all of them), so that a pass must decompose it first."""
    if node.op not in LOWERINGS:
        return ""
    covers = _COVERS.get(node.op)
    return None if covers is None or covers.holds(graph, node, opset) else covers.others


# ---- dense ops ---------------------------------------------------------------------------------


@_lowers("conv", emits=["Conv"])
def _conv(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    a = node.attrs
    w = em.type_of(node.inputs[1])
    em.emit("Conv", em.inputs(node), {
        "kernel_shape": list(w.shape[2:]),
        "strides": [int(s) for s in a["stride"]],
        "pads": [int(p) for p in a["pads"]],
        "dilations": [int(d) for d in a.get("dilation", (1, 1))],
        "group": int(a["groups"]),
    }, out=ys[0])


@_lowers("linear", emits=["Reshape", "Gemm"])
def _linear(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    # Gemm is linear itself (x @ weight^T + bias) on a matrix: the leading axes are viewed as its rows.
    x, w, *bias = em.inputs(node)
    xt, yt = em.type_of(node.inputs[0]), em.type_of(node.outputs[0])
    if xt.rank == 2:
        em.emit("Gemm", [x, w, *bias], {"transB": 1}, out=ys[0])
        return
    rows = em.reshape(x, (xt.numel // xt.shape[-1], xt.shape[-1]))
    em.reshape(em.emit("Gemm", [rows, w, *bias], {"transB": 1}), yt.shape, out=ys[0])


@_lowers("matmul", emits=["MatMul"])
def _matmul(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit("MatMul", em.inputs(node), out=ys[0])


# ---- normalisations ----------------------------------------------------------------------------


@_lowers("batchnorm", emits=["BatchNormalization"])
def _batchnorm(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit("BatchNormalization", em.inputs(node), {"epsilon": float(node.attrs["eps"])}, out=ys[0])


@_lowers("layernorm", emits=["LayerNormalization", "Transpose"])
def _layernorm(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
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


@_lowers("groupnorm", emits=["InstanceNormalization"],
         only=Covers(lambda graph, node, opset: instance_form(graph, node), "with fewer groups than channels"))
def _groupnorm(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    x, *affine = em.inputs(node)
    if not affine:  # InstanceNormalization requires a scale and a bias
        dtype, channels = em.np_dtype(node.inputs[0]), em.type_of(node.inputs[0]).shape[1]
        affine = [em.const(np.ones(channels), dtype), em.const(np.zeros(channels), dtype)]
    em.emit("InstanceNormalization", [x, *affine], {"epsilon": float(node.attrs.get("eps", 1e-5))}, out=ys[0])


# ---- element-wise ------------------------------------------------------------------------------


@_lowers(*UNARY, emits=UNARY)
def _unary(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit(UNARY[node.op], em.inputs(node), out=ys[0])


@_lowers("relu6", emits=["Clip"])
def _relu6(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    (x,) = em.inputs(node)
    like = node.inputs[0]
    em.emit("Clip", [x, em.scalar(0.0, like), em.scalar(6.0, like)], out=ys[0])


@_lowers("hardsigmoid", emits=["HardSigmoid"])
def _hardsigmoid(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    # ONNX HardSigmoid is max(0, min(1, alpha*x + beta)): PyTorch's clip(x + 3, 0, 6) / 6 with alpha 1/6, beta 1/2.
    em.emit("HardSigmoid", em.inputs(node), {"alpha": 1.0 / 6.0, "beta": 0.5}, out=ys[0])


@_lowers("clamp", emits=["Clip", "Max", "Min"])
def _clamp(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    (x,) = em.inputs(node)
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    like = node.inputs[0]
    if lo is None:
        em.emit("Min", [x, em.scalar(hi, like)], out=ys[0])
    elif hi is None:
        em.emit("Max", [x, em.scalar(lo, like)], out=ys[0])
    else:
        em.emit("Clip", [x, em.scalar(lo, like), em.scalar(hi, like)], out=ys[0])


@_lowers("gelu", emits=["Gelu"], only=Covers(lambda graph, node, opset: opset >= 20, "below opset 20"))
def _gelu(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit("Gelu", em.inputs(node), {"approximate": "none"}, out=ys[0])


@_lowers("pow", emits=["Pow"])
def _pow(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    (x,) = em.inputs(node)
    em.emit("Pow", [x, em.scalar(float(node.attrs["exponent"]), node.inputs[0])], out=ys[0])


@_lowers("softmax", emits=["Softmax"])
def _softmax(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit("Softmax", em.inputs(node), {"axis": int(node.attrs["axis"])}, out=ys[0])


@_lowers(*BINARY, emits=BINARY)
def _binary(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit(BINARY[node.op], em.inputs(node), out=ys[0])


# ---- constants ---------------------------------------------------------------------------------


@_lowers("const", emits=["Identity"])
def _const(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
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
def _grid(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.bind_constant(node.outputs[0], grid_values(node.attrs["height"], node.attrs["width"]), ys[0])


# ---- shape ops ---------------------------------------------------------------------------------


@_lowers("reshape", emits=["Reshape"])
def _reshape(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.reshape(em.inputs(node)[0], node.attrs["shape"], out=ys[0])


@_lowers("transpose", emits=["Transpose"])
def _transpose(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.transpose(em.inputs(node)[0], node.attrs["perm"], out=ys[0])


@_lowers("rotate", emits=["Reshape", "Transpose"])
def _rotate(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    # Per head, x is an (S channels) x (S positions) matrix; rotation is its transpose.
    b, c, h, w = em.type_of(node.inputs[0]).shape
    heads = node.attrs["heads"]
    per_head = em.reshape(em.inputs(node)[0], (b, heads, c // heads, h * w))
    em.reshape(em.transpose(per_head, (0, 1, 3, 2)), (b, c, h, w), out=ys[0])


# ---- pooling and reductions --------------------------------------------------------------------


@_lowers("avgpool", emits=["Reshape", "AveragePool"])
@_lowers("maxpool", emits=["Reshape", "MaxPool"])
def _pool(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
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
    if a.get("ceil_mode"):
        attrs["ceil_mode"] = 1
    dilation = [int(d) for d in a.get("dilation", (1, 1))]
    if node.op == "maxpool":
        em.emit("MaxPool", [x], {**attrs, "dilations": dilation}, out=ys[0])
        return
    if dilation != [1, 1]:
        if em.opset < 19:
            raise ValueError(f"dilated average pooling needs opset 19 or later (asked for {em.opset})")
        attrs["dilations"] = dilation
    em.emit("AveragePool", [x], {**attrs, "count_include_pad": int(a.get("count_include_pad", True))}, out=ys[0])


@_lowers(*_REDUCE, emits=_REDUCE)
def _reduce(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.reduce(_REDUCE[node.op], em.inputs(node)[0], node.attrs["axes"], node.attrs["keepdims"], out=ys[0])


# ---- joining, splitting, slicing, padding ------------------------------------------------------


@_lowers("concat", emits=["Concat"])
def _concat(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.concat(em.inputs(node), node.attrs["axis"], out=ys[0])


@_lowers("split", emits=["Split"])
def _split(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    (x,) = em.inputs(node)
    em.emit_multi("Split", [x, em.const(node.attrs["sizes"])], {"axis": int(node.attrs["axis"])}, ys)


@_lowers("slice", emits=["Slice"])
def _slice(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    a = node.attrs
    xt = em.type_of(node.inputs[0])
    axis = a["axis"] % xt.rank
    # Resolve Python slice semantics here so the emitted bounds are plain non-negative numbers.
    start, stop, step = slice(a["start"], a["end"], a["step"]).indices(xt.shape[axis])
    em.slice(em.inputs(node)[0], (start,), (stop,), (axis,), (step,), out=ys[0])


@_lowers("pad", emits=["Pad"])
def _pad(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.pad(em.inputs(node)[0], node.attrs["pads"], _PAD_MODES[node.attrs["mode"]], out=ys[0])


def whole_upsample(l_in: int, l_out: int) -> bool:
    """An axis enlarged by a whole factor: ONNX Runtime's channels-first kernel is already fast there."""
    return l_out >= l_in and l_out % l_in == 0


def resize_factors_and_attrs(node: Node, in_shape: Sequence[int]) -> tuple[np.float32, np.float32, dict[str, Any]]:
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
def _resize(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    fh, fw, attrs = resize_factors_and_attrs(node, em.type_of(node.inputs[0]).shape)
    x = em.inputs(node)[0]
    em.emit("Resize", [x, EMPTY, em.const([1.0, 1.0, fh, fw], np.float32)], attrs, out=ys[0])



@_lowers("gather", emits=["Gather"])
def _gather(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    em.emit("Gather", em.inputs(node), {"axis": 0}, out=ys[0])


@_lowers("where", emits=["Cast", "Where"])
def _where(em: OnnxGraphBuilder, node: Node, ys: list[OnnxTensor]) -> None:
    cond, a, b = em.inputs(node)
    if em.type_of(node.inputs[0]).dtype != "bool":  # nonzero selects a, as ONNX's Cast to bool gives
        cond = em.emit("Cast", [cond], {"to": onnx.TensorProto.BOOL})
    em.emit("Where", [cond, a, b], out=ys[0])


def supported_ops() -> frozenset[str]:
    """The IR ops this backend can lower."""
    return frozenset(LOWERINGS)


def partly_covered_ops() -> frozenset[str]:
    """The IR ops whose lowering covers only some of their nodes (``only=``); a pass decomposes the others."""
    return frozenset(_COVERS)


def emitted_ops(op: str) -> frozenset[str]:
    """The ONNX op types the lowering of IR op ``op`` may emit (empty when it declares none)."""
    return _EMITS.get(op, frozenset())

