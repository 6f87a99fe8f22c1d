"""TensorRT engine path: what runs without TensorRT (calibration data, the calibrator's batch
feeding, builder flags on a stand-in API, trtexec command lines) and the unavailable error."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from netdsl.backends import trt_engine
from netdsl.backends.trt_engine import (
    CalibrationCache,
    CalibrationDataError,
    CalibrationDataset,
    CalibrationFeeder,
    EngineOptions,
    TensorRTUnavailable,
    build_engine,
    make_entropy_calibrator,
    require_tensorrt,
)
from netdsl.backends.trtexec import trtexec_command


def tensorrt_usable() -> bool:
    try:
        require_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


needs_no_tensorrt = pytest.mark.skipif(tensorrt_usable(), reason="TensorRT and a GPU are available here")


def write_pngs(folder: Path, colours: list[tuple[int, int, int]], size: tuple[int, int] = (12, 10)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", size, colour).save(folder / f"img{i:03d}.png")


# --------------------------------------------------------------------------- unavailable


@needs_no_tensorrt
def test_unavailable_error_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(TensorRTUnavailable) as info:
        require_tensorrt()
    assert "tensorrt" in str(info.value) or "GPU" in str(info.value)
    with pytest.raises(TensorRTUnavailable):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions(precision="fp16"))
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize(("options", "message"), [
    (EngineOptions(precision="bf8"), "not one of fp32, fp16, int8, qdq"),
    (EngineOptions(profile="trt-dla", precision="fp32"), "FP16 or INT8 only"),
    (EngineOptions(precision="int8"), "needs calibration data"),
    (EngineOptions(profile="safety"), "not one of trt, trt-restricted, trt-dla"),
])
def test_bad_options_are_rejected_before_tensorrt(options: EngineOptions, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", options)


# --------------------------------------------------------------------------- calibration data


def test_image_folder_is_resized_scaled_and_ordered(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 128, 0), (10, 20, 30)]
    write_pngs(tmp_path / "imgs", colours)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    data = CalibrationDataset(tmp_path / "imgs", (3, 8, 6))
    assert len(data) == 3
    for i, colour in enumerate(colours):
        sample = data.sample(i)
        assert sample.shape == (3, 8, 6) and sample.dtype == np.float32
        # a uniform image stays uniform under resizing, so every pixel is colour / 255
        np.testing.assert_allclose(sample, np.broadcast_to(np.array(colour)[:, None, None] / 255, (3, 8, 6)),
                                   atol=1e-6)
    gray = CalibrationDataset(tmp_path / "imgs", (1, 4, 4)).sample(0)
    assert gray.shape == (1, 4, 4) and 0 < gray.max() < 1


def test_arrays_in_nchw_and_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", nchw)
    data = CalibrationDataset(tmp_path / "nchw.npy", (3, 5, 5))
    np.testing.assert_allclose(data.sample(2), nchw[2] / 255.0, rtol=1e-6)
    nhwc = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "pair.npz", images=nhwc, labels=np.arange(2))
    data = CalibrationDataset(tmp_path / "pair.npz", (3, 5, 5), npz_key="images")
    np.testing.assert_array_equal(data.sample(1), nhwc[1].transpose(2, 0, 1))  # float data is taken as is
    flat = np.full((2, 3, 10, 10), 0.25, np.float32)
    np.save(tmp_path / "big.npy", flat)
    resized = CalibrationDataset(tmp_path / "big.npy", (3, 4, 6)).sample(0)
    assert resized.shape == (3, 4, 6) and np.allclose(resized, 0.25)


def test_sample_limit_defaults_to_500(tmp_path: Path) -> None:
    np.save(tmp_path / "many.npy", np.zeros((600, 1, 2, 2), np.uint8))
    assert len(CalibrationDataset(tmp_path / "many.npy", (1, 2, 2))) == 500
    assert len(CalibrationDataset(tmp_path / "many.npy", (1, 2, 2), limit=7)) == 7


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "no images"),
    (lambda p: np.savez(p.with_suffix(".npz"), a=np.zeros((1, 3, 2, 2)), b=np.zeros(1)), "say which one"),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros((3, 2))), "expected N samples"),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros((2, 4, 2, 2), np.uint8)), "expected 3 channels"),
    (lambda p: p.with_suffix(".csv").write_text("1,2"), "expected a folder of images"),
])
def test_bad_calibration_sources(tmp_path: Path, make, message: str) -> None:
    make(tmp_path / "data")
    source = next(tmp_path.iterdir())
    with pytest.raises(CalibrationDataError, match=message):
        CalibrationDataset(source, (3, 2, 2)).sample(0)


# --------------------------------------------------------------------------- calibrator


def test_feeder_uploads_full_batches_then_stops(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(7 * 2 * 2, dtype=np.float32).reshape(7, 1, 2, 2))
    data = CalibrationDataset(tmp_path / "x.npy", (1, 2, 2))
    uploaded: list[np.ndarray] = []

    def upload(batch: np.ndarray) -> int:
        uploaded.append(batch.copy())
        return 0x1000 * len(uploaded)

    feeder = CalibrationFeeder(data.batches(3), 3, upload)
    assert feeder.next_pointers(["input"]) == [0x1000]
    assert feeder.next_pointers(["input"]) == [0x2000]
    assert feeder.next_pointers(["input"]) is None  # the 7th sample cannot fill a batch
    assert feeder.batches_served == 2
    np.testing.assert_array_equal(np.concatenate(uploaded)[:, 0, 0, 0], [0, 4, 8, 12, 16, 20])
    with pytest.raises(CalibrationDataError, match="one input"):
        feeder.next_pointers(["a", "b"])
    with pytest.raises(CalibrationDataError, match="cannot fill one batch of 8"):
        data.batches(8)


def test_entropy_calibrator_on_a_stand_in_tensorrt(tmp_path: Path) -> None:
    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            self.initialised = True

    fake_trt = SimpleNamespace(IInt8EntropyCalibrator2=IInt8EntropyCalibrator2)
    batches = iter([np.zeros((2, 1, 2, 2), np.float32)])
    feeder = CalibrationFeeder(batches, 2, lambda batch: 42)
    cache = CalibrationCache(tmp_path / "calib.cache")
    calibrator = make_entropy_calibrator(fake_trt, feeder, cache)
    assert isinstance(calibrator, IInt8EntropyCalibrator2) and calibrator.initialised
    assert calibrator.get_batch_size() == 2
    assert calibrator.read_calibration_cache() is None
    assert calibrator.get_batch(["x"]) == [42] and calibrator.get_batch(["x"]) is None
    calibrator.write_calibration_cache(memoryview(b"scales"))
    assert cache.read() == b"scales" and calibrator.read_calibration_cache() == b"scales"
    with pytest.raises(TensorRTUnavailable, match="qdq"):
        make_entropy_calibrator(SimpleNamespace(), feeder, cache)


# --------------------------------------------------------------------------- builder flags


class StandInConfig:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.engine_capability = "STANDARD"

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


def stand_in_trt(**builder_flags: str) -> SimpleNamespace:
    return SimpleNamespace(
        BuilderFlag=SimpleNamespace(FP16="FP16", **builder_flags),
        EngineCapability=SimpleNamespace(SAFETY="SAFETY", DLA_STANDALONE="DLA_STANDALONE"),
        DeviceType=SimpleNamespace(DLA="DLA"),
    )


def test_restricted_flow_flags_follow_the_api_version() -> None:
    options = EngineOptions(profile="trt-restricted")
    config = StandInConfig()
    notes = trt_engine._apply_flow(stand_in_trt(SAFETY_SCOPE="SAFETY_SCOPE"), None, config, None, options)
    assert config.flags == ["SAFETY_SCOPE"] and config.engine_capability == "STANDARD" and notes == []
    config = StandInConfig()
    notes = trt_engine._apply_flow(stand_in_trt(), None, config, None, EngineOptions(profile="trt-restricted",
                                                                                      safety_runtime=True))
    assert config.engine_capability == "SAFETY" and "SAFETY_SCOPE does not exist" in notes[0]


def test_dla_flow_needs_a_dla_core() -> None:
    with pytest.raises(TensorRTUnavailable, match="no DLA core"):
        trt_engine._apply_flow(stand_in_trt(), SimpleNamespace(num_DLA_cores=0), StandInConfig(), None,
                               EngineOptions(profile="trt-dla"))


# --------------------------------------------------------------------------- trtexec


@pytest.mark.parametrize(("profile", "precision", "flags"), [
    ("trt", "fp32", []),
    ("trt", "fp16", ["--fp16"]),
    ("trt", "qdq", ["--stronglyTyped"]),
    ("trt-restricted", "fp16", ["--fp16", "--safe"]),
    ("trt-restricted", "int8", ["--int8", "--fp16", "--calib=calib.cache", "--safe"]),
    ("trt-dla", "fp16", ["--fp16", "--useDLACore=0", "--buildDLAStandalone", "--inputIOFormats=fp16:chw16",
                         "--outputIOFormats=fp16:chw16"]),
    ("trt-dla", "int8", ["--int8", "--fp16", "--calib=calib.cache", "--useDLACore=0", "--buildDLAStandalone",
                         "--inputIOFormats=int8:chw32", "--outputIOFormats=int8:chw32"]),
])
def test_trtexec_command(profile: str, precision: str, flags: list[str]) -> None:
    command = trtexec_command("out/csa model.onnx", profile, precision, calibration_cache="calib.cache")
    args = shlex.split(command)
    assert args[:3] == ["trtexec", "--onnx=out/csa model.onnx", "--saveEngine=out/csa model.engine"]
    assert args[3:] == flags


def test_trtexec_command_rejects_impossible_builds() -> None:
    with pytest.raises(ValueError, match="FP16 or INT8 only"):
        trtexec_command("m.onnx", "trt-dla", "fp32")
    with pytest.raises(ValueError, match="profile 'orin'"):
        trtexec_command("m.onnx", "orin", "fp16")
    with pytest.raises(ValueError, match="precision 'tf32'"):
        trtexec_command("m.onnx", "trt", "tf32")
    assert "--saveEngine=e.plan" in trtexec_command("m.onnx", "trt", "fp16", engine_path="e.plan")
    # user profiles pass their flow
    assert trtexec_command("m.onnx", "kSAFETY", "fp16") == trtexec_command("m.onnx", "trt-restricted", "fp16")
