"""Helpers of the pass tests: build small graphs with located nodes, run a pass, compare the graphs.

A pass's differential test compares the graph before and after the pass in netdsl's own
interpreter (:func:`run_interp`), the reference semantics of every op, so pass tests do not depend
on the ONNX emitter; ``test_pass_examples.py`` runs one example of every pass through ONNX Runtime too.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnxruntime as ort

from netdsl.backends.onnx_backend import to_onnx
from netdsl.builder import GraphBuilder
from netdsl.initializers import NP_DTYPES
from netdsl.interp import run_graph
from netdsl.ir import Graph, Init, Provenance, Span, TensorType
from netdsl.passes.base import Pass, RewriteLog
from netdsl.passes.pipeline import ONNX_FORMS, run_pipeline
from netdsl.verifier import verify

TOL = {"rtol": 1e-5, "atol": 1e-5}


def at(line: int) -> Provenance:
    """A provenance pointing at line ``line`` of a made-up spec file."""
    return Provenance(Span("t.net", line, 5, line, 20))


def f32(*shape: int) -> TensorType:
    return TensorType("f32", tuple(shape))


def builder_with_input(*shape: int, name: str = "G") -> tuple[GraphBuilder, str]:
    b = GraphBuilder(name)
    return b, b.input("x", f32(*shape))


def add_param(b: GraphBuilder, name: str, value: np.ndarray, kind: str = "param") -> str:
    dtype = {np.dtype(np.float32): "f32", np.dtype(np.int64): "i64"}[value.dtype]
    return b.param(name, TensorType(dtype, value.shape), Init("zeros"), kind)


def random_feeds(graph: Graph, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: (scale * rng.standard_normal(graph.values[i].shape)).astype(np.float32) for i in graph.inputs}


def run_ort(graph: Graph, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Emit ``graph`` to ONNX, after the passes every ONNX target runs for the ops the emitter has no one-op
    form of (:data:`~netdsl.passes.pipeline.ONNX_FORMS`), and run it in ONNX Runtime on the CPU."""
    graph = run_pipeline(graph, "onnx", passes=ONNX_FORMS).graph
    model = to_onnx(graph, {k: v for k, v in weights.items() if k in graph.params})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_interp(graph: Graph, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``graph`` in netdsl's interpreter; its outputs in order.

    A parameter no node reads needs no weight (ONNX Runtime does not ask for one either).
    """
    read = {i for n in graph.nodes for i in n.inputs}
    unread = {name: np.zeros(p.type.shape, NP_DTYPES[p.type.dtype]) for name, p in graph.params.items()
              if name not in read}
    values = run_graph(graph, {**unread, **weights}, feeds)
    return [values[o] for o in graph.outputs]


def op_counts(graph: Graph) -> Counter[str]:
    return Counter(n.op for n in graph.nodes)


def check_rewrite(p: Pass, graph: Graph, expected_ops: dict[str, int], weights: dict[str, np.ndarray] | None = None,
                  feeds: dict[str, np.ndarray] | None = None) -> tuple[Graph, RewriteLog]:
    """Run pass ``p`` on a copy of ``graph`` and check what every rule test checks.

    The rewritten graph verifies, satisfies the pass's pre/postconditions, leaves exactly
    ``expected_ops``, computes the same outputs in netdsl's interpreter (``weights`` are read after
    the run, so passes that rewrite them in place are covered), keeps the output names, and every
    node the pass created carries the span of an original node (the one it replaced, or one it
    absorbed, e.g. the conv a batch norm is folded into) plus the pass's rule name.
    """
    verify(graph)
    weights = {} if weights is None else weights
    feeds = random_feeds(graph) if feeds is None else feeds
    before = run_interp(graph, weights, feeds)
    if p.pre is not None:
        assert p.pre(graph) == []
    log = RewriteLog()
    out = p.run(copy.deepcopy(graph), log)
    verify(out)
    if p.post is not None:
        assert p.post(out) == []
    assert op_counts(out) == Counter(expected_ops)
    assert out.outputs == graph.outputs and out.inputs == graph.inputs
    after = run_interp(out, weights, feeds)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, **TOL)
    original_spans = {str(n.provenance.span) for n in graph.nodes}
    assert log.entries and {e[0] for e in log.entries} == {p.name}
    assert {where for _, where, _, _ in log.entries} <= original_spans
    for node in out.nodes:
        if p.name in node.provenance.rules:
            assert node.provenance.rules[-1] == p.name
            assert str(node.provenance.span) in original_spans
    return out, log


def lower_for_dla_and_compare(graph: Graph) -> Graph:
    """Lower ``graph`` for ``trt-dla``; assert every node is DLA-covered and the outputs equal the ``onnx`` target's.

    Returns the lowered graph.
    """
    from netdsl.coverage.checker import check_coverage
    from netdsl.coverage.profile import load_profile
    from netdsl.initializers import initial_weights
    from netdsl.passes.pipeline import run_pipeline

    weights = initial_weights(graph)
    lowered = run_pipeline(graph, "trt-dla", weights=weights)
    report = check_coverage(to_onnx(lowered.graph, lowered.weights), load_profile("trt-dla"))
    assert report.covered, report.violation_lines()
    plain = run_pipeline(graph, "onnx", weights=weights)
    feeds = random_feeds(graph)
    (want,), (got,) = run_ort(plain.graph, plain.weights, feeds), run_ort(lowered.graph, lowered.weights, feeds)
    np.testing.assert_allclose(got, want, **TOL)
    return lowered.graph
