"""INT8 post-training quantization of ONNX models into explicit Q/DQ form, as TensorRT consumes it.

:func:`quantize_int8` runs ONNX Runtime's static quantization with the settings TensorRT's
explicit-quantization path needs: ``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear pairs
around the float ops), signed INT8 activations and weights, one scale per tensor, and symmetric
ranges for activations as well as weights, so every zero point is 0 (TensorRT's ONNX parser
refuses others). Activation ranges come from calibration data run through the float model:
``entropy`` (KL-divergence threshold, as TensorRT's entropy calibrator), ``minmax`` or
``percentile``. Biases stay float32 (TensorRT adds them in high precision itself and its
quantization tools leave them so).

Calibration data (:func:`load_calibration_data`) is a ``.npy`` array, an ``.npz`` archive, or a
folder of images, always shaped to the model's single static input. Models with a static batch
B are fed in batches of B; calibration runs in rounds of at most :data:`MAX_BATCHES_PER_ROUND`
batches, since ONNX Runtime keeps every intermediate tensor of a round in memory.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from netdsl.atomic_write import atomic_paths

__all__ = [
    "METHODS",
    "ModelInput",
    "QuantizeError",
    "QuantizeResult",
    "load_calibration_data",
    "model_input",
    "quantize_int8",
    "read_image_folder",
    "run_batched",
]

METHODS: dict[str, CalibrationMethod] = {
    "entropy": CalibrationMethod.Entropy,
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_PERCENTILE = 99.999
MAX_BATCHES_PER_ROUND = 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_PIL_MODES = {1: "L", 3: "RGB"}
# ONNX Runtime's own default op set, less the normalizations: quantizing their scale and bias
# turns those parameters into run-time DequantizeLinear outputs, which TensorRT's restricted
# mode refuses (it needs them constant); they stay float and TensorRT fuses them as usual.
QUANTIZED_OPS = sorted((set(QDQRegistry) | set(QLinearOpsRegistry))
                       - {"BatchNormalization", "InstanceNormalization", "LayerNormalization"})


class QuantizeError(Exception):
    """Bad input to quantization (model, calibration data, options), reported to the user."""


@dataclass(frozen=True)
class ModelInput:
    """The single input of a model: name and static shape (batch first)."""

    name: str
    shape: tuple[int, ...]

    @property
    def batch(self) -> int:
        """Samples per run."""
        return self.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (the input shape without the batch axis)."""
        return self.shape[1:]


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_int8` did: the output, the method, and the calibration samples used."""

    output: Path
    method: str
    samples: int
    batches: int
    quantize_nodes: int
    dequantize_nodes: int


def model_input(model: onnx.ModelProto) -> ModelInput:
    """The model's only graph input (initializers excluded); it must be float32 with a static shape."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise QuantizeError(f"calibration needs a model with one input, this one has {len(inputs)}: "
                            + ", ".join(i.name for i in inputs))
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise QuantizeError(f"input '{inputs[0].name}' is {onnx.TensorProto.DataType.Name(tensor.elem_type)}, "
                            "not FLOAT: only float models are quantized")
    dims = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim)
    if not dims or min(dims) < 1:
        raise QuantizeError(f"input '{inputs[0].name}' has no static shape; compile the model with a fixed --input")
    return ModelInput(inputs[0].name, dims)


def read_image_folder(folder: str | os.PathLike[str], sample_shape: tuple[int, ...], limit: int) -> np.ndarray:
    """The first ``limit`` images of ``folder`` (by file name) as float32 ``[n, C, H, W]`` in [0, 1].

    Each image is converted to grey (C = 1) or RGB (C = 3) and resized bilinearly to H x W.
    """
    from PIL import Image, UnidentifiedImageError

    if len(sample_shape) != 3 or sample_shape[0] not in _PIL_MODES:
        raise QuantizeError(f"a folder of images feeds [N, 1 or 3, H, W] inputs, the model takes "
                            f"[N, {', '.join(map(str, sample_shape))}]")
    channels, height, width = sample_shape
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise QuantizeError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                pixels = image.convert(_PIL_MODES[channels]).resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as err:
            raise QuantizeError(f"{path}: cannot read the image: {err}") from None
        array = np.asarray(pixels, dtype=np.float32) / 255.0
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(images)


def _read_array(path: Path, input_name: str) -> np.ndarray:
    """The array of a ``.npy`` file, or the one array (or the one named like the input) of an ``.npz``."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            if input_name in names:
                return archive[input_name]
            if len(names) == 1:
                return archive[names[0]]
    except (OSError, ValueError) as err:
        raise QuantizeError(f"{path}: cannot read the array: {err}") from None
    raise QuantizeError(f"{path} holds {len(names)} arrays ({', '.join(names)}); name the one to use "
                        f"'{input_name}' like the model input")


def load_calibration_data(path: str | os.PathLike[str], spec: ModelInput, samples: int) -> np.ndarray:
    """The first ``samples`` calibration samples for ``spec``'s input, float32 ``[n, *sample_shape]``.

    ``path`` is a ``.npy`` file, an ``.npz`` archive (its one array, or the one named like the
    input) or a folder of images (see :func:`read_image_folder`). Arrays must already have the
    model's sample shape; they are not resized.
    """
    if samples < 1:
        raise QuantizeError(f"the number of calibration samples must be positive, found {samples}")
    source = Path(path)
    if source.is_dir():
        data = read_image_folder(source, spec.sample_shape, samples)
    elif source.suffix.lower() in (".npy", ".npz") and source.is_file():
        data = _read_array(source, spec.name)
    else:
        raise QuantizeError(f"{source}: calibration data must be a .npy or .npz file or a folder of images")
    if data.ndim != len(spec.shape) or data.shape[1:] != spec.sample_shape:
        raise QuantizeError(f"{source}: calibration samples have shape {list(data.shape[1:])} "
                            f"(array {list(data.shape)}), the model input '{spec.name}' takes "
                            f"{list(spec.sample_shape)} per sample (input {list(spec.shape)})")
    if not np.issubdtype(data.dtype, np.number):
        raise QuantizeError(f"{source}: calibration data must be numeric, found {data.dtype}")
    data = data[:samples].astype(np.float32)
    if not np.isfinite(data).all():
        raise QuantizeError(f"{source}: calibration data holds NaN or Inf")
    return data


class _BatchReader(CalibrationDataReader):
    """Feeds ``data`` in whole batches of the model's batch size; ranges select batches (for rounds)."""

    def __init__(self, data: np.ndarray, spec: ModelInput):
        self.batches = [data[i : i + spec.batch] for i in range(0, len(data) - spec.batch + 1, spec.batch)]
        self.name = spec.name
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.pending, None)
        return None if batch is None else {self.name: batch}


def _round_size(batches: int) -> int:
    """Batches per calibration round: the largest divisor of ``batches`` up to the cap (ORT wants equal rounds)."""
    return max(d for d in range(1, min(batches, MAX_BATCHES_PER_ROUND) + 1) if batches % d == 0)


def quantize_int8(model_path: str | os.PathLike[str], data: np.ndarray, output: str | os.PathLike[str],
                  method: str = "entropy", percentile: float = DEFAULT_PERCENTILE) -> QuantizeResult:
    """Quantize the float ONNX model at ``model_path`` to a Q/DQ INT8 model written to ``output``.

    ``data`` holds calibration samples (``[n, *sample_shape]``, see :func:`load_calibration_data`);
    whole batches of the model's batch size are used, a remainder is left out. Per-tensor scales,
    signed INT8 activations and weights, symmetric ranges (zero points 0). The output is written
    atomically; biases stay float32. Raises :class:`QuantizeError` for an unknown method, a bad
    percentile, samples of the wrong shape or too few of them.
    """
    if method not in METHODS:
        raise QuantizeError(f"unknown calibration method '{method}' (choose from {', '.join(METHODS)})")
    if not 0.0 < percentile <= 100.0:
        raise QuantizeError(f"the percentile must lie in (0, 100], found {percentile}")
    spec = model_input(onnx.load(str(model_path), load_external_data=False))
    if data.shape[1:] != spec.sample_shape:
        raise QuantizeError(f"calibration samples of shape {list(data.shape[1:])} do not fit the model input "
                            f"'{spec.name}' {list(spec.shape)}")
    reader = _BatchReader(data, spec)
    if not len(reader):
        raise QuantizeError(f"the model runs batches of {spec.batch}; {len(data)} calibration sample(s) are too few")
    extra_options = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,
        "QuantizeBias": False,
        "CalibPercentile": percentile,
        # Named for MinMax, but it drives the rounds of every calibrator.
        "CalibStridedMinMax": _round_size(len(reader)),
    }
    with atomic_paths(output) as (staged,), contextlib.redirect_stdout(io.StringIO()):
        # ONNX Runtime prints calibration progress on stdout; the caller reports the result instead.
        shaped = staged.with_name(f"shape-inferred-{staged.name}")
        # ONNX shape inference only: ONNX Runtime's graph optimizations could bring in ops outside TensorRT's set.
        quant_pre_process(str(model_path), str(shaped), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(shaped), str(staged), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, per_channel=False, reduce_range=False,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=METHODS[method], extra_options=extra_options)
    ops = [node.op_type for node in onnx.load(str(output), load_external_data=False).graph.node]
    return QuantizeResult(Path(output), method, len(reader) * spec.batch, len(reader),
                          ops.count("QuantizeLinear"), ops.count("DequantizeLinear"))


def run_batched(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """The first output of ``session`` for every sample of ``inputs`` (``[n, *sample_shape]``).

    The model's static batch B is filled from ``inputs`` in order; the last batch is padded with
    zeros whose outputs are dropped, so any ``n`` works.
    """
    meta = session.get_inputs()[0]
    batch = meta.shape[0]
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(session.run(None, {meta.name: padded})[0][: len(chunk)])
    return np.concatenate(outputs)
