"""ONNX emitter: a typed IR graph plus weights -> a self-contained, checked, deterministic ONNX model.

This module assembles the model; :mod:`netdsl.backends.onnx_builder` holds the graph under
construction, :mod:`netdsl.backends.onnx_ops` the lowering of each IR op and
:mod:`netdsl.backends.onnx_layout` the channels-last layout planning.

Every IR op (see :mod:`netdsl.opdefs`) that has an ONNX counterpart is lowered to that one ONNX op
(plus layout adapters), with exactly the semantics of its docstring. Each decomposition into several
ops is a rewrite pass on the IR, written once and run by the targets that need it (e.g. ``roll``:
``roll_to_slice_concat``, ``attention``: ``attention_to_matmul``; docs/architecture.md lists them);
meeting an op here that only a pass lowers is a located error naming the pass. The model is built with
onnx's own helpers; names are deterministic:

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
``onnx`` target does; see :mod:`netdsl.backends.onnx_layout`): ONNX Runtime's channels-last linear Resize
is several times faster than its channels-first one, and its layout transformer folds the Transposes
into and out of NHWC into the blocked-layout reorders of neighbouring convs. Each such Transpose has
a Reshape to the same shape on its NHWC side, which keeps ONNX Runtime's transpose optimizer from
cancelling or moving it. The TensorRT targets keep the single Resize layer.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from netdsl import __version__
from netdsl.atomic_write import atomic_paths, atomic_write_bytes
from netdsl.backends.onnx_builder import META_BLOCK, META_RULES, META_SPAN, OnnxGraphBuilder, OnnxTensor
from netdsl.backends.onnx_layout import ChannelsLastPlan
from netdsl.backends.onnx_ops import (
    LOWERINGS,
    emitted_ops,
    exact_resize_scale,
    grid_values,
    not_covered,
    partly_covered_ops,
    supported_ops,
)
from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.ir import Graph
from netdsl.passes.pipeline import lowering_targets

__all__ = ["META_BLOCK", "META_RULES", "META_SPAN", "MAX_OPSET", "MIN_OPSET", "PAYLOAD_MIN_BYTES", "emitted_ops",
           "exact_resize_scale", "grid_values", "partly_covered_ops", "save_onnx", "supported_ops", "to_onnx",
           "to_onnx_parts"]

MIN_OPSET = 17  # LayerNormalization
MAX_OPSET = 21
MIN_IR_VERSION = 10  # node metadata_props
PROTOBUF_LIMIT = 2**31 - 1  # a serialised ModelProto must stay below 2 GiB
PAYLOAD_MIN_BYTES = 1024  # initializers above this size are kept as arrays by to_onnx_parts


def _tensor_dtype(dtype: Any) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _value_info(t: OnnxTensor) -> onnx.ValueInfoProto:
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


def _assemble(em: OnnxGraphBuilder, graph: Graph, opset: int,
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
    by_name: dict[str, OnnxTensor] = {}  # every named tensor, in order of first use (a later one of a name wins)
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


def _check_lowered(graph: Graph, opset: int) -> None:
    """Every node of ``graph`` has a one-op ONNX form at ``opset``: a located error naming the pass for a node
    a pass decomposes before emission, a ValueError for an op nothing lowers."""
    for node in graph.nodes:
        others = not_covered(graph, node, opset)
        if others is None:
            continue
        passes = lowering_targets(node.op)
        if not passes:
            raise ValueError(f"no ONNX lowering for op {node.op}" + (f" {others}" if others else ""))
        raise NetdslError(Diagnostic(f"{node.op} has no ONNX form of its own{' ' + others if others else ''}: "
                                     "a pass decomposes it before emission", node.provenance.span,
                                     help="run " + ", ".join(f"'{p}'" for p in passes),
                                     chain=node.provenance.chain))


def _emit(graph: Graph, weights: dict[str, np.ndarray], opset: int, channels_last_resize: bool,
          payloads: dict[str, np.ndarray] | None, held_float16: bool) -> onnx.ModelProto:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported (use {MIN_OPSET}..{MAX_OPSET})")
    _check_lowered(graph, opset)
    layout = ChannelsLastPlan.of(graph) if channels_last_resize else ChannelsLastPlan()
    with _gc_paused():
        em = OnnxGraphBuilder(graph, weights, opset, held_float16)
        for index, node in enumerate(graph.nodes):
            em.lower(index, node, layout.lower if node.outputs[0] in layout.values else LOWERINGS[node.op])
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
