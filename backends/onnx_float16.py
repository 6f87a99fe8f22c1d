"""Float16 ONNX: the float32 model of :func:`netdsl.backends.onnx_backend.to_onnx` with float16 weights and activations.

:func:`to_float16` rewrites a ModelProto in place of a copy:

* every float32 initializer, value and graph input/output becomes float16, except the inputs
  ONNX requires in float32 whatever the data type (Resize's ``roi`` and ``scales``); an
  initializer shared between such an input and a float16 one is duplicated;
* float tensors held in attributes (``Constant``'s ``value``/``value_float(s)``,
  ``ConstantOfShape``'s ``value``) become float16, and a ``Cast`` to float32 casts to float16;
* integer tensors (shapes, axes, pads, indices) and scalar attributes (epsilons) are untouched;
* with ``io_dtype="float32"`` (the default) the graph's float inputs and outputs stay float32
  and a ``Cast`` at each boundary converts them, so callers feed and read float32 as before;
  with ``io_dtype="float16"`` they become float16 too.

Only ops in :data:`CONVERTED_OPS` are accepted: each has been checked for float16 support in
the ONNX standard, so a new op in the ONNX backend fails loudly here until it is added.

Numerics are not checked here: :mod:`netdsl.range_check` runs the graph on calibration inputs
first. ONNX Runtime's CPU provider loads and runs these models, but on x86 it computes most
float16 ops in float32 between inserted casts (Conv, MatMul, the element-wise ops, ...), so its
results do not show float16 overflow; the range check emulates float16 storage instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from netdsl.backends.onnx_backend import META_BLOCK, META_RULES, META_SPAN

IO_DTYPES = ("float32", "float16")
BOUNDARY_RULE = "float16_io"

FLOAT32_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2})}
"""Per op, the input positions that stay float32 (ONNX types Resize's roi and scales as float)."""

CONVERTED_OPS = frozenset({
    "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "Div",
    "Erf", "Exp", "Gather", "Gelu", "Gemm", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LayerNormalization", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Sub",
    "Tanh", "Transpose", "Where", "Add",
})
"""The ONNX ops :func:`to_float16` converts (every op the ONNX backend emits, plus constants and casts)."""


class Float16Error(ValueError):
    """A model that cannot be converted: an op outside :data:`CONVERTED_OPS`, or a weight beyond float16."""


def _float16_array(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` in float16; raises Float16Error if a finite value becomes Inf."""
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    if (np.isfinite(array) & ~np.isfinite(half)).any():
        raise Float16Error(f"{what} holds values beyond the float16 range (max |x| {np.max(np.abs(array)):g})")
    return half


def _float16_tensor(tensor: TensorProto, what: str) -> TensorProto:
    converted = numpy_helper.from_array(_float16_array(numpy_helper.to_array(tensor), what), tensor.name)
    if tensor.HasField("doc_string"):  # proto2: an unset field stays unset, so both conversions give the same bytes
        converted.doc_string = tensor.doc_string
    return converted


def _value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.output
    yield from graph.value_info


def _convert_attributes(node: onnx.NodeProto) -> None:
    """Float tensors in ``node``'s attributes -> float16; a Cast to float32 casts to float16."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_float16_tensor(attr.t, f"attribute '{attr.name}' of node '{node.name}'"))
        elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
    if node.op_type == "Constant":
        # value_float(s) always mean float32: restate them as a float16 tensor.
        for attr in list(node.attribute):
            if attr.name in ("value_float", "value_floats"):
                values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute(
                    "value", numpy_helper.from_array(_float16_array(values, f"constant '{node.name}'"))))


def _fresh_namer(model: onnx.ModelProto) -> Callable[[str], str]:
    used = {t.name for t in model.graph.initializer} | {v.name for v in _value_infos(model.graph)}
    used |= {name for n in model.graph.node for name in (*n.input, *n.output, n.name)}

    def fresh(hint: str) -> str:
        name, i = hint, 1
        while name in used:
            name, i = f"{hint}_{i}", i + 1
        used.add(name)
        return name

    return fresh


def _convert_initializers(model: onnx.ModelProto, fresh: Callable[[str], str],
                          payloads: dict[str, np.ndarray]) -> None:
    """Float32 initializers -> float16, except where only float32-typed inputs read them (duplicated if both).

    An initializer whose data is in ``payloads`` (left empty in the model) gets its float16 array
    there, replacing the float32 one: each float32 array can be freed as soon as it is converted.
    """
    graph = model.graph
    keep, convert = set(), set()
    for node in graph.node:
        kept = FLOAT32_INPUTS.get(node.op_type, frozenset())
        for pos, name in enumerate(node.input):
            (keep if pos in kept else convert).add(name)
    replacements: dict[str, str] = {}
    for index, tensor in enumerate(list(graph.initializer)):
        if tensor.data_type != TensorProto.FLOAT or tensor.name not in convert:
            continue
        what = f"initializer '{tensor.name}'"
        if tensor.name in payloads:
            half = TensorProto()
            half.CopyFrom(tensor)  # dims and name only: the data is the payload
            half.data_type = TensorProto.FLOAT16
            array = _float16_array(payloads[tensor.name], what)
        else:
            half, array = _float16_tensor(tensor, what), None
        if tensor.name in keep:  # read as float32 and as float16: a float16 copy for the latter
            half.name = replacements[tensor.name] = fresh(f"{tensor.name}.float16")
            graph.initializer.append(half)
        else:
            graph.initializer[index].CopyFrom(half)
        if array is not None:
            payloads[half.name] = array
    for node in graph.node:
        kept = FLOAT32_INPUTS.get(node.op_type, frozenset())
        for pos, name in enumerate(node.input):
            if pos not in kept and name in replacements:
                node.input[pos] = replacements[name]


def _boundary_cast(name: str, inp: str, out: str, to: int, what: str) -> onnx.NodeProto:
    node = helper.make_node("Cast", [inp], [out], name=name, to=to, doc_string=f"float16 boundary: {what}")
    for key, value in ((META_SPAN, ""), (META_BLOCK, ""), (META_RULES, BOUNDARY_RULE)):
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    return node


def _retyped(info: onnx.ValueInfoProto, name: str, elem_type: int) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    copy.type.tensor_type.elem_type = elem_type
    return copy


def _is_float(info: onnx.ValueInfoProto) -> bool:
    return info.type.tensor_type.elem_type == TensorProto.FLOAT


def _convert_value_infos(graph: onnx.GraphProto, io_dtype: str) -> None:
    """Float32 value types -> float16 (graph inputs and outputs only when ``io_dtype`` is float16)."""
    infos = list(graph.value_info) + (list(graph.input) + list(graph.output) if io_dtype == "float16" else [])
    for info in infos:
        if _is_float(info):
            info.type.tensor_type.elem_type = TensorProto.FLOAT16


def _keep_float32_io(graph: onnx.GraphProto, fresh: Callable[[str], str]) -> None:
    """Float32 graph inputs and outputs, with a Cast to or from float16 at each (run after the conversion)."""
    inputs = [i for i in graph.input if _is_float(i)]
    input_names = {i.name for i in graph.input}
    outputs = [o for o in graph.output if _is_float(o) and o.name not in input_names]  # a pass-through stays
    renamed: dict[str, str] = {}
    stale = [v for v in graph.value_info if v.name in {i.name for i in (*inputs, *outputs)}]
    for info in stale:
        graph.value_info.remove(info)
    for info in (*inputs, *outputs):
        renamed[info.name] = fresh(f"{info.name}.float16")
        graph.value_info.append(_retyped(info, renamed[info.name], TensorProto.FLOAT16))
    for node in graph.node:
        for seq in (node.input, node.output):
            for pos, name in enumerate(seq):
                if name in renamed:
                    seq[pos] = renamed[name]
    heads = [_boundary_cast(fresh(f"{i.name}/Cast_float16"), i.name, renamed[i.name], TensorProto.FLOAT16,
                            f"input '{i.name}' to float16") for i in inputs]
    tails = [_boundary_cast(fresh(f"{o.name}/Cast_float32"), renamed[o.name], o.name, TensorProto.FLOAT,
                            f"output '{o.name}' to float32") for o in outputs]
    nodes = [*heads, *graph.node, *tails]
    del graph.node[:]
    graph.node.extend(nodes)


def to_float16(model: onnx.ModelProto, io_dtype: str = "float32",
               payloads: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A float16 copy of ``model`` (see the module docstring); ``model`` is not modified.

    ``payloads`` holds the data of the initializers left empty by
    :func:`netdsl.backends.onnx_backend.to_onnx_parts`; it is updated in place, each float32
    array replaced by its float16 one (write the result with
    :func:`netdsl.backends.onnx_stream.write_onnx_parts`).

    ``io_dtype`` is the element type of the float graph inputs and outputs: ``float32`` (with a
    Cast at each boundary) or ``float16``. Raises :class:`Float16Error` for an op outside
    :data:`CONVERTED_OPS` or a weight or constant beyond the float16 range, ValueError for an
    unknown ``io_dtype``.
    """
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be one of {', '.join(IO_DTYPES)}, found {io_dtype!r}")
    unknown = sorted({n.op_type for n in model.graph.node
                      if n.domain not in ("", "ai.onnx") or n.op_type not in CONVERTED_OPS})
    if unknown:
        raise Float16Error(f"no float16 conversion for ONNX op(s): {', '.join(unknown)}")
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    fresh = _fresh_namer(half)
    for node in graph.node:
        _convert_attributes(node)
    _convert_initializers(half, fresh, {} if payloads is None else payloads)
    _convert_value_infos(graph, io_dtype)
    if io_dtype == "float32":
        _keep_float32_io(graph, fresh)
    return half
