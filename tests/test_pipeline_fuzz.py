"""Translation validation on random well-typed models: every target keeps every output, in every runtime.

For each model drawn by :func:`fuzz.typed_programs.typed_models` (convs, norms, pools, resizes,
pads, rolls, shifts, unfolds, attention, rotations, ... in random chains), the float64 interpreter
on the spec's graph is the reference, and must be matched by

* the interpreter on each target's lowered graph (``onnx``, ``trt``, ``trt-restricted``,
  ``trt-dla``): the passes, alone and in combination;
* ONNX Runtime on each target's emitted ONNX model: the emission;
* the PyTorch module generated from the spec: the other backend.

Lowered weights and the runtimes compute in float32, and random chains can be ill-conditioned (a
layer norm over two nearly equal channels divides float32 rounding noise by a tiny deviation), so
comparisons allow 2e-3 of the output's magnitude: far below what a wrong index, padding, layout or
op gives. The ``trt*`` models run in ONNX Runtime
without its CPU layout transposer: they are meant for TensorRT, and that transposer can push a
Transpose (from a linear map over the last axis lowered as transposed 1x1 conv) into a linear
Resize whose scales it then refuses, an ONNX Runtime limitation that TensorRT does not share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fuzz.typed_programs import typed_models
from hypothesis import HealthCheck, given, settings

from netdsl.api import emit_onnx
from netdsl.backends.torch_backend import build_module
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.interp import run_graph
from netdsl.passes.pipeline import run_pipeline

TARGETS = ("onnx", "trt", "trt-restricted", "trt-dla")
LAYOUT_TRANSPOSER = "TransposeOptimizer_CPUExecutionProvider"  # left out for the trt* models (module docstring)


def assert_close(got: np.ndarray, want: np.ndarray, what: str, spec: str) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * scale, err_msg=f"{what} differs on\n{spec}")


def check_every_backend(spec: str, folder: Path) -> None:
    path = folder / "fz.net"
    path.write_text(spec)
    graph = load_graph(path)
    weights = initial_weights(graph, seed=1)
    feeds = {"x": np.random.default_rng(0).standard_normal(graph.type_of("x").shape).astype(np.float32)}
    (want,) = run_graph(graph, weights, feeds, np.float64).values()
    with torch.no_grad():
        got = build_module(graph, weights).eval()(torch.from_numpy(feeds["x"])).numpy()
    assert_close(got, want, "the PyTorch module", spec)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for target in TARGETS:
        lowered = run_pipeline(graph, target, weights=weights)
        (got,) = run_graph(lowered.graph, lowered.weights, feeds, np.float64).values()
        assert_close(got, want, f"the {target} pipeline", spec)
        model = emit_onnx(lowered, target, 17).SerializeToString()
        left_out = [] if target == "onnx" else [LAYOUT_TRANSPOSER]
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=left_out)
        assert_close(session.run(None, feeds)[0], want, f"ONNX Runtime on the {target} model", spec)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=typed_models())
def test_random_models_keep_their_outputs_through_every_target(spec: str, tmp_path_factory: pytest.TempPathFactory
                                                              ) -> None:
    check_every_backend(spec, tmp_path_factory.mktemp("fz"))


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=typed_models(max_steps=8))
def test_many_random_models_keep_their_outputs_through_every_target(
        spec: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    check_every_backend(spec, tmp_path_factory.mktemp("fz"))
