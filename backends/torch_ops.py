"""The forward expression of every IR op in generated PyTorch source, one function per op (or family).

Each function gets the :class:`ModuleSource` of the graph and an IR node and returns the right-hand
side of the node's line in ``forward``. Adding an op's PyTorch form means adding one ``@_emits``
function here (and, if PyTorch has no single call for it, a function in
:mod:`netdsl.backends.torch_runtime`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netdsl.backends.torch_literals import (
    CLASS_ATTRIBUTES,
    GENERATED_NAMES,
    MODULE_ATTRIBUTES,
    Namer,
    call_expr,
    lit,
    pair_lit,
    shape_args,
    tensor_expr,
)
from netdsl.backends.torch_module_tree import attr, build_tree, conv_options, find_layers
from netdsl.backends.torch_runtime import (
    band_index,
    band_outside,
    local_attention,
    positional_grid,
    resize,
    rotate,
    shift,
)
from netdsl.ir import Graph, Node, TensorType
from netdsl.opdefs import floor_mode_pads, window_divisors
from netdsl.passes.local_attention_to_matmul import tile_size


class ModuleSource:
    """Everything generate_source collects for one graph: names, layers, helpers, constants."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.layers, self.layer_calls = find_layers(graph)
        self.tree = build_tree(graph, self.layers)
        self.access: dict[str, str] = {}  # parameter or layer path -> expression from ``self``
        self.helpers: set[str] = set()
        self.constants: list[tuple[str, str]] = []  # (buffer name, expression)
        self.values = Namer(GENERATED_NAMES)
        root_names = set(self.tree.children) | {p.name for p in self.tree.params}
        self.buffers = Namer(root_names | MODULE_ATTRIBUTES | CLASS_ATTRIBUTES)

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

    def constant(self, node: Node, expr: str, role: str | None = None) -> str:
        """Register ``expr`` as a non-persistent buffer named after the node's output (and ``role``, if given:
        one of several constants of the node)."""
        name = self.buffers(node.outputs[0] if role is None else f"{node.outputs[0]}.{role}")
        self.constants.append((name, expr))
        return attr("self", name)


ForwardExpression = Callable[[ModuleSource, Node], str]
FORWARD_EXPRESSIONS: dict[str, ForwardExpression] = {}


def _emits(*ops: str) -> Callable[[ForwardExpression], ForwardExpression]:
    def register(fn: ForwardExpression) -> ForwardExpression:
        for op in ops:
            FORWARD_EXPRESSIONS[op] = fn
        return fn

    return register


def _pad_call(x: str, pads: tuple[int, int, int, int] | None, **kwargs: str) -> str:
    return x if pads is None else call_expr("F.pad", x, lit(pads), **kwargs)


@_emits("conv")
def _conv(src: ModuleSource, node: Node) -> str:
    options, pads = conv_options(node)
    x = _pad_call(src.arg(node, 0), pads)
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({x})"
    return call_expr("F.conv2d", x, *src.args(node)[1:], **options)


@_emits("linear")
def _linear(src: ModuleSource, node: Node) -> str:
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({src.arg(node, 0)})"
    return call_expr("F.linear", *src.args(node))


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
    return call_expr("F.batch_norm", x, mean, var, weight, bias, training=training, momentum=momentum, eps=eps)


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
        y = call_expr("F.layer_norm", x, lit((x_type.shape[axis],)), *affine, eps=lit(node.attrs["eps"]))
    return y if channels_last else f"{y}.movedim(-1, {axis})"


@_emits("groupnorm")
def _groupnorm(src: ModuleSource, node: Node) -> str:
    layer = src.layer(node)
    if layer is not None:
        return f"{layer}({src.arg(node, 0)})"
    x, *affine = src.args(node)
    affine = affine or ["None", "None"]
    return call_expr("F.group_norm", x, lit(node.attrs["groups"]), *affine, eps=lit(node.attrs["eps"]))


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
    return call_expr(_UNARY[node.op], src.arg(node, 0))


@_emits("pow")
def _pow(src: ModuleSource, node: Node) -> str:
    return f"{src.arg(node, 0)} ** {lit(float(node.attrs['exponent']))}"


@_emits("clamp")
def _clamp(src: ModuleSource, node: Node) -> str:
    bounds = {k: lit(float(node.attrs[k])) for k in ("min", "max") if node.attrs.get(k) is not None}
    return call_expr("torch.clamp", src.arg(node, 0), **bounds)


_ELEMENTWISE_FUNCTIONS = {"minimum": "torch.minimum", "maximum": "torch.maximum"}


@_emits(*_ELEMENTWISE_FUNCTIONS)
def _elementwise_function(src: ModuleSource, node: Node) -> str:
    return call_expr(_ELEMENTWISE_FUNCTIONS[node.op], src.arg(node, 0), src.arg(node, 1))


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
    return call_expr("torch.softmax", src.arg(node, 0), dim=lit(node.attrs["axis"]))


@_emits("const")
def _const(src: ModuleSource, node: Node) -> str:
    return src.constant(node, tensor_expr(node.attrs["value"], node.attrs["dtype"], indent=" " * 8))


@_emits("grid")
def _grid(src: ModuleSource, node: Node) -> str:
    grid = src.use(positional_grid)
    return src.constant(node, call_expr(grid, lit(node.attrs["height"]), lit(node.attrs["width"])))


@_emits("reshape")
def _reshape(src: ModuleSource, node: Node) -> str:
    shape = list(node.attrs["shape"])
    x_shape = src.type_in(node).shape
    # A reshape that keeps the leading (batch) axis leaves it free, so other batch sizes work.
    if shape and x_shape and shape[0] == x_shape[0]:
        shape[0] = -1
    return f"{src.arg(node, 0)}.reshape({shape_args(tuple(shape))})"


@_emits("transpose")
def _transpose(src: ModuleSource, node: Node) -> str:
    return f"{src.arg(node, 0)}.permute({shape_args(tuple(node.attrs['perm']))})"


@_emits("rotate")
def _rotate(src: ModuleSource, node: Node) -> str:
    return call_expr(src.use(rotate), src.arg(node, 0), heads=lit(node.attrs["heads"]))


@_emits("shift")
def _shift(src: ModuleSource, node: Node) -> str:
    return call_expr(src.use(shift), src.arg(node, 0), offsets=lit(tuple(map(tuple, node.attrs["offsets"]))))


def _window_options(node: Node) -> tuple[dict[str, str], tuple[int, int, int, int] | None]:
    """kernel_size/stride/padding/dilation of a window op, and the pad to apply first if PyTorch cannot."""
    kernel = node.attrs["kernel"]
    t, l, b, r = node.attrs["pads"]
    options = {"kernel_size": pair_lit(kernel), "stride": pair_lit(node.attrs["stride"])}
    dilation = tuple(node.attrs.get("dilation", (1, 1)))
    if dilation != (1, 1):
        if node.op == "avgpool":
            raise ValueError(f"avgpool with dilation {dilation} has no PyTorch equivalent")
        options["dilation"] = pair_lit(dilation)
    # Pools accept only even padding of at most half the kernel, F.unfold any even padding.
    fits = node.op == "unfold" or (t <= kernel[0] // 2 and l <= kernel[1] // 2)
    if (t, l) != (b, r) or not fits:
        return options, (l, r, t, b)
    if (t, l) != (0, 0):
        options["padding"] = pair_lit((t, l))
    return options, None


def _pool_options(node: Node) -> tuple[dict[str, str], tuple[int, int, int, int] | None, bool]:
    """:func:`_window_options` of a pool, with its ceil_mode and count_include_pad when they are not the default,
    and whether the pool needs :func:`_explicit_pool` instead.

    Both flags depend on where the padding is, so PyTorch's own (even) padding carries them; a pool with a flag
    and uneven padding has no single PyTorch call."""
    options, pads = _window_options(node)
    flags = {k: lit(bool(node.attrs[k])) for k, default in (("ceil_mode", False), ("count_include_pad", True))
             if k in node.attrs and bool(node.attrs[k]) != default}
    return {**options, **flags}, pads, bool(flags) and pads is not None


def _explicit_pool(src: ModuleSource, node: Node) -> str:
    """A pool with ceil_mode or count_include_pad=false and uneven padding: padded explicitly (ceil mode's last
    windows reaching into :func:`~netdsl.opdefs.floor_mode_pads`'s extra trailing padding), pooled in floor
    mode, and for an average the window sums divided by each window's true divisor
    (:func:`~netdsl.opdefs.window_divisors`, the same rule as PyTorch's ``avg_pool2d``)."""
    _, _, h, w = src.type_in(node, 0).shape
    t, l, b, r = floor_mode_pads(node.attrs, h, w)
    kernel, stride, pads = pair_lit(node.attrs["kernel"]), pair_lit(node.attrs["stride"]), lit((l, r, t, b))
    x = src.arg(node, 0)
    if node.op == "maxpool":
        return call_expr("F.max_pool2d", call_expr("F.pad", x, pads, value='float("-inf")'), kernel, stride)
    rows, cols = (lit(tuple(counts)) for counts in window_divisors(node.attrs, h, w))
    sums = call_expr("F.avg_pool2d", call_expr("F.pad", x, pads), kernel, stride, divisor_override="1")
    return f"{sums} / ({x}.new_tensor({rows})[:, None] * {x}.new_tensor({cols}))"


@_emits("avgpool")
def _avgpool(src: ModuleSource, node: Node) -> str:
    options, pads, explicit = _pool_options(node)
    if explicit:
        return _explicit_pool(src, node)
    # Explicit zero padding counts in the mean exactly like count_include_pad=True padding.
    return call_expr("F.avg_pool2d", _pad_call(src.arg(node, 0), pads), **options)


@_emits("maxpool")
def _maxpool(src: ModuleSource, node: Node) -> str:
    options, pads, explicit = _pool_options(node)
    if explicit:
        return _explicit_pool(src, node)
    x = _pad_call(src.arg(node, 0), pads, value='float("-inf")')
    return call_expr("F.max_pool2d", x, **options)


@_emits("unfold")
def _unfold(src: ModuleSource, node: Node) -> str:
    options, pads = _window_options(node)
    unfolded = call_expr("F.unfold", _pad_call(src.arg(node, 0), pads), **options)
    return f"{unfolded}.unflatten(-1, {lit(src.type_out(node).shape[2:])})"


_REDUCTIONS = {"reduce_mean": "mean", "reduce_sum": "sum", "reduce_max": "amax", "reduce_min": "amin"}


@_emits(*_REDUCTIONS)
def _reduce(src: ModuleSource, node: Node) -> str:
    axes = lit(tuple(node.attrs["axes"]))
    keepdim = lit(bool(node.attrs["keepdims"]))
    return f"{src.arg(node, 0)}.{_REDUCTIONS[node.op]}(dim={axes}, keepdim={keepdim})"


@_emits("concat")
def _concat(src: ModuleSource, node: Node) -> str:
    return call_expr("torch.cat", "[" + ", ".join(src.args(node)) + "]", dim=lit(node.attrs["axis"]))


@_emits("split")
def _split(src: ModuleSource, node: Node) -> str:
    sizes = "[" + ", ".join(lit(s) for s in node.attrs["sizes"]) + "]"
    return call_expr("torch.split", src.arg(node, 0), sizes, dim=lit(node.attrs["axis"]))


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
    return call_expr(src.use(resize), src.arg(node, 0), scale_factor=scales, size=sizes, mode=mode)


@_emits("attention")
def _attention(src: ModuleSource, node: Node) -> str:
    q, k, v, *bias = src.args(node)
    logits = f"{lit(node.attrs['scale'])} * ({q} @ {k}.transpose(-2, -1))" + "".join(f" + {b}" for b in bias)
    return f"torch.softmax({logits}, dim=-1) @ {v}"


@_emits("local_attention")
def _local_attention(src: ModuleSource, node: Node) -> str:
    q, k, v, *pos = src.args(node)
    kernel, stride = node.attrs["kernel"], node.attrs["stride"]
    _, _, height, width = src.type_out(node).shape
    tile = (tile_size(height), tile_size(width))
    _, _, in_height, in_width = src.type_in(node).shape
    outside = src.constant(node, call_expr(src.use(band_outside), lit(kernel), lit(stride), lit(tile)), "outside")
    index = src.constant(node, call_expr(src.use(band_index), lit(in_height), lit(in_width), lit(kernel),
                                         lit(stride), lit(tile)), "index")
    options = {key: lit(node.attrs[key]) for key in ("heads", "stride", "scale")}
    return call_expr(src.use(local_attention), q, k, v, pos[0] if pos else "None", outside, index, **options,
                     tile=lit(tile))


@_emits("roll")
def _roll(src: ModuleSource, node: Node) -> str:
    shifts, dims = lit(tuple(node.attrs["shifts"])), lit(tuple(node.attrs["axes"]))
    return call_expr("torch.roll", src.arg(node, 0), shifts=shifts, dims=dims)


@_emits("where")
def _where(src: ModuleSource, node: Node) -> str:
    cond, a, b = src.args(node)
    return f"torch.where({cond} != 0, {a}, {b})"


@_emits("gather")
def _gather(src: ModuleSource, node: Node) -> str:
    table, index = src.args(node)
    return f"{table}[{index}]"
