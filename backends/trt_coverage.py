"""TensorRT layer-coverage validator: checks every node of an ONNX model against a profile.

For each node it reports the ONNX op, the TensorRT layer the parser maps it to, whether the
profile allows it, every violated limit with the measured values (``Conv kernel 9x9 exceeds limit
1..8``), the spec location when the node carries netdsl provenance (node ``metadata_props``
``netdsl.span`` / ``netdsl.block``, else its ``doc_string``) and the suggested rewrite. Whole-model
rules (static shapes, no run-time INT64, dtypes, rank, volume, dimension bounds) are checked on
the tensors after ONNX shape inference and blamed on the node that produces the offending tensor,
or reported at graph level for graph inputs.

Works on any ONNX model, including ones exported by ``torch.onnx.export``; local functions are
inlined first. Subgraphs of control-flow nodes (If/Loop/Scan) are not descended into: the
control-flow node itself is checked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from netdsl.backends.lowering_hints import lowering_note
from netdsl.profile import LEVELS, Limit, OpRule, Profile, check_kind

# node metadata written by the netdsl ONNX emitter (netdsl.backends.onnx_backend)
SPAN_KEY = "netdsl.span"
BLOCK_KEY = "netdsl.block"
RULES_KEY = "netdsl.rules"

_DTYPE_NAMES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool",
}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
_CONV_OPS = {"Conv", "ConvTranspose"}
# numeric checks whose values read as a shape (kernel 3x3) rather than a list
_SHAPE_LIKE = {"kernel", "stride", "dilation", "resize_scale"}


def dtype_name(elem_type: int) -> str:
    """Profile spelling of an ONNX element type (``float32``, ``int64``, ...)."""
    return _DTYPE_NAMES.get(elem_type, TensorProto.DataType.Name(elem_type).lower())


# --------------------------------------------------------------------------- report data


@dataclass
class NodeCoverage:
    """The verdict on one node."""

    index: int
    name: str
    op: str
    layer: str
    status: str  # the rule's status, or "unlisted"
    level: str  # the rule's evidence level (confirmed, evidenced, assumed), or "unlisted"
    covered: bool
    assumed: bool  # covered only because the profile assumes the op is allowed
    reasons: list[str] = field(default_factory=list)
    rewrite: str | None = None
    location: str | None = None  # spec span "file:line:col"
    block: str | None = None  # netdsl block path
    rules: list[str] = field(default_factory=list)  # netdsl rewrite rules that produced the node
    doc: str | None = None  # the node's doc_string
    sources: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """Best human location: spec span (and block), else doc string, else node name."""
        if self.location:
            return f"{self.location} ({self.block})" if self.block else self.location
        if self.doc:
            return self.doc.splitlines()[0]
        return self.block or self.name


@dataclass
class GraphViolation:
    """A whole-model rule broken by a graph input (no node to blame)."""

    check: str
    tensor: str
    message: str
    sources: list[str] = field(default_factory=list)


@dataclass
class CoverageReport:
    """Coverage of a model under a profile."""

    profile: str
    profile_path: str
    model: str
    nodes: list[NodeCoverage]
    graph_violations: list[GraphViolation]
    sources: dict[str, str]
    shape_inference_error: str | None = None

    @property
    def total(self) -> int:
        """Number of nodes checked."""
        return len(self.nodes)

    @property
    def covered_count(self) -> int:
        """Nodes the profile allows with every limit met."""
        return sum(n.covered for n in self.nodes)

    @property
    def uncovered_count(self) -> int:
        """Nodes that break a rule."""
        return self.total - self.covered_count

    @property
    def level_counts(self) -> dict[str, int]:
        """Covered nodes per evidence level of their rule (every level of :data:`LEVELS`, strongest first)."""
        counts = dict.fromkeys(LEVELS, 0)
        for n in self.nodes:
            if n.covered:
                counts[n.level] += 1
        return counts

    @property
    def assumed_count(self) -> int:
        """Covered nodes that rest on an assumption (rule status ``unknown``)."""
        return self.level_counts["assumed"]

    def assumed_rules(self) -> dict[str, int]:
        """The assumed op rules the covered nodes rely on, with how many nodes use each."""
        rules: dict[str, int] = {}
        for n in self.nodes:
            if n.covered and n.level == "assumed":
                rules[n.op] = rules.get(n.op, 0) + 1
        return rules

    @property
    def covered(self) -> bool:
        """Every node covered and no graph-level violation: the model fits the profile."""
        return self.uncovered_count == 0 and not self.graph_violations

    def violations(self) -> list[NodeCoverage]:
        """The nodes that are not covered, in graph order."""
        return [n for n in self.nodes if not n.covered]

    def violation_lines(self) -> list[str]:
        """One line per uncovered node (location, op, reasons, rewrite) and per graph-level violation."""
        lines = []
        for n in self.violations():
            line = f"{n.where}: {n.op} '{n.name}': {'; '.join(n.reasons)}"
            lines.append(f"{line} (rewrite: {n.rewrite})" if n.rewrite else line)
        lines += [f"graph: {v.message}" for v in self.graph_violations]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: summary, per-node verdicts, graph-level violations, source URLs."""
        return {
            "profile": self.profile,
            "profile_path": self.profile_path,
            "model": self.model,
            "summary": {
                "covered": self.covered_count,
                "total": self.total,
                "uncovered": self.uncovered_count,
                "assumed": self.assumed_count,
                "levels": self.level_counts,
                "graph_violations": len(self.graph_violations),
                "ok": self.covered,
            },
            "shape_inference_error": self.shape_inference_error,
            "nodes": [asdict(n) for n in self.nodes],
            "graph_violations": [asdict(v) for v in self.graph_violations],
            "sources": self.sources,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


# --------------------------------------------------------------------------- model facts


@dataclass(frozen=True)
class _TensorInfo:
    elem_type: int
    dims: tuple[int | str | None, ...] | None  # None: rank unknown; str/None entries: unknown dims

    @property
    def static(self) -> bool:
        return self.dims is not None and all(isinstance(d, int) and d >= 0 for d in self.dims)

    def known_dims(self) -> tuple[int, ...] | None:
        return tuple(self.dims) if self.static else None  # type: ignore[arg-type]

    def shape_text(self) -> str:
        if self.dims is None:
            return "[?]"
        # dims that shape inference invented (unk__N) carry no meaning for the reader
        shown = ["?" if d is None or (isinstance(d, str) and d.startswith("unk__")) else str(d) for d in self.dims]
        return "[" + ", ".join(shown) + "]"


class _ModelFacts:
    """Shapes, dtypes, constants and build-time-static tensors of a model's main graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.infos: dict[str, _TensorInfo] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            self.infos[vi.name] = _tensor_info(vi)
        self.initializers = {t.name: t for t in graph.initializer}
        for t in graph.initializer:
            self.infos[t.name] = _TensorInfo(t.data_type, tuple(t.dims))
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constant_nodes[node.output[0]] = node
        self.graph_inputs = [vi.name for vi in graph.input if vi.name not in self.initializers]
        self.graph_outputs = {vi.name for vi in graph.output}
        self.consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        self.static = self._build_time_static()
        self._values: dict[str, np.ndarray] = {}

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if name in self._values:
            return self._values[name]
        if name in self.initializers:
            array = numpy_helper.to_array(self.initializers[name])
        elif name in self.constant_nodes:
            array = _constant_node_value(self.constant_nodes[name])
        else:
            return None
        if array is not None:
            self._values[name] = array
        return array

    def info(self, name: str) -> _TensorInfo | None:
        return self.infos.get(name)

    def used(self, name: str) -> bool:
        return bool(name) and (self.consumers.get(name, 0) > 0 or name in self.graph_outputs)

    def _build_time_static(self) -> set[str]:
        """Tensors TensorRT can compute at build time: constants, shapes of static tensors, and
        anything computed only from those (e.g. Shape -> Gather -> Concat chains)."""
        static = set(self.initializers) | set(self.constant_nodes)
        for node in self.model.graph.node:
            inputs = [i for i in node.input if i]
            if node.op_type in ("Shape", "Size"):
                info = self.infos.get(inputs[0]) if inputs else None
                folded = info is not None and info.static
            else:
                folded = node.op_type not in _RANDOM_OPS and all(i in static for i in inputs)
            if folded:
                static.update(o for o in node.output if o)
        return static


def _tensor_info(vi: onnx.ValueInfoProto) -> _TensorInfo:
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return _TensorInfo(tensor_type.elem_type, None)
    dims: list[int | str | None] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return _TensorInfo(tensor_type.elem_type, tuple(dims))


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attr), dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr), dtype=np.int64)
    return None


# --------------------------------------------------------------------------- one node


class _NodeView:
    """A node with its attributes (defaults applied) and the facts its checks need."""

    def __init__(self, node: onnx.NodeProto, facts: _ModelFacts):
        self.node = node
        self.facts = facts
        self.op = node.op_type
        self.schema = _schema(node, facts.opset)
        self.attrs: dict[str, Any] = {}
        if self.schema is not None:
            for name, attr in self.schema.attributes.items():
                if attr.default_value.type != onnx.AttributeProto.UNDEFINED:
                    self.attrs[name] = _plain(helper.get_attribute_value(attr.default_value))
        for attr in node.attribute:
            self.attrs[attr.name] = _plain(helper.get_attribute_value(attr))

    @property
    def folded(self) -> bool:
        """All outputs are build-time constants (e.g. shape arithmetic on static shapes)."""
        return all(o in self.facts.static for o in self.node.output if o)

    def input(self, index: int) -> str:
        """Name of input ``index``, or '' when absent."""
        return self.node.input[index] if index < len(self.node.input) else ""

    def input_dims(self, index: int = 0) -> tuple[int | str | None, ...] | None:
        info = self.facts.info(self.input(index))
        return info.dims if info else None

    def rank(self) -> int | None:
        dims = self.input_dims(0)
        return None if dims is None else len(dims)

    def const(self, index: int) -> np.ndarray | None:
        name = self.input(index)
        return self.facts.value(name) if name else None

    def input_role(self, index: int) -> str:
        """The schema name of input ``index`` (e.g. ``scales``), for messages."""
        if self.schema is not None and index < len(self.schema.inputs):
            return self.schema.inputs[index].name
        return f"input {index}"

    def matches(self, when: tuple[tuple[str, Any], ...]) -> bool:
        return all(self.attrs.get(k) == v for k, v in when)

    def axis(self) -> int | None:
        """The ``axis`` attribute normalised to 0..rank-1 (None when there is none or rank unknown)."""
        axis, rank = self.attrs.get("axis"), self.rank()
        if not isinstance(axis, int) or rank is None:
            return None
        return axis + rank if axis < 0 else axis


def _schema(node: onnx.NodeProto, opset: int) -> defs.OpSchema | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    try:
        return defs.get_schema(node.op_type, opset if not domain else 1_000_000, domain)
    except defs.SchemaError:
        return None


def _plain(value: Any) -> Any:
    """Attribute values as plain Python: bytes -> str, lists of bytes -> lists of str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------ numeric measurements


def _kernel(v: _NodeView) -> list[int] | None:
    if v.op in _CONV_OPS:
        if "kernel_shape" in v.attrs:
            return list(v.attrs["kernel_shape"])
        weight = v.facts.info(v.input(1))
        if weight and weight.static and weight.dims:
            return list(weight.known_dims()[2:])  # type: ignore[index]
        return None
    if v.op in _POOL_OPS:
        return list(v.attrs["kernel_shape"]) if "kernel_shape" in v.attrs else None
    return None


def _stride(v: _NodeView) -> list[int] | None:
    kernel = _kernel(v)
    if kernel is None:
        return None
    return list(v.attrs.get("strides") or [1] * len(kernel))


def _dilation(v: _NodeView) -> list[int] | None:
    kernel = _kernel(v)
    if kernel is None:
        return None
    return list(v.attrs.get("dilations") or [1] * len(kernel))


def _padding(v: _NodeView) -> list[int] | None:
    """Begin and end padding of every spatial axis (ONNX order), auto_pad resolved."""
    kernel = _kernel(v)
    if kernel is None:
        return None
    n = len(kernel)
    auto_pad = v.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        return list(v.attrs.get("pads") or [0] * 2 * n) if auto_pad == "NOTSET" else [0] * 2 * n
    dims = v.input_dims(0)
    if dims is None or not all(isinstance(d, int) for d in dims[2:]) or v.op == "ConvTranspose":
        return None
    strides, dilations = _stride(v) or [1] * n, _dilation(v) or [1] * n
    begin, end = [], []
    for size, k, s, d in zip(dims[2:], kernel, strides, dilations, strict=False):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(large if auto_pad == "SAME_LOWER" else small)
        end.append(small if auto_pad == "SAME_LOWER" else large)
    return begin + end


def _groups(v: _NodeView) -> list[int] | None:
    return [int(v.attrs.get("group", 1))] if v.op in _CONV_OPS else None


def _channels(v: _NodeView, which: str) -> list[int] | None:
    if v.op not in _CONV_OPS:
        return None
    weight = v.facts.info(v.input(1))
    if weight is None or weight.dims is None or len(weight.dims) < 2:
        return None
    a, b = weight.dims[0], weight.dims[1]
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    group = int(v.attrs.get("group", 1))
    # Conv weights are [out, in/group, k...]; ConvTranspose weights are [in, out/group, k...]
    conv_in, conv_out = (b * group, a) if v.op == "Conv" else (a, b * group)
    return [conv_in if which == "in" else conv_out]


def _spatial_rank(v: _NodeView) -> list[int] | None:
    kernel = _kernel(v)
    return None if kernel is None else [len(kernel)]


def _rank(v: _NodeView) -> list[int] | None:
    # the data operand: Add(bias, x) from a torch export has the constant first
    names = [i for i in v.node.input if i]
    data = next((i for i in names if not v.facts.is_constant(i)), names[0] if names else "")
    info = v.facts.info(data)
    return None if info is None or info.dims is None else [len(info.dims)]


def _axis(v: _NodeView) -> list[int] | None:
    axis = v.axis()
    return None if axis is None else [axis]


def _axis_from_end(v: _NodeView) -> list[int] | None:
    axis, rank = v.axis(), v.rank()
    return None if axis is None or rank is None else [rank - axis]


def _axis_length(v: _NodeView) -> list[int] | None:
    axis, dims = v.axis(), v.input_dims(0)
    if axis is None or dims is None or not isinstance(dims[axis], int):
        return None
    return [dims[axis]]  # type: ignore[list-item]


def _num_inputs(v: _NodeView) -> list[int]:
    return [sum(1 for i in v.node.input if i)]


def _non_batch_dims(v: _NodeView) -> list[int] | None:
    dims = v.input_dims(0)
    return None if dims is None else [d for d in dims[1:] if isinstance(d, int)]


def _scales(v: _NodeView) -> np.ndarray | None:
    """Constant Resize/Upsample scales, or None."""
    if v.op == "Upsample" and "scales" in v.attrs:
        return np.asarray(v.attrs["scales"], dtype=np.float64)
    index = 1 if v.op == "Upsample" or (v.op == "Resize" and v.facts.opset < 11) else 2
    scales = v.const(index)
    return None if scales is None or scales.size == 0 else scales.astype(np.float64)


def _resize_scale(v: _NodeView) -> list[float] | None:
    scales = _scales(v)
    return None if scales is None else [float(s) for s in scales[2:]]


def _slice_step(v: _NodeView) -> list[int] | None:
    if v.op != "Slice":
        return None
    if not v.input(4):
        starts = v.const(1)
        return None if starts is None else [1] * starts.size
    steps = v.const(4)
    return None if steps is None else [int(s) for s in steps.reshape(-1)]


NUMERIC: dict[str, Callable[[_NodeView], Sequence[float] | None]] = {
    "kernel": _kernel,
    "stride": _stride,
    "padding": _padding,
    "dilation": _dilation,
    "groups": _groups,
    "in_channels": lambda v: _channels(v, "in"),
    "out_channels": lambda v: _channels(v, "out"),
    "spatial_rank": _spatial_rank,
    "rank": _rank,
    "axis": _axis,
    "axis_from_end": _axis_from_end,
    "axis_length": _axis_length,
    "num_inputs": _num_inputs,
    "non_batch_dims": _non_batch_dims,
    "resize_scale": _resize_scale,
    "slice_step": _slice_step,
}


# ------------------------------------------------------------ predicates (None = holds)


def _constant_params(v: _NodeView) -> str | None:
    for index, name in enumerate(v.node.input[1:], 1):
        if name and not v.facts.is_constant(name):
            role = v.input_role(index)
            return f"{v.op} input '{role}' ({name}) is computed at run time; the profile needs a constant"
    return None


_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}


def _constant_axes(v: _NodeView) -> str | None:
    index = _AXES_INPUT.get(v.op, 1 if v.op.startswith("Reduce") else None)
    if index is None:
        return None
    name = v.input(index)
    if name and not v.facts.is_constant(name):
        return f"{v.op} axes ({name}) are computed at run time; the profile needs constant axes"
    return None


def _constant_scales(v: _NodeView) -> str | None:
    if v.op == "Resize" and v.input(3):
        return "Resize uses `sizes`; the profile allows only constant `scales`"
    if v.op == "Upsample" and "scales" in v.attrs:
        return None
    index = 1 if v.op == "Upsample" or (v.op == "Resize" and v.facts.opset < 11) else 2
    name = v.input(index)
    if not name:
        return f"{v.op} has no `scales`; the profile allows only constant `scales`"
    if not v.facts.is_constant(name):
        return f"{v.op} scales ({name}) are computed at run time; the profile allows only constant `scales`"
    return None


def _constant_second_input(v: _NodeView) -> str | None:
    name = v.input(1)
    if name and not v.facts.is_constant(name):
        return (f"{v.op} multiplies two run-time tensors ({v.input(0)} x {name}); "
                "the profile allows only a constant second input")
    return None


def _int32_params(v: _NodeView) -> str | None:
    if v.op != "Slice":
        return None
    dims = v.input_dims(0)
    starts, ends, axes, steps = v.const(1), v.const(2), v.const(3), v.const(4)
    if starts is None or ends is None:
        return None  # run-time parameters are the business of constant_params
    if steps is not None and any(not _INT32_MIN <= s <= _INT32_MAX for s in steps.reshape(-1)):
        return "Slice steps do not fit INT32"
    axes_list = list(axes.reshape(-1)) if axes is not None else list(range(starts.size))
    for start, end, axis in zip(starts.reshape(-1), ends.reshape(-1), axes_list, strict=False):
        dim = None
        if dims is not None and -len(dims) <= axis < len(dims):
            dim = dims[int(axis)]
        if isinstance(dim, int):
            continue  # ONNX clamps start/end into [-1, dim], which always fits INT32 for dim < 2^31
        if not (_INT32_MIN <= start <= _INT32_MAX and _INT32_MIN <= end <= _INT32_MAX):
            bounds = f"{int(start)}..{int(end)}"
            return f"Slice bounds {bounds} on axis {int(axis)} do not fit INT32 and the dim is not static"
    return None


def _padding_lt_kernel(v: _NodeView) -> str | None:
    kernel, pads = _kernel(v), _padding(v)
    if kernel is None or pads is None:
        return None
    n = len(kernel)
    for i, pad in enumerate(pads):
        if pad >= kernel[i % n]:
            return f"{v.op} padding {pad} is not smaller than kernel {kernel[i % n]} on axis {i % n}"
    return None


def _zero_point_zero(v: _NodeView) -> str | None:
    name = v.input(2)
    if not name:
        return None
    value = v.facts.value(name)
    if value is None:
        return f"{v.op} zero point ({name}) is computed at run time; the profile needs a zero point of 0"
    if np.any(value != 0):
        return f"{v.op} zero point is not 0 (asymmetric quantization); the profile needs 0"
    return None


def _per_tensor_or_per_channel(v: _NodeView) -> str | None:
    if int(v.attrs.get("block_size", 0) or 0) > 0:
        return f"{v.op} uses block quantization (block_size {v.attrs['block_size']})"
    info = v.facts.info(v.input(1))
    if info is not None and info.dims is not None and len(info.dims) > 1:
        return f"{v.op} scale has shape {info.shape_text()}; the profile needs per-tensor or per-channel (1-D) scales"
    return None


def _slice_touches_batch(v: _NodeView) -> bool:
    starts, ends, axes, steps = v.const(1), v.const(2), v.const(3), v.const(4)
    if starts is None or ends is None:
        return False
    axes_list = [int(a) for a in axes.reshape(-1)] if axes is not None else list(range(starts.size))
    steps_list = [int(s) for s in steps.reshape(-1)] if steps is not None else [1] * len(axes_list)
    dims = v.input_dims(0)
    first = dims[0] if dims else None
    for start, end, axis, step in zip(starts.reshape(-1), ends.reshape(-1), axes_list, steps_list, strict=False):
        if axis not in (0, -(len(dims) if dims else 0)):
            continue
        full = int(start) == 0 and step == 1 and isinstance(first, int) and int(end) >= first
        if not full:
            return True
    return False


def _reduce_axes(v: _NodeView) -> list[int] | None:
    axes = v.attrs.get("axes")
    if axes is None and v.input(1):
        value = v.const(1)
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    if axes is None and not v.attrs.get("noop_with_empty_axes", 0):
        rank = v.rank()
        axes = list(range(rank)) if rank is not None else None
    return axes


def _no_batch_axis(v: _NodeView) -> str | None:
    if v.op == "Slice":
        touched = _slice_touches_batch(v)
    elif v.op in ("Concat", "Split"):
        touched = v.axis() == 0
    elif v.op.startswith("Reduce"):
        rank = v.rank() or 0
        touched = any(a in (0, -rank) for a in (_reduce_axes(v) or []))
    else:
        return None
    return f"{v.op} works along the first (batch) axis; the profile forbids that" if touched else None


def _only_first_output_used(v: _NodeView) -> str | None:
    extra = [o for o in v.node.output[1:] if v.facts.used(o)]
    if extra:
        return f"{v.op} optional output(s) {', '.join(extra)} are used; the profile supports only the first output"
    return None


def _integer_scales(v: _NodeView) -> str | None:
    scales = _scales(v)
    if scales is None:
        return None
    if not np.all(np.equal(np.round(scales), scales)):
        text = ", ".join(f"{s:g}" for s in scales)
        return f"{v.op} scales [{text}] are not whole numbers"
    return None


def _unit_leading_scales(v: _NodeView) -> str | None:
    scales = _scales(v)
    if scales is None or scales.size < 2:
        return None
    if not np.all(scales[:2] == 1):
        return f"{v.op} scales the batch/channel axes ({scales[0]:g}, {scales[1]:g}); they must be 1"
    return None


PREDICATES: dict[str, Callable[[_NodeView], str | None]] = {
    "constant_params": _constant_params,
    "constant_axes": _constant_axes,
    "constant_scales": _constant_scales,
    "constant_second_input": _constant_second_input,
    "int32_params": _int32_params,
    "padding_lt_kernel": _padding_lt_kernel,
    "zero_point_zero": _zero_point_zero,
    "per_tensor_or_per_channel": _per_tensor_or_per_channel,
    "no_batch_axis": _no_batch_axis,
    "only_first_output_used": _only_first_output_used,
    "integer_scales": _integer_scales,
    "unit_leading_scales": _unit_leading_scales,
}


# ------------------------------------------------------------ limits


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, str):
        return repr(x)
    return str(x)


def _evaluate_limit(limit: Limit, view: _NodeView) -> str | None:
    """The violation message of ``limit`` on the node, or None when it holds or does not apply."""
    if not view.matches(limit.when):
        return None
    kind = check_kind(limit.check)
    if kind == "predicate":
        return PREDICATES[limit.check](view)
    if kind == "value":
        name = limit.check[len("attr:"):]
        if name not in view.attrs:
            return None
        raw = view.attrs[name]
        values = raw if isinstance(raw, list) else [raw]
        label = f"attribute {name}"
    else:
        measured = NUMERIC[limit.check](view)
        if measured is None:
            return None
        values = list(measured)
        label = limit.check.replace("_", " ")
    if limit.one_of is not None:
        bad = [x for x in values if x not in limit.one_of]
        if bad:
            return f"{view.op} {label} {', '.join(_fmt(b) for b in bad)} is not {limit.bounds_text()}"
        return None
    if any(isinstance(x, bool) or not isinstance(x, int | float) for x in values):
        shown = ", ".join(_fmt(x) for x in values)
        return f"{view.op} {label} {shown} is not a number; the profile bounds it to {limit.bounds_text()}"
    too_big = limit.max is not None and any(x > limit.max for x in values)
    too_small = limit.min is not None and any(x < limit.min for x in values)
    if not (too_big or too_small):
        return None
    joiner = "x" if limit.check in _SHAPE_LIKE else ", "
    shown = joiner.join(_fmt(x) for x in values)
    verb = "exceeds" if too_big else "is below"
    return f"{view.op} {label} {shown} {verb} limit {limit.bounds_text()}"


# --------------------------------------------------------------------------- global rules


def _is_static(info: _TensorInfo | None) -> bool:
    return info is not None and info.static


class _GlobalRules:
    """The profile's whole-model rules, applied to run-time tensors."""

    def __init__(self, profile: Profile, facts: _ModelFacts):
        self.profile = profile
        self.facts = facts

    def sources(self, check: str) -> list[str]:
        rule = self.profile.global_rules.get(check)
        return list(rule.source) if rule else []

    def tensor_violations(self, name: str, info: _TensorInfo | None, what: str) -> list[tuple[str, str]]:
        """(check, message) pairs for one run-time tensor, except the static-shape rule."""
        p, found = self.profile, []
        if info is None:
            return found
        dtype = dtype_name(info.elem_type)
        if p.global_value("no_int64_runtime", False) and info.elem_type == TensorProto.INT64:
            found.append(("no_int64_runtime", f"{what} '{name}' is an INT64 tensor computed at run time"))
        else:
            allowed = p.global_value("dtypes")
            if allowed is not None and info.elem_type and dtype not in allowed:
                found.append(("dtypes", f"{what} '{name}' has dtype {dtype}; the profile allows {', '.join(allowed)}"))
        dims = info.dims
        if dims is None:
            return found
        max_rank = p.global_value("max_rank")
        if max_rank is not None and len(dims) > max_rank:
            found.append(("max_rank", f"{what} '{name}' has rank {len(dims)} > {max_rank}"))
        known = [d for d in dims if isinstance(d, int)]
        max_volume = p.global_value("max_volume")
        if max_volume is not None and len(known) == len(dims) and math.prod(known) > max_volume:
            found.append(("max_volume", f"{what} '{name}' has {math.prod(known)} elements > {max_volume}"))
        self._dim_bounds(name, dims, what, found)
        return found

    def _dim_bounds(self, name: str, dims: tuple, what: str, found: list[tuple[str, str]]) -> None:
        p = self.profile
        checks = [("max_non_batch_dim", range(1, len(dims)), "dimension")]
        if len(dims) == 4:
            checks += [("max_channels", range(1, 2), "channels"), ("max_spatial", range(2, 4), "spatial size")]
        for check, axes, label in checks:
            bound = p.global_value(check)
            if bound is None:
                continue
            for axis in axes:
                if isinstance(dims[axis], int) and dims[axis] > bound:
                    found.append((check, f"{what} '{name}' {label} {dims[axis]} (axis {axis}) > {bound}"))

    def dynamic(self, name: str, info: _TensorInfo | None) -> str | None:
        if not self.profile.global_value("static_shapes", False):
            return None
        if info is None or info.dims is None:
            return f"shape of '{name}' is unknown (shape inference could not determine it)"
        if not info.static:
            return f"'{name}' has a dynamic shape {info.shape_text()}"
        return None

    def node(self, view: _NodeView) -> tuple[list[str], list[str]]:
        """Violations of the node's run-time outputs, and the sources of the rules broken."""
        facts, messages, sources = self.facts, [], []
        # a dynamic shape is blamed only where it appears, not on everything downstream of it
        inputs_static = all(i in facts.static or _is_static(facts.info(i)) for i in view.node.input if i)
        for out in view.node.output:
            if not out or out in facts.static:
                continue
            info = facts.info(out)
            if inputs_static:
                dynamic = self.dynamic(out, info)
                if dynamic:
                    messages.append(dynamic)
                    sources += self.sources("static_shapes")
            for check, message in self.tensor_violations(out, info, "output"):
                messages.append(message)
                sources += self.sources(check)
        return messages, sources

    def graph_inputs(self) -> list[GraphViolation]:
        found = []
        for name in self.facts.graph_inputs:
            info = self.facts.info(name)
            dynamic = self.dynamic(name, info)
            if dynamic:
                message = f"graph input {dynamic}"
                found.append(GraphViolation("static_shapes", name, message, self.sources("static_shapes")))
            for check, message in self.tensor_violations(name, info, "graph input"):
                found.append(GraphViolation(check, name, message, self.sources(check)))
            max_batch = self.profile.global_value("max_batch")
            if max_batch is not None and info is not None and info.dims and isinstance(info.dims[0], int):
                if info.dims[0] > max_batch:
                    message = f"graph input '{name}' batch {info.dims[0]} > {max_batch}"
                    found.append(GraphViolation("max_batch", name, message, self.sources("max_batch")))
        return found


# --------------------------------------------------------------------------- driver


def _prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Inline local functions and run shape inference; returns the model and any inference error."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True), None
    except Exception as e:  # noqa: BLE001 - a broken model still gets per-node verdicts
        return model, f"{type(e).__name__}: {e}"


def _provenance(node: onnx.NodeProto) -> dict[str, Any]:
    """Spec location, block path, rewrite rules and doc string the netdsl emitter attached."""
    meta = {p.key: p.value for p in node.metadata_props}
    return {
        "location": meta.get(SPAN_KEY) or None,
        "block": meta.get(BLOCK_KEY) or None,
        "rules": [r for r in meta.get(RULES_KEY, "").split(">") if r],
        "doc": node.doc_string or None,
    }


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _layer_text(rule: OpRule | None, view: _NodeView) -> str:
    if rule is None:
        return "(no rule)"
    return f"{rule.layer} (folded at build time)" if view.folded and view.op != "Constant" else rule.layer


def _refused_rewrite(view: _NodeView, hint: str | None) -> str | None:
    """The suggested rewrite of a refused op: the targets that lower it (derived), then the profile's hint."""
    note = lowering_note(view.op) if view.node.domain in ("", "ai.onnx") else None
    return "; by hand: ".join(filter(None, [note, hint])) or None


def _judge(rule: OpRule | None, view: _NodeView, profile: Profile) -> tuple[list[str], str | None, list[str]]:
    """Reasons, suggested rewrite and sources from the op rule (not the global rules)."""
    if rule is None:
        return [f"{_op_key(view.node)}: {profile.unlisted}"], _refused_rewrite(view, None), []
    if not rule.allowed:
        reason = rule.note or f"{rule.op} is not allowed by profile {profile.name}"
        return [reason], _refused_rewrite(view, rule.rewrite), list(rule.source)
    reasons, rewrite, sources = [], None, list(rule.source)
    if view.folded:
        return reasons, None, sources  # limits describe run-time layers; this node is computed by the builder
    for limit in rule.limits:
        message = _evaluate_limit(limit, view)
        if message:
            reasons.append(message)
            rewrite = rewrite or limit.rewrite
            sources += limit.source
    return reasons, (rewrite or rule.rewrite) if reasons else None, sources


def check_coverage(model: onnx.ModelProto, profile: Profile) -> CoverageReport:
    """Check every node of ``model`` (main graph) and the whole-model rules against ``profile``."""
    prepared, inference_error = _prepare(model)
    facts = _ModelFacts(prepared)
    rules = _GlobalRules(profile, facts)
    nodes: list[NodeCoverage] = []
    used_sources: list[str] = []
    for index, node in enumerate(prepared.graph.node):
        view = _NodeView(node, facts)
        rule = profile.rule_for(_op_key(node))
        reasons, rewrite, sources = _judge(rule, view, profile)
        global_reasons, global_sources = rules.node(view)
        reasons += global_reasons
        sources = list(dict.fromkeys(sources + global_sources))
        used_sources += sources
        nodes.append(NodeCoverage(
            index=index,
            name=node.name or (node.output[0] if node.output else f"node{index}"),
            op=_op_key(node),
            layer=_layer_text(rule, view),
            status=rule.status if rule else "unlisted",
            level=rule.level if rule else "unlisted",
            covered=not reasons,
            assumed=bool(rule and rule.assumed),
            reasons=reasons,
            rewrite=rewrite,
            sources=sources,
            **_provenance(node),
        ))
    graph_violations = rules.graph_inputs()
    for violation in graph_violations:
        used_sources += violation.sources
    sources = {tag: profile.source_url(tag) for tag in dict.fromkeys(used_sources)}
    return CoverageReport(profile.name, profile.path, prepared.graph.name or "model", nodes, graph_violations,
                          sources, inference_error)


# --------------------------------------------------------------------------- rendering


TABLE_WIDTH = 100
"""Columns of the default coverage table: one line per node, long texts as numbered footnotes."""

_MARKS = {"uncovered": "[red]✗[/red]", "assumed": "[yellow]~[/yellow]", "covered": "[green]✓[/green]"}


def _mark(n: NodeCoverage) -> str:
    return _MARKS["uncovered" if not n.covered else "assumed" if n.assumed else "covered"]


def _explanation(n: NodeCoverage) -> str:
    """The node's reasons and suggested rewrite as one text (empty for a covered node)."""
    text = "; ".join(n.reasons)
    return f"{text} (rewrite: {n.rewrite})" if text and n.rewrite else text


def render_coverage(report: CoverageReport, console: Console, violations_only: bool = False,
                    wide: bool = False) -> None:
    """Print the per-node table (all nodes, or only the uncovered ones) and the summary.

    The default table has one line per node and fits :data:`TABLE_WIDTH` columns: op, TensorRT layer,
    verdict, evidence level and spec location, with each distinct reason and rewrite as a numbered
    footnote below it. ``wide`` prints every column in full (node names, reasons, rewrites), folded."""
    nodes = [n for n in report.nodes if not (violations_only and n.covered)]
    title = escape(f"TensorRT coverage: {report.model} under profile '{report.profile}'")
    if wide:
        _render_wide(nodes, console, title)
    else:
        _render_compact(nodes, console, title)
    for v in report.graph_violations:
        detail = escape(f"({v.check}; {', '.join(v.sources)})")
        console.print(f"[red]✗ graph:[/red] {escape(v.message)} [dim]{detail}[/dim]")
    if report.shape_inference_error:
        console.print(f"[yellow]shape inference failed:[/yellow] {escape(report.shape_inference_error)}")
    console.print(summary_line(report, markup=True))


def assumed_rule_notes(report: CoverageReport, profile: Profile) -> list[str]:
    """One line per assumed op rule the model's covered nodes rely on: the op, its node count, the assumption."""
    lines = []
    for op, count in report.assumed_rules().items():
        rule = profile.rule_for(op)
        why = f": {rule.assumption}" if rule is not None and rule.assumption else ""
        lines.append(f"{op} ({count} node{'s' * (count != 1)}) is allowed by assumption{why}")
    return lines


def coverage_console(wide: bool) -> Console:
    """The console the table is printed on: :data:`TABLE_WIDTH` columns (less on a narrower terminal), or 160
    folded columns for ``wide``."""
    terminal = Console()
    if wide:
        return terminal if terminal.is_terminal else Console(width=160)
    return Console(width=min(TABLE_WIDTH, terminal.width) if terminal.is_terminal else TABLE_WIDTH)


def summary_line(report: CoverageReport, markup: bool = False) -> str:
    """``18/18 nodes covered: 5 confirmed, 13 evidenced, 0 assumed; 0 graph-level violation(s)``."""
    levels = ", ".join(f"{count} {level}" for level, count in report.level_counts.items())
    head = f"{report.covered_count}/{report.total} nodes covered"
    if markup:
        colour = "green" if report.covered else "red"
        head = f"[{colour}]{head}[/{colour}]"
    return f"{head}: {levels}; {len(report.graph_violations)} graph-level violation(s)"


def _short_location(location: str | None) -> str:
    """``file.net:12:9`` without the folders (the wide table and the JSON keep the full path)."""
    return os.path.basename(location) if location else ""


def _render_compact(nodes: list[NodeCoverage], console: Console, title: str) -> None:
    notes: dict[str, int] = {}
    rows = []
    for n in nodes:
        text = _explanation(n)
        ref = f"[{notes.setdefault(text, len(notes) + 1)}]" if text else ""
        rows.append((str(n.index), n.op, n.layer, n.level, _short_location(n.location), ref))
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    # Short columns keep their full width; the layer and the location give way (ellipsis) to fit the line.
    headers = ("#", "op", "TensorRT layer", "level", "spec location", "note")
    widths = [max([len(r[k]) for r in rows] + [len(h)]) for k, h in enumerate(headers)]
    widths[1] = min(widths[1], 22)
    # The layer takes what the other columns and the mark leave of the line: each of the 7 columns is padded by a
    # space on both sides but the outer ones, and separated by a space (the box's blank rule), edges included.
    layer_width = max(12, TABLE_WIDTH - (sum(widths) - widths[2]) - 1 - (2 * 7 - 2) - 8)
    table.add_column("#", no_wrap=True, min_width=widths[0], justify="right")
    table.add_column("op", no_wrap=True, min_width=widths[1], overflow="ellipsis")
    table.add_column("TensorRT layer", no_wrap=True, max_width=layer_width, overflow="ellipsis")
    table.add_column("", no_wrap=True, min_width=1)
    table.add_column("level", no_wrap=True, min_width=widths[3])
    table.add_column("spec location", no_wrap=True, overflow="ellipsis")
    table.add_column("note", no_wrap=True, min_width=widths[5])
    for (index, op, layer, level, location, ref), n in zip(rows, nodes):
        table.add_row(index, escape(op), escape(layer), _mark(n), level, escape(location), escape(ref))
    console.print(table)
    for text, number in notes.items():
        console.print(escape(f"[{number}] {text}"), soft_wrap=False)


def _render_wide(nodes: list[NodeCoverage], console: Console, title: str) -> None:
    table = Table(title=title)
    for column in ("#", "node", "op", "TensorRT layer", "", "level", "reason", "spec location", "suggested rewrite"):
        table.add_column(column, overflow="fold")
    for n in nodes:
        reason = "\n".join(n.reasons) if n.reasons else ("allowed by assumption" if n.assumed else "")
        where = n.where if n.location or n.doc else ""
        cells = (str(n.index), n.name, n.op, n.layer)
        table.add_row(*(escape(c) for c in cells), _mark(n), n.level,
                      *(escape(c) for c in (reason, where, n.rewrite or "")))
    console.print(table)
