"""The model library in ``specs/models``: sizes, names and numbers.

Every model type-checks at 224x224 with batch 1 and has the published (or reference) parameter
count; the CSA backbone has the reference's state-dict layout and outputs, and refuses input
sizes at which its AvgPool2d(6) is not a global mean; small configurations of every
model compile to ONNX, and ONNX Runtime and the generated PyTorch module both compute what
PyTorch implementations with the originals' module layout compute from the same weights.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from reference.csa_numpy import CONVSELFATTN_ARGS
from reference.torch_modules import ACmix, CSABackbone, WindowAttentionACmix, convselfattn
from torch import nn

from netdsl.backends.onnx_backend import to_onnx
from netdsl.backends.torch_backend import build_module
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.pipeline import ONNX_FORMS, run_pipeline

MODELS = Path(__file__).resolve().parents[1] / "specs" / "models"
TOLERANCE = 1e-4  # float32, relative to the output's magnitude (at least 1)


def model_graph(name: str, sets: dict[str, object] | None = None, x: tuple[int, ...] | None = None,
                entry: str | None = None) -> Graph:
    """The elaborated graph of ``specs/models/<name>.net`` with parameter overrides and an input shape."""
    flags = [f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
             for key, value in (sets or {}).items()]
    inputs = ["x=" + "x".join(map(str, x))] if x else []
    return load_graph(MODELS / f"{name}.net", entry, flags, inputs)


def parameter_count(graph: Graph) -> int:
    """Trainable parameters only: BN running statistics and index buffers are not counted."""
    return sum(p.type.numel for p in graph.params.values() if p.kind == "param")


def perturbed_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """The seeded weights with noise on every vector and scalar (norm scales and shifts, biases, layer
    scales, mixing rates) and random BN statistics, so that no norm or gate is an identity; the kernels
    keep their seeded values, which keeps deep networks' activations in range."""
    rng = np.random.default_rng(seed)
    weights = initial_weights(graph, seed)
    for name, value in weights.items():
        if not np.issubdtype(value.dtype, np.floating) or value.ndim > 1:
            continue
        if name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
        else:
            weights[name] = (value + 0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
    return weights


def run_onnx(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """``graph`` emitted as written (but for the ops the emitter has no one-op form of, which their ONNX form's
    pass decomposes) and run in ONNX Runtime."""
    lowered = run_pipeline(graph, "onnx", passes=ONNX_FORMS)
    model = to_onnx(lowered.graph, weights)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {graph.inputs[0]: x})
    return out


def run_torch(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= TOLERANCE * scale


def random_input(graph: Graph) -> np.ndarray:
    shape = graph.values[graph.inputs[0]].shape
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Sizes at 224x224, batch 1


def swin_acmix_tiny_count() -> int:
    """Swin-T's 28,288,354 plus, per block, what WindowAttention_acmix adds: fc (9 x 3 heads, with bias),
    dep_conv (dim x 9 x 3 x 3, no bias) and the two rates."""
    stages = [(96, 3, 2), (192, 6, 2), (384, 12, 6), (768, 24, 2)]  # dim, heads, blocks
    return 28_288_354 + sum(blocks * (9 * 3 * heads + 9 + dim * 81 + 2) for dim, heads, blocks in stages)


@pytest.mark.parametrize(("name", "sets", "expected", "logits"), [
    pytest.param("convselfattn", {}, 27_638_836, (1000,), id="convselfattn"),
    pytest.param("resnet_acmix", {}, 18_333_976, (1, 1000), id="resnet_acmix-50"),
    pytest.param("resnet_acmix", {"layers": [1, 2, 4, 1]}, 10_487_816, (1, 1000), id="resnet_acmix-26"),
    pytest.param("resnet_acmix", {"layers": [2, 3, 5, 2]}, 14_410_896, (1, 1000), id="resnet_acmix-38"),
    pytest.param("swin_acmix_tiny", {}, swin_acmix_tiny_count(), (1, 1000), id="swin_acmix_tiny"),
    pytest.param("convnext_tiny", {}, 28_589_128, (1, 1000), id="convnext_tiny"),
    pytest.param("swin_tiny", {}, 28_288_354, (1, 1000), id="swin_tiny"),
    pytest.param("resnet50", {}, 25_557_032, (1, 1000), id="resnet50"),
])
def test_parameter_count_at_224(name: str, sets: dict[str, object], expected: int, logits: tuple[int, ...]) -> None:
    graph = model_graph(name, sets)
    assert graph.values[graph.inputs[0]].shape == (1, 3, 224, 224)
    assert [graph.values[o].shape for o in graph.outputs] == [logits]
    assert parameter_count(graph) == expected


def test_cvt13_has_about_twenty_million_parameters() -> None:
    graph = model_graph("cvt13")
    assert [graph.values[o].shape for o in graph.outputs] == [(1, 1000)]
    assert abs(parameter_count(graph) - 20.0e6) <= 0.03 * 20.0e6


# ----------------------------------------------------------------------------------------------------------
# The CSA backbone against the reference


def test_convselfattn_has_the_reference_state_dict() -> None:
    graph = model_graph("convselfattn")
    with torch.device("meta"):  # names and shapes only: skip initialising 27.6M numbers
        reference = convselfattn()
    expected = {name: tuple(value.shape) for name, value in reference.state_dict().items()}
    assert {name: p.type.shape for name, p in graph.params.items()} == expected
    assert len(expected) == 515
    buffers = {name for name, _ in reference.named_buffers()}
    assert {name for name, p in graph.params.items() if p.kind == "buffer"} == buffers


def test_convselfattn_refuses_256_with_a_located_error(run_cli: Callable) -> None:
    spec = MODELS / "convselfattn.net"
    code, out, err = run_cli(["check", spec, "--input", "x=1x3x256x256"])
    assert code == 2 and not out
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "require f.shape[2] == 6" in text)
    assert f"convselfattn.net:{line}:" in err
    assert "AvgPool2d(6)" in err and "256x256 input gives 7x7" in err and "convselfattn_any" in err
    assert "Traceback" not in err


def test_convselfattn_any_pools_the_whole_map_at_other_sizes() -> None:
    graph = model_graph("convselfattn", x=(1, 3, 256, 256), entry="convselfattn_any")
    pools = [n for n in graph.nodes if n.op == "avgpool"]
    assert [graph.type_of(n.inputs[0]).shape[2:] for n in pools] == [(7, 7)]
    assert [n.attrs["kernel"] for n in pools] == [(7, 7)]
    assert [graph.values[o].shape for o in graph.outputs] == [(1000,)]
    assert parameter_count(graph) == 27_638_836


SMALL_CSA = {"depths": [1, 1, 1, 1], "dims": [16, 24, 32, 48], "num_heads": [1, 1, 2, 2]}


def test_small_convselfattn_matches_the_reference_backbone() -> None:
    graph = model_graph("convselfattn", SMALL_CSA)
    weights = perturbed_weights(graph)
    reference = CSABackbone(**{**CONVSELFATTN_ARGS, **SMALL_CSA})
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    x = random_input(graph)
    expected = run_torch(reference, x)
    assert expected.shape == (1000,)
    assert_close(run_onnx(graph, weights, x), expected)
    assert_close(run_torch(build_module(graph, weights), x), expected)


@pytest.mark.slow
def test_full_convselfattn_matches_the_reference_backbone_in_onnx_runtime() -> None:
    graph = model_graph("convselfattn")
    weights = perturbed_weights(graph)
    reference = convselfattn()
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    x = random_input(graph)
    assert_close(run_onnx(graph, weights, x), run_torch(reference, x))


# ----------------------------------------------------------------------------------------------------------
# ResNet-50 and ResNet-ACmix against a torchvision-layout PyTorch ResNet


class TorchBottleneck(nn.Module):
    """torchvision's v1.5 bottleneck, with the 3x3 conv replaced by ``mixer(planes, stride)``."""

    def __init__(self, inplanes: int, planes: int, stride: int, mixer: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = mixer(planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride != 1 or inplanes != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(4 * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.bn1(self.conv1(x)))
        t = torch.relu(self.bn2(self.conv2(t)))
        t = self.bn3(self.conv3(t))
        return torch.relu(t + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    """torchvision's ResNet layout (names conv1, bn1, layer1..4, fc) over :class:`TorchBottleneck`."""

    def __init__(self, layers: list[int], mixer: Callable[[int, int], nn.Module], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers, strict=True)):
            stage = []
            for j in range(blocks):
                stage.append(TorchBottleneck(inplanes, planes, 2 if i > 0 and j == 0 else 1, mixer))
                inplanes = 4 * planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


MIXERS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet50": lambda planes, stride: nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
    "resnet_acmix": lambda planes, stride: ACmix(planes, planes, kernel_att=7, head=4, kernel_conv=3, stride=stride),
}


@pytest.mark.parametrize("name", ["resnet50", "resnet_acmix"])
def test_small_resnet_matches_a_torchvision_layout_resnet(name: str) -> None:
    graph = model_graph(name, {"layers": [1, 1, 1, 1], "num_classes": 10}, x=(1, 3, 64, 64))
    weights = perturbed_weights(graph)
    reference = TorchResNet([1, 1, 1, 1], MIXERS[name], num_classes=10)
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    x = random_input(graph)
    expected = run_torch(reference, x)
    assert_close(run_onnx(graph, weights, x), expected)
    assert_close(run_torch(build_module(graph, weights), x), expected)


# ----------------------------------------------------------------------------------------------------------
# Swin-T and Swin-ACmix-T against a PyTorch Swin Transformer (the original's layout and names)


def swin_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Swin's (nW, N, N) shifted-window mask, computed as the original does: label the regions of the
    rolled map, then -100 between tokens of one window that come from different regions."""
    regions = torch.zeros(height, width)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate(itertools.product(cuts, cuts)):
        regions[rows, cols] = label
    windows = regions.view(height // window, window, width // window, window).transpose(1, 2)
    windows = windows.reshape(-1, window * window)
    return (windows[:, None, :] != windows[:, :, None]).float() * -100.0


class TorchWindowAttention(nn.Module):
    """Swin's W-MSA with relative position bias on a (B, H, W, C) map; ``forward(x, H, W, mask)``."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        dy = ys.flatten()[:, None] - ys.flatten()[None, :] + window - 1
        dx = xs.flatten()[:, None] - xs.flatten()[None, :] + window - 1
        self.register_buffer("relative_position_index", dy * (2 * window - 1) + dx)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor | None) -> torch.Tensor:
        batch, _, _, dim = x.shape
        ws, tokens, d = self.window, self.window**2, dim // self.heads
        windows = x.view(batch, height // ws, ws, width // ws, ws, dim).transpose(2, 3).reshape(-1, tokens, dim)
        q, k, v = self.qkv(windows).view(-1, tokens, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        logits = (q * d**-0.5) @ k.transpose(-2, -1) + bias
        if mask is not None:
            logits = (logits.view(batch, -1, self.heads, tokens, tokens) + mask[None, :, None]).flatten(0, 1)
        out = self.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, tokens, dim))
        out = out.view(batch, height // ws, width // ws, ws, ws, dim).transpose(2, 3)
        return out.reshape(batch, height, width, dim)


def torch_mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))


class TorchSwinBlock(nn.Module):
    """A Swin block on a (B, H, W, C) map: roll by -shift, (masked) window attention, roll back; MLP."""

    def __init__(self, dim: int, heads: int, resolution: int, window: int, shift: int, mixer: str) -> None:
        super().__init__()
        if resolution <= window:  # the original's rule: one window, no shift
            window, shift = resolution, 0
        self.shift = shift
        self.mask = swin_mask(resolution, resolution, window, shift) if shift else None
        self.norm1 = nn.LayerNorm(dim)
        attention = WindowAttentionACmix if mixer == "acmix" else TorchWindowAttention
        self.attn = attention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = torch_mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.roll(self.norm1(x), (-self.shift, -self.shift), (1, 2))
        t = torch.roll(self.attn(t, x.shape[1], x.shape[2], self.mask), (self.shift, self.shift), (1, 2))
        x = x + t
        return x + self.mlp(self.norm2(x))


class TorchPatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class TorchSwin(nn.Module):
    """The Swin Transformer classifier (patch 4, MLP ratio 4) with the original's module names."""

    def __init__(self, mixer: str, image: int, embed_dim: int, depths: list[int], heads: list[int], window: int,
                 num_classes: int) -> None:
        super().__init__()
        self.patch_embed = nn.ModuleDict({"proj": nn.Conv2d(3, embed_dim, 4, stride=4),
                                          "norm": nn.LayerNorm(embed_dim)})
        self.layers = nn.ModuleList()
        resolution = image // 4
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            layer = nn.ModuleDict({"blocks": nn.ModuleList(
                TorchSwinBlock(dim, heads[i], resolution, window, (j % 2) * (window // 2), mixer)
                for j in range(depth))})
            if i < len(depths) - 1:
                layer["downsample"] = TorchPatchMerging(dim)
                resolution //= 2
            self.layers.append(layer)
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1))
        self.head = nn.Linear(embed_dim * 2 ** (len(depths) - 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed["norm"](self.patch_embed["proj"](x).permute(0, 2, 3, 1))
        for layer in self.layers:
            for block in layer["blocks"]:
                x = block(x)
            if "downsample" in layer:
                x = layer["downsample"](x)
        return self.head(self.norm(x).mean(dim=(1, 2)))


# ----------------------------------------------------------------------------------------------------------
# ConvNeXt-T against a PyTorch ConvNeXt (the original's layout and names)


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm over axis 1 of an NCHW map (eps 1e-6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-6)
        return x.permute(0, 3, 1, 2)


class TorchConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.pwconv2(nn.functional.gelu(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * t).permute(0, 3, 1, 2)


class TorchConvNeXt(nn.Module):
    def __init__(self, depths: list[int], dims: list[int], num_classes: int) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0]))]
            + [nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
               for i in range(1, len(dims))])
        self.stages = nn.ModuleList(nn.Sequential(*(TorchConvNeXtBlock(dim) for _ in range(depth)))
                                    for dim, depth in zip(dims, depths, strict=True))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))


# ----------------------------------------------------------------------------------------------------------
# CvT-13 against a PyTorch CvT (the original's layout and names)


def conv_projection(dim: int, stride: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(dim, dim, 3, stride=stride, padding=1, groups=dim, bias=False),
                                     bn=nn.BatchNorm2d(dim)))


class TorchCvTAttention(nn.Module):
    """CvT attention: q/k/v from depth-wise conv + BN projections (k, v at stride 2), the class token
    bypassing them, scale dim^-1/2."""

    def __init__(self, dim: int, heads: int, with_cls_token: bool) -> None:
        super().__init__()
        self.heads, self.with_cls_token = heads, with_cls_token
        self.conv_proj_q, self.conv_proj_k, self.conv_proj_v = (conv_projection(dim, s) for s in (1, 2, 2))
        self.proj_q, self.proj_k, self.proj_v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = x.shape
        if self.with_cls_token:
            cls, x = torch.split(x, [1, height * width], 1)
        grid = x.transpose(1, 2).reshape(batch, dim, height, width)
        heads = []
        for conv, linear in ((self.conv_proj_q, self.proj_q), (self.conv_proj_k, self.proj_k),
                             (self.conv_proj_v, self.proj_v)):
            tokens = conv(grid).flatten(2).transpose(1, 2)
            if self.with_cls_token:
                tokens = torch.cat([cls, tokens], 1)
            heads.append(linear(tokens).view(batch, -1, self.heads, dim // self.heads).transpose(1, 2))
        q, k, v = heads
        out = ((q @ k.transpose(-2, -1)) * dim**-0.5).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, -1, dim))


class TorchCvTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, with_cls_token: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TorchCvTAttention(dim, heads, with_cls_token)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = torch_mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x))


class TorchCvTStage(nn.Module):
    """Conv token embedding, optional class token, blocks; returns the map, or the class token if there is one."""

    def __init__(self, in_chans: int, dim: int, depth: int, heads: int, patch: int, stride: int, padding: int,
                 with_cls_token: bool) -> None:
        super().__init__()
        self.patch_embed = nn.ModuleDict({"proj": nn.Conv2d(in_chans, dim, patch, stride=stride, padding=padding),
                                          "norm": nn.LayerNorm(dim)})
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls_token else None
        self.blocks = nn.ModuleList(TorchCvTBlock(dim, heads, with_cls_token) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed["proj"](x)
        batch, dim, height, width = x.shape
        tokens = self.patch_embed["norm"](x.flatten(2).transpose(1, 2))
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], 1)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        if self.cls_token is not None:
            return tokens[:, :1]
        return tokens.transpose(1, 2).reshape(batch, dim, height, width)


class TorchCvT(nn.Module):
    def __init__(self, dims: list[int], depths: list[int], heads: list[int], num_classes: int) -> None:
        super().__init__()
        self.stage0 = TorchCvTStage(3, dims[0], depths[0], heads[0], 7, 4, 2, False)
        self.stage1 = TorchCvTStage(dims[0], dims[1], depths[1], heads[1], 3, 2, 1, False)
        self.stage2 = TorchCvTStage(dims[1], dims[2], depths[2], heads[2], 3, 2, 1, True)
        self.norm = nn.LayerNorm(dims[2])
        self.head = nn.Linear(dims[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stage2(self.stage1(self.stage0(x)))).flatten(1))


# ----------------------------------------------------------------------------------------------------------
# Small configurations against the PyTorch references, in ONNX Runtime and the generated module


SMALL_SWIN = {"embed_dim": 16, "depths": [2, 2, 2], "num_heads": [1, 2, 4], "window_size": 4, "num_classes": 10}
SMALL_CONVNEXT = {"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32], "num_classes": 10}
SMALL_CVT = {"dims": [16, 32, 48], "depths": [1, 1, 2], "num_heads": [1, 2, 3], "num_classes": 10}
REFERENCES: dict[str, Callable[[], nn.Module]] = {
    "swin_tiny": lambda: TorchSwin("window", 64, 16, [2, 2, 2], [1, 2, 4], 4, 10),
    "swin_acmix_tiny": lambda: TorchSwin("acmix", 64, 16, [2, 2, 2], [1, 2, 4], 4, 10),
    "convnext_tiny": lambda: TorchConvNeXt([1, 1, 2, 1], [8, 16, 24, 32], 10),
    "cvt13": lambda: TorchCvT([16, 32, 48], [1, 1, 2], [1, 2, 3], 10),
}


@pytest.mark.parametrize(("name", "sets", "x"), [
    # 64 -> maps of 16 and 8 (shifted windows with masks) and 4 (a single window, unshifted).
    pytest.param("swin_tiny", SMALL_SWIN, (1, 3, 64, 64), id="swin_tiny"),
    pytest.param("swin_acmix_tiny", SMALL_SWIN, (1, 3, 64, 64), id="swin_acmix_tiny"),
    pytest.param("convnext_tiny", SMALL_CONVNEXT, (1, 3, 64, 64), id="convnext_tiny"),
    pytest.param("cvt13", SMALL_CVT, (2, 3, 64, 64), id="cvt13-batch-2"),
])
def test_small_model_matches_its_pytorch_reference(name: str, sets: dict[str, object], x: tuple[int, ...]) -> None:
    graph = model_graph(name, sets, x=x)
    weights = perturbed_weights(graph)
    reference = REFERENCES[name]()
    for key, value in reference.state_dict().items():  # index buffers: ours equal the reference's own
        if key.endswith("relative_position_index"):
            np.testing.assert_array_equal(weights[key], value.numpy())
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    inputs = random_input(graph)
    expected = run_torch(reference, inputs)
    assert_close(run_onnx(graph, weights, inputs), expected)
    assert_close(run_torch(build_module(graph, weights), inputs), expected)


def test_convselfattn_any_agrees_between_onnx_runtime_and_torch_at_256() -> None:
    # 256 gives maps 64, 31, 15 and 7: resizes 31 -> 14 -> 31 and 15 -> 14 -> 15, and a 7x7 pool.
    graph = model_graph("convselfattn", {**SMALL_CSA, "num_classes": 10}, x=(1, 3, 256, 256), entry="convselfattn_any")
    weights = perturbed_weights(graph)
    inputs = random_input(graph)
    assert_close(run_onnx(graph, weights, inputs), run_torch(build_module(graph, weights), inputs))
