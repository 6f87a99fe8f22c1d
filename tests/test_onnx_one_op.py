"""The ONNX emitter is one-to-one: every IR node becomes at most one ONNX compute op.

Beside that op a lowering may emit only layout and type adapters (:data:`ADAPTERS`) and constants;
each decomposition into several compute ops is a pass on the IR (docs/architecture.md). Every IR
node the emitter lowers is recorded with the ONNX nodes it produced, over a spec using most ops,
the library models of the lowering-hint tests under every ONNX target, and single-op graphs for the
ops those do not reach; together they exercise every lowering.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from test_float16 import OP_ZOO
from test_lowering_hints import LIBRARY

from netdsl.backends.onnx_backend import supported_ops, to_onnx
from netdsl.backends.onnx_builder import Lowering, OnnxGraphBuilder
from netdsl.backends.onnx_ops import ADAPTERS
from netdsl.builder import GraphBuilder
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph, Init, Node, TensorType
from netdsl.passes.pipeline import ONNX_FORMS, PIPELINES, run_pipeline


def _single_op_graphs() -> list[tuple[Graph, int]]:
    """(graph, opset) for the ops the models do not reach, each applied once."""
    graphs = []

    def one(op: str, shapes: list[tuple[int, ...]], opset: int = 17, dtypes: list[str] | None = None,
            **attrs: object) -> None:
        b = GraphBuilder(op)
        names = [b.input(f"x{i}", TensorType((dtypes or ["f32"] * len(shapes))[i], shape))
                 for i, shape in enumerate(shapes)]
        b.output(b.op(op, names, **attrs))
        graphs.append((b.graph, opset))

    one("gelu", [(2, 3)], opset=20)
    one("groupnorm", [(1, 4, 3, 3)], groups=4, eps=1e-5)
    one("clamp", [(2, 3)], min=0.0)
    one("clamp", [(2, 3)], max=1.0)
    one("clamp", [(2, 3)], min=0.0, max=1.0)
    one("relu6", [(2, 3)])
    one("hardsigmoid", [(2, 3)])
    one("pow", [(2, 3)], exponent=2.0)
    one("where", [(2, 3), (2, 3), (2, 3)], dtypes=["f32", "f32", "f32"])
    one("gather", [(5, 3), (2,)], dtypes=["f32", "i64"])
    one("minimum", [(2, 3), (2, 3)])
    one("maximum", [(2, 3), (2, 3)])
    one("reduce_min", [(2, 3)], axes=(1,), keepdims=True)
    one("grid", [], height=3, width=4)
    one("rotate", [(1, 4, 2, 2)], heads=1)
    one("matmul", [(2, 3, 4), (2, 4, 5)])
    one("identity", [(2, 3)])
    return graphs


def _record(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """IR op -> the ONNX op types each of its nodes became, filled as the emitter runs."""
    emitted: dict[str, list[list[str]]] = defaultdict(list)
    lower = OnnxGraphBuilder.lower

    def recording(em: OnnxGraphBuilder, index: int, node: Node, lowering: Lowering) -> None:
        first = len(em.nodes)
        lower(em, index, node, lowering)
        emitted[node.op].append([n.op for n in em.nodes[first:]])

    monkeypatch.setattr(OnnxGraphBuilder, "lower", recording)
    return emitted


def test_every_ir_node_becomes_at_most_one_onnx_compute_op(monkeypatch: pytest.MonkeyPatch, write_spec) -> None:
    emitted = _record(monkeypatch)
    zoo = load_graph(write_spec(OP_ZOO))
    for graph in [zoo, *(case.graph() for case in LIBRARY)]:
        weights = initial_weights(graph)
        # "torch" keeps the ops as written; with the ONNX forms the emitter meets every op it lowers.
        for passes in ([*PIPELINES["torch"], *ONNX_FORMS], *(PIPELINES[t] for t in PIPELINES if t != "torch")):
            result = run_pipeline(graph, "onnx", weights=weights, passes=passes)
            to_onnx(result.graph, result.weights)
    for graph, opset in _single_op_graphs():
        to_onnx(graph, initial_weights(graph), opset)
    several = {op: sorted({tuple(ops) for ops in nodes if len([o for o in ops if o not in ADAPTERS]) > 1})
               for op, nodes in emitted.items()}
    assert {op: forms for op, forms in several.items() if forms} == {}
    assert sorted(supported_ops() - set(emitted)) == []


def test_the_check_counts_compute_ops_beside_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    # The recorder sees every ONNX node a lowering emits: linear's view adapters and its one Gemm.
    emitted = _record(monkeypatch)
    b = GraphBuilder("fc")
    x = b.input("x", TensorType("f32", (2, 3, 4)))
    w = b.param("fc.weight", TensorType("f32", (5, 4)), Init("zeros"))
    b.output(b.op("linear", [x, w]))
    to_onnx(b.graph, {"fc.weight": np.ones((5, 4), np.float32)})
    assert emitted["linear"] == [["Reshape", "Gemm", "Reshape"]]

