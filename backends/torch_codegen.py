"""PyTorch source generation: an IR graph becomes a standalone, readable ``nn.Module`` module.

The generated source imports only torch. Its class takes no constructor arguments and its
``state_dict()`` keys are exactly the graph's parameter names, in declaration order:

* The module tree follows the parameters' dotted names. A conv, linear or norm node whose
  parameters are exactly ``P.weight``/``P.bias`` (plus the running statistics of a batch norm)
  becomes the standard layer ``P`` (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``, ...), so a
  batch norm trains like one. Containers are ``nn.ModuleList`` when their children are numbered
  0..n-1 and hold nothing else, plain ``nn.Module`` otherwise. Every other parameter is an
  ``nn.Parameter`` (a registered buffer for ``kind='buffer'``) at its place in the tree.
* Parameters whose :class:`~netdsl.ir.Init` is not what PyTorch does by default are
  initialised in ``__init__`` as :mod:`netdsl.initializers` defines them.
* ``const`` and ``grid`` values are non-persistent buffers: they follow ``.to(device)`` but
  stay out of the ``state_dict``.
* ``forward`` is straight-line code, one line per IR node, each with the spec location it
  computes. The few ops PyTorch has no single call for use small functions defined in this
  file (:func:`resize`, :func:`rotate`, :func:`shift`, :func:`local_attention`, ...), whose
  source is copied into the generated module when used.
"""

from __future__ import annotations

import inspect
import json
import keyword
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph, Init, Node, Parameter, TensorType

# ---------------------------------------------------------------------------------------------
# Functions copied verbatim into generated modules (each only when a graph needs it).


def resize(x: torch.Tensor, scale_factor: tuple[float, float], size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize by ``scale_factor`` with PyTorch's sizing and sampling; fail if the size is not ``size``.

    ``size`` is what the spec's type checker computed, so every runtime agrees on it.
    """
    align_corners = False if mode == "bilinear" else None
    y = F.interpolate(x, scale_factor=scale_factor, mode=mode, align_corners=align_corners)
    if tuple(y.shape[-2:]) != tuple(size):
        raise RuntimeError(f"resize by {scale_factor} gave {tuple(y.shape[-2:])}, the spec expects {tuple(size)}")
    return y


def rotate(x: torch.Tensor, heads: int) -> torch.Tensor:
    """CSA rotation: per head, transpose the (S channels) x (S = H*W positions) matrix.

    y[b, n*S + c, i, j] = x[b, n*S + (i*W + j), c // W, c % W].
    """
    b, c, h, w = x.shape
    s = c // heads
    return x.reshape(b, heads, s, h * w).transpose(2, 3).reshape(b, c, h, w)


def shift(x: torch.Tensor, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Move channel group g by offsets[g] = (dy, dx), down/right, filling with zeros.

    y[b, c, i, j] = x[b, c, i - dy, j - dx]; the groups are equal channel blocks, in order.
    """
    h, w = x.shape[-2:]
    p = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (p, p, p, p))
    per_group = x.shape[1] // len(offsets)
    groups = [
        padded[:, g * per_group : (g + 1) * per_group, p - dy : p - dy + h, p - dx : p - dx + w]
        for g, (dy, dx) in enumerate(offsets)
    ]
    return torch.cat(groups, dim=1)


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    heads: int,
    kernel: int,
    stride: int,
    scale: float,
) -> torch.Tensor:
    """Sliding-window multi-head attention over a reflect-padded kernel x kernel neighbourhood (ACmix).

    Channel c = h*d + e (head h, in-head index e). For output (i, j) and window slot (a, b), the
    neighbour is the reflect-padded pixel (stride*i + a, stride*j + b), and
    logit = sum_e scale*q[e, si, sj] * (k[e, nb] + pos[e, si, sj] - pos[e, nb]) with (si, sj) =
    (stride*i, stride*j); the output is the softmax-weighted sum of v over the kernel*kernel slots.

    The window slots are taken a group at a time, each group a strided view of the padded map (no
    copy) with the group's slots on the last axis. Eagerly a group is one slot: its products are the
    query's size, which the CPU allocator reuses (larger ones are fresh, page-faulting memory on every
    step). Under ``torch.compile`` a group is one window row: kernel groups instead of kernel², so
    far fewer operators to trace and fuse, and the compiled step runs much faster than the eager one.
    """
    b, c, h, w = q.shape
    d = c // heads
    p = (kernel - 1) // 2
    ho, wo = h // stride, w // stride
    per_row = torch.compiler.is_compiling()

    def windows(t: torch.Tensor) -> list[torch.Tensor]:
        """The slot groups of ``t`` (X, d, H, W): views (X, d, Ho, Wo, slots), in slot order a*kernel + b."""
        padded = F.pad(t, (p, p, p, p), mode="reflect")
        if per_row:
            return [padded[:, :, a : a + stride * ho : stride].unfold(3, kernel, stride) for a in range(kernel)]
        return [
            padded[:, :, a : a + stride * ho : stride, bb : bb + stride * wo : stride].unsqueeze(-1)
            for a in range(kernel)
            for bb in range(kernel)
        ]

    query = (scale * q[:, :, ::stride, ::stride]).reshape(b * heads, d, ho, wo, 1)
    keys = windows(k.reshape(b * heads, d, h, w))
    if pos is None:
        logits = [(query * key).sum(dim=1) for key in keys]
    else:
        pos_query = pos[:, :, ::stride, ::stride].unsqueeze(-1)
        pairs = zip(keys, windows(pos), strict=True)
        logits = [(query * (key + pos_query - pos_key)).sum(dim=1) for key, pos_key in pairs]
    # Slot-major (X, kernel², Ho, Wo): each slot's logits and weights are one contiguous block.
    weights = torch.softmax(torch.cat([logit.movedim(-1, 1) for logit in logits], dim=1), dim=1)
    values = windows(v.reshape(b * heads, d, h, w))
    group = values[0].shape[-1]
    terms = (weights[:, n * group : (n + 1) * group].movedim(1, -1).unsqueeze(1) * value
             for n, value in enumerate(values))
    out = sum(term.sum(dim=-1) if per_row else term.squeeze(-1) for term in terms)
    return out.reshape(b, c, ho, wo)


def positional_grid(height: int, width: int) -> torch.Tensor:
    """Grid [1, 2, H, W]: channel 0 = linspace(-1, 1, W) along the width, channel 1 = linspace(-1, 1, H)."""
    xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float32).expand(height, width)
    ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float32).unsqueeze(1).expand(height, width)
    return torch.stack([xs, ys]).unsqueeze(0)


@torch.no_grad()
def init_shift_kernels_(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """One-hot conv kernels: in-group input channel j has a single 1 at (j // kernel, j % kernel)."""
    weight.zero_()
    for j in range(weight.shape[1]):
        weight[:, j, j // kernel, j % kernel] = 1.0
    return weight


@torch.no_grad()
def init_relative_position_index_(index: torch.Tensor, window: int) -> torch.Tensor:
    """Swin's table for a window x window window: (ya - yb + window - 1) * (2*window - 1) + (xa - xb + window - 1)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    index.copy_((rel[0] * (2 * window - 1) + rel[1]).reshape(index.shape))
    return index


def keep_declaration_order(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: list the module's entries in the order the spec declares them.

    ``state_dict`` is the OrderedDict being filled; this module's entries are its last ones.
    """
    for key in module.STATE_DICT_ORDER:
        state_dict.move_to_end(prefix + key)


RUNTIME_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    resize,
    rotate,
    shift,
    local_attention,
    positional_grid,
    init_shift_kernels_,
    init_relative_position_index_,
    keep_declaration_order,
)
"""The functions a generated module may contain, in the order they appear there."""

# ---------------------------------------------------------------------------------------------
# Python literals and names

TORCH_DTYPES = {
    "f32": "torch.float32",
    "f16": "torch.float16",
    "f64": "torch.float64",
    "i64": "torch.int64",
    "i32": "torch.int32",
    "bool": "torch.bool",
}

_FLOAT_DTYPES = ("f32", "f16", "f64")

# Names the generated code itself uses; value names must not shadow them.
_GENERATED_NAMES = frozenset({"self", "torch", "nn", "F", "getattr", "float"} | {f.__name__ for f in RUNTIME_FUNCTIONS})

# Attributes every nn.Module instance has: a child or parameter of that name would clobber them.
_MODULE_ATTRIBUTES = frozenset(dir(nn.Module()))

# Methods and attributes the generated class defines on top of nn.Module.
_CLASS_ATTRIBUTES = frozenset({"forward", "STATE_DICT_ORDER"})


def lit(value: Any) -> str:
    """A Python literal for an attribute value (numbers, strings, None, nested tuples/lists)."""
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_lit(float(value))
    if isinstance(value, (tuple, list, np.ndarray)):
        items = [lit(v) for v in value]
        return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted Python string literal
    if value is None:
        return "None"
    raise TypeError(f"no Python literal for {value!r}")


def _float_lit(value: float) -> str:
    if np.isfinite(value):
        return repr(value)
    return f'float("{value}")'


def _pair(value: Sequence[int]) -> str:
    """``3`` for (3, 3), ``(1, 2)`` otherwise: how PyTorch's layers read best."""
    a, b = value
    return lit(a) if a == b else lit((a, b))


def _call(fn: str, *args: str, **kwargs: str) -> str:
    return fn + "(" + ", ".join([*args, *(f"{k}={v}" for k, v in kwargs.items())]) + ")"


def is_identifier(name: str) -> bool:
    """True when ``name`` can be written as a Python attribute or variable name."""
    return name.isidentifier() and not keyword.iskeyword(name)


def sanitise(name: str) -> str:
    """``name`` made into an identifier: other characters become ``_``, a leading digit gets ``_``."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    return ident + "_" if keyword.iskeyword(ident) else ident


class _Namer:
    """Unique identifiers for IR names, avoiding the ``reserved`` ones."""

    def __init__(self, reserved: frozenset[str] | set[str]):
        self._reserved = frozenset(reserved)
        self._taken = set(reserved)
        self._names: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self._names:
            base = sanitise(name)
            # "resize" -> "resize_", leaving "resize_1" to the IR value that has that name.
            if base in self._reserved:
                base += "_"
            ident, i = base, 1
            while ident in self._taken:
                ident, i = f"{base}_{i}", i + 1
            self._taken.add(ident)
            self._names[name] = ident
        return self._names[name]


def _shape_args(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape) if shape else "()"


def _dtype_kwarg(dtype: str) -> dict[str, str]:
    """``dtype=`` for a tensor constructor, omitted for PyTorch's default float32."""
    return {} if dtype == "f32" else {"dtype": TORCH_DTYPES[dtype]}


def _scalar_lit(value: Any, dtype: str) -> str:
    if dtype == "bool":
        return repr(bool(value))
    if dtype not in _FLOAT_DTYPES:
        return repr(int(value))
    v = float(value)
    short = str(NP_DTYPES[dtype](value))
    # The shortest form of a float32/16 value, unless going through a Python float changes it.
    if np.isfinite(v) and NP_DTYPES[dtype](float(short)) == NP_DTYPES[dtype](value):
        return short
    return _float_lit(v)


def tensor_expr(value: np.ndarray, dtype: str, indent: str) -> str:
    """A torch expression building ``value`` (``torch.full`` when all elements are equal)."""
    arr = np.asarray(value).astype(NP_DTYPES[dtype])
    torch_dtype = TORCH_DTYPES[dtype]
    shape = lit(arr.shape) if arr.shape else "()"
    if arr.size == 0:
        return _call("torch.empty", shape, dtype=torch_dtype)
    first = arr.flat[0]
    if np.array_equal(arr, np.full_like(arr, first), equal_nan=dtype in _FLOAT_DTYPES):
        return _call("torch.full", shape, _scalar_lit(first, dtype), dtype=torch_dtype)
    items = [_scalar_lit(v, dtype) for v in arr.ravel()]
    lines, line = [], ""
    for item in items:
        if line and len(line) + len(item) > 100:
            lines.append(line.rstrip())
            line = ""
        line += item + ", "
    lines.append(line.rstrip())
    body = "".join(f"\n{indent}    {ln}" for ln in lines)
    return f"torch.tensor([{body}\n{indent}], dtype={torch_dtype}).reshape({_shape_args(arr.shape)})"


# ---------------------------------------------------------------------------------------------
# Initialisers


INIT_FUNCTIONS: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "shift": (init_shift_kernels_, "kernel"),
    "relative_position_index": (init_relative_position_index_, "window"),
}
"""Init kinds computed by a runtime function, with the function and its Init argument."""


def init_statement(target: str, init: Init) -> str:
    """A statement initialising the tensor ``target`` in place as ``init`` says."""
    kind = init.kind
    if kind == "fill":
        return f"nn.init.constant_({target}, {lit(init.arg('value'))})"
    if kind == "zeros":
        return f"nn.init.zeros_({target})"
    if kind == "ones":
        return f"nn.init.ones_({target})"
    if kind == "uniform_fan_in":
        bound = f"{lit(init.arg('fan_in'))} ** -0.5"
        return f"nn.init.uniform_({target}, -({bound}), {bound})"
    if kind == "normal":
        return f"nn.init.normal_({target}, std={lit(init.arg('std'))})"
    if kind == "trunc_normal":
        std, a, b = init.arg("std"), init.arg("a", -2.0), init.arg("b", 2.0)
        return f"nn.init.trunc_normal_({target}, std={lit(std)}, a={lit(a)}, b={lit(b)})"
    if kind == "kaiming_normal_fan_out":
        return f"nn.init.normal_({target}, std=(2 / {lit(init.arg('fan_out'))}) ** 0.5)"
    if kind in INIT_FUNCTIONS:
        fn, arg = INIT_FUNCTIONS[kind]
        return f"{fn.__name__}({target}, {arg}={lit(init.arg(arg))})"
    raise ValueError(f"unknown initializer kind {kind!r}")


def _canonical_init(init: Init) -> tuple[Any, ...]:
    """Init as a comparable tuple, with fill(0)/fill(1) read as zeros/ones."""
    if init.kind == "fill" and init.arg("value") in (0, 1):
        return ("ones",) if init.arg("value") == 1 else ("zeros",)
    return (init.kind, *init.args)


def _fan_in_default(fan_in: int) -> tuple[Any, ...]:
    return ("uniform_fan_in", ("fan_in", fan_in))


# ---------------------------------------------------------------------------------------------
# Standard layers


@dataclass(frozen=True)
class Layer:
    """A standard PyTorch layer standing for the parameters ``<its path>.<leaf>``."""

    constructor: str
    leaves: tuple[str, ...]
    """The layer's state_dict entries, in the layer's own order."""
    defaults: tuple[tuple[Any, ...], ...]
    """Canonical Init of each leaf that PyTorch's construction already gives."""


_LAYER_ROLES = {
    "conv": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "batchnorm": ("weight", "bias", "running_mean", "running_var"),
    "layernorm": ("weight", "bias"),
    "groupnorm": ("weight", "bias"),
}

_BUFFER_LEAVES = frozenset({"running_mean", "running_var", "num_batches_tracked"})

_BATCHNORM_CLASSES = {2: "nn.BatchNorm1d", 3: "nn.BatchNorm1d", 4: "nn.BatchNorm2d", 5: "nn.BatchNorm3d"}


def _layer_prefix(graph: Graph, node: Node) -> str | None:
    """``P`` when the node's parameters are exactly the state of a standard layer named ``P``."""
    names = node.inputs[1:]
    if not names or not all(graph.is_param(n) for n in names):
        return None
    prefix = names[0].rpartition(".")[0]
    leaves = _LAYER_ROLES[node.op][: len(names)]
    if node.op == "batchnorm":
        leaves += ("num_batches_tracked",)
    if not prefix or any(n != f"{prefix}.{leaf}" for n, leaf in zip(names, leaves)):
        return None
    under = {p for p in graph.params if p.startswith(prefix + ".")}
    if under != {f"{prefix}.{leaf}" for leaf in leaves}:
        return None
    dtype = graph.type_of(node.inputs[0]).dtype
    for leaf in leaves:
        p = graph.params[f"{prefix}.{leaf}"]
        expected_dtype = "i64" if leaf == "num_batches_tracked" else dtype
        if p.kind != ("buffer" if leaf in _BUFFER_LEAVES else "param") or p.type.dtype != expected_dtype:
            return None
    if node.op == "batchnorm" and graph.params[f"{prefix}.num_batches_tracked"].type.shape != ():
        return None
    return prefix


def _conv_options(node: Node) -> tuple[dict[str, str], tuple[int, int, int, int] | None]:
    """Keyword arguments shared by nn.Conv2d and F.conv2d, and the explicit pad of uneven padding."""
    t, l, b, r = node.attrs["pads"]
    options = {}
    if tuple(node.attrs["stride"]) != (1, 1):
        options["stride"] = _pair(node.attrs["stride"])
    if (t, l) == (b, r) and (t, l) != (0, 0):
        options["padding"] = _pair((t, l))
    if tuple(node.attrs["dilation"]) != (1, 1):
        options["dilation"] = _pair(node.attrs["dilation"])
    if node.attrs["groups"] != 1:
        options["groups"] = lit(node.attrs["groups"])
    return options, None if (t, l) == (b, r) else (l, r, t, b)


def _make_layer(graph: Graph, node: Node) -> Layer:
    x = graph.type_of(node.inputs[0])
    has_bias = len(node.inputs) > 2
    dtype = _dtype_kwarg(x.dtype)
    leaves = _LAYER_ROLES[node.op][: len(node.inputs) - 1]
    ones_zeros = (("ones",), ("zeros",))
    if node.op == "conv":
        w = graph.type_of(node.inputs[1])
        options, _ = _conv_options(node)
        kernel = {"kernel_size": _pair(w.shape[2:])}
        bias = {} if has_bias else {"bias": "False"}
        ctor = _call("nn.Conv2d", lit(x.shape[1]), lit(w.shape[0]), **kernel, **options, **bias, **dtype)
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        return Layer(ctor, leaves, (_fan_in_default(fan_in),) * len(leaves))
    if node.op == "linear":
        out_features, in_features = graph.type_of(node.inputs[1]).shape
        bias = {} if has_bias else {"bias": "False"}
        ctor = _call("nn.Linear", lit(in_features), lit(out_features), **bias, **dtype)
        return Layer(ctor, leaves, (_fan_in_default(in_features),) * len(leaves))
    if node.op == "batchnorm":
        options = {}
        if node.attrs["eps"] != 1e-5:
            options["eps"] = lit(node.attrs["eps"])
        if node.attrs["momentum"] != 0.1:
            options["momentum"] = lit(node.attrs["momentum"])
        ctor = _call(_BATCHNORM_CLASSES[x.rank], lit(x.shape[1]), **options, **dtype)
        leaves += ("num_batches_tracked",)
        return Layer(ctor, leaves, (*ones_zeros, ("zeros",), ("ones",), ("zeros",)))
    eps = {} if node.attrs["eps"] == 1e-5 else {"eps": lit(node.attrs["eps"])}
    if node.op == "layernorm":
        channels = x.shape[node.attrs["axis"] % x.rank]
        bias = {} if has_bias else {"bias": "False"}
        return Layer(_call("nn.LayerNorm", lit(channels), **eps, **bias, **dtype), leaves, ones_zeros)
    ctor = _call("nn.GroupNorm", lit(node.attrs["groups"]), lit(x.shape[1]), **eps, **dtype)
    return Layer(ctor, leaves, ones_zeros)


def _is_layer_node(graph: Graph, node: Node) -> bool:
    if node.op == "batchnorm":
        return graph.type_of(node.inputs[0]).rank in _BATCHNORM_CLASSES
    return node.op in _LAYER_ROLES


def find_layers(graph: Graph) -> tuple[dict[str, Layer], dict[int, str]]:
    """The standard layers of ``graph`` by prefix, and the prefix each layer node calls (by node id).

    A prefix whose nodes disagree on the layer (e.g. the same weights with two strides) is
    not a layer: its parameters stay free and the nodes use the functional form.
    """
    layers: dict[str, Layer] = {}
    conflicting: set[str] = set()
    calls: dict[int, str] = {}
    for node in graph.nodes:
        if not _is_layer_node(graph, node):
            continue
        prefix = _layer_prefix(graph, node)
        if prefix is None:
            continue
        layer = _make_layer(graph, node)
        if layers.setdefault(prefix, layer) != layer:
            conflicting.add(prefix)
        calls[id(node)] = prefix
    for prefix in conflicting:
        del layers[prefix]
    return layers, {i: p for i, p in calls.items() if p in layers}


# ---------------------------------------------------------------------------------------------
# Module tree


@dataclass
class Tree:
    """One module of the generated tree: its free parameters/buffers, children, or a layer."""

    path: str
    children: dict[str, Tree] = field(default_factory=dict)
    params: list[Parameter] = field(default_factory=list)
    layer: Layer | None = None

    def descend(self, segments: list[str]) -> Tree:
        node = self
        for seg in segments:
            if not seg:
                raise ValueError(f"parameter path {'.'.join(segments)!r} has an empty segment")
            path = f"{node.path}.{seg}" if node.path else seg
            node = node.children.setdefault(seg, Tree(path))
        return node

    @property
    def is_list(self) -> bool:
        """Numbered children only, below the root (the generated class): an nn.ModuleList, indexed as ``tree[i]``."""
        names = list(self.children)
        numbered = names == [str(i) for i in range(len(names))]
        return bool(self.path) and bool(names) and not self.params and numbered

    def registration_order(self) -> list[Parameter]:
        """Free parameters then buffers: the order nn.Module lists its own state."""
        return [p for p in self.params if p.kind == "param"] + [p for p in self.params if p.kind != "param"]

    def state_order(self) -> list[str]:
        """The keys ``state_dict()`` of the generated module lists for this subtree."""
        if self.layer is not None:
            return [f"{self.path}.{leaf}" for leaf in self.layer.leaves]
        own = [p.name for p in self.registration_order()]
        return own + [key for child in self.children.values() for key in child.state_order()]


def build_tree(graph: Graph, layers: dict[str, Layer]) -> Tree:
    """The module tree of ``graph``: children in order of their first parameter."""
    root = Tree("")
    for p in graph.params.values():
        prefix, _, leaf = p.name.rpartition(".")
        node = root.descend(prefix.split(".") if prefix else [])
        if prefix in layers:
            node.layer = layers[prefix]
        else:
            node.params.append(p)
    _check_tree(root)
    return root


def _check_tree(tree: Tree) -> None:
    leaves = {p.name.rpartition(".")[2] for p in tree.params}
    for name in leaves & set(tree.children):
        raise ValueError(f"{tree.path + '.' if tree.path else ''}{name} is both a parameter and a module prefix")
    reserved = _MODULE_ATTRIBUTES | (_CLASS_ATTRIBUTES if not tree.path else frozenset())
    for name in leaves | set(tree.children):
        if name in reserved and not tree.is_list:
            where = f"{tree.path}.{name}" if tree.path else name
            raise ValueError(f"parameter path {where!r}: {name!r} is an attribute of torch.nn.Module")
    for child in tree.children.values():
        _check_tree(child)


def attr(owner: str, name: str) -> str:
    """Expression reading attribute ``name`` of ``owner``."""
    return f"{owner}.{name}" if is_identifier(name) else f"getattr({owner}, {lit(name)})"


def _child(parent: Tree, owner: str, name: str) -> str:
    return f"{owner}[{name}]" if parent.is_list else attr(owner, name)


def _register_child(parent: Tree, owner: str, name: str, value: str) -> str:
    if parent.is_list:
        return f"{owner}.append({value})"
    if is_identifier(name):
        return f"{owner}.{name} = {value}"
    return f"{owner}.add_module({lit(name)}, {value})"


def _register_param(owner: str, p: Parameter) -> str:
    leaf = p.name.rpartition(".")[2]
    empty = _call("torch.empty", _shape_args(p.type.shape), **_dtype_kwarg(p.type.dtype))
    if p.kind != "param":
        return f"{owner}.register_buffer({lit(leaf)}, {empty})"
    # Integer and boolean tensors cannot require gradients.
    frozen = {} if p.type.dtype in _FLOAT_DTYPES else {"requires_grad": "False"}
    value = _call("nn.Parameter", empty, **frozen)
    return f"{owner}.{leaf} = {value}" if is_identifier(leaf) else f"{owner}.register_parameter({lit(leaf)}, {value})"


# ---------------------------------------------------------------------------------------------
# Forward: one emitter per op, returning the right-hand side of the node's line


class ModuleSource:
    """Everything generate_source collects for one graph: names, layers, helpers, constants."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.layers, self.layer_calls = find_layers(graph)
        self.tree = build_tree(graph, self.layers)
        self.access: dict[str, str] = {}  # parameter or layer path -> expression from ``self``
        self.helpers: set[str] = set()
        self.constants: list[tuple[str, str]] = []  # (buffer name, expression)
        self.values = _Namer(_GENERATED_NAMES)
        root_names = set(self.tree.children) | {p.name for p in self.tree.params}
        self.buffers = _Namer(root_names | _MODULE_ATTRIBUTES | _CLASS_ATTRIBUTES)

    def use(self, fn: Callable[..., Any]) -> str:
        """Name of runtime function ``fn``, which the generated module will then contain."""
        self.helpers.add(fn.__name__)
        return fn.__name__

    def arg(self, node: Node, i: int) -> str:
        """Expression of input ``i`` of ``node``: a local value or a parameter of the module."""
        name = node.inputs[i]
        return self.access[name] if self.graph.is_param(name) else self.values(name)

    def args(self, node: Node) -> list[str]:
        return [self.arg(node, i) for i in range(len(node.inputs))]

    def type_in(self, node: Node, i: int = 0) -> TensorType:
        return self.graph.type_of(node.inputs[i])

    def type_out(self, node: Node, i: int = 0) -> TensorType:
        return self.graph.type_of(node.outputs[i])

    def layer(self, node: Node) -> str | None:
        """Expression of the standard layer that computes ``node``, if one does."""
        prefix = self.layer_calls.get(id(node))
        return None if prefix is None else self.access[prefix]

    def constant(self, node: Node, expr: str) -> str:
        """Register ``expr`` as a non-persistent buffer named after the node's output."""
        name = self.buffers(node.outputs[0])
        self.constants.append((name, expr))
        return attr("self", name)


Emitter = Callable[[ModuleSource, Node], str]
EMITTERS: dict[str, Emitter] = {}


def _emits(*ops: str) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return register


def _pad_call(x: str, pads: tuple[int, int, int, int] | None, **kwargs: str) -> str:
    return x if pads is None else _call("F.pad", x, lit(pads), **kwargs)


@_emits("conv")
def _conv(src: ModuleSource, node: Node) -> str:
    options, pads = _conv_options(node)
    x = _pad_call(src.arg(node, 0), pads)
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({x})"
    return _call("F.conv2d", x, *src.args(node)[1:], **options)


@_emits("linear")
def _linear(src: ModuleSource, node: Node) -> str:
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({src.arg(node, 0)})"
    return _call("F.linear", *src.args(node))


@_emits("batchnorm")
def _batchnorm(src: ModuleSource, node: Node) -> str:
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({src.arg(node, 0)})"
    x, weight, bias, mean, var = src.args(node)
    if node.attrs["momentum"] is None:
        raise ValueError("batchnorm with a cumulative average (momentum None) needs a standard BatchNorm layer")
    # Running statistics that are buffers of the module update in training, like nn.BatchNorm2d;
    # computed ones cannot be updated, so those always normalise with them.
    tracked = all(src.graph.is_param(n) and src.graph.params[n].kind == "buffer" for n in node.inputs[3:])
    training = "self.training" if tracked else "False"
    momentum, eps = lit(node.attrs["momentum"]), lit(node.attrs["eps"])
    return _call("F.batch_norm", x, mean, var, weight, bias, training=training, momentum=momentum, eps=eps)


@_emits("layernorm")
def _layernorm(src: ModuleSource, node: Node) -> str:
    x_type = src.type_in(node)
    axis = node.attrs["axis"] % x_type.rank
    x = src.arg(node, 0)
    channels_last = axis == x_type.rank - 1
    if not channels_last:
        x = f"{x}.movedim({axis}, -1)"
    layer = src.layer(node)
    if layer is not None:
        y = f"{layer}({x})"
    else:
        affine = src.args(node)[1:] + ["None"] * (3 - len(node.inputs))
        y = _call("F.layer_norm", x, lit((x_type.shape[axis],)), *affine, eps=lit(node.attrs["eps"]))
    return y if channels_last else f"{y}.movedim(-1, {axis})"


@_emits("groupnorm")
def _groupnorm(src: ModuleSource, node: Node) -> str:
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({src.arg(node, 0)})"
    x, *affine = src.args(node)
    affine = affine or ["None", "None"]
    return _call("F.group_norm", x, lit(node.attrs["groups"]), *affine, eps=lit(node.attrs["eps"]))


_UNARY = {
    "relu": "F.relu",
    "gelu": "F.gelu",
    "sigmoid": "torch.sigmoid",
    "silu": "F.silu",
    "hardswish": "F.hardswish",
    "relu6": "F.relu6",
    "hardsigmoid": "F.hardsigmoid",
    "tanh": "torch.tanh",
    "exp": "torch.exp",
    "sqrt": "torch.sqrt",
    "erf": "torch.erf",
}


@_emits(*_UNARY)
def _unary(src: ModuleSource, node: Node) -> str:
    return _call(_UNARY[node.op], src.arg(node, 0))


@_emits("pow")
def _pow(src: ModuleSource, node: Node) -> str:
    return f"{src.arg(node, 0)} ** {lit(float(node.attrs['exponent']))}"


@_emits("clamp")
def _clamp(src: ModuleSource, node: Node) -> str:
    bounds = {k: lit(float(node.attrs[k])) for k in ("min", "max") if node.attrs.get(k) is not None}
    return _call("torch.clamp", src.arg(node, 0), **bounds)


_ELEMENTWISE_FUNCTIONS = {"minimum": "torch.minimum", "maximum": "torch.maximum"}


@_emits(*_ELEMENTWISE_FUNCTIONS)
def _elementwise_function(src: ModuleSource, node: Node) -> str:
    return _call(_ELEMENTWISE_FUNCTIONS[node.op], src.arg(node, 0), src.arg(node, 1))


@_emits("neg")
def _neg(src: ModuleSource, node: Node) -> str:
    return f"-{src.arg(node, 0)}"


@_emits("identity")
def _identity(src: ModuleSource, node: Node) -> str:
    return src.arg(node, 0)


_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}


@_emits(*_BINARY)
def _binary(src: ModuleSource, node: Node) -> str:
    a, b = src.args(node)
    return f"{a} {_BINARY[node.op]} {b}"


@_emits("softmax")
def _softmax(src: ModuleSource, node: Node) -> str:
    return _call("torch.softmax", src.arg(node, 0), dim=lit(node.attrs["axis"]))


@_emits("const")
def _const(src: ModuleSource, node: Node) -> str:
    return src.constant(node, tensor_expr(node.attrs["value"], node.attrs["dtype"], indent=" " * 8))


@_emits("grid")
def _grid(src: ModuleSource, node: Node) -> str:
    grid = src.use(positional_grid)
    return src.constant(node, _call(grid, lit(node.attrs["height"]), lit(node.attrs["width"])))


@_emits("reshape")
def _reshape(src: ModuleSource, node: Node) -> str:
    shape = list(node.attrs["shape"])
    x_shape = src.type_in(node).shape
    # A reshape that keeps the leading (batch) axis leaves it free, so other batch sizes work.
    if shape and x_shape and shape[0] == x_shape[0]:
        shape[0] = -1
    return f"{src.arg(node, 0)}.reshape({_shape_args(tuple(shape))})"


@_emits("transpose")
def _transpose(src: ModuleSource, node: Node) -> str:
    return f"{src.arg(node, 0)}.permute({_shape_args(tuple(node.attrs['perm']))})"


@_emits("rotate")
def _rotate(src: ModuleSource, node: Node) -> str:
    return _call(src.use(rotate), src.arg(node, 0), heads=lit(node.attrs["heads"]))


@_emits("shift")
def _shift(src: ModuleSource, node: Node) -> str:
    return _call(src.use(shift), src.arg(node, 0), offsets=lit(tuple(map(tuple, node.attrs["offsets"]))))


def _window_options(node: Node) -> tuple[dict[str, str], tuple[int, int, int, int] | None]:
    """kernel_size/stride/padding/dilation of a window op, and the pad to apply first if PyTorch cannot."""
    kernel = node.attrs["kernel"]
    t, l, b, r = node.attrs["pads"]
    options = {"kernel_size": _pair(kernel), "stride": _pair(node.attrs["stride"])}
    dilation = tuple(node.attrs.get("dilation", (1, 1)))
    if dilation != (1, 1):
        if node.op == "avgpool":
            raise ValueError(f"avgpool with dilation {dilation} has no PyTorch equivalent")
        options["dilation"] = _pair(dilation)
    # Pools accept only even padding of at most half the kernel, F.unfold any even padding.
    fits = node.op == "unfold" or (t <= kernel[0] // 2 and l <= kernel[1] // 2)
    if (t, l) != (b, r) or not fits:
        return options, (l, r, t, b)
    if (t, l) != (0, 0):
        options["padding"] = _pair((t, l))
    return options, None


def _pool_options(node: Node) -> tuple[dict[str, str], tuple[int, int, int, int] | None]:
    """:func:`_window_options` of a pool, with its ceil_mode and count_include_pad when they are not the default.

    Both depend on where the padding is, so they need PyTorch's own (even) padding, not a pad applied first."""
    options, pads = _window_options(node)
    flags = {k: lit(bool(node.attrs[k])) for k, default in (("ceil_mode", False), ("count_include_pad", True))
             if k in node.attrs and bool(node.attrs[k]) != default}
    if flags and pads is not None:
        raise ValueError(f"{node.op} with {', '.join(flags)} and uneven padding {list(node.attrs['pads'])} has no "
                         "PyTorch equivalent")
    return {**options, **flags}, pads


@_emits("avgpool")
def _avgpool(src: ModuleSource, node: Node) -> str:
    options, pads = _pool_options(node)
    # Explicit zero padding counts in the mean exactly like count_include_pad=True padding.
    return _call("F.avg_pool2d", _pad_call(src.arg(node, 0), pads), **options)


@_emits("maxpool")
def _maxpool(src: ModuleSource, node: Node) -> str:
    options, pads = _pool_options(node)
    x = _pad_call(src.arg(node, 0), pads, value='float("-inf")')
    return _call("F.max_pool2d", x, **options)


@_emits("unfold")
def _unfold(src: ModuleSource, node: Node) -> str:
    options, pads = _window_options(node)
    unfolded = _call("F.unfold", _pad_call(src.arg(node, 0), pads), **options)
    return f"{unfolded}.unflatten(-1, {lit(src.type_out(node).shape[2:])})"


_REDUCTIONS = {"reduce_mean": "mean", "reduce_sum": "sum", "reduce_max": "amax", "reduce_min": "amin"}


@_emits(*_REDUCTIONS)
def _reduce(src: ModuleSource, node: Node) -> str:
    axes = lit(tuple(node.attrs["axes"]))
    keepdim = lit(bool(node.attrs["keepdims"]))
    return f"{src.arg(node, 0)}.{_REDUCTIONS[node.op]}(dim={axes}, keepdim={keepdim})"


@_emits("concat")
def _concat(src: ModuleSource, node: Node) -> str:
    return _call("torch.cat", "[" + ", ".join(src.args(node)) + "]", dim=lit(node.attrs["axis"]))


@_emits("split")
def _split(src: ModuleSource, node: Node) -> str:
    sizes = "[" + ", ".join(lit(s) for s in node.attrs["sizes"]) + "]"
    return _call("torch.split", src.arg(node, 0), sizes, dim=lit(node.attrs["axis"]))


@_emits("slice")
def _slice(src: ModuleSource, node: Node) -> str:
    rank = src.type_in(node).rank
    axis = node.attrs["axis"] % rank
    start, end, step = (node.attrs[k] for k in ("start", "end", "step"))
    bounds = f"{'' if start is None else lit(start)}:{'' if end is None else lit(end)}"
    index = [":"] * axis + [bounds if step == 1 else f"{bounds}:{lit(step)}"]
    return f"{src.arg(node, 0)}[{', '.join(index)}]"


_PAD_MODES = {"zero": {}, "reflect": {"mode": '"reflect"'}, "edge": {"mode": '"replicate"'}}


@_emits("pad")
def _pad(src: ModuleSource, node: Node) -> str:
    t, l, b, r = node.attrs["pads"]
    return _pad_call(src.arg(node, 0), (l, r, t, b), **_PAD_MODES[node.attrs["mode"]])


_RESIZE_MODES = {"linear": '"bilinear"', "nearest": '"nearest"'}


@_emits("resize")
def _resize(src: ModuleSource, node: Node) -> str:
    scales = lit(tuple(float(s) for s in node.attrs["scales"]))
    sizes = lit(tuple(node.attrs["sizes"]))
    mode = _RESIZE_MODES[node.attrs["mode"]]
    return _call(src.use(resize), src.arg(node, 0), scale_factor=scales, size=sizes, mode=mode)


@_emits("attention")
def _attention(src: ModuleSource, node: Node) -> str:
    q, k, v, *bias = src.args(node)
    logits = f"{lit(node.attrs['scale'])} * ({q} @ {k}.transpose(-2, -1))" + "".join(f" + {b}" for b in bias)
    return f"torch.softmax({logits}, dim=-1) @ {v}"


@_emits("local_attention")
def _local_attention(src: ModuleSource, node: Node) -> str:
    q, k, v, *pos = src.args(node)
    options = {key: lit(node.attrs[key]) for key in ("heads", "kernel", "stride", "scale")}
    return _call(src.use(local_attention), q, k, v, pos[0] if pos else "None", **options)


@_emits("roll")
def _roll(src: ModuleSource, node: Node) -> str:
    shifts, dims = lit(tuple(node.attrs["shifts"])), lit(tuple(node.attrs["axes"]))
    return _call("torch.roll", src.arg(node, 0), shifts=shifts, dims=dims)


@_emits("where")
def _where(src: ModuleSource, node: Node) -> str:
    cond, a, b = src.args(node)
    return f"torch.where({cond} != 0, {a}, {b})"


@_emits("gather")
def _gather(src: ModuleSource, node: Node) -> str:
    table, index = src.args(node)
    return f"{table}[{index}]"


# ---------------------------------------------------------------------------------------------
# Assembly


def _init_lines(src: ModuleSource, tree: Tree, owner: str) -> list[str]:
    """Lines of ``__init__`` building ``tree`` (reachable as ``owner``) and initialising its state."""
    lines = []
    for p in tree.registration_order():
        lines.append(_register_param(owner, p))
        src.access[p.name] = attr(owner, p.name.rpartition(".")[2])
        lines.append(_init_line(src, src.access[p.name], p.init))
    for name, child in tree.children.items():
        expr = _child(tree, owner, name)
        src.access[child.path] = expr
        if child.layer is None:
            lines.append(_register_child(tree, owner, name, "nn.ModuleList()" if child.is_list else "nn.Module()"))
            lines += _init_lines(src, child, expr)
            continue
        lines.append(_register_child(tree, owner, name, child.layer.constructor))
        for leaf, default in zip(child.layer.leaves, child.layer.defaults):
            p = src.graph.params[f"{child.path}.{leaf}"]
            src.access[p.name] = attr(expr, leaf)
            if _canonical_init(p.init) != default:
                lines.append(_init_line(src, src.access[p.name], p.init))
    return lines


def _init_line(src: ModuleSource, target: str, init: Init) -> str:
    if init.kind in INIT_FUNCTIONS:
        src.use(INIT_FUNCTIONS[init.kind][0])
    return init_statement(target, init)


def _forward_lines(src: ModuleSource) -> list[str]:
    """One line per node: ``outputs = expression  # spec location``."""
    lines = []
    for node in src.graph.nodes:
        rhs = EMITTERS[node.op](src, node)
        outs = [src.values(o) for o in node.outputs]
        lhs = f"({outs[0]},)" if node.op == "split" and len(outs) == 1 else ", ".join(outs)
        lines.append(f"{lhs} = {rhs}  # {node.provenance}")
    return lines


def _signature(src: ModuleSource) -> tuple[str, str, str]:
    """forward's parameter list, return annotation and return expression."""
    graph = src.graph
    params = ", ".join(["self"] + [f"{src.values(name)}: torch.Tensor" for name in graph.inputs])
    results = [src.access[n] if graph.is_param(n) else src.values(n) for n in graph.outputs]
    if len(results) == 1:
        return params, "torch.Tensor", results[0]
    return params, "tuple[torch.Tensor, ...]", ", ".join(results) if results else "()"


def _describe(graph: Graph, names: list[str]) -> str:
    return ", ".join(f"{n} {graph.type_of(n)}" for n in names) or "none"


def class_name_for(graph: Graph, class_name: str | None = None) -> str:
    """The generated class's name: ``class_name`` or the graph's name, made an identifier."""
    name = sanitise(class_name or graph.name)
    return name + "_" if name in _GENERATED_NAMES else name


def _class_source(src: ModuleSource, name: str) -> str:
    """The generated class: state and constants in ``__init__``, one line per node in ``forward``."""
    graph = src.graph
    init = _init_lines(src, src.tree, "self")
    forward = _forward_lines(src)
    init += [f"self.register_buffer({lit(buffer)}, {expr}, persistent=False)" for buffer, expr in src.constants]
    body = [f'    """netdsl graph {graph.name!r}: a module without constructor arguments."""', ""]
    order = list(graph.params)
    if src.tree.state_order() != order:
        # nn.Module lists a module's own state before its children's; this spec declares another order.
        keys = "".join(f"        {lit(key)},\n" for key in order)
        body += [f"    STATE_DICT_ORDER = (\n{keys}    )", ""]
        init.append(f"self.register_state_dict_post_hook({src.use(keep_declaration_order)})")
    params, returns, results = _signature(src)
    body += [
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *(f"        {line}" for line in init),
        "",
        f"    def forward({params}) -> {returns}:",
        f'        """Inputs: {_describe(graph, graph.inputs)}. Outputs: {_describe(graph, graph.outputs)}."""',
        *(f"        {line}" for line in forward),
        f"        return {results}",
    ]
    return f"class {name}(nn.Module):\n" + "\n".join(body)


def generate_source(graph: Graph, class_name: str | None = None) -> str:
    """Python source of a module defining ``class_name`` (default: the graph's name), an ``nn.Module``.

    The class is constructible without arguments; its ``state_dict()`` keys are the graph's
    parameter names in declaration order; ``forward`` takes the graph inputs in order and
    returns its output (a tuple for several). Raises ValueError for a graph it cannot express
    (an op without a PyTorch form, parameter names that cannot form a module tree).
    """
    unsupported = sorted({n.op for n in graph.nodes} - EMITTERS.keys())
    if unsupported:
        raise ValueError(f"no PyTorch form for op(s) {', '.join(unsupported)}")
    src = ModuleSource(graph)
    for name in graph.inputs:
        src.values(name)  # graph inputs claim their own names first
    cls = _class_source(src, class_name_for(graph, class_name))
    code = [*(inspect.getsource(fn) for fn in RUNTIME_FUNCTIONS if fn.__name__ in src.helpers), cls]
    # Every functional call is spelled "F.<name>(": import F only for a module that has one.
    uses_functional = any(re.search(r"\bF\.\w+\(", part) for part in code)
    functional = ["import torch.nn.functional as F"] if uses_functional else []
    header = (
        f'"""PyTorch module computing the netdsl graph {graph.name!r}.\n\n'
        "State names are the spec's parameter names; each line of forward() names the spec location it computes.\n"
        '"""\n\n' + "\n".join(["import torch", *functional, "from torch import nn"])
    )
    return "\n\n\n".join(part.strip("\n") for part in [header, *code]) + "\n"
