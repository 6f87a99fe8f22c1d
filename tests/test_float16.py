"""The float16 path: ONNX conversion, the float16 range check, and the max subtraction of softmax lowerings.

Two runtimes verify float16 numerics, for different things. ONNX Runtime (CPU) runs the written
float16 models, which checks the conversion (types, casts, wiring); but on x86 it computes most
float16 ops in float32 between inserted casts, so it does not show float16 overflow. netdsl's
interpreter with ``storage=np.float16`` rounds every value to float16 (each op computed in
float32, as GPU float16 kernels do) and is the runtime that shows overflow and float16 error.

Tolerance: a float16 value carries a relative rounding error of at most 2**-11 (about 4.9e-4).
The blocks tested here round each value once per op along paths of a few dozen ops, and most of
those errors do not add up in the same direction, so outputs stay within 1e-2 of the output
scale (max |y|); the measured error is about 5e-4.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from netdsl.backends.onnx_backend import to_onnx
from netdsl.backends.onnx_float16 import CONVERTED_OPS, Float16Error, to_float16
from netdsl.builder import GraphBuilder
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.interp import run_graph
from netdsl.ir import Graph, TensorType
from netdsl.passes.pipeline import ONNX_FORMS, PipelineResult, run_pipeline
from netdsl.range_check import FLOAT16_MAX, calibration_batches

ONNX_TARGETS = ("onnx", "trt", "trt-restricted", "trt-dla")
TOLERANCE = 1e-2  # of max |y|; see the module docstring
F16_LIMIT = f"{FLOAT16_MAX:g}"


def lowered(spec: Path | str, target: str, passes: list[str] | None = None, seed: int = 0) -> PipelineResult:
    graph = load_graph(spec)
    return run_pipeline(graph, target, weights=initial_weights(graph, seed), passes=passes)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT warns that it cannot constant-fold float16 ops on CPU
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model``, fed in the element type each input declares."""
    types = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    return session(model).run(None, {k: v.astype(types[k]) for k, v in feeds.items()})


def normal_feeds(graph: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(graph.values[n].shape).astype(np.float32) for n in graph.inputs}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


def hand_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A hand-built opset-17 model at an IR version ONNX Runtime reads."""
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def elem_types(infos: list[onnx.ValueInfoProto]) -> set[int]:
    return {i.type.tensor_type.elem_type for i in infos}


# ---- conversion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "target"), [
    ("csa.net", "onnx"), ("csa.net", "trt-restricted"), ("acmix.net", "onnx"), ("acmix.net", "trt-restricted"),
    ("models/common.net", "onnx"),  # Swin window attention: Gather, MatMul, LayerNormalization, Erf
])
def test_float16_model_matches_float32(repo_root: Path, spec: str, target: str) -> None:
    result = lowered(repo_root / "specs" / spec, target)
    model = to_onnx(result.graph, result.weights)
    half = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    feeds = normal_feeds(result.graph)
    (want,) = run_onnx(model, feeds)
    (got,) = run_onnx(half, feeds)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert 0 < relative_error(got, want) < TOLERANCE
    # The interpreter in float16 storage: the float16 numerics themselves.
    (emulated,) = run_graph(result.graph, result.weights, feeds, storage=np.float16).values()
    assert 0 < relative_error(emulated, want) < TOLERANCE


def test_io_dtypes_and_boundary_casts(repo_root: Path) -> None:
    result = lowered(repo_root / "specs" / "csa.net", "onnx")
    model = to_onnx(result.graph, result.weights)
    float_io, half_io = to_float16(model, "float32"), to_float16(model, "float16")
    for half in (float_io, half_io):
        onnx.checker.check_model(half, full_check=True)
        assert elem_types(list(half.graph.value_info)) == {TensorProto.FLOAT16}
        resize_scales = {n.input[2] for n in half.graph.node if n.op_type == "Resize"}
        assert resize_scales
        for init in half.graph.initializer:
            expected = TensorProto.FLOAT if init.name in resize_scales else TensorProto.FLOAT16
            assert init.data_type in (expected, TensorProto.INT64), init.name
    assert elem_types([*float_io.graph.input, *float_io.graph.output]) == {TensorProto.FLOAT}
    assert elem_types([*half_io.graph.input, *half_io.graph.output]) == {TensorProto.FLOAT16}
    casts = [n for n in float_io.graph.node if n.op_type == "Cast"]
    assert [(n.input[0], n.output[0]) for n in casts] == [("x", "x.float16"), ("y.float16", "y")]
    assert [n.op_type for n in half_io.graph.node] == [n.op_type for n in model.graph.node]
    (y,) = run_onnx(half_io, normal_feeds(result.graph))
    assert y.dtype == np.float16


def test_shared_float32_initializer_is_duplicated_for_float16_readers() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
         helper.make_node("Mul", ["v", "scales"], ["m"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 1, 4, 4]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [4])], initializer=[scales])
    half = to_float16(hand_model(graph), "float16")
    onnx.checker.check_model(half, full_check=True)
    resize, mul = half.graph.node
    inits = {t.name: t.data_type for t in half.graph.initializer}
    assert inits == {"scales": TensorProto.FLOAT, "scales.float16": TensorProto.FLOAT16}
    assert resize.input[2] == "scales" and mul.input[1] == "scales.float16"
    r, m = run_onnx(half, {"x": np.arange(4.0).reshape(1, 1, 2, 2), "v": np.ones(4)})
    assert r.dtype == np.float16 and m.tolist() == [1, 1, 2, 2]


def test_constants_in_attributes_and_casts_become_float16() -> None:
    nodes = [
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Constant", [], ["row"], value=numpy_helper.from_array(np.array([1.5, -3], np.float32))),
        helper.make_node("Mul", ["x", "two"], ["a"]),
        helper.make_node("ConstantOfShape", ["shape"], ["halves"],
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Add", ["a", "row"], ["b"]),
        helper.make_node("Sub", ["b", "halves"], ["c"]),
        helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              initializer=[numpy_helper.from_array(np.array([2], np.int64), "shape")])
    half = to_float16(hand_model(graph))
    onnx.checker.check_model(half, full_check=True)
    assert {n.op_type for n in half.graph.node} <= CONVERTED_OPS
    (y,) = run_onnx(half, {"x": np.array([1.0, 2.0])})
    assert y.dtype == np.float32 and y.tolist() == [3.0, 0.5]


def test_unknown_op_and_weights_beyond_float16_are_refused() -> None:
    graph = helper.make_graph([helper.make_node("Selu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(Float16Error, match="no float16 conversion for ONNX op.s.: Selu"):
        to_float16(hand_model(graph))
    big = numpy_helper.from_array(np.array([1e5], np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[big])
    with pytest.raises(Float16Error, match="initializer 'w' holds values beyond the float16 range"):
        to_float16(hand_model(graph))


# A spec that uses most IR ops, so that every ONNX op the backend emits for them is converted.
OP_ZOO = """
model zoo(c: int = 8) {
    input x: f32[N=1, c, H=8, W=8]
    a = conv(x, c, kernel=3, padding=1) as conv
    a = batchnorm(a) as bn
    b = shift(hardswish(a), [[0, 1], [1, 0], [0, -1], [-1, 0]])
    b = pad(b, [1, 1, 1, 1], mode="reflect")
    b = maxpool(b, kernel=3, stride=1)
    u = unfold(tanh(x), kernel=3, padding=1)
    u = conv(u, c, kernel=1) as fold
    g = groupnorm(gelu(u), groups=2) as gn
    r = roll(g, [1, 2], [2, 3])
    s = resize(avgpool(r, kernel=2), scale=[2, 2], mode="nearest")
    l = layernorm(transpose(s, [0, 2, 3, 1])) as ln
    l = transpose(linear(l, c) as fc, [0, 3, 1, 2])
    p, q = split(l, [4, 4], axis=1)
    t = concat([sqrt(sigmoid(p)), exp(-silu(q))], axis=1)
    m = softmax(reduce_mean(t, [3], keepdims=true), axis=1)
    output y = relu(t * m + slice(x, 3, 0, 8)) - reduce_max(x, [1], keepdims=true)
    output z = identity(linear(reduce_sum(x, [2, 3]), 4) as head)
}
"""


# The elementwise ops of the edge models (MobileNet's relu6 and hardsigmoid) and the other min/max forms.
CLIP_ZOO = """
model clips() {
    input x: f32[N=1, 4, 6, 6]
    input c: f32[N=1, 4, 6, 6]
    a = relu6(x) + hardsigmoid(x) + clamp(x, min=-1.0, max=2.0) + clamp(x, min=0.5) + clamp(x, max=0.5)
    b = minimum(a, x) + maximum(a, x) + reduce_min(x, [1], keepdims=true)
    output y = where(c, a, b)
}
"""


def test_every_declared_onnx_op_is_converted() -> None:
    from netdsl.backends.onnx_ops import LOWERINGS, emitted_ops

    emitted = set().union(*(emitted_ops(op) for op in LOWERINGS))
    assert emitted - CONVERTED_OPS == set()


@pytest.mark.parametrize("target", ONNX_TARGETS)
def test_clip_ops_convert_and_run(write_spec, target: str) -> None:
    result = lowered(write_spec(CLIP_ZOO), target)
    model = to_onnx(result.graph, result.weights)
    half = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    feeds = normal_feeds(result.graph)
    feeds["c"] = (feeds["c"] > 0).astype(np.float32)
    for got, want in zip(run_onnx(half, feeds), run_onnx(model, feeds), strict=True):
        assert relative_error(got, want) < TOLERANCE


# The last case emits the ops as they are, but for those the emitter has no one-op form of.
@pytest.mark.parametrize(("target", "passes"), [(t, None) for t in ONNX_TARGETS] + [("onnx", ONNX_FORMS)])
def test_every_emitted_op_converts_and_runs(write_spec, target: str, passes: list[str] | None) -> None:
    result = lowered(write_spec(OP_ZOO), target, passes)
    model = to_onnx(result.graph, result.weights)
    half = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    feeds = normal_feeds(result.graph)
    for got, want in zip(run_onnx(half, feeds), run_onnx(model, feeds), strict=True):
        assert relative_error(got, want) < TOLERANCE


# ---- the range check, through the CLI ----------------------------------------------------------------


NAIVE_SOFTMAX = """
# A softmax written without the max subtraction.
model naive_softmax(scale: float = 10.0) {
    input x: f32[N=1, 4, 8, 16]
    logits = x * scale
    e = exp(logits)
    output y = e / reduce_sum(e, [3], keepdims=true)
}
"""


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return err.rstrip("\n").splitlines()


def test_naive_softmax_is_a_located_error(write_spec, run_cli, tmp_path: Path) -> None:
    spec = write_spec(NAIVE_SOFTMAX)
    out = tmp_path / "naive.onnx"
    code, _, err = run_cli(["compile", spec, "--dtype", "float16", "-o", out])
    # The same seeded calibration inputs, and the largest exp of them, computed here with numpy.
    peak = max(float(np.max(np.exp(b["x"] * np.float32(10.0)))) for b in calibration_batches(load_graph(spec), 8, 0))
    assert code == 2 and not out.exists()
    assert error_lines(err) == [
        f"error: exp 'e' overflows float16: max |x| = {peak:.6g} on 8 calibration samples, above {F16_LIMIT}",
        f"  --> {spec}:5:9",
        "  |",
        "5 |     e = exp(logits)",
        "  |         ^^^^^^^^^^^",
        "   = note: value 'e' f32[1,4,8,16]",
        "   = note: 2 later value(s) are out of range too, the first 'reduce_sum' (reduce_sum)",
        "   = help: subtract the maximum before exp (softmax(x) does, or exp(x - reduce_max(x, axes, keepdims=true))) "
        "or scale its input down; or compile this model in float32 (--dtype float32)",
    ]


def test_float16_only_nan_is_a_located_error(write_spec, run_cli, tmp_path: Path) -> None:
    # 1e-8 is below the smallest float16 (about 6e-8): d is 0 in float16 and d / d is NaN, while it is 1 in float32.
    spec = write_spec("""
        model ratio() {
            input x: f32[N=2, 4]
            d = x * 0.00000001
            output y = d / d
        }
        """)
    out = tmp_path / "ratio.onnx"
    code, _, err = run_cli(["compile", spec, "--dtype", "float16", "--calib-samples", "4", "-o", out])
    lines = error_lines(err)
    assert code == 2 and not out.exists()
    assert lines[0] == ("error: div 'y' is Inf or NaN in float16 although it stays finite in float32 "
                        "(max |x| = 1 on 4 calibration samples)")
    assert lines[1] == f"  --> {spec}:4:16"
    assert lines[-1] == ("   = help: keep the divisor away from 0 (add an epsilon) or scale the operands; "
                         "or compile this model in float32 (--dtype float32)")


# A weight no float16 can hold (declared on line 4 of the spec).
SCALED_BEYOND_FLOAT16 = """
    model scaled() {
        input x: f32[N=1, 4, 2, 2]
        param gain: f32[1, 4, 1, 1] = 100000.0
        output y = x * gain
    }
    """


def test_parameter_beyond_float16_is_located_at_its_declaration(write_spec, run_cli, tmp_path: Path) -> None:
    spec = write_spec(SCALED_BEYOND_FLOAT16)
    code, _, err = run_cli(["compile", spec, "--dtype", "float16", "-o", tmp_path / "s.onnx"])
    lines = error_lines(err)
    assert code == 2 and not (tmp_path / "s.onnx").exists()
    assert lines[0] == f"error: parameter 'gain' f32[1,4,1,1] does not fit float16: max |w| = 100000, above {F16_LIMIT}"
    assert lines[1] == f"  --> {spec}:3:5"


SCALED_ATTENTION = """
model scaled_attention(gain: float = 300.0) {
    input q: f32[N=1, 2, 16, 8]
    input k: f32[N, 2, 16, 8]
    input v: f32[N, 2, 16, 8]
    output y = attention(q * gain, k * gain, v, scale=0.0001)
}
"""


def test_attention_logits_before_the_scale_are_checked(write_spec, run_cli, tmp_path: Path) -> None:
    # The scaled logits are small, but q @ kᵀ, the product attention_to_matmul computes before the scale, is not.
    spec = write_spec(SCALED_ATTENTION)
    code, _, err = run_cli(["compile", spec, "--dtype", "float16", "-o", tmp_path / "a.onnx"])
    lines = error_lines(err)
    assert code == 2
    assert re.fullmatch(r"error: matmul 'y\.matmul' overflows float16: max \|x\| = "
                        r"[0-9.e+]+ on 8 calibration samples, above 65504", lines[0])
    assert lines[1] == f"  --> {spec}:5:16"
    assert "   = note: created by pass attention_to_matmul from the op written here" in lines
    assert lines[-1].startswith("   = help: scale the operands down (for attention logits q @ kᵀ: q or k")


def test_node_created_by_a_pass_names_the_pass(write_spec, run_cli, tmp_path: Path) -> None:
    # trt-restricted lowers attention to broadcast products summed by a conv: the products overflow.
    spec = write_spec(SCALED_ATTENTION)
    code, _, err = run_cli(["compile", spec, "--target", "trt-restricted", "--dtype", "float16",
                            "-o", tmp_path / "a.onnx"])
    lines = error_lines(err)
    assert code == 2 and not (tmp_path / "a.onnx").exists()
    assert re.fullmatch(r"error: mul 'y\.product' overflows float16: max \|x\| = [0-9.e+]+ on 8 calibration samples, "
                        r"above 65504", lines[0])
    assert lines[1] == f"  --> {spec}:5:16"
    assert "   = note: created by pass lower_attention from the op written here" in lines


def test_calibration_data_drives_the_check(write_spec, run_cli, tmp_path: Path) -> None:
    spec = write_spec(NAIVE_SOFTMAX)
    out = tmp_path / "n.onnx"
    # Standard-normal inputs keep exp(x) small at scale 1 ...
    code, stdout, _ = run_cli(["compile", spec, "--dtype", "float16", "--set", "scale=1.0", "-o", out])
    assert code == 0 and out.exists()
    assert re.search(r"float16 range check: 8 samples, largest \|x\| [0-9.]+ at 'reduce_sum' \(reduce_sum\)", stdout)
    out.unlink()
    # ... calibration samples around 12 do not (exp(11.1) is above 65504).
    np.save(tmp_path / "calib.npy", np.full((3, 4, 8, 16), 12.0, np.float32))
    code, _, err = run_cli(["compile", spec, "--dtype", "float16", "--set", "scale=1.0",
                            "--calib", tmp_path / "calib.npy", "-o", out])
    assert code == 2 and not out.exists()
    assert error_lines(err)[0] == ("error: exp 'e' overflows float16: max |x| = 162755 on 3 calibration samples, "
                                   "above 65504")


def test_no_range_check_warns_and_writes(write_spec, run_cli, tmp_path: Path) -> None:
    out = tmp_path / "n.onnx"
    code, _, err = run_cli(["compile", write_spec(NAIVE_SOFTMAX), "--dtype", "float16", "--no-range-check", "-o", out])
    assert code == 0 and out.exists()
    assert err.startswith("warning: --no-range-check: the float16 model is written unchecked")


@pytest.mark.parametrize(("argv", "message"), [
    (["--io-dtype", "float16"], "error: --io-dtype only apply with --dtype float16"),
    (["--dtype", "float16", "--target", "torch"], "error: --dtype float16 applies to the ONNX targets"),
    (["--dtype", "float16", "--calib-samples", "0"], "error: --calib-samples must be positive, found 0"),
])
def test_bad_float16_flags(repo_root: Path, run_cli, tmp_path: Path, argv: list[str], message: str) -> None:
    code, _, err = run_cli(["compile", repo_root / "specs" / "csa.net", *argv, "-o", tmp_path / "o.onnx"])
    assert code == 2 and error_lines(err)[0] == message and not (tmp_path / "o.onnx").exists()


def test_float16_compiles_are_byte_identical(repo_root: Path, run_cli, tmp_path: Path) -> None:
    outputs = []
    for name in ("a.onnx", "b.onnx"):
        code, stdout, _ = run_cli(["compile", repo_root / "specs" / "csa.net", "--target", "trt-restricted",
                                   "--dtype", "float16", "-o", tmp_path / name])
        assert code == 0 and "--fp16" in stdout  # the printed trtexec command builds in FP16
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    model = onnx.load_from_string(outputs[0])
    # trt-restricted allows no Cast, so its inputs and outputs default to float16.
    assert elem_types([*model.graph.input, *model.graph.output]) == {TensorProto.FLOAT16}
    assert "Cast" not in {n.op_type for n in model.graph.node}


# ---- softmax lowerings keep the max subtraction ----------------------------------------------------


ATTENTION = """
model big_attention() {
    input q: f32[N=1, 2, 16, 4]
    input k: f32[N, 2, 16, 4]
    input v: f32[N, 2, 16, 4]
    output y = attention(q, k, v, scale=1.0)
}
"""

LOCAL_ATTENTION = """
model local() {
    input q: f32[N=1, 8, 6, 6]
    input k: f32[N, 8, 6, 6]
    input v: f32[N, 8, 6, 6]
    output y = local_attention(q, k, v, heads=2, kernel=3)
}
"""

# Pipelines through which a softmax reaches ONNX: every target's, and a fully elementwise one
# in which softmax_decompose writes the max subtraction out (with a Reduce-free maximum).
PIPELINES = [(t, None) for t in ONNX_TARGETS] + [
    ("trt", ["lower_attention", "softmax_decompose", "reduce_max_to_elementwise", "reduce_to_conv"]),
]


def producer(graph: Graph, value: str) -> str:
    return next(n.op for n in graph.nodes if value in n.outputs)


@pytest.mark.parametrize("spec", [ATTENTION, LOCAL_ATTENTION])
@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_attention_lowerings_keep_a_softmax(write_spec, spec: str, target: str) -> None:
    # The lowered attention normalises with the softmax op, whose semantics subtract the row maximum.
    graph = lowered(write_spec(spec), target).graph
    ops = [n.op for n in graph.nodes]
    assert ops.count("softmax") == 1 and "exp" not in ops
    assert not {"attention", "local_attention"} & set(ops)


@pytest.mark.parametrize("reduce_free", [False, True])
def test_softmax_decompose_subtracts_the_maximum_before_exp(write_spec, reduce_free: bool) -> None:
    passes = ["softmax_decompose"] + (["reduce_max_to_elementwise"] if reduce_free else [])
    result = lowered(write_spec("model s() {\n input x: f32[N=2, 3, 7]\n output y = softmax(x, axis=2)\n}\n"),
                     "onnx", passes)
    graph = result.graph
    (exp,) = [n for n in graph.nodes if n.op == "exp"]
    (shifted,) = [n for n in graph.nodes if exp.inputs[0] in n.outputs]
    assert shifted.op == "sub" and shifted.inputs[0] == "x"
    peak_op = producer(graph, shifted.inputs[1])
    assert peak_op == ("add" if reduce_free else "reduce_max")  # a + relu(b - a) trees without Reduce
    # The subtrahend is the row maximum: observe it in the interpreter.
    seen: dict[str, np.ndarray] = {}
    x = np.random.default_rng(0).standard_normal((2, 3, 7)).astype(np.float32) * 1e4
    run_graph(graph, {}, {"x": x}, observe=lambda node, outs: seen.update(zip(node.outputs, outs, strict=True)))
    np.testing.assert_allclose(seen[shifted.inputs[1]], x.max(axis=2, keepdims=True), rtol=1e-6)


def large_logit_inputs() -> dict[str, np.ndarray]:
    """Attention inputs whose logits q·k reach ±9984 with gaps of at least 64 in each row.

    Only channel 0 of q and k is non-zero: q is ±1 or ±2 and k is 64·m for distinct integers m
    per head, so every logit is a multiple of 64 below 2**14, exact in float16. A naive exp
    overflows float16 above 11.09; with the maximum subtracted the weights are one-hot to within
    exp(-64), so the output is v at the arg-max key.
    """
    rng = np.random.default_rng(0)
    q = np.zeros((1, 2, 16, 4), np.float32)
    k = np.zeros((1, 2, 16, 4), np.float32)
    q[..., 0] = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(1, 2, 16))
    k[..., 0] = 64.0 * np.stack([rng.permutation(np.arange(-78, 79))[:16] for _ in range(2)])[None]
    return {"q": q, "k": k, "v": rng.standard_normal((1, 2, 16, 4)).astype(np.float32)}


@pytest.mark.parametrize(("target", "passes"), PIPELINES)
def test_large_logits_stay_finite_in_float16(write_spec, run_cli, tmp_path: Path, target: str,
                                             passes: list[str] | None) -> None:
    spec = write_spec(ATTENTION)
    feeds = large_logit_inputs()
    logits = feeds["q"] @ feeds["k"].swapaxes(-1, -2)
    assert np.abs(logits).max() > 9000
    want = run_graph(load_graph(spec), {}, feeds, dtype=np.float64)["y"]
    result = lowered(spec, target, passes)
    (emulated,) = run_graph(result.graph, result.weights or {}, feeds, storage=np.float16).values()
    assert np.isfinite(emulated).all()
    np.testing.assert_allclose(emulated, want, atol=TOLERANCE * np.abs(want).max())
    out = tmp_path / "a.onnx"
    flags = ["--passes", ",".join(passes)] if passes else []
    code, _, err = run_cli(["compile", spec, "--target", target, "--dtype", "float16", *flags, "-o", out])
    assert code == 0, err
    (got,) = run_onnx(onnx.load(str(out)), feeds)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.astype(np.float64), want, atol=TOLERANCE * np.abs(want).max())


def test_unchecked_weight_beyond_float16_is_refused(write_spec, run_cli, tmp_path: Path) -> None:
    spec = write_spec(SCALED_BEYOND_FLOAT16)
    out = tmp_path / "s.onnx"
    code, _, err = run_cli(["compile", spec, "--dtype", "float16", "--no-range-check", "-o", out])
    assert code == 2 and not out.exists()
    assert error_lines(err)[-1] == ("error: initializer 'gain' holds values beyond the float16 range "
                                    "(max |x| 100000); nothing was written")


def test_calibration_batches_are_made_as_they_are_iterated(write_spec) -> None:
    # Each iteration draws the same batches again (the seeded generator restarts), one at a time; data cycles.
    from netdsl.range_check import observe_ranges

    graph = load_graph(write_spec("model m() {\n input x: f32[N=2, 3]\n output y = exp(x)\n}\n"))
    batches = calibration_batches(graph, 5, 7)
    first, again = list(batches), list(batches)
    assert len(first) == 3 and all(b["x"].shape == (2, 3) for b in first)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert first[0]["x"] is not again[0]["x"]  # made again, not held
    data = np.arange(9, dtype=np.float32).reshape(3, 3)
    assert [b["x"][:, 0].tolist() for b in calibration_batches(graph, 3, 0, data)] == [[0.0, 3.0], [6.0, 0.0]]
    report = observe_ranges(graph, {}, batches)
    assert report.samples == 6
    assert report.stats["y"].max_abs == max(float(np.exp(b["x"]).max()) for b in first)


def test_range_checks_report_each_run(write_spec) -> None:
    # The compile command's progress bar counts runs: two per batch for float16 (float32 and float16 storage), one
    # per batch for the input ranges; len() of the batches is how many an iteration gives.
    from netdsl.range_check import check_input_ranges, observe_ranges

    graph = load_graph(write_spec("model m() {\n input x: f32[N=2, 3]\n output y = exp(x)\n}\n"))
    data = np.arange(9, dtype=np.float32).reshape(3, 3)
    for batches, count in ((calibration_batches(graph, 5, 7), 3), (calibration_batches(graph, 3, 0, data), 2),
                           (calibration_batches(graph, 8, 0, data), 2)):
        assert len(batches) == count == len(list(batches))
        runs: list[int] = []
        observe_ranges(graph, {}, batches, partial(runs.append, 1))
        assert len(runs) == 2 * count
    # A range-limited lowering's node (as sqrt_decompose marks them): one float32 run per batch.
    b = GraphBuilder("limited")
    b.output(b.op("exp", [b.input("x", TensorType("f32", (2, 3)))], name="y", input_range=("exp", -100.0, 100.0)))
    runs = []
    assert len(check_input_ranges(b.graph, {}, calibration_batches(b.graph, 5, 7), partial(runs.append, 1))) == 1
    assert len(runs) == 3


def test_small_models_check_float16_on_one_blas_thread() -> None:
    from netdsl.range_check import ONE_BLAS_THREAD_BELOW, blas_threads

    small = {"w": np.zeros(ONE_BLAS_THREAD_BELOW // 4 - 1, dtype=np.float32)}
    large = {"w": np.zeros(ONE_BLAS_THREAD_BELOW // 2, dtype=np.float16), "b": np.zeros(1, dtype=np.float32)}
    assert blas_threads(small) == 1 and blas_threads(large) is None
