"""Weight sharing: ``as shared NAME`` applies a layer or block again with the same parameters.

CBAM's channel MLP (``specs/blocks/cbam_shared.net``) is the worked case: one set of MLP weights
in the ONNX model (every target), one parameter per weight in the PyTorch module, gradients of
both applications summed, and the same numbers in ONNX Runtime and PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from test_diagnostics import parse_report

from netdsl import api
from netdsl.diagnostics import NetdslError
from netdsl.ir import Graph
from netdsl.parser import parse_source

REPO = Path(__file__).resolve().parents[1]
CBAM = REPO / "specs" / "blocks" / "cbam_shared.net"
MLP = ("channel.mlp.0.weight", "channel.mlp.0.bias", "channel.mlp.2.weight", "channel.mlp.2.bias")


@pytest.fixture(scope="module")
def cbam() -> Graph:
    return api.load(CBAM)


def test_one_set_of_mlp_parameters_in_the_graph(cbam) -> None:
    assert [p for p in cbam.params if p.startswith("channel.")] == list(MLP)
    readers = [n for n in cbam.nodes if "channel.mlp.0.weight" in n.inputs]
    assert len(readers) == 2  # the average- and the max-pooled vector


@pytest.mark.parametrize("target", ["onnx", "trt", "trt-restricted", "trt-dla"])
def test_one_set_of_mlp_weights_in_each_onnx_output(cbam, target: str) -> None:
    model = api.to_onnx(cbam, target)
    weights = api.initial_weights(cbam)
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    holding = [name for name, value in arrays.items()
               if any(value.size == weights[w].size and np.array_equal(value.ravel(), weights[w].ravel()) for w in MLP)]
    assert sorted(holding) == sorted(MLP)  # each MLP array once, under its spec name


def test_restricted_output_is_covered(cbam) -> None:
    report = api.coverage(api.to_onnx(cbam, "trt-restricted"), "trt-restricted")
    assert report.covered, report.violation_lines()


def test_one_parameter_per_weight_in_the_module(cbam) -> None:
    module = api.build_module(cbam)
    names = [name for name, _ in module.named_parameters()]
    assert [n for n in names if n.startswith("channel.")] == list(MLP)
    assert sum(p.numel() for p in module.parameters()) == sum(
        p.type.numel for p in cbam.params.values() if p.kind == "param")


def unshared(tmp_path: Path) -> Path:
    """CBAM with the second MLP application under its own name (two independent MLPs)."""
    text = CBAM.read_text().replace("hidden) as shared channel.mlp\n    x = x", "hidden) as channel.mlp2\n    x = x")
    text = text.replace("as shared channel.mlp", "as channel.mlp")
    assert "channel.mlp2" in text
    path = tmp_path / "cbam_unshared.net"
    path.write_text(text)
    return path


def test_gradients_of_both_uses_are_summed(cbam, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 64, 28, 28)
    shared = api.build_module(cbam)
    split_graph = api.load(unshared(tmp_path))
    weights = api.initial_weights(cbam)
    weights.update({name.replace("channel.mlp.", "channel.mlp2."): value for name, value in weights.items()
                    if name.startswith("channel.mlp.")})
    split = api.build_module(split_graph, weights)
    for module in (shared, split):
        module(x).square().sum().backward()
    grads = dict(shared.named_parameters())
    split_grads = dict(split.named_parameters())
    for name in MLP:
        expected = split_grads[name].grad + split_grads[name.replace("mlp.", "mlp2.")].grad
        torch.testing.assert_close(grads[name].grad, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["onnx", "trt-restricted"])
def test_onnx_runtime_and_torch_agree(cbam, target: str) -> None:
    x = np.random.default_rng(1).standard_normal((1, 64, 28, 28)).astype(np.float32)
    module = api.build_module(cbam).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(api.to_onnx(cbam, target).SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


SHARED_CONV = """
model M(c: int = 4) {{
    input x: f32[N=1, c, H=8, W=8]
    a = conv(x, 8, kernel=1) as proj
    b = conv({second}, 8, kernel=1) as {how} proj
    output y = a + b
}}
"""


def test_shared_layer_with_another_input_width_is_a_located_error(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.net").write_text(SHARED_CONV.format(second="concat([x, x], axis=1)", how="shared").lstrip())
    code, out, err = run_cli(["check", "t.net"])
    r = parse_report(err)
    assert code == 2 and out == ""
    assert r.message == ("shared parameter 'proj.weight' would be param f32[8,8,1,1] here, but it was created as "
                         "param f32[8,4,1,1]")
    assert r.location == "t.net:4:61" and r.underlined == "proj"
    assert r.notes == ["'proj.weight' is first created at t.net:3:9"]
    assert r.help == "a shared layer needs the same input channels and sizes at every use"


def test_a_second_layer_of_the_same_name_points_to_sharing(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.net").write_text(SHARED_CONV.format(second="x", how="").lstrip())
    code, _, err = run_cli(["check", "t.net"])
    r = parse_report(err)
    assert code == 2 and r.message == "parameter 'proj.weight' is already defined"
    assert r.notes == ["'proj.weight' is first created at t.net:3:9"]
    assert "'as shared NAME'" in r.help


def test_shared_is_reserved() -> None:
    with pytest.raises(NetdslError):
        parse_source("block B() { input x: f32[1] \n let shared = 1 \n output y = relu(x) }", "b.net")
