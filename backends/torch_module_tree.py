"""The module tree of a generated PyTorch module: which nodes become standard layers (``nn.Conv2d``, ...),
the ``nn.Module`` / ``nn.ModuleList`` containers that follow the parameters' dotted names, and the
statements registering them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netdsl.backends.torch_literals import (
    CLASS_ATTRIBUTES,
    FLOAT_DTYPES,
    MODULE_ATTRIBUTES,
    call_expr,
    dtype_kwarg,
    fan_in_default,
    is_identifier,
    lit,
    pair_lit,
    shape_args,
)
from netdsl.ir import Graph, Node, Parameter


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


def conv_options(node: Node) -> tuple[dict[str, str], tuple[int, int, int, int] | None]:
    """Keyword arguments shared by nn.Conv2d and F.conv2d, and the explicit pad of uneven padding."""
    t, l, b, r = node.attrs["pads"]
    options = {}
    if tuple(node.attrs["stride"]) != (1, 1):
        options["stride"] = pair_lit(node.attrs["stride"])
    if (t, l) == (b, r) and (t, l) != (0, 0):
        options["padding"] = pair_lit((t, l))
    if tuple(node.attrs["dilation"]) != (1, 1):
        options["dilation"] = pair_lit(node.attrs["dilation"])
    if node.attrs["groups"] != 1:
        options["groups"] = lit(node.attrs["groups"])
    return options, None if (t, l) == (b, r) else (l, r, t, b)


def _make_layer(graph: Graph, node: Node) -> Layer:
    x = graph.type_of(node.inputs[0])
    has_bias = len(node.inputs) > 2
    dtype = dtype_kwarg(x.dtype)
    leaves = _LAYER_ROLES[node.op][: len(node.inputs) - 1]
    ones_zeros = (("ones",), ("zeros",))
    if node.op == "conv":
        w = graph.type_of(node.inputs[1])
        options, _ = conv_options(node)
        kernel = {"kernel_size": pair_lit(w.shape[2:])}
        bias = {} if has_bias else {"bias": "False"}
        ctor = call_expr("nn.Conv2d", lit(x.shape[1]), lit(w.shape[0]), **kernel, **options, **bias, **dtype)
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        return Layer(ctor, leaves, (fan_in_default(fan_in),) * len(leaves))
    if node.op == "linear":
        out_features, in_features = graph.type_of(node.inputs[1]).shape
        bias = {} if has_bias else {"bias": "False"}
        ctor = call_expr("nn.Linear", lit(in_features), lit(out_features), **bias, **dtype)
        return Layer(ctor, leaves, (fan_in_default(in_features),) * len(leaves))
    if node.op == "batchnorm":
        options = {}
        if node.attrs["eps"] != 1e-5:
            options["eps"] = lit(node.attrs["eps"])
        if node.attrs["momentum"] != 0.1:
            options["momentum"] = lit(node.attrs["momentum"])
        ctor = call_expr(_BATCHNORM_CLASSES[x.rank], lit(x.shape[1]), **options, **dtype)
        leaves += ("num_batches_tracked",)
        return Layer(ctor, leaves, (*ones_zeros, ("zeros",), ("ones",), ("zeros",)))
    eps = {} if node.attrs["eps"] == 1e-5 else {"eps": lit(node.attrs["eps"])}
    if node.op == "layernorm":
        channels = x.shape[node.attrs["axis"] % x.rank]
        bias = {} if has_bias else {"bias": "False"}
        return Layer(call_expr("nn.LayerNorm", lit(channels), **eps, **bias, **dtype), leaves, ones_zeros)
    ctor = call_expr("nn.GroupNorm", lit(node.attrs["groups"]), lit(x.shape[1]), **eps, **dtype)
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
    reserved = MODULE_ATTRIBUTES | (CLASS_ATTRIBUTES if not tree.path else frozenset())
    for name in leaves | set(tree.children):
        if name in reserved and not tree.is_list:
            where = f"{tree.path}.{name}" if tree.path else name
            raise ValueError(f"parameter path {where!r}: {name!r} is an attribute of torch.nn.Module")
    for child in tree.children.values():
        _check_tree(child)


def attr(owner: str, name: str) -> str:
    """Expression reading attribute ``name`` of ``owner``."""
    return f"{owner}.{name}" if is_identifier(name) else f"getattr({owner}, {lit(name)})"


def child_access(parent: Tree, owner: str, name: str) -> str:
    return f"{owner}[{name}]" if parent.is_list else attr(owner, name)


def register_child(parent: Tree, owner: str, name: str, value: str) -> str:
    if parent.is_list:
        return f"{owner}.append({value})"
    if is_identifier(name):
        return f"{owner}.{name} = {value}"
    return f"{owner}.add_module({lit(name)}, {value})"


def register_param(owner: str, p: Parameter) -> str:
    leaf = p.name.rpartition(".")[2]
    empty = call_expr("torch.empty", shape_args(p.type.shape), **dtype_kwarg(p.type.dtype))
    if p.kind != "param":
        return f"{owner}.register_buffer({lit(leaf)}, {empty})"
    # Integer and boolean tensors cannot require gradients.
    frozen = {} if p.type.dtype in FLOAT_DTYPES else {"requires_grad": "False"}
    value = call_expr("nn.Parameter", empty, **frozen)
    return f"{owner}.{leaf} = {value}" if is_identifier(leaf) else f"{owner}.register_parameter({lit(leaf)}, {value})"
