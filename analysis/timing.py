"""Latency benchmarks of ONNX models (ONNX Runtime or TensorRT) and PyTorch modules.

Several models are measured side by side in one process: for every batch size, each run times
every model once, in an order rotated from run to run, so that thermal or background drift hits all
models alike and ratios to a baseline are fair; ONNX Runtime's thread pools stop spinning when a
run ends, so that no model is timed against the idle spinning of another's (:func:`session_options`).
Per batch size the table gives the median and 90th percentile latency (ms, wall clock around one
inference call) and images per second. A ratio to the baseline comes with a 95% bootstrap interval
(:func:`ratio_interval`): runs are resampled by index, so each model's run ``r`` stays paired with
the baseline's run ``r`` of the same round, and the interval shows how far the machine's noise
leaves the ratio uncertain.

Models exported with a fixed batch are re-batched on a copy and verified against the original
(:mod:`netdsl.analysis.rebatch`); :mod:`netdsl.analysis.bench_report` prints the table and the plot.

A result can carry static facts (:mod:`netdsl.analysis.model_facts`: parameters, MACs and bytes per
frame, TensorRT coverage per profile); the table, the JSON and the plot show them beside the latencies.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx
from rich.console import Console
from rich.progress import Progress

if TYPE_CHECKING:
    from netdsl.analysis.model_facts import CoverageSummary, ModelSize
from netdsl.analysis.rebatch import RebatchError, batch_size_of, random_inputs, rebatch_model, verify_rebatch

DEFAULT_BATCHES = (1, 4, 8, 16)
BACKENDS = ("ort", "trt", "torch")


@dataclass
class TorchModel:
    """A PyTorch module to benchmark, with the shape of one sample (without the batch axis)."""

    module: Any
    sample_shape: tuple[int, ...]


@dataclass
class PerBatchModel:
    """An ONNX model built natively for each batch size (e.g. a spec compiled with its batch bound),
    so it needs no re-batching."""

    build: Callable[[int], onnx.ModelProto]


ModelLike = onnx.ModelProto | str | Path | TorchModel | PerBatchModel


# --------------------------------------------------------------------------- results


@dataclass
class BatchTiming:
    """Latency statistics of one model at one batch size (or why it could not be measured)."""

    batch: int
    median_ms: float | None = None
    p90_ms: float | None = None
    images_per_s: float | None = None
    runs: int = 0
    latency_vs_baseline: float | None = None  # median / baseline median at the same batch (< 1: faster)
    ratio_ci95: tuple[float, float] | None = None  # 95% bootstrap interval of latency_vs_baseline
    error: str | None = None
    times_ms: list[float] = field(default_factory=list, repr=False)  # every timed run, in order


@dataclass
class BenchResult:
    """All batch sizes of one model, and its static facts when they were computed."""

    name: str
    rows: list[BatchTiming] = field(default_factory=list)
    size: ModelSize | None = None
    coverage: dict[str, CoverageSummary] = field(default_factory=dict)  # by profile name

    def row(self, batch: int) -> BatchTiming | None:
        """The row of ``batch``, if it was run."""
        return next((r for r in self.rows if r.batch == batch), None)


SIZE_FIELDS = ("params", "macs", "bytes_per_frame", "macs_compiled")


def size_fields(size: ModelSize | None) -> dict[str, int | None]:
    """The :data:`SIZE_FIELDS` of ``size``; None each when the size was not computed."""
    return {name: getattr(size, name) if size is not None else None for name in SIZE_FIELDS}


@dataclass
class BenchTable:
    """A side-by-side benchmark of several models."""

    backend: str
    batches: list[int]
    warmup: int
    runs: int
    baseline: str | None
    results: list[BenchResult]
    environment: dict[str, Any] = field(default_factory=dict)

    def result(self, name: str) -> BenchResult:
        """The results of the model called ``name``."""
        return next(r for r in self.results if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the settings, environment and every model's rows."""
        return {
            "backend": self.backend,
            "batches": self.batches,
            "warmup": self.warmup,
            "runs": self.runs,
            "baseline": self.baseline,
            "environment": self.environment,
            "models": [{
                "name": r.name,
                **size_fields(r.size),
                "coverage": {profile: summary.to_dict() for profile, summary in r.coverage.items()},
                "rows": [asdict(row) for row in r.rows],
            } for r in self.results],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


class _Runner(Protocol):
    def run(self) -> None: ...


def session_options(threads: int | None) -> Any:
    """ONNX Runtime session options for timing several models interleaved in one process.

    Each session owns a thread pool whose workers, by default, keep spinning for a while after a run,
    on the cores the next model's run needs: interleaved, every model would be timed against the
    idle spinning of the others (with two threads and four models, a model took about twice as long per run
    interleaved as alone). So workers stop spinning when a run ends
    (``session.force_spinning_stop``); they still spin within a run, as by default. ``threads`` sets
    the intra-op threads (default: ONNX Runtime's choice).

    Denormal floats are flushed to zero (``session.set_denormal_as_zero``): benchmarked models carry
    random initial weights, and small ones (e.g. trunc-normal std 0.02 in every conv of the CSA
    backbone, as its reference initialises them) shrink activations into the denormal range in
    deep stages, where x86 arithmetic slows down (measured: ~6% on ``convselfattn`` at batch 1),
    a cost trained weights do not have. It applies to every model of a comparison alike."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: re-batched copies leave harmless unused constants
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads:
        options.intra_op_num_threads = threads
    return options


class _OnnxSource:
    """An ONNX model with its original batch and a lazily created original-batch ORT session, or a
    :class:`PerBatchModel` that builds the model for each batch."""

    def __init__(self, model: onnx.ModelProto | PerBatchModel, threads: int | None):
        self.per_batch = model if isinstance(model, PerBatchModel) else None
        self.model = None if self.per_batch else model
        self.old = None if self.per_batch else batch_size_of(model)
        self.threads = threads
        self._original: Any = None

    def session(self, model: onnx.ModelProto) -> Any:
        import onnxruntime as ort

        options = session_options(self.threads)
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def at_batch(self, batch: int, verify: bool) -> onnx.ModelProto:
        """The model at ``batch``, verified against the original when it had to be rewritten."""
        if self.per_batch is not None:
            return self.per_batch.build(batch)
        if self.old == batch:
            return self.model
        rebatched = rebatch_model(self.model, batch)
        if verify and self.old is not None:
            if self._original is None:
                self._original = self.session(self.model)
            feeds = random_inputs(rebatched, np.random.default_rng(batch))
            verify_rebatch(self._original, self.session(rebatched), self.old, batch, feeds)
        return rebatched


class _OrtRunner:
    def __init__(self, source: _OnnxSource, batch: int, verify: bool):
        model = source.at_batch(batch, verify)
        self.session = source.session(model)
        self.feeds = random_inputs(model, np.random.default_rng(0))

    def run(self) -> None:
        self.session.run(None, self.feeds)


class _TrtRunner:
    """Builds an FP16 (or ``precision``) engine of the re-batched model and executes it."""

    def __init__(self, source: _OnnxSource, batch: int, verify: bool, precision: str):
        from netdsl.backends import trt_engine

        trt_engine.require_tensorrt()  # fail fast, before re-batching
        model = source.at_batch(batch, verify)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            onnx.save(model, onnx_path)
            options = trt_engine.EngineOptions(precision=precision)
            built = trt_engine.build_engine(onnx_path, Path(tmp) / "model.engine", options)
            self.runner = trt_engine.EngineRunner(built.engine_path)

    def run(self) -> None:
        self.runner.run()


class _TorchRunner:
    def __init__(self, model: TorchModel, batch: int):
        import torch

        self.torch = torch
        self.module = model.module.eval()
        self.input = torch.randn(batch, *model.sample_shape)

    def run(self) -> None:
        with self.torch.inference_mode():
            self.module(self.input)


def _load(model: ModelLike) -> onnx.ModelProto | TorchModel | PerBatchModel:
    if isinstance(model, str | Path):
        return onnx.load(str(model))
    return model


def _runner_factory(model: onnx.ModelProto | TorchModel | PerBatchModel, backend: str, threads: int | None,
                    verify: bool, precision: str) -> Callable[[int], _Runner]:
    if isinstance(model, TorchModel):
        if backend != "torch":
            raise ValueError(f"a PyTorch module runs with backend 'torch', not '{backend}'")
        return lambda batch: _TorchRunner(model, batch)
    if backend == "torch":
        raise ValueError("backend 'torch' runs PyTorch modules (TorchModel); ONNX models run with 'ort' or 'trt'")
    source = _OnnxSource(model, threads)
    if backend == "trt":
        return lambda batch: _TrtRunner(source, batch, verify, precision)
    return lambda batch: _OrtRunner(source, batch, verify)


# --------------------------------------------------------------------------- benchmark loop


def _environment(backend: str, threads: int | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "intra_op_threads": threads or "default",
    }
    if backend == "ort":
        env["denormals_as_zero"] = True  # see session_options
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    return env


def _stats(batch: int, times_ms: list[float]) -> BatchTiming:
    median = float(np.median(times_ms))
    return BatchTiming(batch=batch, median_ms=median, p90_ms=float(np.percentile(times_ms, 90)),
                       images_per_s=batch * 1000.0 / median if median > 0 else None, runs=len(times_ms),
                       times_ms=list(times_ms))


def _error_text(e: Exception) -> str:
    return str(e) if isinstance(e, RebatchError | ValueError) else f"{type(e).__name__}: {e}"


def bench_many(models: Mapping[str, ModelLike], batches: Sequence[int] = DEFAULT_BATCHES, warmup: int = 10,
               runs: int = 50, backend: str = "ort", baseline: str | None = None, progress: bool = True,
               threads: int | None = None, verify: bool = True, precision: str = "fp16",
               console: Console | None = None) -> BenchTable:
    """Benchmark several models side by side (round-robin per run) at each batch size.

    ``backend``: ``ort`` (ONNX Runtime, CPU), ``trt`` (TensorRT engines, ``precision``) or
    ``torch`` (:class:`TorchModel` values); ONNX models are protos, paths, or :class:`PerBatchModel`.
    A model that fails at a batch size gets a row with the error and the others go on.
    ``baseline`` names the model ratios are taken against."""
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
    if baseline is not None and baseline not in models:
        raise ValueError(f"baseline '{baseline}' is not one of the models: {', '.join(models)}")
    if warmup < 0 or runs < 1 or not batches or any(b < 1 for b in batches):
        raise ValueError("need warmup >= 0, runs >= 1 and batch sizes >= 1")
    factories = {name: _runner_factory(_load(m), backend, threads, verify, precision) for name, m in models.items()}
    results = {name: BenchResult(name) for name in models}
    with Progress(console=console, transient=True, disable=not progress) as bar:
        task = bar.add_task("benchmark", total=len(batches) * len(models) * (warmup + runs))
        for batch in batches:
            runners: dict[str, _Runner] = {}
            for name, factory in factories.items():
                bar.update(task, description=f"batch {batch}: preparing {name}")
                try:
                    runners[name] = factory(batch)
                except Exception as e:  # noqa: BLE001 - one model's failure must not stop the others
                    results[name].rows.append(BatchTiming(batch=batch, error=_error_text(e)))
                    bar.advance(task, warmup + runs)
            times = _measure(runners, warmup, runs, lambda: bar.advance(task), bar, task, batch)
            for name, samples in times.items():
                results[name].rows.append(_stats(batch, samples))
            del runners
    table = BenchTable(backend, list(batches), warmup, runs, baseline, [results[n] for n in models],
                       _environment(backend, threads))
    _apply_baseline(table)
    return table


def _measure(runners: dict[str, _Runner], warmup: int, runs: int, tick: Callable[[], None], bar: Progress,
             task: Any, batch: int) -> dict[str, list[float]]:
    names = list(runners)
    bar.update(task, description=f"batch {batch}: warming up")
    for _ in range(warmup):
        for name in names:
            runners[name].run()
            tick()
    bar.update(task, description=f"batch {batch}: timing {len(names)} model(s)")
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:  # rotate the order so no model always goes first
            start = time.perf_counter()
            runners[name].run()
            times[name].append((time.perf_counter() - start) * 1000.0)
            tick()
    return times


def _apply_baseline(table: BenchTable) -> None:
    if table.baseline is None:
        return
    base = table.result(table.baseline)
    for result in table.results:
        for row in result.rows:
            ref = base.row(row.batch)
            if row.median_ms is not None and ref is not None and ref.median_ms:
                row.latency_vs_baseline = row.median_ms / ref.median_ms
                if result is not base and len(row.times_ms) == len(ref.times_ms) > 1:
                    row.ratio_ci95 = ratio_interval(row.times_ms, ref.times_ms)


BOOTSTRAP_RESAMPLES = 2000


def ratio_interval(times_ms: Sequence[float], baseline_ms: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``median(times_ms) / median(baseline_ms)``.

    The two lists are runs of the same rounds (entry ``r`` of each was timed in round ``r``), so
    run indices are resampled together: drift shared by a round cancels in the ratio instead of
    widening the interval. Seeded, so the same timings give the same interval.
    """
    model, base = np.asarray(times_ms), np.asarray(baseline_ms)
    picks = np.random.default_rng(seed).integers(0, len(model), size=(resamples, len(model)))
    ratios = np.median(model[picks], axis=1) / np.median(base[picks], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def bench_onnx(model_or_path: onnx.ModelProto | str | Path, batches: Sequence[int] = DEFAULT_BATCHES,
               warmup: int = 10, runs: int = 50, backend: str = "ort", progress: bool = True,
               threads: int | None = None, verify: bool = True, precision: str = "fp16") -> BenchResult:
    """Benchmark one ONNX model at each batch size (see :func:`bench_many`)."""
    table = bench_many({"model": model_or_path}, batches, warmup, runs, backend, None, progress, threads, verify,
                       precision)
    return table.results[0]
