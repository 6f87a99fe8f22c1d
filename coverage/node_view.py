"""What the coverage checker knows about an ONNX model and one of its nodes: tensor types and shapes after
shape inference, constant values, and the node's attributes and inputs as a profile's checks read them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

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
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
CONV_OPS = {"Conv", "ConvTranspose"}
# numeric checks whose values read as a shape (kernel 3x3) rather than a list
SHAPE_LIKE = {"kernel", "stride", "dilation", "resize_scale"}


def dtype_name(elem_type: int) -> str:
    """Profile spelling of an ONNX element type (``float32``, ``int64``, ...)."""
    return _DTYPE_NAMES.get(elem_type, TensorProto.DataType.Name(elem_type).lower())


# --------------------------------------------------------------------------- model facts


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's ONNX element type and dims as shape inference left them."""

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


class ModelFacts:
    """Shapes, dtypes, constants and build-time-static tensors of a model's main graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.infos: dict[str, TensorInfo] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            self.infos[vi.name] = _tensor_info(vi)
        self.initializers = {t.name: t for t in graph.initializer}
        for t in graph.initializer:
            self.infos[t.name] = TensorInfo(t.data_type, tuple(t.dims))
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

    def info(self, name: str) -> TensorInfo | None:
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


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return TensorInfo(tensor_type.elem_type, None)
    dims: list[int | str | None] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(tensor_type.elem_type, tuple(dims))


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


class NodeView:
    """A node with its attributes (defaults applied) and the facts its checks need."""

    def __init__(self, node: onnx.NodeProto, facts: ModelFacts):
        self.node = node
        self.facts = facts
        self.op = node.op_type
        self.attrs = _Attributes({attr.name: _plain(helper.get_attribute_value(attr)) for attr in node.attribute},
                                 self._defaults)

    @functools.cached_property
    def schema(self) -> defs.OpSchema | None:
        """The ONNX schema of the node at the model's opset (None for an unknown op)."""
        return _schema(self.node, self.facts.opset)

    def _defaults(self) -> dict[str, Any]:
        """The schema's default of every attribute that has one."""
        if self.schema is None:
            return {}
        return {name: _plain(helper.get_attribute_value(attr.default_value))
                for name, attr in self.schema.attributes.items()
                if attr.default_value.type != onnx.AttributeProto.UNDEFINED}

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


class _Attributes(Mapping[str, Any]):
    """A node's attributes with the schema's defaults for those it does not set.

    The defaults are looked up only when an attribute the node does not set is asked for: ONNX's first schema
    look-up in a process initialises its whole operator schema registry, which a model whose nodes set every
    attribute its checks read never needs.
    """

    def __init__(self, explicit: dict[str, Any], defaults: Callable[[], dict[str, Any]]):
        self._explicit = explicit
        self._defaults = defaults
        self._all: dict[str, Any] | None = None

    def _complete(self) -> dict[str, Any]:
        if self._all is None:
            self._all = {**self._defaults(), **self._explicit}
        return self._all

    def __getitem__(self, name: str) -> Any:
        if name in self._explicit:
            return self._explicit[name]
        return self._complete()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._explicit or name in self._complete()

    def __iter__(self) -> Iterator[str]:
        return iter(self._complete())

    def __len__(self) -> int:
        return len(self._complete())


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
