"""INT8 post-training quantization (netdsl.analysis.quantize, ``netdsl quantize``) through ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

from netdsl.analysis.quantize import (
    ModelInput,
    QuantizeError,
    load_calibration_data,
    model_input,
    quantize_int8,
    run_batched,
)
from netdsl.backends.onnx_backend import save_onnx, to_onnx
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import run_pipeline

SMALL = Path(__file__).resolve().parents[1] / "specs" / "models" / "small.net"
INPUT = ModelInput("x", (1, 1, 32, 32))


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def compile_tiny_csa(path: Path, batch: int) -> Path:
    """A narrow CSA classifier of small.net, lowered for trt-restricted (BN folded), seeded weights."""
    graph = load_graph(SMALL, "csa_small", ["dim=8"], [f"x={batch}x1x32x32"])
    lowered = run_pipeline(graph, "trt-restricted", weights=initial_weights(graph, seed=3))
    save_onnx(to_onnx(lowered.graph, lowered.weights), path)
    return path


def digit_like(n: int, seed: int = 0) -> np.ndarray:
    """Sparse bright strokes on black, like upsampled digits, in [0, 1]."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 1, 32, 32)) * (rng.random((n, 1, 32, 32)) < 0.3)).astype(np.float32)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_tiny_csa(tmp_path_factory.mktemp("fp32") / "csa.onnx", batch=1)


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return digit_like(40)


@pytest.fixture(scope="module")
def quantized(float_model: Path, calibration: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The float model quantized with each calibration method."""
    out = tmp_path_factory.mktemp("int8")
    return {method: quantize_int8(float_model, calibration, out / f"{method}.onnx", method).output
            for method in ("entropy", "minmax", "percentile")}


def qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
def test_quantized_model_is_symmetric_per_tensor_int8_qdq(quantized: dict[str, Path], method: str) -> None:
    model = onnx.load(str(quantized[method]))
    nodes = qdq_nodes(model)
    assert {n.op_type for n in nodes} == {"QuantizeLinear", "DequantizeLinear"}
    for node in nodes:
        scale, zero_point = initializer(model, node.input[1]), initializer(model, node.input[2])
        assert scale.shape == () and scale > 0  # one scale per tensor
        assert zero_point.shape == () and zero_point == 0 and zero_point.dtype == np.int8  # symmetric
    producers = {out: n for n in model.graph.node for out in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
        assert producers[conv.input[1]].op_type == "DequantizeLinear"
        assert initializer(model, producers[conv.input[1]].input[0]).dtype == np.int8
        assert conv.input[2] in {t.name for t in model.graph.initializer}  # the bias stays a float constant
        assert initializer(model, conv.input[2]).dtype == np.float32


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
def test_quantized_model_stays_close_to_the_float_model(float_model: Path, quantized: dict[str, Path],
                                                        method: str) -> None:
    images = digit_like(30, seed=1)
    reference = run_batched(session(float_model), images)
    got = run_batched(session(quantized[method]), images)
    assert not np.allclose(got, reference, atol=1e-6)  # really quantized
    assert np.abs(got - reference).max() < 0.1 * np.abs(reference).max()


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
def test_quantized_model_passes_the_restricted_profile(quantized: dict[str, Path], method: str) -> None:
    report = check_coverage(onnx.load(str(quantized[method])), load_profile("trt-restricted"))
    assert report.covered, report.violation_lines()
    assert {n.op for n in report.nodes} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}


def input_scale(path: Path) -> float:
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(initializer(model, node.input[1]))


def test_calibration_methods_set_the_input_range(quantized: dict[str, Path], calibration: np.ndarray) -> None:
    # min-max: the largest |value| seen maps to 127; the others clip outliers, never widening.
    assert input_scale(quantized["minmax"]) == pytest.approx(np.abs(calibration).max() / 127, rel=1e-6)
    assert input_scale(quantized["percentile"]) <= input_scale(quantized["minmax"]) * (1 + 1e-6)
    assert input_scale(quantized["entropy"]) <= input_scale(quantized["minmax"]) * (1 + 1e-6)


def test_only_whole_batches_calibrate(tmp_path: Path) -> None:
    model = compile_tiny_csa(tmp_path / "b4.onnx", batch=4)
    assert model_input(onnx.load(str(model))) == ModelInput("x", (4, 1, 32, 32))
    result = quantize_int8(model, digit_like(10), tmp_path / "q.onnx", "minmax")
    assert (result.samples, result.batches) == (8, 2)
    # The last two samples were left out: the input range is the first eight's.
    data = digit_like(10)
    assert input_scale(result.output) == pytest.approx(np.abs(data[:8]).max() / 127, rel=1e-6)
    with pytest.raises(QuantizeError, match="too few"):
        quantize_int8(model, digit_like(3), tmp_path / "q3.onnx", "minmax")
    with pytest.raises(QuantizeError, match=r"\[2, 32, 32\] do not fit"):
        quantize_int8(model, np.zeros((8, 2, 32, 32), np.float32), tmp_path / "q3.onnx", "minmax")
    with pytest.raises(QuantizeError, match="unknown calibration method 'kl'"):
        quantize_int8(model, digit_like(8), tmp_path / "q3.onnx", "kl")
    assert not (tmp_path / "q3.onnx").exists()


def test_run_batched_pads_the_last_batch(tmp_path: Path) -> None:
    images = digit_like(10, seed=2)
    by_four = run_batched(session(compile_tiny_csa(tmp_path / "b4.onnx", batch=4)), images)
    one_by_one = run_batched(session(compile_tiny_csa(tmp_path / "b1.onnx", batch=1)), images)
    assert by_four.shape == (10, 10)
    np.testing.assert_allclose(by_four, one_by_one, rtol=1e-5, atol=1e-6)


def test_calibration_data_from_arrays(tmp_path: Path) -> None:
    data = digit_like(12)
    np.save(tmp_path / "d.npy", data.astype(np.float64))
    got = load_calibration_data(tmp_path / "d.npy", INPUT, samples=5)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data[:5])
    np.savez(tmp_path / "named.npz", x=data, y=np.arange(12))
    np.testing.assert_array_equal(load_calibration_data(tmp_path / "named.npz", INPUT, 100), data)
    np.savez(tmp_path / "single.npz", images=data)
    np.testing.assert_array_equal(load_calibration_data(tmp_path / "single.npz", INPUT, 100), data)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: np.save(p / "d.npy", np.zeros((4, 3, 32, 32))), r"shape \[3, 32, 32\]"),
    (lambda p: np.savez(p / "d.npz", a=np.zeros((4, 1, 32, 32)), b=np.zeros(3)), "holds 2 arrays"),
    (lambda p: np.save(p / "d.npy", np.full((4, 1, 32, 32), np.nan)), "NaN"),
    (lambda p: (p / "d.txt").write_text("1 2 3"), "must be a .npy or .npz"),
    (lambda p: (p / "d").mkdir(), "no images"),
])
def test_bad_calibration_data_is_reported(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(QuantizeError, match=message):
        load_calibration_data(path, INPUT, 10)


def test_calibration_data_from_an_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(3)]
    for i, pixels in enumerate(pictures):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    grey = load_calibration_data(tmp_path, INPUT, samples=2)
    assert grey.shape == (2, 1, 32, 32) and grey.dtype == np.float32
    expected = np.asarray(Image.fromarray(pictures[1]).convert("L").resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(grey[1, 0], expected / 255.0, atol=1e-7)
    rgb = load_calibration_data(tmp_path, ModelInput("x", (1, 3, 8, 12)), samples=10)
    assert rgb.shape == (3, 3, 8, 12)
    expected = np.asarray(Image.fromarray(pictures[2]).resize((12, 8), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(rgb[2], expected.transpose(2, 0, 1) / 255.0, atol=1e-7)
    with pytest.raises(QuantizeError, match="1 or 3"):
        load_calibration_data(tmp_path, ModelInput("x", (1, 2, 8, 8)), 10)


def test_cli_quantizes_and_reports_coverage(float_model: Path, calibration: np.ndarray, tmp_path: Path,
                                            run_cli) -> None:
    np.save(tmp_path / "calib.npy", calibration)
    out = tmp_path / "q.onnx"
    code, stdout, stderr = run_cli(["quantize", float_model, "--calib", tmp_path / "calib.npy", "--method", "minmax",
                                    "--samples", "500", "-o", out])
    assert code == 0, stderr
    assert f"minmax calibration on {len(calibration)} samples" in stdout
    assert "500 samples were asked for, 40 were used" in stdout
    assert "coverage (trt-restricted):" in stdout and "nodes covered" in stdout
    assert input_scale(out) == pytest.approx(np.abs(calibration).max() / 127, rel=1e-6)


def test_cli_reports_bad_input_without_writing(float_model: Path, tmp_path: Path, run_cli) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((4, 1, 16, 16), np.float32))
    out = tmp_path / "q.onnx"
    code, _, stderr = run_cli(["quantize", float_model, "--calib", tmp_path / "wrong.npy", "-o", out])
    assert code == 2 and "calibration samples have shape [1, 16, 16]" in stderr and "[1, 32, 32]" in stderr
    assert not out.exists()
    code, _, stderr = run_cli(["quantize", tmp_path / "missing.onnx", "--calib", tmp_path / "wrong.npy", "-o", out])
    assert code == 2 and "no such file" in stderr
    nowhere = tmp_path / "no" / "q.onnx"
    code, _, stderr = run_cli(["quantize", float_model, "--calib", tmp_path / "wrong.npy", "-o", nowhere])
    assert code == 2 and "does not exist" in stderr


def test_cli_fails_when_the_profile_refuses_qdq(float_model: Path, calibration: np.ndarray, tmp_path: Path,
                                               run_cli, repo_root: Path) -> None:
    profile = (repo_root / "netdsl" / "profiles" / "trt-restricted.toml").read_text()
    rule = '[ops.QuantizeLinear]\nlayer = "IQuantizeLayer"\nstatus = "unknown"\nallowed = true\n'
    assert rule in profile
    (tmp_path / "no-int8.toml").write_text(profile.replace(rule, rule.replace("allowed = true", "allowed = false")))
    np.save(tmp_path / "calib.npy", calibration)
    out = tmp_path / "q.onnx"
    code, _, stderr = run_cli(["quantize", float_model, "--calib", tmp_path / "calib.npy", "--samples", "8",
                               "--profile", tmp_path / "no-int8.toml", "-o", out])
    assert code == 2 and "are not allowed by profile" in stderr and "QuantizeLinear" in stderr
    assert out.exists()  # written, and reported as not deployable under that profile
