"""TensorRT coverage validator: per-node verdicts, limits, global rules, provenance, reports and the
``netdsl coverage`` command, on models built with onnx.helper and exported by torch.onnx.export."""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from netdsl.commands import coverage as coverage_cmd
from netdsl.coverage.checker import check_coverage, fully_typed
from netdsl.coverage.profile import LEVELS, load_profile
from netdsl.coverage.report import CoverageReport, NodeCoverage, render_coverage

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
RESTRICTED = load_profile("trt-restricted")
STANDARD = load_profile("trt")
DLA = load_profile("trt-dla")


def const(name: str, value: np.ndarray | list, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               initializers: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def tensor(name: str, shape: list, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_only_model() -> onnx.ModelProto:
    """Conv, BN, activations, elementwise, shuffles, concat, slice, softmax, resize by scales, pooling."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["dw"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], group=8, name="dw"),
        helper.make_node("Sigmoid", ["dw"], ["s"], name="sig"),
        helper.make_node("Mul", ["dw", "s"], ["swish"], name="swish"),
        helper.make_node("Resize", ["swish", "", "down"], ["small"], mode="linear",
                         coordinate_transformation_mode="half_pixel", name="down"),
        helper.make_node("Reshape", ["small", "shape_a"], ["q"], name="view"),
        helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 1, 3, 2], name="rot"),
        helper.make_node("Reshape", ["qt", "shape_b"], ["k"], name="unview"),
        helper.make_node("Softmax", ["k"], ["attn"], axis=1, name="softmax"),
        helper.make_node("Resize", ["attn", "", "up"], ["big"], mode="linear",
                         coordinate_transformation_mode="half_pixel", name="up"),
        helper.make_node("Add", ["big", "x8"], ["res"], name="residual"),
        helper.make_node("Slice", ["res", "starts", "ends", "axes"], ["half"], name="slice"),
        helper.make_node("Concat", ["half", "half"], ["cat"], axis=1, name="concat"),
        helper.make_node("AveragePool", ["cat"], ["y"], kernel_shape=[8, 8], name="pool"),
    ]
    inits = [
        const("w1", rng.standard_normal((8, 3, 3, 3))), const("b1", np.zeros(8)),
        const("g", np.ones(8)), const("be", np.zeros(8)), const("m", np.zeros(8)), const("v", np.ones(8)),
        const("w2", rng.standard_normal((8, 1, 5, 5))),
        const("down", [1, 1, 0.5, 0.5]), const("up", [1, 1, 2, 2]),
        const("shape_a", [2, 8, 4, 4], np.int64), const("shape_b", [2, 8, 4, 4], np.int64),
        const("x8", rng.standard_normal((1, 8, 1, 1))),
        # torch-style "to the end" bound: INT64 max on a static axis
        const("starts", [0], np.int64), const("ends", [2**63 - 1], np.int64), const("axes", [1], np.int64),
    ]
    return make_model(nodes, [tensor("x", [2, 3, 8, 8])], [tensor("y", [2, 16, 1, 1])], inits)


class Attention(torch.nn.Module):
    """A standard pre-norm transformer block: LayerNorm, MatMul attention, Softmax, GELU (Erf)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.fc = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1)
        return x + torch.nn.functional.gelu(self.fc(attn @ v))


class ConvAttention(torch.nn.Module):
    """A CSA-style block: depthwise conv, swish, resize by scale, rotation, gate, pooling, squeeze."""

    def __init__(self, c: int = 16, s: int = 4):
        super().__init__()
        self.v = torch.nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.bn = torch.nn.BatchNorm2d(c)
        self.q = torch.nn.Conv2d(c, s * s, 1)
        self.gate = torch.nn.Conv2d(s * s, c, 1)
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, s = int(x.shape[2]), self.s
        v = self.bn(self.v(x))
        v = v * torch.sigmoid(v)
        q = self.q(torch.nn.functional.interpolate(v, scale_factor=s / h, mode="bilinear"))
        k = q.reshape(q.shape[0], s * s, s * s).transpose(1, 2).reshape(q.shape)
        r = torch.nn.functional.interpolate(q * k, scale_factor=h / s, mode="bilinear")
        y = x + torch.sigmoid(self.gate(r)) * v
        return torch.nn.functional.avg_pool2d(y, h).squeeze()


def export(module: torch.nn.Module, shape: tuple[int, ...], path: Path) -> onnx.ModelProto:
    torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17)
    return onnx.load(str(path))


def by_op(report: CoverageReport, op: str) -> list[NodeCoverage]:
    return [n for n in report.nodes if n.op == op]


@pytest.fixture(scope="module")
def attention_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attn") / "attention.onnx"
    export(Attention(), (1, 8, 16), path)
    return path


def test_conv_only_model_is_fully_covered_and_runs() -> None:
    model = conv_only_model()
    onnx.checker.check_model(model, full_check=True)
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.ones((2, 3, 8, 8), np.float32)})
    assert y.shape == (2, 16, 1, 1)
    report = check_coverage(model, RESTRICTED)
    assert report.covered, report.violation_lines()
    assert (report.covered_count, report.total, report.graph_violations) == (16, 16, [])
    assert 0 < report.assumed_count < report.total  # Conv and Relu are confirmed, the rest assumed
    conv = by_op(report, "Conv")[0]
    assert conv.layer == "IConvolutionLayer" and conv.status == "confirmed" and not conv.assumed


def test_attention_export_lists_every_disallowed_node(attention_onnx: Path) -> None:
    report = check_coverage(onnx.load(str(attention_onnx)), RESTRICTED)
    assert not report.covered
    uncovered = {n.op for n in report.violations()}
    assert {"MatMul", "LayerNormalization", "Erf"} <= uncovered
    matmuls = by_op(report, "MatMul")
    assert len(matmuls) == 4 and not any(n.covered for n in matmuls)
    assert all("matmul_to_conv" in n.rewrite and "not supported in safety" in n.reasons[0] for n in matmuls)
    (norm,) = by_op(report, "LayerNormalization")
    assert norm.layer == "INormalizationLayer" and "INormalizationLayer" in norm.reasons[0] and norm.rewrite
    (erf,) = by_op(report, "Erf")
    assert "kERF" in erf.reasons[0]
    assert erf.rewrite.startswith("netdsl lowers Erf for --target trt-restricted and trt-dla")
    (softmax,) = by_op(report, "Softmax")
    assert softmax.covered and softmax.assumed
    # chunk() slices at offsets computed from Shape at run time
    slices = by_op(report, "Slice")
    assert slices and all(any("computed at run time" in r for r in n.reasons) for n in slices)
    lines = report.violation_lines()
    assert len(lines) == report.uncovered_count and any("LayerNormalization" in line for line in lines)


def test_attention_export_is_covered_by_the_standard_profile(attention_onnx: Path) -> None:
    report = check_coverage(onnx.load(str(attention_onnx)), STANDARD)
    assert report.covered and report.covered_count == report.total


def test_torch_exported_conv_attention_is_restricted_clean(tmp_path: Path) -> None:
    model = export(ConvAttention(), (2, 16, 8, 8), tmp_path / "csa.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Resize", "Reshape", "Transpose", "Sigmoid", "AveragePool"} <= ops
    report = check_coverage(model, RESTRICTED)
    assert report.covered, report.violation_lines()


def test_resize_to_sizes_is_rejected_with_scales_allowed() -> None:
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", name="r")]
    model = make_model(nodes, [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 4, 4, 4])],
                       [const("sizes", [1, 4, 4, 4], np.int64)])
    (node,) = check_coverage(model, RESTRICTED).nodes
    assert node.reasons == ["Resize uses `sizes`; the profile allows only constant `scales`"]
    assert "scale factor" in node.rewrite
    assert check_coverage(model, STANDARD).covered


def test_user_profile_kernel_limit(tmp_path: Path) -> None:
    path = tmp_path / "small-kernels.toml"
    path.write_text(textwrap.dedent("""
        [profile]
        name = "small-kernels"
        [sources]
        LAB = "https://example.org/measured"
        [ops.Conv]
        layer = "IConvolutionLayer"
        status = "confirmed"
        source = "LAB"
        [[ops.Conv.limits]]
        check = "kernel"
        min = 1
        max = 8
        source = "LAB"
        rewrite = "split into two smaller convs"
        """))
    profile = load_profile(path)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[9, 9], name="big"),
             helper.make_node("Relu", ["y"], ["z"], name="act")]
    model = make_model(nodes, [tensor("x", [1, 2, 16, 16])], [tensor("z", [1, 2, 8, 8])],
                       [const("w", np.zeros((2, 2, 9, 9)))])
    conv, relu = check_coverage(model, profile).nodes
    assert conv.reasons == ["Conv kernel 9x9 exceeds limit 1..8"]
    assert conv.rewrite == "split into two smaller convs" and conv.sources == ["LAB"]
    assert not relu.covered and "not listed" in relu.reasons[0] and relu.layer == "(no rule)"


def test_dla_limits() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=[9, 9], name="strided"),
        helper.make_node("Resize", ["c", "", "half"], ["d"], mode="nearest", name="down"),
        helper.make_node("MatMul", ["d", "m"], ["e"], name="weights"),
        helper.make_node("MatMul", ["e", "e"], ["f"], name="pair"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 20, 20])], [tensor("f", [1, 4, 1, 1])],
                       [const("w", np.zeros((4, 4, 3, 3))), const("half", [1, 1, 0.5, 0.5]),
                        const("m", np.zeros((1, 1)))])
    conv, resize, weights, pair = check_coverage(model, DLA).nodes
    assert conv.reasons == ["Conv stride 9x9 exceeds limit 1..8"]
    assert "Resize scales [1, 1, 0.5, 0.5] are not whole numbers" in resize.reasons
    assert "Resize resize scale 0.5x0.5 is below limit 1..32" in resize.reasons
    assert weights.covered
    assert not pair.covered and "two run-time tensors" in pair.reasons[0]


def test_dynamic_batch_and_int64_are_global_violations() -> None:
    nodes = [helper.make_node("ArgMax", ["x"], ["idx"], axis=1, name="argmax"),
             helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flat")]
    model = make_model(nodes, [tensor("x", ["N", 4, 2, 2])],
                       [tensor("idx", ["N", 1, 2, 2], TensorProto.INT64), tensor("flat", ["N", 16])],
                       [const("shape", [0, -1], np.int64)])
    report = check_coverage(model, RESTRICTED)
    (graph_violation,) = report.graph_violations
    assert graph_violation.check == "static_shapes"
    assert "'x' has a dynamic shape [N, 4, 2, 2]" in graph_violation.message
    argmax, flat = report.nodes
    assert "output 'idx' is an INT64 tensor computed at run time" in argmax.reasons
    assert flat.covered  # its INT64 shape is a constant, and the dynamic dim comes from the input
    standard = check_coverage(model, STANDARD)
    assert not standard.graph_violations and standard.nodes[1].covered


def test_slice_parameters_and_qdq() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Slice", ["x", "start", "end", "axis"], ["a"], name="static_slice"),
        helper.make_node("Slice", ["x", "shape", "end", "axis"], ["b"], name="shape_slice"),
        helper.make_node("QuantizeLinear", ["a", "scale", "zp"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp_bad"], ["y"], name="dequant"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 4, 4])],
                       [tensor("y", [1, 2, 4, 4]), tensor("b", None)],
                       [const("start", [2], np.int64), const("end", [2**63 - 1], np.int64),
                        const("axis", [1], np.int64), const("scale", 0.1), const("zp", 0, np.int8),
                        const("zp_bad", 3, np.int8)])
    shape, static_slice, shape_slice, quant, dequant = check_coverage(model, RESTRICTED).nodes
    assert not shape.covered and static_slice.covered and quant.covered
    assert any("'starts' (shape) is computed at run time" in r for r in shape_slice.reasons)
    assert "DequantizeLinear zero point is not 0 (asymmetric quantization); the profile needs 0" in dequant.reasons


def test_spec_provenance_is_reported() -> None:
    model = make_model([helper.make_node("Erf", ["x"], ["y"], name="stages.0/gelu_3", doc_string="csa gelu")],
                       [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    for key, value in (("netdsl.span", "specs/csa.net:12:5"), ("netdsl.block", "stages.0.1"),
                       ("netdsl.rules", "lower_attention>cse")):
        entry = model.graph.node[0].metadata_props.add()
        entry.key, entry.value = key, value
    (node,) = check_coverage(model, RESTRICTED).nodes
    assert (node.location, node.block, node.rules, node.doc) == (
        "specs/csa.net:12:5", "stages.0.1", ["lower_attention", "cse"], "csa gelu")
    assert node.where == "specs/csa.net:12:5 (stages.0.1)"
    assert report_line_mentions(check_coverage(model, RESTRICTED), "specs/csa.net:12:5 (stages.0.1): Erf")


@pytest.mark.parametrize("spec", ["specs/csa.net", "specs/blocks/vit.net", "specs/blocks/cbam.net"])
@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_an_emitted_model_is_fully_typed_and_checked_without_shape_inference(
        spec: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from netdsl import api

    model = api.emit_onnx(api.lower(api.load(REPO / spec), target, None, 0), target, 17)
    assert fully_typed(model.graph)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)  # the emitted types are inference's
    untyped = onnx.ModelProto()
    untyped.CopyFrom(model)
    del untyped.graph.value_info[:]
    assert not fully_typed(untyped.graph)
    inferred = check_coverage(untyped, load_profile(target))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("shape inference ran on a fully typed model")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    assert check_coverage(model, load_profile(target)) == inferred


def test_a_dynamic_or_subgraph_model_is_not_fully_typed() -> None:
    static = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    assert fully_typed(static.graph)
    dynamic = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 4])], [tensor("y", ["N", 4])])
    assert not fully_typed(dynamic.graph)
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [], [tensor("z", [1, 4])])
    with_if = make_model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                         [tensor("c", [], TensorProto.BOOL), tensor("x", [1, 4])], [tensor("y", [1, 4])])
    assert not fully_typed(with_if.graph)


def report_line_mentions(report: CoverageReport, text: str) -> bool:
    return any(text in line for line in report.violation_lines())


def test_json_and_rendering(attention_onnx: Path) -> None:
    report = check_coverage(onnx.load(str(attention_onnx)), RESTRICTED)
    data = json.loads(report.to_json())
    assert data["summary"] == {"covered": report.covered_count, "total": report.total,
                               "uncovered": report.uncovered_count, "assumed": report.assumed_count,
                               "levels": report.level_counts, "graph_violations": 0, "ok": False}
    covered_levels = [n["level"] for n in data["nodes"] if n["covered"]]
    assert data["summary"]["levels"] == {level: covered_levels.count(level) for level in LEVELS}
    assert {"op", "layer", "covered", "reasons", "rewrite", "location", "sources"} <= set(data["nodes"][0])
    assert data["sources"]["FORUM-SAFE"].startswith("https://forums.developer.nvidia.com/")
    out = io.StringIO()
    render_coverage(report, out, violations_only=True)
    text = out.getvalue()
    assert "LayerNormalization" in text and "IUnaryLayer (kERF)" in text and "ISoftMaxLayer" not in text
    assert f"{report.covered_count}/{report.total} nodes covered: " in text


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    coverage_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["coverage", *argv])
    return args.run(args)


def test_command_exit_codes(tmp_path: Path, attention_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv_path = tmp_path / "conv.onnx"
    onnx.save(conv_only_model(), conv_path)
    assert run_command(str(conv_path)) == 0
    out = tmp_path / "report.json"
    assert run_command(str(attention_onnx), "--profile", "trt-restricted", "--json", str(out)) == 2
    assert json.loads(out.read_text())["summary"]["ok"] is False
    assert run_command(str(attention_onnx), "--profile", "trt") == 0
    bad_profile = tmp_path / "bad.toml"
    bad_profile.write_text('[ops.Conv]\nlayer = "IConvolutionLayer"\nstatus = "maybe"\n')
    capsys.readouterr()
    assert run_command(str(conv_path), "--profile", str(bad_profile)) == 2
    assert "bad.toml:3: ops.Conv.status" in capsys.readouterr().err
    assert run_command(str(tmp_path / "missing.onnx")) == 2
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert run_command(str(garbage)) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_command_through_the_cli(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "conv.onnx"
    onnx.save(conv_only_model(), path)
    code, out, _ = run_cli(["coverage", path, "--profile", "trt-dla", "--violations-only"])
    # DLA resizes only up, by whole factors: the 0.5 down-scale is the one node it rejects
    assert code == 2 and "15/16 nodes covered: 15 confirmed, 0 evidenced, 0 assumed" in out
    assert "Resize" in out and "✗" in out and "│ down " not in out  # node names only in the wide table
    code, out, _ = run_cli(["coverage", path, "--profile", "trt-dla", "--violations-only", "--wide"])
    assert code == 2 and "│ down " in out
