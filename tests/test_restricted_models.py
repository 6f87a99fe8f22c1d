"""ConvNeXt-T, Swin-T and CvT-13 lowered for restricted TensorRT and DLA keep the ``onnx`` target's numbers.

The norms and reductions are lowered by this package's passes; ``Sqrt`` (of the norms' variance)
and ``Erf`` (of exact GELU) are the only ops left outside the profiles, for the math lowerings.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_models import SMALL_CONVNEXT, SMALL_CVT, SMALL_SWIN, model_graph, perturbed_weights, random_input

from netdsl.backends.onnx_backend import to_onnx
from netdsl.backends.trt_coverage import check_coverage
from netdsl.passes.pipeline import run_pipeline
from netdsl.profile import load_profile

LEFT_FOR_THE_MATH_LOWERINGS = {"Sqrt", "Erf"}


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return out


def check_lowered_model(name: str, sets: dict[str, object] | None, x: tuple[int, ...], target: str) -> None:
    """Lower ``name`` for ``target``: only math ops are refused, and the output equals the ``onnx`` target's."""
    graph = model_graph(name, sets, x=x)
    weights = perturbed_weights(graph)
    lowered = run_pipeline(graph, target, weights=weights)
    model = to_onnx(lowered.graph, lowered.weights)
    report = check_coverage(model, load_profile(target))
    assert {n.op for n in report.violations()} <= LEFT_FOR_THE_MATH_LOWERINGS, report.violation_lines()
    assert report.graph_violations == []
    assert not {n.op_type for n in model.graph.node} & {"LayerNormalization", "ReduceMean", "ReduceSum",
                                                        "InstanceNormalization", "GroupNormalization"}
    plain = run_pipeline(graph, "onnx", weights=weights)
    inputs = random_input(graph)
    want, got = _run(to_onnx(plain.graph, plain.weights), inputs), _run(model, inputs)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("name, sets, x, target", [
    ("convnext_tiny", SMALL_CONVNEXT, (1, 3, 64, 64), "trt-restricted"),
    ("convnext_tiny", SMALL_CONVNEXT, (2, 3, 64, 64), "trt-dla"),
    ("swin_tiny", SMALL_SWIN, (1, 3, 64, 64), "trt-restricted"),
    ("cvt13", SMALL_CVT, (2, 3, 64, 64), "trt-restricted"),
])
def test_small_models_lower_and_keep_their_numbers(name: str, sets: dict[str, object], x: tuple[int, ...],
                                                   target: str) -> None:
    check_lowered_model(name, sets, x, target)


@pytest.mark.slow
@pytest.mark.parametrize("name, target", [("convnext_tiny", "trt-restricted"), ("convnext_tiny", "trt-dla"),
                                          ("swin_tiny", "trt-restricted"), ("cvt13", "trt-restricted")])
def test_full_models_at_224_lower_and_keep_their_numbers(name: str, target: str) -> None:
    check_lowered_model(name, None, (1, 3, 224, 224), target)
