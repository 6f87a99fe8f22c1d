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
  computes. The few ops PyTorch has no single call for use small functions of
  :mod:`netdsl.backends.torch_runtime` (``resize``, ``rotate``, ``shift``, ``local_attention``, ...),
  whose source is copied into the generated module when used.

This module assembles the generated source; :mod:`netdsl.backends.torch_runtime` holds the copied
functions, :mod:`netdsl.backends.torch_literals` the Python literals, names and initialiser
statements, :mod:`netdsl.backends.torch_module_tree` the standard layers and the module tree, and
:mod:`netdsl.backends.torch_ops` the forward expression of each IR op.
"""

from __future__ import annotations

import inspect
import re

from netdsl.backends.torch_literals import (
    GENERATED_NAMES,
    INIT_FUNCTIONS,
    canonical_init,
    init_statement,
    lit,
    sanitise,
)
from netdsl.backends.torch_module_tree import Tree, attr, child_access, register_child, register_param
from netdsl.backends.torch_ops import FORWARD_EXPRESSIONS, ModuleSource
from netdsl.backends.torch_runtime import RUNTIME_FUNCTIONS, keep_declaration_order
from netdsl.ir import Graph, Init


def _init_lines(src: ModuleSource, tree: Tree, owner: str) -> list[str]:
    """Lines of ``__init__`` building ``tree`` (reachable as ``owner``) and initialising its state."""
    lines = []
    for p in tree.registration_order():
        lines.append(register_param(owner, p))
        src.access[p.name] = attr(owner, p.name.rpartition(".")[2])
        lines.append(_init_line(src, src.access[p.name], p.init))
    for name, child in tree.children.items():
        expr = child_access(tree, owner, name)
        src.access[child.path] = expr
        if child.layer is None:
            lines.append(register_child(tree, owner, name, "nn.ModuleList()" if child.is_list else "nn.Module()"))
            lines += _init_lines(src, child, expr)
            continue
        lines.append(register_child(tree, owner, name, child.layer.constructor))
        for leaf, default in zip(child.layer.leaves, child.layer.defaults):
            p = src.graph.params[f"{child.path}.{leaf}"]
            src.access[p.name] = attr(expr, leaf)
            if canonical_init(p.init) != default:
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
        rhs = FORWARD_EXPRESSIONS[node.op](src, node)
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
    return name + "_" if name in GENERATED_NAMES else name


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
    unsupported = sorted({n.op for n in graph.nodes} - FORWARD_EXPRESSIONS.keys())
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
