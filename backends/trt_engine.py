"""Build and time real TensorRT engines from ONNX (FP32, FP16, INT8 calibration, explicit Q/DQ).

This path runs only where the ``tensorrt`` Python package and an NVIDIA GPU exist; elsewhere every
entry point that needs them raises :class:`TensorRTUnavailable` with what is missing. It follows the
TensorRT 10 Python API (``OnnxParser``, ``IBuilderConfig.set_memory_pool_limit``,
``build_serialized_network``, ``IInt8EntropyCalibrator2``, ``execute_async_v3``) and guards the names
that changed between releases (``EngineCapability.SAFETY`` / ``SAFE_GPU``, ``DLA_STANDALONE`` /
``SAFE_DLA``, ``BuilderFlag.SAFETY_SCOPE``, ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``).

Device memory, pinned host buffers, the CUDA stream and timing events come from PyTorch
(``torch.cuda``), which the project already depends on for training; no extra CUDA binding is
needed. Latency is measured with CUDA events around ``execute_async_v3`` on a dedicated stream
(device-side inference time, as trtexec's "GPU Compute Time"); inputs are copied once from pinned
host buffers before timing.

On a target without Python (DRIVE, Jetson), :func:`netdsl.backends.trtexec.trtexec_command` prints the
equivalent trtexec command line. The calibration data loader and batch feeder are plain numpy/Pillow and run anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netdsl.atomic_write import atomic_write_bytes
from netdsl.backends.trtexec import PRECISIONS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
DEFAULT_CALIBRATION_SAMPLES = 500


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or the GPU / DLA it needs) is not available on this machine."""


class EngineBuildError(RuntimeError):
    """TensorRT rejected the network (parse errors or a failed build)."""


class CalibrationDataError(ValueError):
    """The calibration images or arrays cannot be used."""


# --------------------------------------------------------------------------- availability


def require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, checking that a CUDA GPU is usable.

    Raises :class:`TensorRTUnavailable` naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "the `tensorrt` Python package is not installed (pip install 'netdsl[gpu]' on a machine with an "
            "NVIDIA GPU); use the ONNX Runtime backend here, or run the printed trtexec command on the target"
        ) from e
    try:
        import torch
    except ImportError as e:
        raise TensorRTUnavailable("running TensorRT engines needs PyTorch with CUDA for device buffers") from e
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is available (torch.cuda.is_available() is False)")
    return trt


# --------------------------------------------------------------------------- calibration data


def _to_chw_float(image: np.ndarray, channels: int, size_hw: tuple[int, int]) -> np.ndarray:
    """One sample (HWC, CHW or HW; uint8 or float) -> float32 CHW of the wanted size."""
    from PIL import Image

    if image.ndim == 2:
        image = image[None]
    if image.shape[0] != channels and image.shape[-1] == channels:
        image = np.moveaxis(image, -1, 0)
    if image.shape[0] != channels:
        raise CalibrationDataError(f"sample has shape {image.shape}; expected {channels} channels (CHW or HWC)")
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    planes = image.astype(np.float32) / scale
    if planes.shape[1:] != size_hw:
        height, width = size_hw
        planes = np.stack([
            np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR)) for p in planes
        ])
    return planes.astype(np.float32)


class CalibrationDataset:
    """Calibration samples from an image folder or a ``.npy`` / ``.npz`` array, preprocessed to the
    network input: resized to (H, W), scaled to [0, 1] (uint8 data; float arrays are taken as they
    are), NCHW float32. At most ``limit`` samples (500 by default, as in NVIDIA's CSA INT8 study);
    images are read lazily, batch by batch."""

    def __init__(self, source: str | Path, input_chw: tuple[int, int, int], limit: int = DEFAULT_CALIBRATION_SAMPLES,
                 npz_key: str | None = None):
        self.source = Path(source)
        self.channels, height, width = input_chw
        self.size_hw = (height, width)
        if limit < 1:
            raise CalibrationDataError(f"calibration limit must be >= 1, found {limit}")
        self._images: list[Path] = []
        self._array: np.ndarray | None = None
        if self.source.is_dir():
            files = sorted(p for p in self.source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CalibrationDataError(f"{self.source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            if self.channels not in (1, 3):
                raise CalibrationDataError(f"images give 1 or 3 channels; the network wants {self.channels}")
            self._images = files[:limit]
        elif self.source.suffix in (".npy", ".npz") and self.source.is_file():
            self._array = self._load_array(npz_key)[:limit]
        else:
            raise CalibrationDataError(f"{self.source}: expected a folder of images or a .npy/.npz file")

    def _load_array(self, key: str | None) -> np.ndarray:
        try:
            loaded = np.load(self.source, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CalibrationDataError(f"{self.source}: cannot read array: {e}") from e
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if key is None and len(names) != 1:
                    raise CalibrationDataError(f"{self.source}: holds arrays {names}; say which one to use")
                if key is not None and key not in names:
                    raise CalibrationDataError(f"{self.source}: no array '{key}' (found {names})")
                array = loaded[key or names[0]]
        else:
            array = loaded
        if array.ndim not in (3, 4) or len(array) == 0:
            expected = "N samples of CHW or HWC (or N x H x W)"
            raise CalibrationDataError(f"{self.source}: expected {expected}, found shape {array.shape}")
        return array

    def __len__(self) -> int:
        return len(self._images) if self._array is None else len(self._array)

    def sample(self, index: int) -> np.ndarray:
        """Sample ``index`` as float32 CHW."""
        if self._array is not None:
            return _to_chw_float(self._array[index], self.channels, self.size_hw)
        from PIL import Image

        path = self._images[index]
        try:
            with Image.open(path) as image:
                mode = "L" if self.channels == 1 else "RGB"
                height, width = self.size_hw
                pixels = np.asarray(image.convert(mode).resize((width, height), Image.Resampling.BILINEAR))
        except OSError as e:
            raise CalibrationDataError(f"{path}: cannot read image: {e}") from e
        return _to_chw_float(pixels, self.channels, self.size_hw)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Full NCHW batches in order; a final partial batch is dropped (the engine's batch is fixed)."""
        if len(self) < batch_size:
            raise CalibrationDataError(f"{len(self)} calibration samples cannot fill one batch of {batch_size}")
        return self._batches(batch_size)

    def _batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self) - batch_size + 1, batch_size):
            yield np.ascontiguousarray(np.stack([self.sample(i) for i in range(start, start + batch_size)]))


class CalibrationFeeder:
    """Hands TensorRT's calibrator one device pointer per batch until the batches run out.

    ``upload`` copies a host batch to device memory and returns its address; it is injected so
    that the iteration logic is independent of CUDA."""

    def __init__(self, batches: Iterator[np.ndarray], batch_size: int, upload: Callable[[np.ndarray], int]):
        self.batch_size = batch_size
        self._batches = batches
        self._upload = upload
        self.batches_served = 0

    def next_pointers(self, names: list[str]) -> list[int] | None:
        """Device pointers for the next batch (one per input name), or None when done."""
        if len(names) != 1:
            raise CalibrationDataError(f"calibration supports networks with one input, found {names}")
        batch = next(self._batches, None)
        if batch is None:
            return None
        if batch.shape[0] != self.batch_size:
            raise CalibrationDataError(f"calibration batch has {batch.shape[0]} samples, expected {self.batch_size}")
        self.batches_served += 1
        return [int(self._upload(batch))]


@dataclass
class CalibrationCache:
    """The calibration cache file: read it to skip calibration, write it after calibrating."""

    path: Path | None

    def read(self) -> bytes | None:
        """The cached scales, or None when there is no cache file."""
        if self.path is not None and self.path.is_file():
            return self.path.read_bytes()
        return None

    def write(self, data: bytes) -> None:
        """Store the scales TensorRT computed (atomically)."""
        if self.path is not None:
            atomic_write_bytes(self.path, bytes(data))


def make_entropy_calibrator(trt: Any, feeder: CalibrationFeeder, cache: CalibrationCache) -> Any:
    """An ``IInt8EntropyCalibrator2`` driven by ``feeder`` (the class exists only once trt is imported)."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise TensorRTUnavailable(
            "this TensorRT has no implicit INT8 calibration (removed in TensorRT 11); use precision 'qdq'"
        )

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return feeder.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            return feeder.next_pointers(names)

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache.write(bytes(data))

    return EntropyCalibrator()


# --------------------------------------------------------------------------- building


@dataclass
class EngineOptions:
    """How to build: precision, target flow and INT8 calibration.

    ``profile``: ``trt`` (standard), ``trt-restricted`` (standard build checked against the safety
    scope with ``BuilderFlag.SAFETY_SCOPE`` where it exists, or a real ``SAFETY`` engine with
    ``safety_runtime=True``, DRIVE only) or ``trt-dla`` (``DLA_STANDALONE`` loadable, FP16/INT8)."""

    precision: str = "fp16"
    profile: str = "trt"
    calibration: Path | None = None  # image folder or .npy/.npz (precision int8)
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    calibration_cache: Path | None = None
    npz_key: str | None = None
    workspace_bytes: int = 1 << 30
    dla_core: int = 0
    safety_runtime: bool = False

    def validate(self) -> None:
        """Raise ValueError for option combinations no TensorRT accepts."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.profile not in ("trt", "trt-restricted", "trt-dla"):
            raise ValueError(f"profile '{self.profile}' is not one of trt, trt-restricted, trt-dla")
        if self.profile == "trt-dla" and self.precision not in ("fp16", "int8"):
            raise ValueError("DLA runs FP16 or INT8 only")
        if self.precision == "int8" and self.calibration is None and self.calibration_cache is None:
            raise ValueError("INT8 needs calibration data (image folder or .npy/.npz) or a calibration cache")


@dataclass
class BuildResult:
    """The written engine and what the builder could not honour on this TensorRT version."""

    engine_path: Path
    notes: list[str] = field(default_factory=list)


def _enum(owner: Any, *names: str) -> Any:
    """The first of ``names`` that ``owner`` defines (API names changed between releases), or None."""
    return next((getattr(owner, n) for n in names if hasattr(owner, n)), None)


def _network_flags(trt: Any, options: EngineOptions) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    explicit_batch = _enum(creation, "EXPLICIT_BATCH")
    if explicit_batch is not None:  # required by 8.x, deprecated and ignored by 10.x
        flags |= 1 << int(explicit_batch)
    if options.precision == "qdq":
        strongly_typed = _enum(creation, "STRONGLY_TYPED")
        if strongly_typed is None:
            raise TensorRTUnavailable("strongly typed networks (the Q/DQ route) need TensorRT >= 9")
        flags |= 1 << int(strongly_typed)
    return flags


def _input_chw(network: Any) -> tuple[int, tuple[int, int, int]]:
    shape = tuple(network.get_input(0).shape)
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise CalibrationDataError(f"INT8 calibration needs a static NCHW input, found {shape}")
    return max(shape[0], 1), (shape[1], shape[2], shape[3])


def _apply_precision(trt: Any, config: Any, network: Any, options: EngineOptions, keep: list[Any]) -> None:
    if options.precision in ("fp32", "qdq"):
        return  # qdq: a strongly typed network takes its precisions from the Q/DQ tensors
    fp16 = _enum(trt.BuilderFlag, "FP16")
    if fp16 is None:
        raise TensorRTUnavailable("this TensorRT has no FP16/INT8 builder flags (TensorRT 11); use precision 'qdq'")
    config.set_flag(fp16)
    if options.precision != "int8":
        return
    config.set_flag(trt.BuilderFlag.INT8)
    import torch

    batch_size, chw = _input_chw(network)
    device_batch = torch.empty((batch_size, *chw), dtype=torch.float32, device="cuda")

    def upload(batch: np.ndarray) -> int:
        device_batch.copy_(torch.from_numpy(batch))
        return device_batch.data_ptr()

    cache = CalibrationCache(options.calibration_cache)
    if options.calibration is not None:
        dataset = CalibrationDataset(options.calibration, chw, options.calibration_samples, options.npz_key)
        batches = dataset.batches(batch_size)
    elif cache.read() is not None:
        batches = iter(())  # every scale comes from the cache
    else:
        raise CalibrationDataError(f"calibration cache {options.calibration_cache} does not exist")
    feeder = CalibrationFeeder(batches, batch_size, upload)
    calibrator = make_entropy_calibrator(trt, feeder, cache)
    keep += [calibrator, device_batch]  # TensorRT holds raw pointers: keep the objects alive during the build
    config.int8_calibrator = calibrator


def _apply_flow(trt: Any, builder: Any, config: Any, network: Any, options: EngineOptions) -> list[str]:
    """Engine capability, safety scope and DLA settings; returns notes on what this version lacks."""
    notes: list[str] = []
    capability = trt.EngineCapability
    if options.profile == "trt-restricted":
        if options.safety_runtime:
            safety = _enum(capability, "SAFETY", "SAFE_GPU")
            if safety is None:
                raise TensorRTUnavailable("this TensorRT has no safety engine capability")
            config.engine_capability = safety
        scope = _enum(trt.BuilderFlag, "SAFETY_SCOPE")
        if scope is not None:
            config.set_flag(scope)
        else:
            notes.append("BuilderFlag.SAFETY_SCOPE does not exist in this TensorRT (removed in 11.x): the builder "
                         "did not check the safety scope; rely on `netdsl coverage --profile trt-restricted`")
    elif options.profile == "trt-dla":
        if getattr(builder, "num_DLA_cores", 0) < 1:
            raise TensorRTUnavailable("this GPU has no DLA core (DLA exists on Jetson/DRIVE Orin)")
        standalone = _enum(capability, "DLA_STANDALONE", "SAFE_DLA")
        if standalone is None:
            raise TensorRTUnavailable("this TensorRT has no DLA standalone capability")
        config.engine_capability = standalone
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        _set_dla_io_formats(trt, network, options.precision)
    return notes


def _set_dla_io_formats(trt: Any, network: Any, precision: str) -> None:
    # a standalone loadable has no reformatting layers: I/O must already be in a DLA format
    dtype, fmt = (trt.float16, trt.TensorFormat.CHW16) if precision == "fp16" else (trt.int8, trt.TensorFormat.CHW32)
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    for tensor in tensors:
        tensor.dtype = dtype
        tensor.allowed_formats = 1 << int(fmt)


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: EngineOptions | None = None) -> BuildResult:
    """Parse ``onnx_path``, build with ``options`` and serialize the engine to ``engine_path``.

    Raises :class:`TensorRTUnavailable`, :class:`EngineBuildError`, :class:`CalibrationDataError`
    or ValueError (bad options); never leaves a partial engine file."""
    options = options or EngineOptions()
    options.validate()
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, options))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: the TensorRT ONNX parser failed:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    keep_alive: list[Any] = []
    _apply_precision(trt, config, network, options, keep_alive)
    notes = _apply_flow(trt, builder, config, network, options)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build the engine (see the TensorRT log above)")
    atomic_write_bytes(Path(engine_path), bytes(serialized))
    return BuildResult(Path(engine_path), notes)


# --------------------------------------------------------------------------- timing


class EngineRunner:
    """A deserialized engine with device buffers (random inputs) ready to execute and time."""

    def __init__(self, engine: bytes | str | Path):
        trt = require_tensorrt()
        import torch

        data = engine if isinstance(engine, bytes) else Path(engine).read_bytes()
        self._trt, self._torch = trt, torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineBuildError("TensorRT could not deserialize the engine (built by another version or device?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, Any] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            device = torch.empty(shape, dtype=dtype, device="cuda")
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = torch.empty(shape, dtype=dtype).pin_memory()
                host.copy_(torch.rand(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype))
                device.copy_(host, non_blocking=True)
            self.buffers[name] = device
            self.context.set_tensor_address(name, device.data_ptr())
        torch.cuda.synchronize()

    def run(self) -> None:
        """Execute once and wait for the result."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT execution failed")
        self.stream.synchronize()

    def time_once(self) -> float:
        """Device time of one execution in milliseconds (CUDA events on the runner's stream)."""
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT execution failed")
        end.record(self.stream)
        end.synchronize()
        return float(start.elapsed_time(end))


def time_engine(engine: bytes | str | Path, warmup: int = 10, runs: int = 100) -> list[float]:
    """Per-run latencies (ms) of an engine after ``warmup`` untimed executions."""
    runner = EngineRunner(engine)
    for _ in range(warmup):
        runner.run()
    return [runner.time_once() for _ in range(runs)]
