"""Train the PyTorch module generated from a netdsl spec, on handwritten digits or the long-range task.

Single process::

    python examples/train.py --spec specs/models/small.net --entry csa_small --epochs 8 --out runs/csa

Two processes with DistributedDataParallel (gloo, CPU), one per core::

    torchrun --nproc_per_node 2 examples/train.py --spec specs/models/small.net --entry csa_small \\
        --epochs 8 --out runs/csa-ddp

Data (``--data``):

* ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 0..16), scaled to [0, 1] and resized
  bilinearly to the model's input size (repeated over its channels); a stratified 80/20
  train/test split fixed by ``--seed``.
* ``long-range``: :class:`netdsl.datasets.LongRangeTask` at the model's input size
  (``--train-samples``, ``--test-samples``, ``--patterns``).

The model is the spec's entry (``--entry``, ``--set KEY=VALUE``) with its seeded default weights;
its input shape gives the image size, its output must be ``[N, classes]`` logits. ``--batch-size``
is the global batch: under ``torchrun`` each of the W processes takes ``batch / W`` samples of a
step, so a run with 1 or 2 processes follows the same schedule. Training is AdamW with a cosine
learning-rate decay per epoch. After each epoch the batch-norm statistics are recomputed over
the whole training set with the epoch's final weights ("precise BN"): the running averages kept
during the epoch trail weights that change fast, and a batch norm after the global pool would
otherwise mis-normalise at evaluation early in training. Each process runs one torch thread by
default: these small models gain little from intra-op threads, which slow down badly when the
cores are shared (``--threads`` overrides; ``torchrun`` is the way to use more cores).

``--out DIR`` receives, after every epoch (written by rank 0 only, atomically):

* ``model.safetensors``: the weights under exactly the spec's parameter names, ready for
  ``netdsl compile SPEC --weights DIR/model.safetensors``;
* ``train_state.pt``: optimizer state, the last finished epoch and the history, for ``--resume``;
* ``metrics.json``: the per-epoch history and the final test accuracy.

Other examples import :func:`train` and the data loaders from this file.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from netdsl.atomic_write import atomic_write_bytes, atomic_write_text
from netdsl.backends.torch_backend import build_module
from netdsl.backends.weights_io import WeightsError, load_weights, save_safetensors
from netdsl.datasets import LongRangeTask, resize_bilinear
from netdsl.diagnostics import NetdslError, render
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.interrupts import Terminated, report_stop, signals_raise
from netdsl.ir import Graph

DATASETS = ("digits", "long-range")
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"


@dataclass
class ImageData:
    """A classification data set as arrays: images ``[N, C, H, W]`` float32, labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass
class TrainConfig:
    """Everything a training run depends on (the command-line flags)."""

    spec: Path
    entry: str | None = None
    sets: list[str] = field(default_factory=list)
    data: str = "digits"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    seed: int = 0
    train_samples: int = 4000
    test_samples: int = 1000
    patterns: int = 2
    out: Path | None = None
    resume: bool = False
    threads: int = 1
    progress: bool = True


@dataclass
class EpochStats:
    """Metrics of one finished epoch (losses are means over samples, accuracies fractions)."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    """The outcome of :func:`train`: the final weights by parameter name and the history."""

    graph: Graph
    weights: dict[str, np.ndarray]
    history: list[EpochStats]
    parameters: int
    seconds: float
    world_size: int

    @property
    def test_accuracy(self) -> float:
        """Test accuracy after the last epoch (NaN when no epoch ran)."""
        return self.history[-1].test_accuracy if self.history else math.nan


# ------------------------------------------------------------------------------------------ data


def input_shape(graph: Graph) -> tuple[int, int, int]:
    """``(C, H, W)`` of the graph's single image input."""
    if len(graph.inputs) != 1 or graph.values[graph.inputs[0]].rank != 4:
        raise ValueError(f"'{graph.name}' must take one [N, C, H, W] image input to be trained here")
    _, c, h, w = graph.values[graph.inputs[0]].shape
    return c, h, w


def load_digits_split(shape: tuple[int, int, int], seed: int, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's digits in [0, 1], resized to ``shape`` (C, H, W); stratified split fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    channels, height, width = shape
    images = resize_bilinear((digits.images / 16.0)[:, None], height, width)
    images = np.repeat(images, channels, axis=1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=digits.target)
    return ImageData(x_train, y_train, x_test, y_test, num_classes=10)


def load_long_range_split(shape: tuple[int, int, int], seed: int, n_train: int, n_test: int,
                          patterns: int = 2) -> ImageData:
    """The long-range task with ``patterns`` patterns at the model's (square) input size; sets fixed by ``seed``."""
    channels, height, width = shape
    if height != width:
        raise ValueError(f"the long-range task makes square images; the model's input is {height}x{width}")
    task = LongRangeTask(size=height, patterns=patterns, channels=channels)
    return ImageData(*task.split(n_train, n_test, seed), num_classes=2)


def load_data(config: TrainConfig, shape: tuple[int, int, int]) -> ImageData:
    """The data set named by ``config.data`` at the model's input ``shape``."""
    if config.data == "digits":
        return load_digits_split(shape, config.seed)
    if config.data == "long-range":
        return load_long_range_split(shape, config.seed, config.train_samples, config.test_samples, config.patterns)
    raise ValueError(f"unknown data set '{config.data}' (choose from {', '.join(DATASETS)})")


# ----------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, evaluates the bookkeeping and writes files."""
        return self.rank == 0

    def total(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()


def init_processes() -> Processes:
    """Join the process group that ``torchrun`` describes in the environment, if any (gloo backend)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    dist.init_process_group("gloo")
    return Processes(dist.get_rank(), dist.get_world_size())


# ------------------------------------------------------------------------------------ training


def state_as_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's parameters and buffers by name, as numpy arrays."""
    return {name: value.detach().cpu().numpy().copy() for name, value in module.state_dict().items()}


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based): cosine decay from ``base_lr`` towards 0 over ``epochs``."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def recompute_batchnorm_stats(module: nn.Module, x: np.ndarray, procs: Processes, batch_size: int) -> None:
    """Set every batch norm's running mean and variance to its average over the batches of ``x``.

    Each process averages over its shard; the shards' averages are then averaged. The module's
    weights are not touched; it is left in training mode.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches that follow
    module.train()
    shard = np.arange(procs.rank, len(x), procs.world_size)
    with torch.no_grad():
        for start in range(0, len(shard), batch_size):
            module(torch.from_numpy(x[shard[start : start + batch_size]]))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        if procs.world_size > 1:
            for stat in (norm.running_mean, norm.running_var):
                dist.all_reduce(stat)
                stat /= procs.world_size


def evaluate(module: nn.Module, x: np.ndarray, y: np.ndarray, procs: Processes,
             batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` (eval mode) on ``(x, y)``, each process taking a shard."""
    was_training = module.training
    module.eval()
    shard = np.arange(procs.rank, len(y), procs.world_size)
    loss_sum = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(shard), batch_size):
            index = shard[start : start + batch_size]
            logits = module(torch.from_numpy(x[index]))
            labels = torch.from_numpy(y[index])
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    module.train(was_training)
    loss_sum, correct, count = procs.total([loss_sum, correct, len(shard)])
    return loss_sum / count, correct / count


def make_console() -> Console:
    """A rich console; 160 columns when the output is not a terminal (logs, pipes), where rich would use 80."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                    console=console, transient=True, disable=not enabled)


def _save_checkpoint(out: Path, module: nn.Module, optimizer: torch.optim.Optimizer, history: list[EpochStats],
                     config: TrainConfig) -> None:
    """Write the weights, the resumable state and the metrics of the last finished epoch."""
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_as_numpy(module), out / MODEL_FILE)
    buffer = io.BytesIO()
    torch.save({"epoch": history[-1].epoch, "optimizer": optimizer.state_dict(),
                "history": [asdict(h) for h in history]}, buffer)
    atomic_write_bytes(out / STATE_FILE, buffer.getvalue())
    metrics = {"spec": str(config.spec), "entry": config.entry, "sets": config.sets, "data": config.data,
               "seed": config.seed, "test_accuracy": history[-1].test_accuracy,
               "history": [asdict(h) for h in history]}
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def _resume(out: Path, graph: Graph, module: nn.Module, optimizer: torch.optim.Optimizer) -> list[EpochStats]:
    """Load the checkpoint in ``out`` into ``module`` and ``optimizer``; the history so far."""
    weights = load_weights(out / MODEL_FILE, graph)
    module.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()}, strict=True)
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    history = [EpochStats(**h) for h in state["history"]]
    if state["epoch"] != len(history) or [h.epoch for h in history] != list(range(1, len(history) + 1)):
        raise ValueError(f"{out / STATE_FILE}: the history does not run from epoch 1 to epoch {state['epoch']}")
    return history


def train(config: TrainConfig, procs: Processes | None = None, console: Console | None = None) -> TrainResult:
    """Train ``config``'s model; every process of a distributed run calls this with its :class:`Processes`."""
    procs = procs or Processes()
    console = console or make_console()
    if config.resume and config.out is None:
        raise ValueError("--resume needs --out DIR holding the checkpoint")
    if config.batch_size % procs.world_size:
        raise ValueError(f"--batch-size {config.batch_size} must be divisible by the {procs.world_size} processes")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    graph = load_graph(config.spec, config.entry, config.sets)
    data = load_data(config, input_shape(graph))
    logits = graph.values[graph.outputs[0]]
    if len(graph.outputs) != 1 or logits.rank != 2 or logits.shape[1] != data.num_classes:
        raise ValueError(f"'{graph.name}' must output [N, {data.num_classes}] logits for {config.data}, "
                         f"it outputs {', '.join(str(graph.values[o]) for o in graph.outputs)} "
                         f"(for small.net models: --set num_classes={data.num_classes})")
    module = build_module(graph, initial_weights(graph, config.seed))
    parameters = sum(p.numel() for p in module.parameters())
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[EpochStats] = []
    if config.resume:
        history = _resume(config.out, graph, module, optimizer)
        if procs.is_main:
            console.print(f"resuming {config.out} after epoch {len(history)}")
    model: nn.Module = DistributedDataParallel(module) if procs.world_size > 1 else module

    train_set = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    # The same sampler with one or W replicas: rank r takes every W-th sample of one seeded permutation.
    sampler = DistributedSampler(train_set, num_replicas=procs.world_size, rank=procs.rank, shuffle=True,
                                 seed=config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size // procs.world_size, sampler=sampler)
    if procs.is_main:
        console.print(f"{graph.name}: {parameters:,} parameters, input {graph.values[graph.inputs[0]]}, "
                      f"{config.data}: {len(data.y_train)} train / {len(data.y_test)} test, "
                      f"{procs.world_size} process(es) x {config.threads} thread(s)", soft_wrap=True)
    started = time.perf_counter()
    with _progress(console, config.progress and procs.is_main) as progress:
        for epoch in range(len(history), config.epochs):
            epoch_start = time.perf_counter()
            lr = cosine_lr(config.lr, epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sampler.set_epoch(epoch)
            model.train()
            task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(loader), loss=float("nan"))
            loss_sum = correct = count = 0.0
            for images, labels in loader:
                logits = model(images)
                loss = nn.functional.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                count += len(labels)
                progress.update(task, advance=1, loss=loss.item())
            progress.remove_task(task)
            loss_sum, correct, count = procs.total([loss_sum, correct, count])
            recompute_batchnorm_stats(module, data.x_train, procs, config.batch_size // procs.world_size)
            test_loss, test_accuracy = evaluate(module, data.x_test, data.y_test, procs)
            stats = EpochStats(epoch + 1, lr, loss_sum / count, correct / count, test_loss, test_accuracy,
                               time.perf_counter() - epoch_start)
            history.append(stats)
            if procs.is_main:
                console.print(f"epoch {stats.epoch:3d}/{config.epochs}  lr {lr:.2e}  "
                              f"train loss {stats.train_loss:.4f} acc {stats.train_accuracy:6.2%}  "
                              f"test loss {stats.test_loss:.4f} acc {stats.test_accuracy:6.2%}  {stats.seconds:5.1f} s",
                              soft_wrap=True)
                if config.out is not None:
                    _save_checkpoint(config.out, module, optimizer, history, config)
    return TrainResult(graph, state_as_numpy(module), history, parameters, time.perf_counter() - started,
                       procs.world_size)


# ------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Command-line flags -> :class:`TrainConfig`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, required=True, help=".net file")
    p.add_argument("--entry", help="model to train (default: the file's last model)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="set a model parameter, e.g. --set dim=48")
    p.add_argument("--data", choices=DATASETS, default="digits")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="weights, data split and shuffling")
    p.add_argument("--train-samples", type=int, default=TrainConfig.train_samples, help="long-range task only")
    p.add_argument("--test-samples", type=int, default=TrainConfig.test_samples, help="long-range task only")
    p.add_argument("--patterns", type=int, default=TrainConfig.patterns, help="long-range task only: patch patterns")
    p.add_argument("--out", type=Path, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch threads per process (default 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return TrainConfig(**vars(p.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the flags say; every process of a ``torchrun`` launch runs this."""
    config = parse_args(argv)
    procs = init_processes()
    try:
        with signals_raise():
            result = train(config, procs)
    except (KeyboardInterrupt, Terminated) as stop:
        return report_stop(stop)
    except NetdslError as err:
        print(render(err.diag), file=sys.stderr)
        return 2
    except (ValueError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    else:
        if procs.is_main:
            make_console().print(f"final test accuracy {result.test_accuracy:.2%} after {len(result.history)} "
                                 f"epochs in {result.seconds:.1f} s ({result.world_size} process(es))", soft_wrap=True)
    finally:
        if procs.world_size > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
