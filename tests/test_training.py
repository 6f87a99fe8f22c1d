"""Training generated modules (examples/train.py) and deploying the checkpoint unchanged.

A tiny CSA classifier is trained for one epoch on the digits; its checkpoint must hold exactly
the spec's parameter names, compile with ``netdsl compile --weights`` to ONNX and to the
``trt-restricted`` lowering, and give the same predictions in ONNX Runtime as in PyTorch.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file

from netdsl.analysis.quantize import run_batched
from netdsl.backends.torch_backend import build_module
from netdsl.backends.weights_io import load_weights
from netdsl.driver import load_graph

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
SMALL = REPO_ROOT / "specs" / "models" / "small.net"
TINY = ["--spec", str(SMALL), "--entry", "csa_small", "--set", "dim=16"]


def load_example(name: str) -> types.ModuleType:
    """An example script imported as a module, with the examples folder on sys.path as when it runs."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def train_example() -> types.ModuleType:
    return load_example("train")


@pytest.fixture(scope="module")
def trained_run(train_example: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The checkpoint folder of one epoch of the tiny CSA model on the digits."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("csa_run")
    try:
        assert train_example.main([*TINY, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)  # train() sets the process-wide thread count
    yield out


@pytest.fixture(scope="module")
def digits_test(train_example: types.ModuleType) -> tuple[np.ndarray, np.ndarray]:
    """The test split the run evaluated on (seed 0, the model's 1x32x32 input)."""
    data = train_example.load_digits_split((1, 32, 32), seed=0)
    return data.x_test, data.y_test


def torch_logits(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    graph = load_graph(SMALL, "csa_small", ["dim=16"])
    module = build_module(graph, load_weights(checkpoint, graph)).eval()
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


def test_checkpoint_holds_exactly_the_spec_parameters(trained_run: Path) -> None:
    graph = load_graph(SMALL, "csa_small", ["dim=16"])
    tensors = load_file(trained_run / "model.safetensors")
    assert set(tensors) == set(graph.params)
    weights = load_weights(trained_run / "model.safetensors", graph)  # names, shapes, dtypes, finiteness
    assert weights["stem.norm.num_batches_tracked"].dtype == np.int64
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    assert metrics["test_accuracy"] > 0.8  # one epoch learns the digits (chance is 10%)


@pytest.mark.parametrize("target", ["onnx", "trt-restricted"])
def test_checkpoint_compiles_and_runtimes_agree(trained_run: Path, digits_test: tuple[np.ndarray, np.ndarray],
                                                run_cli, tmp_path: Path, target: str) -> None:
    images, labels = digits_test
    out = tmp_path / f"csa_{target}.onnx"
    # Batch 8: the restricted profile allows at most 16; run_batched pads the last batch.
    code, _, stderr = run_cli(["compile", SMALL, *TINY[2:], "--target", target, "--weights",
                               trained_run / "model.safetensors", "--input", "x=8x1x32x32", "-o", out])
    assert code == 0, stderr
    ort_logits = run_batched(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), images)
    reference = torch_logits(trained_run / "model.safetensors", images)
    np.testing.assert_allclose(ort_logits, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ort_logits.argmax(1), reference.argmax(1))
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert np.mean(ort_logits.argmax(1) == labels) == pytest.approx(metrics["test_accuracy"])


def test_resume_continues_the_run(train_example: types.ModuleType, trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    before = load_file(run / "model.safetensors")
    threads = torch.get_num_threads()
    try:
        train_example.main([*TINY, "--epochs", "2", "--out", str(run), "--resume", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    history = json.loads((run / "metrics.json").read_text())["history"]
    first = json.loads((trained_run / "metrics.json").read_text())["history"][0]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first  # the first epoch is carried over, not retrained
    assert history[1]["lr"] < first["lr"]  # the cosine schedule goes on
    after = load_file(run / "model.safetensors")
    assert not np.allclose(after["stem.conv.weight"], before["stem.conv.weight"])


def test_resume_without_a_checkpoint_folder_is_refused(train_example: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="--resume needs --out"):
        train_example.train(train_example.TrainConfig(spec=SMALL, entry="csa_small", resume=True))


def test_models_that_are_not_classifiers_of_the_data_are_refused(train_example: types.ModuleType,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        assert train_example.main(["--spec", str(SMALL), "--entry", "csa_small", "--data", "long-range"]) == 2
        assert "must output [N, 2] logits for long-range" in capsys.readouterr().err
        assert train_example.main(["--spec", str(SMALL), "--entry", "csa_smal"]) == 2
        assert "did you mean 'csa_small'?" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_process_training_gives_a_model_of_the_same_quality(trained_run: Path, tmp_path: Path,
                                                                 digits_test: tuple[np.ndarray, np.ndarray]) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    out = tmp_path / "ddp"
    result = subprocess.run([torchrun, "--nproc_per_node", "2", str(EXAMPLES / "train.py"), *TINY, "--epochs", "1",
                             "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    ddp = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    single = json.loads((trained_run / "metrics.json").read_text())["test_accuracy"]
    assert ddp > 0.8 and abs(ddp - single) < 0.05
    images, labels = digits_test
    predictions = torch_logits(out / "model.safetensors", images).argmax(1)
    assert np.mean(predictions == labels) == pytest.approx(ddp)  # rank 0 saved the model it evaluated


@pytest.mark.slow
def test_long_range_task_needs_the_global_mixer() -> None:
    long_range = load_example("long_range")
    threads = torch.get_num_threads()
    try:
        results = long_range.run_models(["csa_small", "conv_small"], epochs=2, train_samples=2000, test_samples=400,
                                        seed=0, console=long_range.Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    assert results["csa_small"].test_accuracy > 0.9
    assert abs(results["conv_small"].test_accuracy - 0.5) < 0.1
