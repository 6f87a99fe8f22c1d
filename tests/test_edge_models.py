"""The edge models of ``specs/models`` as timm builds them: MobileNetV2, MobileNetV3-Large,
PoolFormer-S12 and MobileViT-S.

- ``netdsl stats`` prints timm's published parameter count of each (random init, 1000 classes).
- Without timm: ONNX Runtime running netdsl's ONNX and the generated PyTorch module agree.
- With timm (a test dependency, ``pip install --no-deps timm==1.0.31``; where torchvision does not
  import, ``reference/torchvision_stand_in.py`` stands in for the names timm reads at import time):
  a timm model's ``state_dict`` (random init, with every norm's affine terms, BN statistic and layer
  scale redrawn) saved to safetensors loads through ``--weights`` and, strictly, into the generated
  module, and both equal timm's forward within 1e-4 relative to the output's largest magnitude.
- ``trt-restricted`` and ``trt-dla`` compile each model with every node covered, and their outputs
  equal the ``onnx`` target's within 1e-4 relative.

The fast suite runs small inputs (64x64); the full inputs (224, 256 for MobileViT-S) are marked slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from reference.torchvision_stand_in import import_timm
from test_models import assert_close, model_graph, perturbed_weights, run_onnx, run_torch
from test_restricted_models import Case, check_restricted

from netdsl.backends.torch_backend import build_module
from netdsl.backends.weights_io import save_safetensors

MODELS = Path(__file__).resolve().parents[1] / "specs" / "models"
SMALL = 64  # input side of the fast tests: every model's last map is still at least 2x2


@dataclass(frozen=True)
class EdgeModel:
    """A model's timm name (also its spec's name), timm's parameter count and its full input side."""

    name: str
    params: int
    side: int


EDGE = [EdgeModel("mobilenetv2_100", 3_504_872, 224), EdgeModel("mobilenetv3_large_100", 5_483_032, 224),
        EdgeModel("poolformer_s12", 11_915_176, 224), EdgeModel("mobilevit_s", 5_578_632, 256)]
IDS = [m.name for m in EDGE]


def shape(side: int, batch: int = 1) -> tuple[int, int, int, int]:
    """An RGB input of ``side`` x ``side``."""
    return (batch, 3, side, side)


@pytest.mark.parametrize("model", EDGE, ids=IDS)
def test_stats_prints_timms_parameter_count(run_cli: Callable, model: EdgeModel) -> None:
    code, out, err = run_cli(["stats", MODELS / f"{model.name}.net"])
    assert code == 0, err
    assert f"params: {model.params:,} " in out


@pytest.mark.parametrize("model", EDGE, ids=IDS)
def test_onnx_runtime_and_the_generated_module_agree(model: EdgeModel) -> None:
    graph = model_graph(model.name, x=shape(SMALL, batch=2))
    weights = perturbed_weights(graph)
    x = np.random.default_rng(3).standard_normal(shape(SMALL, batch=2)).astype(np.float32)
    module = build_module(graph)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    assert_close(run_torch(module, x), run_onnx(graph, weights, x))


# ----------------------------------------------------------------------------------------------------------
# Against timm


@pytest.fixture(scope="module")
def timm() -> Any:
    """The timm package, or a skip saying how to install it."""
    try:
        module, _ = import_timm()
    except ImportError as exc:
        pytest.skip(f"timm is not importable ({exc}); pip install --no-deps timm==1.0.31 pyyaml huggingface_hub")
    return module


def timm_checkpoint(timm: Any, name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """timm's ``name`` (random init, eval mode) with every 1-D float tensor of its state redrawn: BN running
    variances from U(0.5, 1.5), every other norm weight and bias, running mean, layer scale and bias moved by
    N(0, 0.1^2) noise, so that no norm or scale is an identity; the model and its state as numpy."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.ndim != 1 or not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            else:
                value.add_(0.1 * torch.randn(value.shape, generator=generator))
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def check_against_timm(run_cli: Callable, tmp_path: Path, timm: Any, model: EdgeModel, side: int) -> None:
    """timm's checkpoint through ``--weights`` (ONNX Runtime) and strictly into the generated module, both
    against timm's forward."""
    reference, state = timm_checkpoint(timm, model.name)
    weights, out = tmp_path / f"{model.name}.safetensors", tmp_path / f"{model.name}.onnx"
    save_safetensors(state, weights)
    x = np.random.default_rng(5).standard_normal(shape(side)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()

    code, _, err = run_cli(["compile", MODELS / f"{model.name}.net", "--target", "onnx", "-o", out,
                            "--weights", weights, "--input", "x=" + "x".join(map(str, x.shape))])
    assert code == 0, err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert_close(session.run(None, {"x": x})[0], expected)

    module = build_module(model_graph(model.name, x=x.shape))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    assert_close(run_torch(module, x), expected)


@pytest.mark.parametrize("model", EDGE, ids=IDS)
def test_timm_checkpoint_gives_timms_outputs(run_cli: Callable, tmp_path: Path, timm: Any, model: EdgeModel) -> None:
    check_against_timm(run_cli, tmp_path, timm, model, SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("model", EDGE, ids=IDS)
def test_timm_checkpoint_gives_timms_outputs_at_full_size(run_cli: Callable, tmp_path: Path, timm: Any,
                                                         model: EdgeModel) -> None:
    check_against_timm(run_cli, tmp_path, timm, model, model.side)


@pytest.mark.parametrize("model", EDGE, ids=IDS)
def test_timm_state_dict_has_the_specs_names_and_shapes(timm: Any, model: EdgeModel) -> None:
    with torch.device("meta"):
        reference = timm.create_model(model.name, pretrained=False)
    graph = model_graph(model.name)
    assert {n: p.type.shape for n, p in graph.params.items()} == \
        {n: tuple(v.shape) for n, v in reference.state_dict().items()}
    assert sum(p.numel() for p in reference.parameters()) == model.params


# ----------------------------------------------------------------------------------------------------------
# Restricted targets

# relu6 and hardsigmoid reach both targets through clip_to_relu (ReLU, Sub, Mul only).
RESTRICTED = [pytest.param(m, target, id=f"{m.name}-{target}")
              for m in EDGE for target in ("trt-restricted", "trt-dla")]


@pytest.mark.parametrize(("model", "target"), RESTRICTED)
def test_restricted_target_covers_every_node_and_equals_onnx(run_cli: Callable, tmp_path: Path, model: EdgeModel,
                                                             target: str) -> None:
    check_restricted(run_cli, tmp_path, Case(f"models/{model.name}.net", shape=shape(SMALL)), target)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "target"), RESTRICTED)
def test_restricted_target_covers_every_node_and_equals_onnx_at_full_size(
        run_cli: Callable, tmp_path: Path, model: EdgeModel, target: str) -> None:
    check_restricted(run_cli, tmp_path, Case(f"models/{model.name}.net"), target)


def test_mobilevit_s_refuses_an_input_side_not_divisible_by_64(run_cli: Callable, tmp_path: Path) -> None:
    spec, out = MODELS / "mobilevit_s.net", tmp_path / "m.onnx"
    lines = spec.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "require H % 64" in text)
    code, _, err = run_cli(["compile", spec, "--input", "x=1x3x224x224", "-o", out])
    assert code == 2
    assert "error: constraint failed: MobileViT-S needs an input side divisible by 64, found 224x224" in err
    assert f"mobilevit_s.net:{line}:13" in err
    assert not out.exists()
