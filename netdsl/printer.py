"""Stable text form of the typed IR, for ``netdsl show --ir``, ``--print-after`` and golden tests.

Format::

    graph CSA(%x: f32[2,32,14,14]) -> (%y: f32[2,32,14,14])
      param @v.weight: f32[32,1,7,7] = uniform_fan_in(fan_in=49)
      %v = conv(%x, @v.weight, @v.bias) {groups=32, pads=[3,3,3,3], ...} : f32[2,32,14,14]  # csa.net:9:5
      return %y

With locations, a parameter whose initialiser a ``with init`` clause set says so after ``# via``.
Attributes are sorted by key; floats are printed with ``repr`` (round-trip exact); constant
arrays by shape, dtype and a short hash of their bytes, so the text is deterministic.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from netdsl.ir import Graph, Node


def _attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:8]
        if v.size == 1:
            return f"{v.reshape(()).item()!r}"
        return f"<{v.dtype}{list(v.shape)} #{digest}>"
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(_attr(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _ref(graph: Graph, name: str) -> str:
    return f"@{name}" if graph.is_param(name) else f"%{name}"


def format_node(graph: Graph, node: Node, locations: bool = True) -> str:
    """One line of IR text for ``node``."""
    outs = ", ".join(f"%{o}" for o in node.outputs)
    ins = ", ".join(_ref(graph, i) for i in node.inputs)
    attrs = {k: v for k, v in node.attrs.items() if not (node.op == "const" and k == "dtype")}
    attr_txt = " {" + ", ".join(f"{k}={_attr(attrs[k])}" for k in sorted(attrs)) + "}" if attrs else ""
    types = ", ".join(str(graph.values[o]) for o in node.outputs)
    line = f"  {outs} = {node.op}({ins}){attr_txt} : {types}"
    if locations:
        prov = node.provenance
        where = []
        if prov.span is not None:
            where.append(f"{prov.span.file}:{prov.span.line}:{prov.span.col}")
        if prov.block_path:
            where.append(f"[{prov.block_path}]")
        if prov.rules:
            where.append("via " + ">".join(prov.rules))
        if where:
            line += "  # " + " ".join(where)
    return line


def format_graph(graph: Graph, locations: bool = True) -> str:
    """The whole graph as stable text."""
    ins = ", ".join(f"%{i}: {graph.values[i]}" for i in graph.inputs)
    outs = ", ".join(f"%{o}: {graph.values[o]}" for o in graph.outputs)
    lines = [f"graph {graph.name}({ins}) -> ({outs})"]
    for p in graph.params.values():
        kw = "param" if p.kind == "param" else "buffer"
        line = f"  {kw} @{p.name}: {p.type} = {p.init}"
        if locations and p.provenance.rules:  # e.g. the `with init` clause that set the initialiser
            line += "  # via " + " > ".join(p.provenance.rules)
        lines.append(line)
    for n in graph.nodes:
        lines.append(format_node(graph, n, locations))
    lines.append("  return " + ", ".join(f"%{o}" for o in graph.outputs))
    return "\n".join(lines) + "\n"
