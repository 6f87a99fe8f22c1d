"""netdsl's CSA and ACmix specs compute exactly what the reference modules compute.

For each configuration: a random reference checkpoint (the reference's own parameter names,
BN running statistics included) is saved to safetensors; it loads with strict=True into the
PyTorch module generated from the spec, and through ``netdsl compile --weights`` into ONNX; both
agree with an independent numpy implementation of the reference (tests/reference) within 1e-4
in float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from reference.acmix_numpy import acmix, random_acmix_state
from reference.csa_numpy import csa_block, random_csa_state
from reference.swin_acmix_numpy import random_swin_acmix_state, window_attention_acmix

from netdsl.backends.torch_backend import build_module
from netdsl.backends.weights_io import save_safetensors
from netdsl.cli import main
from netdsl.driver import load_graph

TOL = 1e-4
# What a trt-restricted lowering may leave: no MatMul, Gather, Pad, Reduce or BatchNormalization (Split is
# Slice layers to TensorRT's parser).
RESTRICTED_OPS = {"Conv", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Clip", "Softmax", "Reshape",
                  "Transpose", "Concat", "Slice", "Split", "Resize"}


def _f32(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in sd.items()}


def _compile_and_run(tmp_path: Path, spec: str, entry: str, sets: list[str], shape: tuple[int, ...],
                     sd: dict[str, np.ndarray], x: np.ndarray, target: str = "onnx") -> np.ndarray:
    weights = tmp_path / "w.safetensors"
    save_safetensors(sd, weights)
    out = tmp_path / f"{entry}.{target}.onnx"
    argv = ["compile", spec, "--entry", entry, "--target", target, "-o", str(out), "--weights", str(weights),
            "--input", "x=" + "x".join(map(str, shape))]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    if target == "trt-restricted":
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert ops <= RESTRICTED_OPS, ops - RESTRICTED_OPS
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _torch_run(spec: str, entry: str, sets: list[str], shape: tuple[int, ...], sd: dict[str, np.ndarray],
               x: np.ndarray) -> np.ndarray:
    graph = load_graph(spec, entry, sets, ["x=" + "x".join(map(str, shape))])
    module = build_module(graph).eval()
    module.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        return module(torch.as_tensor(x)).numpy()


ACMIX_CASES = [
    # in_planes, out_planes, kernel_att, head, stride, H, W
    (16, 16, 7, 4, 1, 14, 14),
    (16, 16, 7, 4, 2, 14, 14),
    (12, 24, 5, 2, 1, 10, 12),
    (8, 16, 3, 1, 2, 8, 12),
    (16, 32, 7, 8, 1, 9, 11),
]


@pytest.mark.parametrize("target", ["onnx", "trt-restricted"])
@pytest.mark.parametrize("cin,cout,ka,head,stride,h,w", ACMIX_CASES)
def test_acmix_matches_reference(tmp_path: Path, cin: int, cout: int, ka: int, head: int, stride: int, h: int,
                                 w: int, target: str) -> None:
    rng = np.random.default_rng(cin * 1000 + cout + ka + h)
    sd = _f32(random_acmix_state(rng, in_planes=cin, out_planes=cout, head=head))
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    sets = [f"in_planes={cin}", f"out_planes={cout}", f"kernel_att={ka}", f"head={head}", f"stride={stride}"]
    expected = acmix(x.astype(np.float64), {k: v.astype(np.float64) for k, v in sd.items()}, in_planes=cin,
                     out_planes=cout, kernel_att=ka, head=head, stride=stride)
    got_onnx = _compile_and_run(tmp_path, "specs/acmix.net", "ACmix", sets, x.shape, sd, x, target)
    got_torch = _torch_run("specs/acmix.net", "ACmix", sets, x.shape, sd, x)
    assert got_onnx.shape == expected.shape == (2, cout, h // stride, w // stride)
    np.testing.assert_allclose(got_onnx, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(got_torch, expected, atol=TOL, rtol=0)


CSA_CASES = [
    # dim, layer_scale, sr_to, heads, mlp_ratio, neighbors, H, W
    (32, 0.0, 7, 4, 3, 7, 14, 14),
    (32, 0.0, 14, 4, 3, 7, 27, 27),  # the reference's own ONNX export fails to load at this size
    (16, 0.1, 7, 2, 2, 5, 13, 13),   # 13 -> 7 -> 13 with non-binary factors; layer scale on
    (24, 0.0, 7, 1, 3, 3, 6, 6),     # 6 -> 7 -> 6: the "reduction" enlarges
    (16, 1e-6, 4, 2, 3, 7, 12, 20),  # non-square
]


@pytest.mark.parametrize("target", ["onnx", "trt-restricted"])
@pytest.mark.parametrize("dim,ls,sr_to,heads,ratio,nb,h,w", CSA_CASES)
def test_csa_matches_reference(tmp_path: Path, dim: int, ls: float, sr_to: int, heads: int, ratio: int, nb: int,
                               h: int, w: int, target: str) -> None:
    rng = np.random.default_rng(dim * 100 + sr_to + h)
    kwargs = dict(dim=dim, layer_scale_init_value=ls, sr_to=sr_to, num_heads=heads, mlp_ratio=ratio, neighbors=nb)
    sd = _f32(random_csa_state(rng, **kwargs))
    x = rng.standard_normal((2, dim, h, w)).astype(np.float32)
    sets = [f"{k}={v}" for k, v in kwargs.items()]
    expected = csa_block(x.astype(np.float64), {k: v.astype(np.float64) if v.dtype.kind == "f" else v
                                                for k, v in sd.items()}, **kwargs)
    got_onnx = _compile_and_run(tmp_path, "specs/csa.net", "CSA", sets, x.shape, sd, x, target)
    got_torch = _torch_run("specs/csa.net", "CSA", sets, x.shape, sd, x)
    assert got_onnx.shape == expected.shape == x.shape
    np.testing.assert_allclose(got_onnx, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(got_torch, expected, atol=TOL, rtol=0)


def _swin_mask(h: int, w: int, ws: int, shift: int) -> np.ndarray:
    """The shifted-window mask [nW, N, N] built the way the Swin block builds it."""
    img = np.zeros((h, w))
    label = 0
    for rows in (slice(0, h - ws), slice(h - ws, h - shift), slice(h - shift, h)):
        for cols in (slice(0, w - ws), slice(w - ws, w - shift), slice(w - shift, w)):
            img[rows, cols] = label
            label += 1
    win = img.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    return np.where(win[:, None, :] - win[:, :, None] != 0, -100.0, 0.0)


@pytest.mark.parametrize("target", ["onnx", "trt-restricted"])
@pytest.mark.parametrize("dim,ws,heads,shift,h,w", [(32, 7, 4, 0, 14, 14), (24, 4, 3, 2, 8, 12),
                                                     (16, 7, 2, 3, 14, 14)])
def test_swin_window_attention_acmix_matches_reference(tmp_path: Path, dim: int, ws: int, heads: int, shift: int,
                                                       h: int, w: int, target: str) -> None:
    rng = np.random.default_rng(dim + ws + shift)
    sd = _f32(random_swin_acmix_state(rng, dim=dim, window_size=ws, num_heads=heads))
    x = rng.standard_normal((2, h, w, dim)).astype(np.float32)
    mask = _swin_mask(h, w, ws, shift) if shift else None
    expected = window_attention_acmix(x.astype(np.float64), {k: v.astype(np.float64) if v.dtype.kind == "f" else v
                                                             for k, v in sd.items()}, h, w, dim=dim,
                                      window_size=ws, num_heads=heads, mask=mask)
    sets = [f"dim={dim}", f"window_size={ws}", f"num_heads={heads}", f"shift_size={shift}"]
    got_onnx = _compile_and_run(tmp_path, "specs/acmix.net", "WindowAttentionACmix", sets, x.shape, sd, x, target)
    got_torch = _torch_run("specs/acmix.net", "WindowAttentionACmix", sets, x.shape, sd, x)
    np.testing.assert_allclose(got_onnx, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(got_torch, expected, atol=TOL, rtol=0)


def test_reference_torch_checkpoint_loads_strictly(tmp_path: Path) -> None:
    """A checkpoint saved by the (re-implemented) reference modules loads unchanged, .pt included."""
    from reference.torch_modules import ACmix, CSABlock

    for ref, spec, entry, sets, shape in [
        (ACmix(16, 16), "specs/acmix.net", "ACmix", ["in_planes=16", "out_planes=16"], (1, 16, 14, 14)),
        (CSABlock(32, sr_to=7), "specs/csa.net", "CSA", ["dim=32", "sr_to=7"], (1, 32, 14, 14)),
    ]:
        ref.eval()
        path = tmp_path / f"{entry}.pt"
        torch.save(ref.state_dict(), path)
        x = torch.randn(shape)
        with torch.no_grad():
            expected = ref(x).numpy()
        graph = load_graph(spec, entry, sets, ["x=" + "x".join(map(str, shape))])
        module = build_module(graph).eval()
        module.load_state_dict(torch.load(path, weights_only=True), strict=True)
        with torch.no_grad():
            np.testing.assert_allclose(module(x).numpy(), expected, atol=TOL, rtol=0)
        out = tmp_path / f"{entry}.onnx"
        argv = ["compile", spec, "--entry", entry, "-o", str(out), "--weights", str(path),
                "--input", "x=" + "x".join(map(str, shape))] + sum((["--set", s] for s in sets), [])
        assert main(argv) == 0
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_wrong_weights_file_lists_every_problem_and_writes_nothing(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    sd = _f32(random_acmix_state(rng, in_planes=16, out_planes=16))
    del sd["rate2"]
    sd["conv1.weight"] = sd["conv1.weight"][:8]
    sd["extra.weight"] = np.zeros(3, np.float32)
    weights = tmp_path / "bad.safetensors"
    save_safetensors(sd, weights)
    out = tmp_path / "a.onnx"
    code = main(["compile", "specs/acmix.net", "--entry", "ACmix", "--set", "in_planes=16", "--set", "out_planes=16",
                 "--input", "x=1x16x14x14", "--weights", str(weights), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing: rate2 [1]" in err
    assert "unexpected: extra.weight" in err
    assert "shape mismatch: conv1.weight expects [16,16,1,1], file has [8,16,1,1]" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_compiling_twice_gives_identical_bytes(tmp_path: Path) -> None:
    blobs = []
    for i in range(2):
        out = tmp_path / f"c{i}.onnx"
        assert main(["compile", "specs/csa.net", "--entry", "CSA", "--set", "dim=32", "--set", "sr_to=7",
                     "--input", "x=2x32x14x14", "-o", str(out)]) == 0
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]
