"""The blocks of ``specs/blocks/`` as a user writes them, against independent PyTorch implementations.

The ViT pre-norm encoder block and CBAM are implemented here from their papers' definitions
(Dosovitskiy et al. 2021, section 3.1; Woo et al. 2018, equations 1-3), not from netdsl's output.
Each spec is compiled for the ``onnx`` and ``torch`` targets; both must compute what the
independent implementation computes from the same weights (the generated module's state dict).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_models import assert_close, perturbed_weights
from torch import nn
from torch.nn import functional as F

from netdsl.backends.onnx_backend import to_onnx
from netdsl.backends.torch_backend import build_module
from netdsl.driver import load_graph
from netdsl.ir import Graph
from netdsl.passes.pipeline import run_pipeline

BLOCKS = Path(__file__).resolve().parents[1] / "specs" / "blocks"


def block_graph(name: str, sets: dict[str, object], x: tuple[int, ...]) -> Graph:
    """The elaborated default model of ``specs/blocks/<name>.net`` with ``sets`` and input shape ``x``."""
    return load_graph(BLOCKS / f"{name}.net", None, [f"{k}={v}" for k, v in sets.items()],
                      ["x=" + "x".join(map(str, x))])


class TorchViTBlock(nn.Module):
    """Pre-norm encoder block: ``x + MSA(LN(x))``, then ``x + MLP(LN(x))`` with the exact GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.mlp.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        d = dim // self.heads
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, length, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / d ** 0.5, dim=-1)
        x = x + self.attn.proj((weights @ v).transpose(1, 2).reshape(b, length, dim))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TorchCBAM(nn.Module):
    """``x' = sigmoid(MLP(avg(x)) + MLP(max(x))) * x``, then ``sigmoid(conv7x7([mean_c; max_c](x'))) * x'``."""

    def __init__(self, channels: int, reduction: int, kernel: int = 7) -> None:
        super().__init__()
        self.channel = nn.Module()
        self.channel.fc1 = nn.Linear(channels, channels // reduction)
        self.channel.fc2 = nn.Linear(channels // reduction, channels)
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.channel.fc2(F.relu(self.channel.fc1(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * gate[:, :, None, None]
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


def _linear_from_conv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The spec's 1x1 conv kernels [out, in, 1, 1] as the reference's linear weights [out, in]."""
    return {k: v.reshape(v.shape[:2]) if v.ndim == 4 and v.shape[2:] == (1, 1) else v for k, v in state.items()}


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


# (spec, sets, input shape, the reference, its state dict from the generated module's)
CASES: dict[str, tuple[str, dict[str, object], tuple[int, ...], Callable[[], nn.Module],
                       Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]] = {
    "vit": ("vit", {"dim": 48, "num_heads": 3, "mlp_ratio": 4}, (2, 17, 48), lambda: TorchViTBlock(48, 3, 4),
            lambda s: _strip_prefix(s, "encoder.")),
    "vit-one-head": ("vit", {"dim": 16, "num_heads": 1, "mlp_ratio": 2}, (1, 5, 16), lambda: TorchViTBlock(16, 1, 2),
                     lambda s: _strip_prefix(s, "encoder.")),
    "cbam": ("cbam", {"channels": 32, "reduction": 4}, (2, 32, 9, 11), lambda: TorchCBAM(32, 4),
             lambda s: _linear_from_conv(_strip_prefix(s, "cbam."))),
    "cbam-reduction-16": ("cbam", {"channels": 64, "reduction": 16}, (1, 64, 7, 7), lambda: TorchCBAM(64, 16),
                          lambda s: _linear_from_conv(_strip_prefix(s, "cbam."))),
}


def _onnx_output(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    lowered = run_pipeline(graph, "onnx", weights=weights)
    model = to_onnx(lowered.graph, lowered.weights)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {graph.inputs[0]: x})
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_block_matches_its_independent_pytorch_implementation(case: str) -> None:
    spec, sets, shape, reference_of, reference_state = CASES[case]
    graph = block_graph(spec, sets, shape)
    weights = perturbed_weights(graph)
    generated = build_module(run_pipeline(graph, "torch").graph, weights).eval()
    reference = reference_of().eval()
    reference.load_state_dict(reference_state(generated.state_dict()), strict=True)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
        from_torch = generated(torch.from_numpy(x)).numpy()
    assert expected.shape == shape
    assert_close(from_torch, expected)
    assert_close(_onnx_output(graph, weights, x), expected)


def test_block_specs_compile_with_their_defaults(run_cli: Callable, tmp_path: Path) -> None:
    for spec in ("vit", "cbam"):
        out = tmp_path / f"{spec}.onnx"
        code, _, err = run_cli(["compile", BLOCKS / f"{spec}.net", "--target", "onnx", "-o", out])
        assert code == 0, err
        assert out.is_file()
