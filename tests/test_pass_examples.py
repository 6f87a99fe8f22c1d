"""One example per registered pass, end to end: the rewritten graph, emitted to ONNX and run in ONNX Runtime,
computes what the graph before the pass computes in netdsl's interpreter.

The per-pass differential tests (``check_rewrite``) compare in the interpreter only; this file is the
check that what a pass emits also means the same in ONNX. It also makes every pass have a
differential test: a registered pass without an example here fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
from pass_support import TOL, at, f32, run_interp

from netdsl.backends.onnx_backend import to_onnx
from netdsl.builder import GraphBuilder
from netdsl.ir import Graph, Init
from netdsl.passes import registry
from netdsl.passes.base import Pass, RewriteLog

Example = Callable[[GraphBuilder, str], str]  # (builder, input x of shape X) -> the output value
X = (1, 4, 6, 6)
CONV = {"stride": (1, 1), "pads": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}


def _param(b: GraphBuilder, name: str, *shape: int) -> str:
    return b.param(name, f32(*shape), Init("zeros"))


def _const(b: GraphBuilder, value: np.ndarray, dtype: str = "f32") -> str:
    return b.op("const", [], at(2), value=value, dtype=dtype)


def _conv1x1(b: GraphBuilder, x: str, out: int) -> str:
    return b.op("conv", [x, _param(b, "c.weight", out, 4, 1, 1), _param(b, "c.bias", out)], at(3), **CONV)


def _unary(op: str, **attrs: object) -> Example:
    return lambda b, x: b.op(op, [x], at(4), **attrs)


def _attention(b: GraphBuilder, x: str) -> str:
    heads = b.op("reshape", [x], at(4), shape=(1, 2, 18, 4))
    return b.op("attention", [heads, heads, heads], at(5), scale=0.5)


def _gather(b: GraphBuilder, x: str) -> str:
    table = b.op("reshape", [x], at(4), shape=(24, 6))
    return b.op("gather", [table, _const(b, np.array([[3, 0], [7, 7]], np.int64), "i64")], at(5))


def _where(b: GraphBuilder, x: str) -> str:
    mask = _const(b, (np.arange(6) % 2).reshape(1, 1, 1, 6).astype(np.float32))
    return b.op("where", [mask, x, b.op("neg", [x], at(4))], at(5))


def _layernorm(b: GraphBuilder, x: str) -> str:
    return b.op("layernorm", [x, _param(b, "ln.weight", 6), _param(b, "ln.bias", 6)], at(4), axis=-1, eps=1e-5)


def _groupnorm(b: GraphBuilder, x: str) -> str:
    return b.op("groupnorm", [x, _param(b, "gn.weight", 4), _param(b, "gn.bias", 4)], at(4), groups=2, eps=1e-5)


def _batchnorm_after_conv(b: GraphBuilder, x: str) -> str:
    stats = [_param(b, f"bn.{k}", 3) for k in ("weight", "bias", "running_mean", "running_var")]
    return b.op("batchnorm", [_conv1x1(b, x, 3), *stats], at(4), eps=1e-5, momentum=0.1)


def _conv_after_resize(b: GraphBuilder, x: str) -> str:
    return _conv1x1(b, b.op("resize", [x], at(4), mode="linear", scales=(2.0, 2.0), sizes=(12, 12)), 2)


def _fold_params(b: GraphBuilder, x: str) -> str:
    return b.op("add", [x, b.op("reshape", [_param(b, "pe", 4, 36)], at(4), shape=X)], at(5))


def _minimum(b: GraphBuilder, x: str) -> str:
    return b.op("minimum", [x, b.op("transpose", [x], at(4), perm=(0, 1, 3, 2))], at(5))


def _large_maxpool(b: GraphBuilder, x: str) -> str:
    # A 9 x 9 window (SPP-style, stride 1, same padding) is above DLA's 8 x 8: two pools, 8 then 2.
    one_map = b.op("reshape", [x], at(4), shape=(1, 1, 12, 12))
    return b.op("maxpool", [one_map], at(5), kernel=(9, 9), stride=(1, 1), pads=(4, 4, 4, 4))


def _broadcast_add_rank2(b: GraphBuilder, x: str) -> str:
    rows = b.op("reshape", [x], at(4), shape=(4, 36))
    return b.op("add", [rows, b.op("slice", [rows], at(5), axis=0, start=0, end=1, step=1)], at(6))


def _token_slice_concat(b: GraphBuilder, x: str) -> str:
    tokens = b.op("reshape", [x], at(4), shape=(1, 36, 4))
    half = b.op("slice", [tokens], at(5), axis=2, start=0, end=2, step=1)
    return b.op("concat", [half, tokens], at(6), axis=2)


def _sibling_convs(b: GraphBuilder, x: str) -> str:
    q, k = (b.op("conv", [x, _param(b, f"{n}.weight", 3, 4, 3, 3), _param(b, f"{n}.bias", 3)], at(line),
                 **{**CONV, "pads": (1, 1, 1, 1)}) for n, line in (("q", 4), ("k", 5)))
    return b.op("mul", [q, k], at(6))


def _dead_code(b: GraphBuilder, x: str) -> str:
    b.op("sigmoid", [x], at(4))
    return b.op("relu", [x], at(5))


EXAMPLES: dict[str, Example] = {
    "lower_attention": _attention,
    "attention_to_matmul": _attention,
    "lower_local_attention": lambda b, x: b.op("local_attention", [x, x, x], at(4), heads=2, kernel=3, stride=1,
                                               scale=0.5),
    "local_attention_to_matmul": lambda b, x: b.op("local_attention", [x, x, x], at(4), heads=2, kernel=3,
                                                   stride=1, scale=0.5),
    "matmul_to_conv": lambda b, x: b.op("matmul", [x, b.op("transpose", [x], at(4), perm=(0, 1, 3, 2))], at(5)),
    "gather_to_slice": _gather,
    "where_to_blend": _where,
    "shift_to_conv": _unary("shift", offsets=((0, 1), (1, 0), (0, -1), (-1, 0))),
    "unfold_to_conv": _unary("unfold", kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1)),
    "roll_to_slice_concat": _unary("roll", shifts=(1, 2), axes=(2, 3)),
    "pool_padding_explicit": _unary("avgpool", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True,
                                    count_include_pad=False),
    "maxpool_to_elementwise": _unary("maxpool", kernel=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0)),
    "pad_to_slice_concat": _unary("pad", pads=(1, 2, 1, 0), mode="reflect"),
    "softmax_decompose": _unary("softmax", axis=1),
    "layernorm_decompose": _layernorm,
    "groupnorm_decompose": _groupnorm,
    "groupnorm_to_instancenorm": _groupnorm,
    "gelu_to_erf": _unary("gelu"),
    "silu_to_sigmoid": _unary("silu"),
    "reduce_max_to_elementwise": _unary("reduce_max", axes=(1,), keepdims=True),
    "reduce_min_to_max": _unary("reduce_min", axes=(1,), keepdims=True),
    "reduce_to_conv": _unary("reduce_mean", axes=(1,), keepdims=True),
    "pool_windows": _large_maxpool,
    "elementwise_rank4": _broadcast_add_rank2,
    "slice_concat_rank4": _token_slice_concat,
    "concat_to_channels": lambda b, x: b.op("concat", [x, x], at(4), axis=2),
    "linear_to_conv": lambda b, x: b.op("linear", [x, _param(b, "fc.weight", 5, 6), _param(b, "fc.bias", 5)], at(4)),
    "hardswish_decompose": _unary("hardswish"),
    "clip_to_relu": _unary("clamp", min=0.75, max=1.5),
    "minmax_to_relu": _minimum,
    "tanh_decompose": _unary("tanh"),
    "neg_to_mul": _unary("neg"),
    "pow_decompose": _unary("pow", exponent=3.0),
    "sqrt_decompose": _unary("sqrt", range=(0.25, 4.0)),
    "exp_decompose": _unary("exp"),
    "erf_decompose": _unary("erf"),
    "fold_batchnorm": _batchnorm_after_conv,
    "fold_pointwise_into_conv": lambda b, x: b.op("conv", [_conv1x1(b, x, 3), _param(b, "d.weight", 2, 3, 3, 3)], at(4),
                                                  **{**CONV, "stride": (2, 2), "pads": (1, 1, 1, 1)}),
    "slice_before_conv": lambda b, x: b.op("slice", [_conv1x1(b, x, 5)], at(4), axis=2, start=0, end=6, step=2),
    "conv_before_resize": _conv_after_resize,
    "merge_sibling_convs": _sibling_convs,
    "pool_before_conv": lambda b, x: b.op("avgpool", [_conv1x1(b, x, 3)], at(4), kernel=(2, 2), stride=(2, 2),
                                          pads=(0, 0, 0, 0)),
    "downscale_to_conv": _unary("resize", mode="linear", scales=(0.5, 0.5), sizes=(3, 3)),
    "reduce_to_matmul": lambda b, x: b.op("reduce_sum", [x], at(4), axes=(1,), keepdims=True),
    "strided_slice_to_conv": _unary("slice", axis=2, start=0, end=6, step=2),
    "resize_to_conv": _unary("resize", mode="linear", scales=(1.5, 1.5), sizes=(9, 9)),
    "constant_folding": lambda b, x: b.op("add", [x, b.op("slice", [b.op("grid", [], at(4), height=6, width=6)], at(5),
                                                           axis=1, start=0, end=1, step=1)], at(6)),
    "fold_params": _fold_params,
    "cse": lambda b, x: b.op("add", [b.op("relu", [x], at(4)), b.op("relu", [x], at(5))], at(6)),
    "cleanup_shuffles": lambda b, x: b.op("reshape", [b.op("reshape", [x], at(4), shape=(4, 36))], at(5),
                                          shape=(1, 144)),
    "dce": _dead_code,
}


def _example(name: str) -> tuple[Graph, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The example graph of pass ``name``, seeded weights (positive: they include variances) and inputs in
    [0.5, 2] (inside every lowering's documented input range)."""
    b = GraphBuilder(name)
    x = b.input("x", f32(*X))
    b.output(EXAMPLES[name](b, x))
    rng = np.random.default_rng(5)
    weights = {p.name: rng.uniform(0.5, 1.5, p.type.shape).astype(np.float32) for p in b.graph.params.values()}
    return b.graph, weights, {x: rng.uniform(0.5, 2.0, X).astype(np.float32)}


def test_every_registered_pass_has_an_example() -> None:
    assert sorted(EXAMPLES) == sorted(registry.all_passes())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_rewritten_example_runs_in_onnx_runtime_as_the_interpreter_runs_the_original(name: str) -> None:
    graph, weights, feeds = _example(name)
    want = run_interp(graph, weights, feeds)
    work = dict(weights)
    log = RewriteLog()
    p: Pass = registry.get_pass(name, work)
    after = p.run(copy.deepcopy(graph), log)
    assert [rule for rule, *_ in log.entries] and {rule for rule, *_ in log.entries} == {name}
    assert p.post is None or p.post(after) == []
    model = to_onnx(after, {k: v for k, v in work.items() if k in after.params})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, expected in zip(session.run(None, feeds), want, strict=True):
        np.testing.assert_allclose(got, expected, **TOL)
