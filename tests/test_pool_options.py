"""avgpool's count_include_pad and both pools' ceil_mode: PyTorch's semantics exactly (output size with the
last-window rule, divisors of cut and padded windows), through netdsl's interpreter, ONNX Runtime and the
generated module, against torch.nn.functional; bad options as located errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_support import run_ort

from netdsl import api
from netdsl.builder import GraphBuilder
from netdsl.diagnostics import NetdslError
from netdsl.interp import run_graph
from netdsl.ir import TensorType
from netdsl.opdefs import pool_out_len


def _pool_graph(op: str, shape: tuple[int, ...], k: int, s: int, p: int, ceil: bool, include: bool):  # noqa: ANN202
    b = GraphBuilder(op)
    x = b.input("x", TensorType("f32", shape))
    flags = {"ceil_mode": True} if ceil else {}
    if not include:
        flags["count_include_pad"] = False
    b.output(b.op(op, [x], kernel=(k, k), stride=(s, s), pads=(p, p, p, p), **flags))
    return b.graph


def _reference(op: str, x: np.ndarray, k: int, s: int, p: int, ceil: bool, include: bool) -> np.ndarray:
    t = torch.from_numpy(x)
    if op == "maxpool":
        return F.max_pool2d(t, k, s, p, ceil_mode=ceil).numpy()
    return F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=include).numpy()


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["avgpool", "maxpool"]), h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 4),
       s=st.integers(1, 3), p=st.integers(0, 2), ceil=st.booleans(), include=st.booleans())
def test_pool_options_match_torch_in_the_interpreter_and_onnx_runtime(op: str, h: int, w: int, k: int, s: int, p: int,
                                                                     ceil: bool, include: bool) -> None:
    p = min(p, k // 2)
    include = include or op == "maxpool"
    if k > min(h, w) + 2 * p:
        return
    graph = _pool_graph(op, (2, 3, h, w), k, s, p, ceil, include)
    x = np.random.default_rng(h * 10 + w).standard_normal((2, 3, h, w)).astype(np.float32)
    expected = _reference(op, x, k, s, p, ceil, include)
    np.testing.assert_allclose(run_graph(graph, {}, {"x": x})[graph.outputs[0]], expected, rtol=1e-6, atol=1e-6)
    (ort_out,) = run_ort(graph, {}, {"x": x})
    np.testing.assert_allclose(ort_out, expected, rtol=1e-6, atol=1e-6)


def test_ceil_mode_drops_a_last_window_that_would_start_in_the_trailing_padding() -> None:
    # 5 + 2*1 padding, kernel 2, stride 3: ceil((7 - 2) / 3) + 1 = 3 windows, but the third would start at 6 >= 5 + 1.
    assert pool_out_len(5, 2, 3, 1, 1, True) == 2
    assert pool_out_len(6, 2, 3, 1, 1, True) == 3
    assert F.max_pool2d(torch.zeros(1, 1, 5, 5), 2, 3, 1, ceil_mode=True).shape[-1] == 2


SPEC = """
model m() {{
    input x: f32[2, 4, 7, 7]
    output y = {expr}
}}
"""


@pytest.mark.parametrize(("expr", "reference"), [
    ("avgpool(x, 3, stride=1, padding=1, count_include_pad=false)",
     lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)),
    ("avgpool(x, 3, stride=2, padding=1, ceil_mode=true, count_include_pad=false)",
     lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("avgpool(x, 2, ceil_mode=true)", lambda t: F.avg_pool2d(t, 2, ceil_mode=True)),
    ("maxpool(x, 3, stride=2, padding=1, ceil_mode=true)", lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
])
def test_spec_pool_options_in_the_generated_module(write_spec, expr: str, reference) -> None:  # noqa: ANN001
    graph = api.load(write_spec(SPEC.format(expr=expr)))
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    with torch.no_grad():
        out = api.build_module(graph)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, reference(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_pools_without_options_keep_their_ir(write_spec) -> None:
    graph = api.load(write_spec(SPEC.format(expr="avgpool(x, 3, stride=1, padding=1, count_include_pad=true)")))
    assert graph.nodes[-1].attrs == {"kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1)}


def _error(write_spec, expr: str) -> tuple[str, int, int]:  # noqa: ANN001
    with pytest.raises(NetdslError) as info:
        api.load(write_spec(SPEC.format(expr=expr)))
    d = info.value.diag
    return d.message, d.span.line, d.span.col


def test_padding_over_half_the_kernel_with_count_include_pad_false_is_located_at_the_padding(write_spec) -> None:
    assert _error(write_spec, "avgpool(x, 3, stride=1, padding=2, count_include_pad=false)") == (
        "avgpool padding [2, 2, 2, 2] must be at most half the kernel 3x3 with ceil_mode or count_include_pad=false",
        3, 48)


def test_ceil_mode_must_be_a_bool(write_spec) -> None:
    assert _error(write_spec, "maxpool(x, 3, ceil_mode=1)") == (
        "argument 'ceil_mode' of maxpool() must be a bool, found int 1", 3, 40)


def test_maxpool_has_no_count_include_pad(write_spec) -> None:
    message, line, col = _error(write_spec, "maxpool(x, 3, count_include_pad=false)")
    assert (message, line, col) == ("maxpool() has no argument 'count_include_pad'", 3, 30)


@settings(max_examples=30, deadline=None)
@given(op=st.sampled_from(["avgpool", "maxpool"]), h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(2, 4),
       s=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 2)] * 4), ceil=st.booleans(), include=st.booleans())
def test_pools_with_options_and_uneven_padding_in_the_generated_module(op: str, h: int, w: int, k: int, s: int,
                                                                      pads: tuple[int, int, int, int], ceil: bool,
                                                                      include: bool) -> None:
    """No single PyTorch call pools with ceil_mode or count_include_pad=false over uneven padding: the generated
    module pads explicitly and divides by each window's divisor; the interpreter is the oracle."""
    pads = tuple(min(p, k // 2) for p in pads)
    include = include or op == "maxpool"
    if pads[0] == pads[2] and pads[1] == pads[3] or not (ceil or not include):
        return
    if k > min(h + pads[0] + pads[2], w + pads[1] + pads[3]):
        return
    b = GraphBuilder(op)
    x = b.input("x", TensorType("f32", (2, 3, h, w)))
    flags = {"ceil_mode": ceil, **({} if include else {"count_include_pad": False})}
    b.output(b.op(op, [x], kernel=(k, k), stride=(s, s), pads=pads, **flags))
    graph = b.graph
    feed = np.random.default_rng(h * 10 + w).standard_normal((2, 3, h, w)).astype(np.float32)
    expected = run_graph(graph, {}, {"x": feed})[graph.outputs[0]]
    with torch.no_grad():
        out = api.build_module(graph)(torch.from_numpy(feed)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
