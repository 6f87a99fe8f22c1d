"""The element-wise math lowerings (exp, erf, gelu, sqrt, pow) through ONNX Runtime, over wide input ranges."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pass_support import at, builder_with_input, check_rewrite, f32, lower_for_dla_and_compare, random_feeds, run_ort

from netdsl.backends.onnx_backend import to_onnx
from netdsl.builder import GraphBuilder
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.diagnostics import NetdslError
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph
from netdsl.passes.base import Pass, RewriteLog
from netdsl.passes.cleanup_shuffles import PASS as CLEANUP
from netdsl.passes.erf_decompose import PASS as ERF
from netdsl.passes.erf_decompose import S_COEFFICIENTS, P
from netdsl.passes.exp_decompose import PASS as EXP
from netdsl.passes.pipeline import run_pipeline
from netdsl.passes.pow_decompose import PASS as POW
from netdsl.passes.sqrt_decompose import DEFAULT_RANGE, TOLERANCE, schedule
from netdsl.passes.sqrt_decompose import PASS as SQRT
from netdsl.range_check import calibration_batches, check_float16

ERF_BOUND = 1e-6  # the bound on erf's absolute error over all float32

# ----------------------------------------------------------------------------- helpers


def lowered_session(op: str, size: int, passes: list[Pass], **attrs: object) -> ort.InferenceSession:
    """An ONNX Runtime session of ``op`` on a float32 vector of ``size``, lowered by ``passes``."""
    b = GraphBuilder("g")
    x = b.input("x", f32(size))
    b.output(b.op(op, [x], at(1), **attrs))
    graph = b.graph
    for p in [*passes, CLEANUP]:
        graph = p.run(graph, RewriteLog())
    assert {n.op for n in graph.nodes} <= {"const", "reshape", "mul", "add", "sub", "div", "relu", "softmax",
                                           "slice", "concat"}
    return ort.InferenceSession(to_onnx(graph, {}).SerializeToString(), providers=["CPUExecutionProvider"])


def run1(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"x": x.astype(np.float32)})[0].astype(np.float64)


def all_float32_magnitudes(stride: int) -> np.ndarray:
    """Every ``stride``-th non-negative float32 bit pattern (0, subnormals, normals) and +inf."""
    bits = np.concatenate([np.arange(0, 0x7F800000, stride, dtype=np.int64), [0x7F800000]])
    return bits.astype(np.uint32).view(np.float32)


def erf64(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) for v in x.astype(np.float64)])


def gelu64(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in units of the float32 spacing at ``want``."""
    return np.abs(got - want) / np.spacing(want.astype(np.float32)).astype(np.float64)


# ----------------------------------------------------------------------------- differential rewrites


def test_exp_becomes_a_softmax_over_lane_pairs() -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op("exp", [x], at(2)))
    out, _ = check_rewrite(EXP, b.graph, {"reshape": 2, "const": 1, "mul": 2, "softmax": 1, "slice": 2, "div": 1},
                           feeds=random_feeds(b.graph, scale=20.0))
    assert next(n for n in out.nodes if n.op == "mul").attrs["input_range"][0] == "exp"


@pytest.mark.parametrize("op", ["erf", "gelu"])
def test_erf_and_gelu_become_relu_softmax_and_elementwise_ops(op: str) -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op(op, [x], at(2)))
    # erf: lanes (1 mul), t (add, div), S (4 mul, 4 add), P (sub, mul, sub), -u^2 (2 mul), the softmax pair
    # (relu, concat, softmax, 2 slices, div), P e (mul), Q_b - Q_a (2 slices, sub); gelu adds 0.5 and the product.
    expected = {"reshape": 4, "const": 10, "mul": 9, "relu": 2, "add": 5, "div": 2, "sub": 3, "concat": 1,
                "softmax": 1, "slice": 4}
    if op == "gelu":
        expected.update(const=11, mul=10, add=6)
    check_rewrite(ERF, b.graph, expected, feeds=random_feeds(b.graph, scale=3.0))


def test_sqrt_becomes_newton_steps_for_its_declared_range() -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op("sqrt", [x], at(2), range=(0.5, 50.0)))
    steps = schedule(0.5, 50.0)
    feeds = {"x": np.random.default_rng(0).uniform(0.5, 50.0, (2, 3, 4, 5)).astype(np.float32)}
    out, _ = check_rewrite(SQRT, b.graph, {"const": 2 + len(set(steps)) + len(steps), "add": 1 + len(steps),
                                           "mul": 1 + len(set(steps)) + len(steps), "div": len(steps)}, feeds=feeds)
    assert out.nodes[1].attrs["input_range"] == ("sqrt", 0.5, 50.0)


@pytest.mark.parametrize(("exponent", "ops"), [
    (2.0, {"mul": 1}),
    (5.0, {"mul": 3}),
    (-1.0, {"const": 1, "div": 1}),
    (-3.0, {"mul": 2, "const": 1, "div": 1}),
    (0.5, {"sqrt": 1}),
    (-0.5, {"sqrt": 1, "const": 1, "div": 1}),
    (1.5, {"sqrt": 1, "mul": 1}),
    (0.75, {"sqrt": 2, "mul": 1}),
    (0.0, {"const": 1}),
])
def test_pow_becomes_products_reciprocals_and_square_roots(exponent: float, ops: dict[str, int]) -> None:
    b, x = builder_with_input(2, 3, 4, 5)
    b.output(b.op("pow", [x], at(2), exponent=exponent))
    feeds = {"x": np.random.default_rng(1).uniform(0.2, 3.0, (2, 3, 4, 5)).astype(np.float32)}
    out, _ = check_rewrite(POW, b.graph, ops, feeds=feeds)
    roots = [n.attrs["range"] for n in out.nodes if n.op == "sqrt"]
    assert roots == [(DEFAULT_RANGE[0] ** 0.5**k, DEFAULT_RANGE[1] ** 0.5**k) for k in range(len(roots))]


def test_pow_by_one_is_its_input() -> None:
    b, x = builder_with_input(2, 3)
    b.output(b.op("relu", [b.op("pow", [x], at(2), exponent=1.0)], at(3)))
    check_rewrite(POW, b.graph, {"relu": 1})


def test_pow_without_an_exact_form_is_a_located_error() -> None:
    b, x = builder_with_input(2, 3)
    b.output(b.op("pow", [x], at(7), exponent=1 / 3))
    with pytest.raises(NetdslError) as err:
        POW.run(b.graph, RewriteLog())
    diag = err.value.diag
    assert diag.message == "pow with the exponent 0.333333 has no exact lowering to the restricted layer set " \
                           "(pow_decompose)"
    assert str(diag.span) == "t.net:7:5"


def test_sqrt_of_a_constant_outside_its_range_is_a_located_error() -> None:
    b = GraphBuilder("g")
    c = b.op("const", [], at(3), value=np.array([4.0, 1e-14], np.float32), dtype="f32")
    b.output(b.op("sqrt", [c], at(4)))
    with pytest.raises(NetdslError) as err:
        SQRT.run(b.graph, RewriteLog())
    assert err.value.diag.message == ("sqrt of the constant 1e-14 is outside the range 1e-12 .. 1e+12 its "
                                            "lowering (sqrt_decompose) is exact for")
    assert str(err.value.diag.span) == "t.net:4:5"


# ----------------------------------------------------------------------------- accuracy over all floats


def test_erf_fit_is_within_its_stated_bound_in_exact_arithmetic() -> None:
    u = np.linspace(0.0, 10.0, 200_001)
    t = 1.0 / (1.0 + P * u)
    s = np.polynomial.polynomial.polyval(t, S_COEFFICIENTS)
    fitted = (1.0 - (1.0 - t) * s) * np.exp(-u * u)
    assert np.max(np.abs(fitted - np.array([math.erfc(v) for v in u]))) < 2.7e-8


def test_erf_within_1e_6_of_math_erf_over_every_float32_magnitude() -> None:
    mags = all_float32_magnitudes(stride=4099)
    x = np.concatenate([mags, -mags, [np.nan]]).astype(np.float32)
    y = run1(lowered_session("erf", x.size, [ERF]), x)
    assert np.isnan(y[-1])
    err = np.abs(y[:-1] - erf64(x[:-1]))
    assert err.max() <= ERF_BOUND
    assert y[x == np.inf].tolist() == [1.0] and y[x == -np.inf].tolist() == [-1.0]


def test_gelu_within_its_bound_over_every_float32_magnitude() -> None:
    mags = all_float32_magnitudes(stride=4099)[:-1]
    x = np.concatenate([mags, -mags, [np.inf, np.nan]]).astype(np.float32)
    y = run1(lowered_session("gelu", x.size, [ERF]), x)
    want = gelu64(x[:-2])
    assert np.max(np.abs(y[:-2] - want) / np.maximum(1.0, np.abs(x[:-2]))) <= ERF_BOUND
    assert y[-2] == np.inf and np.isnan(y[-1])


def test_exp_within_6_ulp_where_normal_and_within_the_subnormal_spacing_below() -> None:
    x = np.linspace(-103.0, 88.72, 400_001).astype(np.float32)
    y = run1(lowered_session("exp", x.size, [EXP]), x)
    want = np.exp(x.astype(np.float64))
    normal = want >= np.finfo(np.float32).tiny
    assert ulps(y[normal], want[normal]).max() <= 6
    assert np.abs(y[~normal] - want[~normal]).max() <= 2.0**-149
    assert run1(lowered_session("exp", 2, [EXP]), np.array([89.0, np.nan])).tolist()[0] == np.inf


@pytest.mark.parametrize("bounds", [DEFAULT_RANGE, (1e-5, 1e4), (2.0, 2.0)])
def test_sqrt_within_2_ulp_over_its_whole_range(bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    a = np.geomspace(lo, hi, 200_001).astype(np.float32)
    a = a[(a >= lo) & (a <= hi)]
    y = run1(lowered_session("sqrt", a.size, [SQRT], range=bounds), a)
    assert ulps(y, np.sqrt(a.astype(np.float64))).max() <= 2


@pytest.mark.parametrize("bounds", [DEFAULT_RANGE, (1e-5, 1e12), (1e-5, 1e4), (6e-8, 65504.0)])
def test_sqrt_schedule_reaches_float32_precision_at_both_ends_of_the_range(bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    c = math.sqrt(lo * hi)
    for a in (lo, hi, c, math.sqrt(lo * c)):
        y = (a + c) * (0.5 / math.sqrt(c))
        for alpha in schedule(lo, hi):
            y = alpha * y + (1.0 - alpha) * a / y
        assert abs(y / math.sqrt(a) - 1.0) <= TOLERANCE * (1 + 1e-9)


# ----------------------------------------------------------------------------- properties


@cache
def session64(op: str) -> ort.InferenceSession:
    """One session per op for the property tests (64 values per example)."""
    return lowered_session(op, 64, {"erf": [ERF], "exp": [EXP], "sqrt": [SQRT]}[op])



@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, 64, elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_erf_property_any_float32(x: np.ndarray) -> None:
    y = run1(session64("erf"), x)
    finite = ~np.isnan(x)
    assert np.isnan(y[~finite]).all()
    assert np.abs(y[finite] - erf64(x[finite])).max(initial=0.0) <= ERF_BOUND


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, 64, elements=st.floats(-103.0, float(np.float32(88.7)), width=32)))
def test_exp_property_finite_inputs(x: np.ndarray) -> None:
    want = np.exp(x.astype(np.float64))
    y = run1(session64("exp"), x)
    normal = want >= np.finfo(np.float32).tiny
    assert ulps(y[normal], want[normal]).max(initial=0.0) <= 6
    assert np.abs(y[~normal] - want[~normal]).max(initial=0.0) <= 2.0**-149


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, 64, elements=st.floats(float(np.nextafter(np.float32(1e-12), np.float32(1))),
                                                float(np.float32(1e12)), width=32)))
def test_sqrt_property_default_range(a: np.ndarray) -> None:
    assert ulps(run1(session64("sqrt"), a), np.sqrt(a.astype(np.float64))).max() <= 2


# ----------------------------------------------------------------------------- the language and the targets

MATH_SPEC = """
model math() {
    input x: f32[N=2, 8, H=6, W=5]
    let v = x * x + 0.001
    let r = v ** -0.5 + sqrt(v, range=[0.001, 1000.0]) + v ** 1.5 + x ** 3
    output y = r + erf(x) + gelu(x) + exp(x) + tanh(x)
}
"""


def math_graph(write_spec) -> Graph:
    return load_graph(write_spec(MATH_SPEC))


@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_restricted_targets_lower_every_math_op_and_agree_with_onnx(write_spec, target: str) -> None:
    graph = math_graph(write_spec)
    if target == "trt-dla":
        lower_for_dla_and_compare(graph)
        return
    weights = initial_weights(graph)
    lowered = run_pipeline(graph, target, weights=weights)
    assert check_coverage(to_onnx(lowered.graph, lowered.weights), load_profile(target)).covered
    plain = run_pipeline(graph, "onnx", weights=weights)
    feeds = random_feeds(graph)
    (want,), (got,) = run_ort(plain.graph, plain.weights, feeds), run_ort(lowered.graph, lowered.weights, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_lane_views_stay_within_the_profiles_spatial_limits(target: str) -> None:
    b, x = builder_with_input(1, 3136, 256)  # CvT-13's first MLP: a 6272-row view would break trt-restricted's 4096
    b.output(b.op("gelu", [x], at(2)))
    lowered = run_pipeline(b.graph, target, weights={})
    report = check_coverage(to_onnx(lowered.graph, {}), load_profile(target))
    assert report.covered, report.violation_lines()


def test_lowered_math_passes_the_float16_range_check(write_spec) -> None:
    graph = math_graph(write_spec)
    lowered = run_pipeline(graph, "trt-restricted", weights=initial_weights(graph))
    check_float16(lowered.graph, lowered.weights or {}, calibration_batches(lowered.graph, 8, 0))


def test_tensor_power_needs_a_constant_exponent(write_spec, run_cli, tmp_path: Path) -> None:
    spec = write_spec("""
        model p() {
            input x: f32[N=1, 4]
            output y = 2 ** x
        }
        """)
    code, _, err = run_cli(["check", spec])
    assert code == 2
    assert err.splitlines()[:5] == [
        "error: '**' with a tensor exponent is not defined",
        f"  --> {spec}:3:21",
        "  |",
        "3 |     output y = 2 ** x",
        "  |                     ^",
    ]


def test_out_of_range_calibration_input_refuses_the_compile(write_spec, run_cli, tmp_path: Path) -> None:
    spec = write_spec("""
        model bad() {
            input x: f32[N=1, 4, H=3, W=5]
            output y = sqrt(x * x + 0.001, range=[0.01, 100.0])
        }
        """)
    out = tmp_path / "bad.onnx"
    code, _, err = run_cli(["compile", spec, "--target", "trt-restricted", "-o", out])
    low = min(float(np.min(b["x"] * b["x"] + np.float32(0.001))) for b in calibration_batches(load_graph(spec), 8, 0))
    assert code == 2 and not out.exists()
    assert err.splitlines() == [
        f"error: the input of sqrt leaves the range its lowering is exact for: min {low:.6g}, below 0.01 on 8 "
        "calibration samples",
        f"  --> {spec}:3:16",
        "  |",
        "3 |     output y = sqrt(x * x + 0.001, range=[0.01, 100.0])",
        "  |                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        "   = note: sqrt was lowered by pass sqrt_decompose, exact for inputs in 0.01 .. 100",
        "   = help: keep the input inside the range (or declare the range it has, e.g. sqrt(x, range=[lo, hi])), "
        "calibrate with real data (--calib), or compile for a target that keeps the op",
    ]
    code, _, err = run_cli(["compile", spec, "--target", "trt-restricted", "--no-range-check", "-o", out])
    assert code == 0 and out.exists() and err.startswith("warning: --no-range-check: the input ranges")
