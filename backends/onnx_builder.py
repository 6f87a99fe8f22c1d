"""The ONNX graph under construction: tensors, nodes and the building blocks every op lowering uses.

:class:`OnnxGraphBuilder` names every ONNX node after the IR node it lowers (``<block path>/<op>_<index>``,
plus ``/<OnnxOp>`` when one IR node becomes several ONNX nodes) and records that IR node's provenance
(:func:`provenance_meta`), which :mod:`netdsl.backends.onnx_backend` writes into each node's
``doc_string`` and ``metadata_props``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Node, Provenance, TensorType

META_SPAN = "netdsl.span"
META_BLOCK = "netdsl.block"
META_RULES = "netdsl.rules"


def pads4(pads: Sequence[int]) -> list[int]:
    """IR (t, l, b, r) pads of the two spatial axes -> ONNX Pad pads of a rank-4 tensor."""
    t, l, b, r = pads
    return [0, 0, t, l, 0, 0, b, r]



@dataclass(slots=True, eq=False)
class OnnxTensor:
    """An ONNX tensor while the model is built.

    An initializer when ``array`` is set; otherwise a variable, typed (``dtype`` and ``shape``,
    listed in the model's value infos) or not (an intermediate of a multi-node lowering).
    """

    name: str
    array: np.ndarray | None = None
    dtype: type | None = None
    shape: list[int] | None = None


EMPTY = OnnxTensor("")  # an omitted optional input


@dataclass(slots=True, eq=False)
class OnnxNode:
    """One ONNX node while the model is built."""

    op: str
    name: str
    attrs: dict[str, Any]
    inputs: list[OnnxTensor]
    outputs: list[OnnxTensor] = field(default_factory=list)



class OnnxGraphBuilder:
    """Builds the ONNX nodes of an IR graph, one IR node at a time, with deterministic names; the lowering
    of each IR op (:mod:`netdsl.backends.onnx_ops`) calls its building blocks."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], opset: int, held_float16: bool = False):
        self.graph = graph
        self.weights = weights
        self.held_float16 = held_float16
        self.opset = opset
        self.tensors: dict[str, OnnxTensor] = {}
        # IR value -> its channels-last (NHWC) tensor (see netdsl.backends.onnx_layout)
        self.nhwc: dict[str, OnnxTensor] = {}
        self.nodes: list[OnnxNode] = []
        # ONNX node name -> (doc_string, metadata_props) of the IR node it lowers
        self.provenance: dict[str, tuple[str, list[onnx.StringStringEntryProto]]] = {}
        self._used: set[str] = set(graph.values) | set(graph.params)
        self._shared_consts: dict[tuple[str, tuple[int, ...], bytes], OnnxTensor] = {}
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

    def _typed_variable(self, name: str) -> OnnxTensor:
        t = self.graph.values[name]
        return OnnxTensor(name, dtype=NP_DTYPES[t.dtype], shape=list(t.shape))

    def type_of(self, name: str) -> TensorType:
        return self.graph.type_of(name)

    def np_dtype(self, name: str) -> type:
        return NP_DTYPES[self.type_of(name).dtype]

    def value(self, name: str) -> OnnxTensor:
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
            self.tensors[name] = OnnxTensor(name, data)
        return self.tensors[name]

    def zero_pad_produces(self, x: OnnxTensor) -> bool:
        """True when ``x`` is the output of a constant-mode Pad with the default (zero) fill."""
        producer = next((n for n in reversed(self.nodes) if x in n.outputs), None)
        return (producer is not None and producer.op == "Pad" and producer.attrs.get("mode") == "constant"
                and len(producer.inputs) == 2)

    def const(self, values: Any, dtype: type = np.int64) -> OnnxTensor:
        """A small constant (shapes, axes, scalars), shared by every user of the same value."""
        array = np.asarray(values, dtype=dtype, order="C")
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._shared_consts:
            if array.size <= 8:
                label = "[" + ",".join(repr(v) for v in array.ravel().tolist()) + "]"
            else:  # long constants are named by a digest of their content, still deterministic
                label = "." + hashlib.sha256(key[2]).hexdigest()[:12]
            self._shared_consts[key] = OnnxTensor(self._fresh(f"const.{array.dtype.name}{label}"), array)
        return self._shared_consts[key]

    def bind_constant(self, name: str, array: np.ndarray, out: OnnxTensor) -> None:
        """Make IR value ``name`` the initializer ``array`` (through an Identity if it is a graph output)."""
        if name in self.graph.outputs:
            self.emit("Identity", [OnnxTensor(self._fresh(f"{name}.value"), array)], out=out)
        else:
            self.tensors[name] = OnnxTensor(name, array)

    # ---- node emission ----------------------------------------------------------------------

    def emit(self, op: str, inputs: Sequence[OnnxTensor], attrs: dict[str, Any] | None = None,
             out: OnnxTensor | None = None, dtype: type | None = None, shape: Sequence[int] | None = None
             ) -> OnnxTensor:
        """Append one ONNX node; returns its output (``out``, or a fresh variable, typed when ``dtype`` and
        ``shape`` are given)."""
        typed = (dtype, list(shape)) if dtype is not None and shape is not None else None
        return self.emit_multi(op, inputs, attrs, [out] if out is not None else 1, typed)[0]

    def emit_multi(self, op: str, inputs: Sequence[OnnxTensor], attrs: dict[str, Any] | None,
                   outputs: list[OnnxTensor] | int, typed: tuple[type, list[int]] | None = None) -> list[OnnxTensor]:
        """Append one ONNX node with several outputs (given, or this many fresh ones, each of the
        ``(dtype, shape)`` of ``typed`` when given)."""
        k = self._op_counts.get(op, 0)
        self._op_counts[op] = k + 1
        name = f"{self._base}/{op}" + (f"_{k}" if k else "")
        if isinstance(outputs, int):
            dtype, shape = typed if typed is not None else (None, None)
            outputs = [OnnxTensor(self._fresh(name if outputs == 1 else f"{name}.{j}"), dtype=dtype,
                                  shape=None if shape is None else list(shape)) for j in range(outputs)]
        self.nodes.append(OnnxNode(op, name, dict(attrs or {}), list(inputs), outputs))
        return outputs

    def lower(self, index: int, node: Node, lowering: Lowering) -> None:
        """Emit the ONNX nodes of IR node ``node`` (the ``index``-th of the graph) with ``lowering``."""
        block = node.provenance.block_path
        self._base = f"{block}/{node.op}_{index}" if block else f"{node.op}_{index}"
        first = len(self.nodes)
        self._op_counts = {}
        outs = [self._typed_variable(o) for o in node.outputs]
        for o, var in zip(node.outputs, outs, strict=True):
            self.tensors[o] = var
        lowering(self, node, outs)
        emitted = self.nodes[first:]
        if len(emitted) == 1:
            emitted[0].name = self._base
        meta = provenance_meta(node.provenance)
        for n in emitted:
            self.provenance[n.name] = meta

    def channels_last(self, name: str) -> OnnxTensor:
        """The NHWC tensor of IR value ``name``: its channels-last form, else a Transpose of it (made once)."""
        if name not in self.nhwc:
            # The same-shape Reshape keeps ONNX Runtime's transpose optimizer from moving the Transpose;
            # next to a conv, its layout transformer folds it into the conv's blocked-layout reorder.
            b, c, h, w = self.type_of(name).shape
            self.nhwc[name] = self.reshape(self.transpose(self.value(name), (0, 2, 3, 1)), (b, h, w, c))
        return self.nhwc[name]

    # ---- building blocks shared by several lowerings -----------------------------------------

    def inputs(self, node: Node) -> list[OnnxTensor]:
        return [self.value(i) for i in node.inputs]

    def reshape(self, x: OnnxTensor, shape: Sequence[int], out: OnnxTensor | None = None) -> OnnxTensor:
        """``x`` reshaped to ``shape``; a fresh output is typed when ``x`` is (the shape is explicit, no -1 or 0)."""
        known = x.dtype is not None and min(shape, default=1) > 0
        return self.emit("Reshape", [x, self.const(shape)], out=out, dtype=x.dtype if known else None,
                         shape=[int(d) for d in shape] if known else None)

    def transpose(self, x: OnnxTensor, perm: Sequence[int], out: OnnxTensor | None = None) -> OnnxTensor:
        """``x`` with its axes permuted by ``perm``; a fresh output is typed when ``x`` is."""
        perm = [int(p) for p in perm]
        shape = [x.shape[p] for p in perm] if x.shape is not None else None
        return self.emit("Transpose", [x], {"perm": perm}, out=out, dtype=x.dtype, shape=shape)

    def slice(self, x: OnnxTensor, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None, out: OnnxTensor | None = None) -> OnnxTensor:
        ins = [x, self.const(starts), self.const(ends), self.const(axes)]
        if steps is not None:
            ins.append(self.const(steps))
        return self.emit("Slice", ins, out=out)

    def pad(self, x: OnnxTensor, pads: Sequence[int], mode: str, out: OnnxTensor | None = None) -> OnnxTensor:
        """Pad the spatial axes of a rank-4 tensor by IR (t, l, b, r) pads; mode is an ONNX Pad mode."""
        if not any(pads) and out is None:
            return x
        return self.emit("Pad", [x, self.const(pads4(pads))], {"mode": mode}, out=out)

    def reduce(self, op: str, x: OnnxTensor, axes: Sequence[int], keepdims: bool,
               out: OnnxTensor | None = None) -> OnnxTensor:
        # ReduceSum takes its axes as an input since opset 13, the other reductions since 18.
        attrs: dict[str, Any] = {"keepdims": int(keepdims)}
        axes = [int(a) for a in axes]
        if op == "ReduceSum" or self.opset >= 18:
            return self.emit(op, [x, self.const(axes)], attrs, out=out)
        return self.emit(op, [x], {**attrs, "axes": axes}, out=out)

    def concat(self, parts: Sequence[OnnxTensor], axis: int, out: OnnxTensor | None = None) -> OnnxTensor:
        return self.emit("Concat", parts, {"axis": int(axis)}, out=out)

    def scalar(self, value: float, like: str) -> OnnxTensor:
        """A scalar constant of the dtype of IR value ``like``."""
        return self.const(value, self.np_dtype(like))


Lowering = Callable[[OnnxGraphBuilder, Node, list[OnnxTensor]], None]
LOWERINGS: dict[str, Lowering] = {}


Lowering = Callable[[OnnxGraphBuilder, Node, list[OnnxTensor]], None]
"""Emits the ONNX nodes of one IR node, given the builder, the node and its typed output tensors."""


def provenance_meta(prov: Provenance) -> tuple[str, list[onnx.StringStringEntryProto]]:
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
