"""The test oracles in ``tests/reference`` agree with each other and with the recorded facts about the originals.

The numpy references and the PyTorch modules are two implementations of the same descriptions; they must
agree (float64 to 1e-10, float32 to 1e-5, relative to the output's magnitude), fail on the same inputs,
and have the parameter counts, state-dict layouts and resize sizes recorded for the reference code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import acmix_numpy, conv2d, csa_numpy, swin_acmix_numpy, torch_modules
from reference.csa_numpy import CONVSELFATTN_ARGS

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
DTYPES = [np.float64, np.float32]


def _loaded(module: torch.nn.Module, sd: dict[str, np.ndarray], dtype: type) -> torch.nn.Module:
    """``module`` in ``dtype`` and eval mode, holding the state dict ``sd`` (strict load)."""
    module = module.to(TORCH_DTYPE[dtype])
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    return module.eval()


def _run(module: torch.nn.Module, x: np.ndarray, *args: object) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x), *args).numpy()


def _as_dtype(sd: dict[str, np.ndarray], dtype: type) -> dict[str, np.ndarray]:
    """Floating entries of ``sd`` cast to ``dtype`` (as ``load_state_dict`` does for a module of that dtype)."""
    return {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in sd.items()}


def _assert_agree(actual: np.ndarray, expected: np.ndarray, dtype: type) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype == dtype
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= TOLERANCE[dtype] * scale


def _assert_same_layout(sd: dict[str, np.ndarray], module: torch.nn.Module) -> None:
    """``sd`` has exactly the module's state-dict keys, in order, with the same shapes and integer entries."""
    reference = module.state_dict()
    assert list(sd) == list(reference)
    for name, value in reference.items():
        assert tuple(sd[name].shape) == tuple(value.shape), name
        assert np.issubdtype(sd[name].dtype, np.floating) == value.is_floating_point(), name


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------------------
# Shared primitives against PyTorch itself


@pytest.mark.parametrize(
    ("groups", "stride", "padding", "kernel"), [(1, 1, 0, 1), (1, 2, 1, 3), (4, 1, 2, 5), (8, 2, 1, 3)]
)
def test_numpy_conv2d_matches_torch(groups: int, stride: int, padding: int, kernel: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 9, 7))
    weight = rng.standard_normal((16, 8 // groups, kernel, kernel))
    bias = rng.standard_normal(16)
    expected = F.conv2d(*map(torch.from_numpy, (x, weight, bias)), stride=stride, padding=padding, groups=groups)
    actual = conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)
    _assert_agree(actual, expected.numpy(), np.float64)


@pytest.mark.parametrize("length", [5, 6, 7, 13, 20, 27, 29, 55, 56])
@pytest.mark.parametrize("sr_to", [7, 14])
def test_resize_by_scale_matches_torch_interpolate(length: int, sr_to: int) -> None:
    rng = np.random.default_rng(length)
    x = rng.standard_normal((1, 3, length, length + 4))
    down = (sr_to / length, sr_to / (length + 4))
    for scale in (down, (1.0 / down[0], 1.0 / down[1])):
        expected = F.interpolate(torch.from_numpy(x), scale_factor=scale, mode="bilinear", align_corners=False)
        _assert_agree(csa_numpy.resize_bilinear_by_scale(x, *scale), expected.numpy(), np.float64)


def test_round_trip_failures_are_the_recorded_sizes() -> None:
    # Sizes on which the reference fails in eager mode, as recorded for sr_to 7 and 14 (and 2s fails alike).
    for sr_to in (7, 14, 28):
        shrink_fails, return_fails = [], []
        for length in range(2, 123):
            scale = sr_to / length
            small = csa_numpy.scaled_length(length, scale)
            if small != sr_to:
                shrink_fails.append(length)
            elif csa_numpy.scaled_length(small, 1.0 / scale) != length:
                return_fails.append(length)
        assert shrink_fails == [55, 71, 83, 95, 97, 107, 110, 111]
        assert return_fails == [29, 51, 58, 61, 69, 101, 102, 115, 116, 122]


# ----------------------------------------------------------------------------------------------------------
# CSA block


CSA_CASES = [
    pytest.param(dict(dim=8, num_heads=2, sr_to=4, neighbors=3, mlp_ratio=2), (8, 8), id="exact-half"),
    pytest.param(dict(dim=12, num_heads=1, sr_to=14, neighbors=5), (13, 13), id="enlarge-13-to-14"),
    pytest.param(
        dict(dim=8, num_heads=2, sr_to=7, neighbors=7, layer_scale_init_value=0.1), (27, 20), id="non-square-gamma"
    ),
    pytest.param(
        dict(dim=16, num_heads=4, sr_to=4, neighbors=5, mlp_ratio=3, layer_scale_init_value=1e-6),
        (6, 10),
        id="four-heads",
    ),
    pytest.param(dict(dim=8, num_heads=1, sr_to=7, neighbors=3), (6, 5), id="enlarge-non-square"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cfg", "size"), CSA_CASES)
def test_csa_block_numpy_matches_torch(cfg: dict, size: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(7)
    sd = _as_dtype(csa_numpy.random_csa_state(rng, **cfg), dtype)
    module = _loaded(torch_modules.CSABlock(**cfg), sd, dtype)
    x = rng.standard_normal((2, cfg["dim"], *size)).astype(dtype)
    expected = _run(module, x)
    _assert_agree(csa_numpy.csa_block(x, sd, **cfg), expected, dtype)


def test_csa_block_prefix_reads_prefixed_keys() -> None:
    rng = np.random.default_rng(3)
    cfg = dict(dim=8, num_heads=1, sr_to=4, neighbors=3)
    sd = csa_numpy.random_csa_state(np.random.default_rng(0), prefix="stages.1.2.", **cfg)
    plain = {k.removeprefix("stages.1.2."): v for k, v in sd.items()}
    x = rng.standard_normal((1, 8, 8, 8))
    np.testing.assert_array_equal(
        csa_numpy.csa_block(x, sd, prefix="stages.1.2.", **cfg), csa_numpy.csa_block(x, plain, **cfg)
    )


@pytest.mark.parametrize(
    ("size", "sr_to"),
    [((29, 29), 14), ((55, 55), 14), ((29, 14), 7), ((58, 58), 7)],
    ids=["29-returns-28", "55-shrinks-to-13", "non-square-29", "58-returns-57"],
)
def test_csa_block_fails_where_the_reference_fails(size: tuple[int, int], sr_to: int) -> None:
    cfg = dict(dim=4, num_heads=1, sr_to=sr_to, neighbors=3)
    sd = csa_numpy.random_csa_state(np.random.default_rng(0), **cfg)
    x = np.random.default_rng(1).standard_normal((1, 4, *size))
    with pytest.raises(ValueError):
        csa_numpy.csa_block(x, sd, **cfg)
    with pytest.raises(RuntimeError):
        _run(_loaded(torch_modules.CSABlock(**cfg), sd, np.float64), x)


@pytest.mark.parametrize("num_heads", [1, 3])
def test_rotation_transposes_each_head(num_heads: int) -> None:
    sr_to = 3
    positions = sr_to * sr_to
    q = np.random.default_rng(num_heads).standard_normal((2, num_heads * positions, sr_to, sr_to))
    k = csa_numpy.rotate_heads(q, num_heads, sr_to)
    as_matrices = (2, num_heads, positions, positions)  # (channel, position) per head
    np.testing.assert_array_equal(k.reshape(as_matrices), q.reshape(as_matrices).transpose(0, 1, 3, 2))
    block = torch_modules.CSABlock(num_heads * 2, sr_to=sr_to, num_heads=num_heads)
    np.testing.assert_array_equal(block.rotate(torch.from_numpy(q)).numpy(), k)


def _csa_block_parameters(dim: int, sr_to: int, num_heads: int, mlp_ratio: int, neighbors: int, gamma: bool) -> int:
    """The recorded per-block formula."""
    c, n, rc = dim, num_heads * sr_to**2, mlp_ratio * dim
    count = c * neighbors**2 + c + 2 * c + n * c + n + 2 * n + c * n + c + 2 * c + rc * c + rc + 2 * rc + rc * c + c
    return count + (c if gamma else 0)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(dim=96, sr_to=14, num_heads=1, mlp_ratio=3, neighbors=5),
        dict(dim=768, sr_to=7, num_heads=8, mlp_ratio=3, neighbors=5),
        dict(dim=10, sr_to=4, num_heads=3, mlp_ratio=2, neighbors=7, layer_scale_init_value=1e-6),
    ],
)
def test_csa_block_layout_and_counts(cfg: dict) -> None:
    module = torch_modules.CSABlock(**cfg)
    gamma = cfg.get("layer_scale_init_value", 0) > 0
    args = {k: v for k, v in cfg.items() if k != "layer_scale_init_value"}
    assert _parameter_count(module) == _csa_block_parameters(**args, gamma=gamma)
    q_channels = cfg["num_heads"] * cfg["sr_to"] ** 2
    float_buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    assert float_buffers == 2 * (2 * cfg["dim"] + q_channels + cfg["mlp_ratio"] * cfg["dim"])
    assert len(module.state_dict()) == (31 if gamma else 30)
    assert (next(iter(module.state_dict())) == "gamma") == gamma
    _assert_same_layout(csa_numpy.random_csa_state(np.random.default_rng(0), **cfg), module)


# ----------------------------------------------------------------------------------------------------------
# CSA backbone


@pytest.fixture(scope="module")
def convselfattn_model() -> torch.nn.Module:
    """``convselfattn`` on the meta device: shapes and counts without the cost of real weights."""
    with torch.device("meta"):
        return torch_modules.convselfattn().eval()


def test_convselfattn_counts(convselfattn_model: torch.nn.Module) -> None:
    model = convselfattn_model
    assert _parameter_count(model) == 27_638_836
    assert len(model.state_dict()) == 515
    parts = [model.downsample_layers[i] for i in range(4)] + [model.stages[i] for i in range(4)]
    assert [_parameter_count(p) for p in parts] == [
        14_400,
        166_464,
        664_704,
        2_656_512,
        292_356,
        1_523_040,
        9_029_664,
        12_521_160,
    ]
    assert (_parameter_count(model.norm), _parameter_count(model.head)) == (1_536, 769_000)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert (len(norms), sum(m.num_features for m in norms)) == (69, 38_564)
    _assert_same_layout(csa_numpy.random_csa_backbone_state(np.random.default_rng(0), **CONVSELFATTN_ARGS), model)


@pytest.mark.slow
def test_convselfattn_shapes_and_macs_at_224(convselfattn_model: torch.nn.Module) -> None:
    maps, macs = [], []

    def count_macs(conv: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        macs.append(out.numel() * conv.weight[0].numel())

    hooks = [
        d.register_forward_hook(lambda _m, _i, out: maps.append(out.shape[-1]))
        for d in convselfattn_model.downsample_layers
    ]
    hooks += [
        m.register_forward_hook(count_macs) for m in convselfattn_model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        logits = convselfattn_model(torch.empty(1, 3, 224, 224, device="meta"))
    for hook in hooks:
        hook.remove()
    assert maps == [56, 27, 13, 6]
    assert logits.shape == (1000,)
    assert sum(macs) == 4_069_200_384


def test_backbone_init_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = torch_modules.CSABackbone(depths=(1, 1), dims=(8, 16), num_heads=(1, 1), sr_to=(4, 2), head_init_scale=0.5)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(not c.bias.any() for c in convs)
    stage_weights = torch.cat([c.weight.detach().flatten() for c in convs if c is not model.head])
    assert 0.015 < float(stage_weights.std()) < 0.025
    assert 0.005 < float(model.head.weight.detach().std()) < 0.015


SMALL_BACKBONE = dict(
    num_classes=10,
    depths=(1, 2),
    dims=(8, 16),
    num_heads=(1, 2),
    mlp_dim=(2, 3),
    sr_to=(4, 2),
    ds_patch=(3, 3),
    strides=(2, 2),
    neighbors=3,
    layer_scale_init_value=0.5,
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "size", "out_shape"), [(2, (32, 40), (2, 10)), (1, (32, 32), (10,))])
def test_small_backbone_numpy_matches_torch(batch: int, size: tuple[int, int], out_shape: tuple, dtype: type) -> None:
    rng = np.random.default_rng(11)
    sd = _as_dtype(csa_numpy.random_csa_backbone_state(rng, **SMALL_BACKBONE), dtype)
    module = _loaded(torch_modules.CSABackbone(**SMALL_BACKBONE), sd, dtype)
    x = rng.standard_normal((batch, 3, *size)).astype(dtype)
    expected = _run(module, x)
    assert expected.shape == out_shape
    _assert_agree(csa_numpy.csa_backbone(x, sd, **SMALL_BACKBONE), expected, dtype)


@pytest.mark.slow
def test_convselfattn_numpy_matches_torch_at_224() -> None:
    rng = np.random.default_rng(5)
    sd = csa_numpy.random_csa_backbone_state(rng, **CONVSELFATTN_ARGS)
    module = _loaded(torch_modules.convselfattn(), sd, np.float64)
    x = rng.standard_normal((2, 3, 224, 224))
    _assert_agree(csa_numpy.csa_backbone(x, sd, **CONVSELFATTN_ARGS), _run(module, x), np.float64)


# ----------------------------------------------------------------------------------------------------------
# ACmix


ACMIX_CASES = [
    pytest.param(dict(in_planes=8, out_planes=8, kernel_att=7, head=4, stride=1), (10, 10), id="default-shape"),
    pytest.param(dict(in_planes=6, out_planes=8, kernel_att=5, head=2, stride=2), (8, 12), id="stride2-non-square"),
    pytest.param(dict(in_planes=4, out_planes=12, kernel_att=3, head=1, stride=1), (5, 9), id="one-head"),
    pytest.param(dict(in_planes=16, out_planes=16, kernel_att=7, head=4, stride=2), (14, 14), id="stride2-k7"),
    pytest.param(dict(in_planes=8, out_planes=4, kernel_att=3, head=2, stride=2), (6, 4), id="shrinking-planes"),
]


def _acmix_state(rng: np.random.Generator, cfg: dict) -> dict[str, np.ndarray]:
    return acmix_numpy.random_acmix_state(
        rng, in_planes=cfg["in_planes"], out_planes=cfg["out_planes"], head=cfg["head"]
    )


@pytest.mark.parametrize("module_class", [torch_modules.ACmix, torch_modules.ACmixEinsum], ids=["sum", "einsum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cfg", "size"), ACMIX_CASES)
def test_acmix_numpy_matches_torch(cfg: dict, size: tuple[int, int], dtype: type, module_class: type) -> None:
    rng = np.random.default_rng(21)
    sd = _as_dtype(_acmix_state(rng, cfg), dtype)
    module = _loaded(module_class(**cfg), sd, dtype)
    _assert_same_layout(sd, module)
    x = rng.standard_normal((2, cfg["in_planes"], *size)).astype(dtype)
    expected = _run(module, x)
    assert expected.shape == (2, cfg["out_planes"], size[0] // cfg["stride"], size[1] // cfg["stride"])
    _assert_agree(acmix_numpy.acmix(x, sd, **cfg), expected, dtype)


@pytest.mark.parametrize(
    ("cfg", "size"),
    [
        pytest.param(dict(stride=2), (15, 15), id="odd-size-stride2"),
        pytest.param(dict(kernel_conv=5), (14, 14), id="kernel-conv-5"),
        pytest.param(dict(kernel_att=4), (8, 8), id="even-kernel-att"),
        pytest.param(dict(dilation=2), (8, 8), id="dilation-2"),
        pytest.param(dict(kernel_att=7), (3, 8), id="reflection-wider-than-input"),
    ],
)
def test_acmix_fails_where_the_reference_fails(cfg: dict, size: tuple[int, int]) -> None:
    full = dict(in_planes=4, out_planes=4, head=2, **cfg)
    sd = acmix_numpy.random_acmix_state(
        np.random.default_rng(0), in_planes=4, out_planes=4, head=2, kernel_conv=cfg.get("kernel_conv", 3)
    )
    x = np.random.default_rng(1).standard_normal((1, 4, *size))
    with pytest.raises(ValueError):
        acmix_numpy.acmix(x, sd, **full)
    with pytest.raises(RuntimeError):
        _run(_loaded(torch_modules.ACmix(**full), sd, np.float64), x)


def test_acmix_64_planes_layout_and_shapes() -> None:
    module = torch_modules.ACmix(64, 64, kernel_att=7, head=4, kernel_conv=3)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert list(shapes) == [
        "rate1",
        "rate2",
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "conv3.weight",
        "conv3.bias",
        "conv_p.weight",
        "conv_p.bias",
        "fc.weight",
        "dep_conv.weight",
    ]
    assert shapes["conv_p.weight"] == (16, 2, 1, 1)
    assert shapes["fc.weight"] == (9, 12, 1, 1)
    assert shapes["dep_conv.weight"] == (64, 9, 3, 3)
    assert module.dep_conv.groups == 16 and module.dep_conv.padding == (1, 1)
    sd = acmix_numpy.random_acmix_state(np.random.default_rng(0), in_planes=64, out_planes=64)
    x = np.random.default_rng(1).standard_normal((1, 64, 14, 14))
    assert acmix_numpy.acmix(x, sd, in_planes=64, out_planes=64).shape == (1, 64, 14, 14)
    assert acmix_numpy.acmix(x, sd, in_planes=64, out_planes=64, stride=2).shape == (1, 64, 7, 7)


@pytest.mark.parametrize(
    "module",
    [torch_modules.ACmix(8, 8, head=2), torch_modules.WindowAttentionACmix(8, 4, 2)],
    ids=["resnet", "swin"],
)
def test_acmix_standalone_init(module: torch.nn.Module) -> None:
    assert float(module.rate1.detach()) == float(module.rate2.detach()) == 0.5
    assert module.dep_conv.bias is None
    weight = module.dep_conv.weight.detach()
    expected = torch.zeros_like(weight)
    for j in range(9):
        expected[:, j, j // 3, j % 3] = 1.0
    assert torch.equal(weight, expected)


# ----------------------------------------------------------------------------------------------------------
# Swin ACmix


SWIN_CASES = [
    pytest.param(dict(dim=16, window_size=4, num_heads=2), (8, 8), id="default"),
    pytest.param(dict(dim=12, window_size=(2, 2), num_heads=3, qkv_bias=False, qk_scale=0.3), (4, 6), id="no-bias"),
]


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cfg", "size"), SWIN_CASES)
def test_swin_acmix_numpy_matches_torch(cfg: dict, size: tuple[int, int], dtype: type, masked: bool) -> None:
    rng = np.random.default_rng(31)
    height, width = size
    state_args = {k: v for k, v in cfg.items() if k != "qk_scale"}
    sd = _as_dtype(swin_acmix_numpy.random_swin_acmix_state(rng, **state_args), dtype)
    module = _loaded(torch_modules.WindowAttentionACmix(**cfg), sd, dtype)
    _assert_same_layout(sd, module)
    window = swin_acmix_numpy.square_window(cfg["window_size"])
    windows, tokens = (height // window) * (width // window), window * window
    mask = np.where(rng.random((windows, tokens, tokens)) < 0.3, -100.0, 0.0).astype(dtype) if masked else None
    x = rng.standard_normal((2, height * width, cfg["dim"])).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x), height, width, None if mask is None else torch.from_numpy(mask)).numpy()
    actual = swin_acmix_numpy.window_attention_acmix(x, sd, height, width, mask=mask, **cfg)
    _assert_agree(actual, expected, dtype)
    channels_last = x.reshape(2, height, width, cfg["dim"])
    as_map = swin_acmix_numpy.window_attention_acmix(channels_last, sd, height, width, mask=mask, **cfg)
    np.testing.assert_array_equal(as_map.reshape(actual.shape), actual)


@pytest.mark.parametrize("window", [1, 2, 5, 7])
def test_relative_position_index_numpy_matches_torch(window: int) -> None:
    module = torch_modules.WindowAttentionACmix(4, window, 1)
    np.testing.assert_array_equal(
        swin_acmix_numpy.relative_position_index(window), module.relative_position_index.numpy()
    )
    assert module.relative_position_index.dtype == torch.int64


def test_swin_acmix_rejects_partial_windows() -> None:
    cfg = dict(dim=8, window_size=4, num_heads=2)
    sd = swin_acmix_numpy.random_swin_acmix_state(np.random.default_rng(0), **cfg)
    x = np.random.default_rng(1).standard_normal((1, 6 * 8, 8))
    with pytest.raises(ValueError):
        swin_acmix_numpy.window_attention_acmix(x, sd, 6, 8, **cfg)
    with pytest.raises(RuntimeError):
        _run(_loaded(torch_modules.WindowAttentionACmix(**cfg), sd, np.float64), x, 6, 8)
