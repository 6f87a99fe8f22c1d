"""ONNX backend: every IR op, run in ONNX Runtime, against torch.nn.functional or a direct numpy
transcription of the op's docstring; plus resize sizing, determinism, provenance and saving. An op
whose ONNX form is a decomposition runs as every ONNX target emits it: after its pass
(:data:`netdsl.passes.pipeline.ONNX_FORMS`), which is what the emitter's one-op rule requires.

One job, hence one file past 600 lines: the ONNX backend's tests, one section per op family."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from netdsl.backends import onnx_backend
from netdsl.backends.onnx_backend import exact_resize_scale, partly_covered_ops, save_onnx, supported_ops, to_onnx
from netdsl.builder import GraphBuilder
from netdsl.diagnostics import NetdslError
from netdsl.initializers import NP_DTYPES, initial_weights
from netdsl.ir import Frame, Graph, Init, Provenance, Span, TensorType
from netdsl.opdefs import OPS
from netdsl.passes.pipeline import ONNX_FORMS, PIPELINES, lowering_targets, run_pipeline

torch = pytest.importorskip("torch")
F = torch.nn.functional

IR_DTYPES = {np.dtype(v): k for k, v in NP_DTYPES.items()}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 31 * len(shape) + sum(shape)).standard_normal(shape).astype(np.float32)


def single_op_graph(op: str, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None,
                    order: list[str] | None = None, provenance: Provenance | None = None,
                    **attrs: object) -> Graph:
    """A graph applying ``op`` once; every output is a graph output."""
    b = GraphBuilder(op)
    for name, value in feeds.items():
        b.input(name, TensorType(IR_DTYPES[value.dtype], value.shape))
    for name, value in (params or {}).items():
        b.param(name, TensorType(IR_DTYPES[value.dtype], value.shape), Init("zeros"))
    names = order if order is not None else [*feeds, *(params or {})]
    for out in b.op_multi(op, names, provenance, **attrs):
        b.output(out)
    return b.graph


def run_graph(graph: Graph, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
              opset: int = 17) -> list[np.ndarray]:
    """Lower by the ONNX forms' passes, emit, full-check, run in ONNX Runtime; also check every output has the
    IR's shape."""
    lowered = run_pipeline(graph, "onnx", passes=ONNX_FORMS).graph
    model = to_onnx(lowered, weights, opset)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(None, feeds)
    for name, value in zip(graph.outputs, outs, strict=True):
        assert value.shape == graph.values[name].shape, name
    return outs


def run_op(op: str, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None,
           order: list[str] | None = None, opset: int = 17, **attrs: object) -> list[np.ndarray]:
    return run_graph(single_op_graph(op, feeds, params, order, **attrs), params or {}, feeds, opset)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def test_every_ir_op_the_emitter_does_not_cover_is_decomposed_by_every_onnx_target() -> None:
    onnx_targets = set(PIPELINES) - {"torch"}
    for op in OPS:
        if op in supported_ops() and op not in partly_covered_ops():
            continue
        runs = {target for targets, _ in lowering_targets(op).values() for target in targets}
        assert onnx_targets <= runs, op
        assert set(ONNX_FORMS) & set(lowering_targets(op)), op


# ---- dense ops -----------------------------------------------------------------------------------


@pytest.mark.parametrize("groups,stride,pads,dilation,bias", [
    (1, (1, 1), (1, 1, 1, 1), (1, 1), True),
    (2, (2, 1), (0, 2, 1, 0), (1, 2), False),
    (8, (1, 1), (3, 3, 3, 3), (1, 1), True),
])
def test_conv(groups: int, stride: tuple, pads: tuple, dilation: tuple, bias: bool) -> None:
    x, w = rand(2, 8, 9, 10), rand(8, 8 // groups, 3, 3)
    params = {"c.weight": w, **({"c.bias": rand(8)} if bias else {})}
    (y,) = run_op("conv", {"x": x}, params, stride=stride, pads=pads, dilation=dilation, groups=groups)
    top, left, bottom, right = pads
    xt = F.pad(t(x), (left, right, top, bottom))
    ref = F.conv2d(xt, t(w), t(params["c.bias"]) if bias else None, stride, 0, dilation, groups)
    np.testing.assert_allclose(y, ref.numpy(), **TOL)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shape: tuple, bias: bool) -> None:
    x, w, b = rand(*shape), rand(5, 6), rand(5)
    params = {"l.weight": w, **({"l.bias": b} if bias else {})}
    (y,) = run_op("linear", {"x": x}, params)
    np.testing.assert_allclose(y, F.linear(t(x), t(w), t(b) if bias else None).numpy(), **TOL)


def test_matmul_broadcasts_leading_axes() -> None:
    a, b = rand(2, 1, 3, 4), rand(5, 4, 6)
    (y,) = run_op("matmul", {"a": a, "b": b})
    np.testing.assert_allclose(y, torch.matmul(t(a), t(b)).numpy(), **TOL)


# ---- normalisations ------------------------------------------------------------------------------


def test_batchnorm_inference() -> None:
    x = rand(2, 6, 4, 5)
    p = {"bn.weight": rand(6, seed=1), "bn.bias": rand(6, seed=2), "bn.running_mean": rand(6, seed=3),
         "bn.running_var": np.abs(rand(6, seed=4)) + 0.5}
    (y,) = run_op("batchnorm", {"x": x}, p, eps=1e-3, momentum=0.1)
    ref = F.batch_norm(t(x), t(p["bn.running_mean"]), t(p["bn.running_var"]), t(p["bn.weight"]),
                       t(p["bn.bias"]), training=False, eps=1e-3)
    np.testing.assert_allclose(y, ref.numpy(), **TOL)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layernorm_one_axis(axis: int) -> None:
    x = rand(2, 6, 3, 4) + 3.0
    c = x.shape[axis]
    w, b = rand(c, seed=1), rand(c, seed=2)
    (y,) = run_op("layernorm", {"x": x}, {"ln.weight": w, "ln.bias": b}, axis=axis, eps=1e-6)
    moved = np.moveaxis(x, axis, -1)
    ref = F.layer_norm(t(moved), (c,), t(w), t(b), eps=1e-6).numpy()
    np.testing.assert_allclose(y, np.moveaxis(ref, -1, axis), **TOL)


def test_layernorm_without_affine() -> None:
    x = rand(3, 7)
    (y,) = run_op("layernorm", {"x": x}, axis=-1, eps=1e-5)
    np.testing.assert_allclose(y, F.layer_norm(t(x), (7,)).numpy(), **TOL)


def test_groupnorm() -> None:
    x = rand(2, 6, 4, 5) * 2.0 + 3.0
    w, b = rand(6, seed=1), rand(6, seed=2)
    (y,) = run_op("groupnorm", {"x": x}, {"gn.weight": w, "gn.bias": b}, groups=3, eps=1e-5)
    np.testing.assert_allclose(y, F.group_norm(t(x), 3, t(w), t(b), eps=1e-5).numpy(), **TOL)


# ---- element-wise --------------------------------------------------------------------------------


UNARY_REFERENCES = {
    "relu": F.relu, "gelu": lambda a: F.gelu(a, approximate="none"), "sigmoid": torch.sigmoid, "silu": F.silu,
    "hardswish": F.hardswish, "tanh": torch.tanh, "exp": torch.exp, "neg": torch.neg, "sqrt": torch.sqrt,
    "erf": torch.erf, "identity": lambda a: a,
}


def test_unary_references_name_catalogue_ops() -> None:
    assert set(UNARY_REFERENCES) <= set(OPS)


@pytest.mark.parametrize("op", sorted(UNARY_REFERENCES))
@pytest.mark.parametrize("opset", [17, 21])
def test_unary(op: str, opset: int) -> None:
    x = rand(3, 4, 5) * 4.0
    if op == "sqrt":
        x = np.abs(x)
    (y,) = run_op(op, {"x": x}, opset=opset)
    np.testing.assert_allclose(y, UNARY_REFERENCES[op](t(x)).numpy(), **TOL)


def test_gelu_is_one_gelu_from_opset_20_and_its_pass_writes_the_erf_form() -> None:
    graph = single_op_graph("gelu", {"x": rand(2, 3)})
    assert [n.op_type for n in to_onnx(graph, {}, 20).graph.node] == ["Gelu"]
    lowered = run_pipeline(graph, "onnx", passes=["gelu_to_erf"]).graph
    assert [n.op_type for n in to_onnx(lowered, {}, 17).graph.node] == ["Div", "Erf", "Mul", "Add", "Mul"]


@pytest.mark.parametrize("axis", [1, -1])
def test_softmax(axis: int) -> None:
    x = rand(2, 5, 3)
    (y,) = run_op("softmax", {"x": x}, axis=axis)
    np.testing.assert_allclose(y, torch.softmax(t(x), axis).numpy(), **TOL)


@pytest.mark.parametrize("op,fn", [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.divide)])
def test_binary_broadcasts_with_a_parameter(op: str, fn: np.ufunc) -> None:
    x, r = rand(2, 3, 4), np.abs(rand(3, 1)) + 0.5
    (y,) = run_op(op, {"x": x}, {"rate": r})
    np.testing.assert_allclose(y, fn(x, r), **TOL)


# ---- constants -----------------------------------------------------------------------------------


def test_const_feeding_an_op_and_as_graph_output() -> None:
    value = rand(2, 3)
    b = GraphBuilder("C")
    x = b.input("x", TensorType("f32", (2, 3)))
    c = b.op("const", [], name="table", value=value, dtype="f32")
    b.output(b.op("add", [x, c], name="y"))
    b.output(c)
    x_val = rand(2, 3, seed=5)
    y, table = run_graph(b.graph, {}, {"x": x_val})
    np.testing.assert_allclose(y, x_val + value, **TOL)
    np.testing.assert_array_equal(table, value)


def test_grid_matches_torch_linspace() -> None:
    b = GraphBuilder("G")
    sizes = [(3, 5), (1, 4)]
    for h, w in sizes:
        b.output(b.op("grid", [], height=h, width=w))
    for g, (h, w) in zip(run_graph(b.graph, {}, {}), sizes, strict=True):
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        np.testing.assert_allclose(g, torch.stack([xs, ys])[None].numpy(), rtol=0, atol=1e-7)


# ---- shape ops -----------------------------------------------------------------------------------


def test_reshape_and_transpose() -> None:
    x = rand(2, 3, 4)
    (y,) = run_op("reshape", {"x": x}, shape=(6, 4))
    np.testing.assert_array_equal(y, x.reshape(6, 4))
    (y,) = run_op("transpose", {"x": x}, perm=(2, 0, 1))
    np.testing.assert_array_equal(y, x.transpose(2, 0, 1))


def rotate_by_formula(x: np.ndarray, heads: int) -> np.ndarray:
    b, c, h, w = x.shape
    s = c // heads
    y = np.empty_like(x)
    for n in range(heads):
        for ch in range(s):
            for yy in range(h):
                for xx in range(w):
                    y[:, n * s + ch, yy, xx] = x[:, n * s + (yy * w + xx), ch // w, ch % w]
    return y


@pytest.mark.parametrize("heads,h,w", [(1, 3, 3), (2, 2, 3), (3, 4, 2)])
def test_rotate_index_formula(heads: int, h: int, w: int) -> None:
    x = rand(2, heads * h * w, h, w)
    (y,) = run_op("rotate", {"x": x}, heads=heads)
    np.testing.assert_array_equal(y, rotate_by_formula(x, heads))


def shift_by_formula(x: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    _, c, h, w = x.shape
    size = c // len(offsets)
    y = np.zeros_like(x)
    for ch in range(c):
        dy, dx = offsets[ch // size]
        for i in range(h):
            for j in range(w):
                if 0 <= i - dy < h and 0 <= j - dx < w:
                    y[:, ch, i, j] = x[:, ch, i - dy, j - dx]
    return y


@pytest.mark.parametrize("offsets", [
    [(1, 0), (-1, 0), (0, 1), (0, -1)],
    [(0, 0), (2, -1), (-3, 2), (7, 0)],
    [(1, 1)],
])
def test_shift_moves_content_down_right_with_zero_fill(offsets: list) -> None:
    x = rand(2, 8, 5, 6)
    (y,) = run_op("shift", {"x": x}, offsets=tuple(offsets))
    np.testing.assert_array_equal(y, shift_by_formula(x, offsets))


@pytest.mark.parametrize("kernel,stride,pads,dilation", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 3), (2, 1), (0, 1, 1, 1), (1, 2)),
])
def test_unfold_layout_matches_torch(kernel: tuple, stride: tuple, pads: tuple, dilation: tuple) -> None:
    x = rand(2, 3, 6, 7)
    (y,) = run_op("unfold", {"x": x}, kernel=kernel, stride=stride, pads=pads, dilation=dilation)
    top, left, bottom, right = pads
    cols = F.unfold(F.pad(t(x), (left, right, top, bottom)), kernel, dilation=dilation, stride=stride)
    np.testing.assert_array_equal(y, cols.reshape(y.shape).numpy())


# ---- attention -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
def test_attention(with_bias: bool) -> None:
    q, k, v = rand(2, 3, 4, 5, seed=1), rand(2, 3, 6, 5, seed=2), rand(2, 3, 6, 7, seed=3)
    feeds = {"q": q, "k": k, "v": v}
    params = {"bias": rand(1, 3, 4, 6, seed=4)} if with_bias else {}
    (y,) = run_op("attention", feeds, params, scale=0.3)
    logits = 0.3 * t(q) @ t(k).transpose(-1, -2) + (t(params["bias"]) if with_bias else 0)
    np.testing.assert_allclose(y, (torch.softmax(logits, -1) @ t(v)).numpy(), **TOL)


def local_attention_by_formula(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray | None,
                               heads: int, kernel: int, stride: int, scale: float) -> np.ndarray:
    """The local_attention docstring, transcribed loop by loop (float64)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    b, c, h, w = q.shape
    d, p = c // heads, (kernel - 1) // 2
    pos = np.zeros((1, d, h, w)) if pos is None else pos.astype(np.float64)

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    y = np.zeros((b, c, h // stride, w // stride))
    for i in range(h // stride):
        for j in range(w // stride):
            si, sj = stride * i, stride * j
            rs = [(reflect(si + a - p, h), reflect(sj + bb - p, w)) for a in range(kernel) for bb in range(kernel)]
            for hd in range(heads):
                ch = slice(hd * d, (hd + 1) * d)
                logit = np.array([
                    (scale * q[:, ch, si, sj] * (k[:, ch, ri, rj] + pos[0, :, si, sj] - pos[0, :, ri, rj])).sum(-1)
                    for ri, rj in rs
                ])  # [n, b]
                attn = np.exp(logit - logit.max(0))
                attn /= attn.sum(0)
                y[:, ch, i, j] = sum(attn[n][:, None] * v[:, ch, ri, rj] for n, (ri, rj) in enumerate(rs))
    return y


@pytest.mark.parametrize("heads,kernel,stride,h,w,with_pos", [
    (2, 3, 1, 5, 7, True),
    (2, 3, 2, 6, 8, True),
    (1, 5, 1, 6, 5, True),
    (4, 3, 2, 4, 6, False),
])
def test_local_attention_matches_docstring(heads: int, kernel: int, stride: int, h: int, w: int,
                                           with_pos: bool) -> None:
    c = 8
    feeds = {"q": rand(2, c, h, w, seed=1), "k": rand(2, c, h, w, seed=2), "v": rand(2, c, h, w, seed=3)}
    params = {"pos": rand(1, c // heads, h, w, seed=4)} if with_pos else {}
    scale = (c // heads) ** -0.5
    (y,) = run_op("local_attention", feeds, params, heads=heads, kernel=kernel, stride=stride, scale=scale)
    ref = local_attention_by_formula(*feeds.values(), params.get("pos"), heads, kernel, stride, scale)
    np.testing.assert_allclose(y, ref, **TOL)


# ---- pooling and reductions ----------------------------------------------------------------------


def test_avgpool_counts_padding_like_torch() -> None:
    x = rand(2, 3, 7, 8)
    (y,) = run_op("avgpool", {"x": x}, kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1))
    np.testing.assert_allclose(y, F.avg_pool2d(t(x), 3, 2, 1, count_include_pad=True).numpy(), **TOL)


def test_maxpool_padding_never_wins() -> None:
    x = -np.abs(rand(2, 3, 7, 8)) - 1.0
    (y,) = run_op("maxpool", {"x": x}, kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1))
    np.testing.assert_array_equal(y, F.max_pool2d(t(x), 3, 2, 1).numpy())


@pytest.mark.parametrize("pool, pool_pads", [("maxpool", (0, 0, 0, 0)), ("maxpool", (1, 1, 1, 1)),
                                             ("avgpool", (1, 1, 1, 1))])
def test_a_zero_pad_before_a_pool_stays_zero_in_onnx_runtime(pool: str, pool_pads: tuple) -> None:
    # ONNX Runtime's pad fusion would fold the Pad into the pool's own padding: -inf for MaxPool (so
    # an all-negative window would not see the zeros), and 2 + 1 >= the 2x2 kernel for AveragePool, a
    # model it then refuses to load. The emitted pool reads the Pad through a same-shape Reshape.
    x = -np.abs(rand(1, 2, 4, 4)) - 1.0
    b = GraphBuilder("g")
    b.input("x", TensorType("f32", x.shape))
    padded = b.op("pad", ["x"], pads=(2, 2, 2, 2), mode="zero")
    b.output(b.op(pool, [padded], kernel=(2, 2), stride=(2, 2), pads=pool_pads))
    model = to_onnx(b.graph, {})
    pool_op = "MaxPool" if pool == "maxpool" else "AveragePool"
    assert [n.op_type for n in model.graph.node] == ["Pad", "Reshape", pool_op]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # every optimisation
    (y,) = session.run(None, {"x": x})
    zero_padded = F.pad(t(x), (2, 2, 2, 2))
    want = (F.max_pool2d(zero_padded, 2, 2, pool_pads[0]) if pool == "maxpool"
            else F.avg_pool2d(zero_padded, 2, 2, pool_pads[0], count_include_pad=True))
    np.testing.assert_allclose(y, want.numpy(), **TOL)
    assert (y == 0).any()  # the zero padding does win some windows


@pytest.mark.parametrize("op,fn", [("reduce_mean", np.mean), ("reduce_sum", np.sum), ("reduce_max", np.max)])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
def test_reductions(op: str, fn: np.ufunc, keepdims: int, opset: int) -> None:
    x = rand(2, 3, 4, 5)
    (y,) = run_op(op, {"x": x}, opset=opset, axes=(1, -1), keepdims=keepdims)
    np.testing.assert_allclose(y, fn(x, axis=(1, 3), keepdims=bool(keepdims)), **TOL)


# ---- joining, splitting, slicing, padding --------------------------------------------------------


def test_concat_and_split() -> None:
    a, b = rand(2, 3, 4), rand(2, 5, 4)
    (y,) = run_op("concat", {"a": a, "b": b}, axis=1)
    np.testing.assert_array_equal(y, np.concatenate([a, b], 1))
    parts = run_op("split", {"x": y}, axis=-2, sizes=(1, 4, 3))
    for got, want in zip(parts, np.split(y, [1, 5], axis=1), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("start,end,step", [(1, 5, 2), (-4, 100, 1), (0, -1, 3)])
def test_slice_python_semantics(start: int, end: int, step: int) -> None:
    x = rand(2, 7, 3)
    (y,) = run_op("slice", {"x": x}, axis=1, start=start, end=end, step=step)
    np.testing.assert_array_equal(y, x[:, start:end:step])


@pytest.mark.parametrize("mode,torch_mode", [("zero", "constant"), ("reflect", "reflect"), ("edge", "replicate")])
def test_pad(mode: str, torch_mode: str) -> None:
    x = rand(2, 3, 4, 5)
    (y,) = run_op("pad", {"x": x}, pads=(1, 2, 3, 0), mode=mode)
    np.testing.assert_array_equal(y, F.pad(t(x), (2, 0, 1, 3), mode=torch_mode).numpy())


# ---- resize --------------------------------------------------------------------------------------


def torch_size(length: int, scale: float) -> int:
    return int(length * scale)  # PyTorch: trunc(L * scale) in double


def resize_graph(shape: tuple[int, ...], steps: list[tuple[float, float]], mode: str) -> Graph:
    b = GraphBuilder("R")
    cur = b.input("x", TensorType("f32", shape))
    h, w = shape[2:]
    for sh, sw in steps:
        h, w = torch_size(h, sh), torch_size(w, sw)
        cur = b.op("resize", [cur], mode=mode, scales=(sh, sw), sizes=(h, w))
        b.output(cur)
    return b.graph


@pytest.mark.parametrize("size,target", [(27, 14), (13, 14), (6, 7), (56, 14), (29, 7)])
def test_bilinear_round_trip_matches_torch(size: int, target: int) -> None:
    down = target / size
    up = 1 / down  # as the CSA reference computes it: the reciprocal of the double
    x = rand(2, 3, size, size + 1)
    down_w = target / (size + 1)
    graph = resize_graph(x.shape, [(down, down_w), (up, 1 / down_w)], "linear")
    small, back = run_graph(graph, {}, {"x": x})
    ref_small = F.interpolate(t(x), scale_factor=(down, down_w), mode="bilinear", align_corners=False)
    ref_back = F.interpolate(ref_small, scale_factor=(up, 1 / down_w), mode="bilinear", align_corners=False)
    assert small.shape == tuple(ref_small.shape) and back.shape == tuple(ref_back.shape)
    np.testing.assert_allclose(small, ref_small.numpy(), **TOL)
    np.testing.assert_allclose(back, ref_back.numpy(), **TOL)


@pytest.mark.parametrize("scale", [2.0, 0.5, 3.0, 1.5, 0.75])
def test_nearest_matches_torch(scale: float) -> None:
    x = rand(1, 2, 6, 8)
    (y,) = run_graph(resize_graph(x.shape, [(scale, scale)], "nearest"), {}, {"x": x})
    np.testing.assert_array_equal(y, F.interpolate(t(x), scale_factor=scale, mode="nearest").numpy())


def test_bilinear_to_a_single_pixel_samples_like_torch() -> None:
    # half_pixel, not pytorch_half_pixel: PyTorch keeps (d + 0.5) / scale - 0.5 for a length-1 output.
    x = rand(1, 2, 10, 12)
    (y,) = run_graph(resize_graph(x.shape, [(0.1, 0.5)], "linear"), {}, {"x": x})
    ref = F.interpolate(t(x), scale_factor=(0.1, 0.5), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(y, ref.numpy(), **TOL)


CHANNELS_LAST_PATTERN = ["Transpose", "Reshape", "Resize", "Reshape", "Transpose"]


@pytest.mark.parametrize("size,scales,pattern", [
    ((8, 6), (2.0, 3.0), ["Resize"]),  # whole-factor upsample: stays channels-first
    ((13, 12), (14 / 13, 2.0), CHANNELS_LAST_PATTERN),  # fractional upsample on one axis
    ((27, 28), (14 / 27, 0.5), CHANNELS_LAST_PATTERN),  # fractional and whole downsample
    ((14, 14), (13 / 14, 7 / 14), CHANNELS_LAST_PATTERN),
])
def test_channels_last_bilinear_equals_channels_first(size: tuple, scales: tuple, pattern: list[str]) -> None:
    x = rand(2, 5, *size)
    graph = resize_graph(x.shape, [scales], "linear")
    outs = {}
    for channels_last in (True, False):
        model = to_onnx(graph, {}, channels_last_resize=channels_last)
        onnx.checker.check_model(model, full_check=True)
        expected_ops = pattern if channels_last else ["Resize"]
        assert [n.op_type for n in model.graph.node if n.op_type != "Constant"] == expected_ops
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (outs[channels_last],) = session.run(None, {"x": x})
    assert outs[True].shape == graph.values[graph.outputs[0]].shape
    np.testing.assert_allclose(outs[True], outs[False], rtol=1e-6, atol=1e-6)


def attention_region_graph(heads: int, h: int, w: int) -> Graph:
    """CSA's global attention path between two resizes: resize to the grid, q * rot(q), sigmoid, a
    product with a channels-first input, a broadcast parameter added, resize back; the rotation is
    also a graph output."""
    b = GraphBuilder("region")
    c = heads * h * w
    x = b.input("x", TensorType("f32", (2, c, 2 * h, 2 * w)))
    v = b.input("v", TensorType("f32", (2, c, h, w)))
    bias = b.param("bias", TensorType("f32", (1, c, 1, 1)), Init("zeros"))
    q = b.op("resize", [x], mode="linear", scales=(0.5, 0.5), sizes=(h, w))
    k = b.op("rotate", [q], heads=heads)
    gate = b.op("sigmoid", [b.op("mul", [q, k])])
    gated = b.op("add", [b.op("mul", [gate, v]), bias])
    y = b.op("resize", [gated], mode="linear", scales=(1.5, 1.5), sizes=(h * 3 // 2, w * 3 // 2))
    b.output(k)
    b.output(y)
    return b.graph


@pytest.mark.parametrize("heads,h,w", [(1, 2, 3), (2, 3, 3), (4, 2, 2)])
def test_channels_last_region_equals_channels_first(heads: int, h: int, w: int) -> None:
    graph = attention_region_graph(heads, h, w)
    feeds = {"x": rand(2, heads * h * w, 2 * h, 2 * w), "v": rand(2, heads * h * w, h, w, seed=1)}
    weights = {"bias": rand(1, heads * h * w, 1, 1, seed=2)}
    outs = {}
    for channels_last in (True, False):
        model = to_onnx(graph, weights, channels_last_resize=channels_last)
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs[channels_last] = session.run(None, feeds)
        if channels_last:
            # Back to channels-first only where read so: the two graph outputs.
            to_nchw = [n for n in model.graph.node
                       if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 3, 1, 2]]
            assert len(to_nchw) == 2
    for cl, cf, name in zip(outs[True], outs[False], graph.outputs, strict=True):
        assert cl.shape == graph.values[name].shape
        np.testing.assert_allclose(cl, cf, rtol=1e-6, atol=1e-6)


def test_nearest_resize_stays_channels_first() -> None:
    model = to_onnx(resize_graph((1, 2, 6, 8), [(0.75, 1.5)], "nearest"), {}, channels_last_resize=True)
    assert [n.op_type for n in model.graph.node if n.op_type != "Constant"] == ["Resize"]


@pytest.mark.parametrize("l_in,l_out,expected", [(27, 14, "0.51851857"), (14, 13, "0.92857146"),
                                                 (6, 7, "1.1666667")])
def test_exact_resize_scale_known_values(l_in: int, l_out: int, expected: str) -> None:
    # l_out / l_in as a float32 alone gives one pixel less under the floor-in-double rule.
    assert exact_resize_scale(l_in, l_out, l_out / l_in) == np.float32(expected)


def test_exact_resize_scale_sizes_exactly_under_every_rule() -> None:
    for l_in in range(1, 300):
        for s in (7, 14):
            for l_out, scale in ((s, s / l_in), (l_in, 1 / (s / l_in))):
                if torch_size(l_in if l_out == s else s, scale) != l_out:
                    continue  # the type checker rejects these
                src = l_in if l_out == s else s
                f = exact_resize_scale(src, l_out, scale)
                assert np.floor(src * np.float64(f)) == l_out
                assert np.trunc(np.float32(src) * f) == l_out
                assert abs(float(f) - scale) <= 4 * float(np.spacing(np.float32(scale)))


def test_exact_resize_scale_rejects_inconsistent_sizes() -> None:
    with pytest.raises(ValueError, match="does not size 27 to 14"):
        exact_resize_scale(27, 14, 0.5)


# ---- roll and gather -----------------------------------------------------------------------------


@pytest.mark.parametrize("shifts,axes", [((2,), (3,)), ((-1, 3), (2, 3)), ((5,), (1,))])
def test_roll_matches_numpy(shifts: tuple, axes: tuple) -> None:
    x = rand(1, 4, 5, 6)
    lowered = run_pipeline(single_op_graph("roll", {"x": x}, shifts=shifts, axes=axes), "onnx",
                           passes=["roll_to_slice_concat"])
    (y,) = run_graph(lowered.graph, {}, {"x": x})
    np.testing.assert_array_equal(y, np.roll(x, shifts, axes))


def test_an_op_left_to_a_pass_is_a_located_error_naming_it() -> None:
    span = Span("t.net", 4, 9, 4, 30)
    graph = single_op_graph("roll", {"x": rand(1, 2, 3, 3)}, provenance=Provenance(span), shifts=(1,), axes=(3,))
    with pytest.raises(NetdslError, match="roll has no ONNX form of its own") as err:
        to_onnx(graph, {})
    assert err.value.diag.span == span and err.value.diag.help == "run 'roll_to_slice_concat'"


def test_a_node_its_op_form_does_not_cover_is_a_located_error_naming_the_passes() -> None:
    span = Span("t.net", 2, 5, 2, 40)
    graph = single_op_graph("groupnorm", {"x": rand(1, 4, 3, 3)}, provenance=Provenance(span), groups=2, eps=1e-5)
    with pytest.raises(NetdslError, match="^groupnorm has no ONNX form of its own with fewer groups than channels: "
                                          "a pass decomposes it before emission$") as err:
        to_onnx(graph, {})
    assert err.value.diag.span == span
    assert err.value.diag.help == "run 'groupnorm_to_instancenorm', 'groupnorm_decompose'"
    instance = single_op_graph("groupnorm", {"x": rand(1, 4, 3, 3)}, groups=4, eps=1e-5)
    assert [n.op_type for n in to_onnx(instance, {}).graph.node] == ["InstanceNormalization"]
    with pytest.raises(NetdslError, match="^gelu has no ONNX form of its own below opset 20") as err:
        to_onnx(single_op_graph("gelu", {"x": rand(2, 3)}, provenance=Provenance(span)), {}, 19)
    assert err.value.diag.span == span and err.value.diag.help == "run 'gelu_to_erf', 'erf_decompose'"


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_gather_rows(dtype: type) -> None:
    table = rand(7, 3)
    idx = np.array([[0, 6, 2], [2, 2, 5]], dtype=dtype)
    (y,) = run_op("gather", {"idx": idx}, {"table": table}, order=["table", "idx"])
    np.testing.assert_array_equal(y, table[idx])


@pytest.mark.parametrize("opset", range(onnx_backend.MIN_OPSET, onnx_backend.MAX_OPSET + 1))
def test_chain_of_ops_at_every_supported_opset(opset: int) -> None:
    b = GraphBuilder("Chain")
    x = b.input("x", TensorType("f32", (1, 8, 6, 6)))
    w = b.param("gn.weight", TensorType("f32", (8,)), Init("ones"))
    bias = b.param("gn.bias", TensorType("f32", (8,)), Init("zeros"))
    y = b.op("gelu", [b.op("groupnorm", [x, w, bias], groups=2, eps=1e-5)])
    y = b.op("local_attention", [y, y, y], heads=2, kernel=3, stride=1, scale=0.5)
    y = b.op("resize", [y], mode="linear", scales=(7 / 6, 7 / 6), sizes=(7, 7))
    b.output(b.op("reduce_mean", [y], axes=(2, 3), keepdims=1))
    x_val = rand(1, 8, 6, 6)
    (got,) = run_graph(b.graph, initial_weights(b.graph), {"x": x_val}, opset)
    ref = F.gelu(F.group_norm(t(x_val), 2, eps=1e-5)).numpy()
    ref = local_attention_by_formula(ref, ref, ref, None, 2, 3, 1, 0.5).astype(np.float32)
    ref = F.interpolate(t(ref), scale_factor=7 / 6, mode="bilinear", align_corners=False).mean((2, 3), keepdim=True)
    np.testing.assert_allclose(got, ref.numpy(), **TOL)


# ---- whole-model properties ----------------------------------------------------------------------

PROVENANCE = Provenance(Span("specs/csa.net", 12, 5, 12, 30), (Frame("CSA", "stages.0.1", None),),
                        ("lower-rotate", "fold-bn"))


def sample_graph() -> Graph:
    """A small CSA-flavoured graph: conv -> batchnorm -> rotate, with provenance on every node."""
    b = GraphBuilder("Sample")
    x = b.input("x", TensorType("f32", (1, 4, 3, 3)))
    fan = (("fan_in", 4),)
    w = b.param("stages.0.1.q.weight", TensorType("f32", (18, 4, 1, 1)), Init("uniform_fan_in", fan))
    bias = b.param("stages.0.1.q.bias", TensorType("f32", (18,)), Init("uniform_fan_in", fan))
    stats = [b.param(f"stages.0.1.norm_q.{n}", TensorType("f32", (18,)), Init(i))
             for n, i in (("weight", "ones"), ("bias", "zeros"), ("running_mean", "zeros"), ("running_var", "ones"))]
    y = b.op("conv", [x, w, bias], PROVENANCE, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    y = b.op("batchnorm", [y, *stats], PROVENANCE, eps=1e-5, momentum=0.1)
    b.output(b.op("rotate", [y], PROVENANCE, name="y", heads=2))
    return b.graph


def sample_model_bytes() -> bytes:
    graph = sample_graph()
    return to_onnx(graph, initial_weights(graph, seed=3)).SerializeToString()


def test_export_is_byte_identical_across_runs_and_processes() -> None:
    first = sample_model_bytes()
    assert sample_model_bytes() == first
    script = (
        "import importlib.util, hashlib, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {str(Path(__file__))!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(hashlib.sha256(m.sample_model_bytes()).hexdigest())\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == hashlib.sha256(first).hexdigest()


def test_names_and_producer() -> None:
    graph = sample_graph()
    model = to_onnx(graph, initial_weights(graph))
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["y"]
    assert set(graph.params) <= {init.name for init in model.graph.initializer}
    assert (model.producer_name, model.producer_version) == ("netdsl", onnx_backend.__version__)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)
    assert names[:2] == ["stages.0.1/conv_0", "stages.0.1/batchnorm_1"]
    assert all(n.startswith("stages.0.1/rotate_2/") for n in names[2:])


def test_every_node_carries_provenance() -> None:
    graph = sample_graph()
    model = to_onnx(graph, initial_weights(graph))
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        assert meta == {"netdsl.span": "specs/csa.net:12:5", "netdsl.block": "stages.0.1",
                        "netdsl.rules": "lower-rotate>fold-bn"}
        assert node.doc_string == str(PROVENANCE)


def test_missing_weight_and_bad_opset_are_reported() -> None:
    graph = sample_graph()
    weights = initial_weights(graph)
    del weights["stages.0.1.q.bias"]
    with pytest.raises(ValueError, match=r"no weight given for parameter stages\.0\.1\.q\.bias f32\[18\]"):
        to_onnx(graph, weights)
    with pytest.raises(ValueError, match="opset 16 is not supported"):
        to_onnx(graph, initial_weights(graph), opset=16)


# ---- saving --------------------------------------------------------------------------------------


CONV_INPUT = rand(1, 16, 5, 5)


def conv_graph_and_weights() -> tuple[Graph, dict[str, np.ndarray]]:
    """A conv whose 9 KiB weight is large enough to be moved to external data."""
    params = {"c.weight": rand(16, 16, 3, 3, seed=1), "c.bias": rand(16, seed=2)}
    graph = single_op_graph("conv", {"x": CONV_INPUT}, params, stride=(1, 1), pads=(1, 1, 1, 1),
                            dilation=(1, 1), groups=1)
    return graph, params


def run_file(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": CONV_INPUT})[0]


def test_save_onnx_inline_and_external_data(tmp_path: Path) -> None:
    model = to_onnx(*conv_graph_and_weights())
    save_onnx(model, tmp_path / "small.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]
    save_onnx(model, tmp_path / "big.onnx", max_proto_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "small.onnx"]
    assert (tmp_path / "big.onnx.data").stat().st_size >= 16 * 16 * 9 * 4
    assert (tmp_path / "big.onnx").stat().st_size < 1000
    onnx.checker.check_model(str(tmp_path / "big.onnx"), full_check=True)
    np.testing.assert_array_equal(run_file(tmp_path / "big.onnx"), run_file(tmp_path / "small.onnx"))
    assert model.graph.initializer[0].HasField("raw_data")  # the caller's model is left intact


def test_save_onnx_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = to_onnx(*conv_graph_and_weights())

    def half_write(proto: onnx.ModelProto, path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_onnx(model, tmp_path / "m.onnx", max_proto_bytes=1000)
    assert list(tmp_path.iterdir()) == []
