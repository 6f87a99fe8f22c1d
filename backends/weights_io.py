"""Reading and writing weight files, matched by name against a graph's parameters.

Formats: ``.safetensors``, ``.npz`` and PyTorch ``.pt``/``.pth`` checkpoints (a plain state
dict, or a dict holding one under ``state_dict`` or ``model``). PyTorch is optional and only
imported for the PyTorch formats, whose checkpoints are read with PyTorch's weights-only loader
(tensors and plain containers; anything else is refused, never run).

Files are untrusted input: before a reader allocates anything, the sizes a file declares (the
arrays of an ``.npz``, the entries of a ``.pt`` archive, a ``.safetensors`` file itself) are
held to what the graph's parameters can need, so a corrupt or hostile file is a one-line error
rather than a memory blow-up. Every disagreement between file and graph is collected and
reported together in one :class:`WeightsError`, so a user fixes a checkpoint in one round.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from netdsl.atomic_write import atomic_write_bytes
from netdsl.diagnostics import one_line
from netdsl.initializers import NP_DTYPES
from netdsl.ir import Graph

TORCH_SUFFIXES = (".pt", ".pth")
SUFFIXES = (".safetensors", ".npz") + TORCH_SUFFIXES


class WeightsError(Exception):
    """A weights file cannot be used; ``problems`` lists every individual finding."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _read_safetensors(path: Path, max_bytes: int) -> dict[str, Any]:
    from safetensors.numpy import load_file

    size = path.stat().st_size
    if size > max_bytes:
        raise WeightsError(f"{path}: the file holds {size:,} bytes, more than the {max_bytes:,} the graph's "
                           f"parameters can need")
    return dict(load_file(path))


def _zip_members(path: Path, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The members of a zip-based weights file (.npz, .pt), refused when they expand beyond ``max_bytes``."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise WeightsError(f"{path}: the archive expands to {total:,} bytes, more than the {max_bytes:,} the "
                           f"graph's parameters can need")
    return members


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_data_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> tuple[int, int]:
    """Bytes of array data the header of ``.npy`` member ``member`` declares, and the header's length."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f"array '{member.filename}' has .npy format version {version}, not 1.0 or 2.0")
        shape, _, dtype = _NPY_HEADER_READERS[version](f)
        return math.prod(shape) * dtype.itemsize, f.tell()


def _read_npz(path: Path, max_bytes: int) -> dict[str, Any]:
    members = _zip_members(path, max_bytes)
    with zipfile.ZipFile(path) as archive:
        for member in members:
            if not member.filename.endswith(".npy"):
                continue
            declared, header = _npy_data_bytes(archive, member)
            if declared > member.file_size - header:
                raise WeightsError(f"{path}: array '{member.filename[:-4]}' declares {declared:,} bytes of data, "
                                   f"the archive holds {member.file_size - header:,}")
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _read_torch(path: Path, max_bytes: int) -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        raise WeightsError(f"reading {path.suffix} weights needs PyTorch (pip install 'netdsl[torch]')") from exc
    if zipfile.is_zipfile(path):
        _zip_members(path, max_bytes)
    elif path.stat().st_size > max_bytes:  # the legacy (pre-zip) format
        raise WeightsError(f"{path}: the file holds {path.stat().st_size:,} bytes, more than the {max_bytes:,} the "
                           f"graph's parameters can need")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only loader met something that is not plain data
        reason = str(exc).partition("WeightsUnpickler error:")[2].strip().split("\n\n")[0]
        raise WeightsError(f"{path}: refused: the checkpoint holds more than tensors and plain containers "
                           f"({one_line(reason) or 'not a weights-only checkpoint'})") from None
    if not isinstance(data, Mapping):
        raise WeightsError(f"{path}: expected a state dict, found a {type(data).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    return {name: _torch_to_numpy(torch, value) for name, value in data.items()}


def _torch_to_numpy(torch: Any, value: Any) -> Any:
    """A torch tensor as a numpy array (other values unchanged, reported later as not tensors)."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach()
    # bfloat16 has no numpy counterpart; widening to float32 is exact.
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def read_tensors(path: str | os.PathLike[str], max_bytes: int | None = None) -> dict[str, Any]:
    """All entries of a weights file by name, tensors as numpy arrays; raises WeightsError.

    ``max_bytes`` bounds the data the file may declare (no bound when None). Every failure is a
    one-line WeightsError naming the file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise WeightsError(f"{p}: unsupported weights format '{p.suffix}' (expected one of {', '.join(SUFFIXES)})")
    reader = {".safetensors": _read_safetensors, ".npz": _read_npz}.get(suffix, _read_torch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readers' advice to their own users (pickle protocols, ...)
            return reader(p, sys.maxsize if max_bytes is None else max_bytes)
    except WeightsError:
        raise
    except Exception as exc:  # any reader failure means a bad or unreadable file, reported to the user
        raise WeightsError(f"cannot read weights file {p}: {one_line(exc)}") from exc


def max_file_bytes(graph: Graph) -> int:
    """The most data a weights file for ``graph`` may declare: every parameter stored as float64
    (files often hold wider types than the graph), plus a margin for names and metadata."""
    return sum(8 * math.prod(p.type.shape) for p in graph.params.values()) + (1 << 20)


def _non_finite(name: str, value: np.ndarray) -> str | None:
    if not np.issubdtype(value.dtype, np.floating):
        return None
    nans = int(np.isnan(value).sum())
    infs = int(np.isinf(value).sum())
    if not nans and not infs:
        return None
    return f"non-finite: {name} has {nans} NaN, {infs} Inf"


def match_weights(tensors: Mapping[str, Any], graph: Graph, source: str) -> dict[str, np.ndarray]:
    """Match ``tensors`` to ``graph.params`` by name, cast each to its parameter's dtype.

    Raises one WeightsError listing every missing, unexpected, mis-shaped, non-tensor and
    non-finite entry. ``source`` names the tensors' origin in the message.
    """
    problems: list[str] = []
    weights: dict[str, np.ndarray] = {}
    for name, param in graph.params.items():
        if name not in tensors:
            problems.append(f"missing: {name} {_shape(param.type.shape)}")
    for name in tensors:
        if name not in graph.params:
            problems.append(f"unexpected: {name}")
    for name, param in graph.params.items():
        if name not in tensors:
            continue
        value = tensors[name]
        if not isinstance(value, np.ndarray):
            problems.append(f"not a tensor: {name} is a {type(value).__name__}")
        elif not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
                  or value.dtype == np.bool_):
            problems.append(f"not a real-valued tensor: {name} holds {value.dtype}")
        elif value.shape != param.type.shape:
            problems.append(
                f"shape mismatch: {name} expects {_shape(param.type.shape)}, file has {_shape(value.shape)}"
            )
        else:
            # Cast first: a float64 value too large for float32 becomes Inf and is reported below.
            with np.errstate(over="ignore"):
                weights[name] = value.astype(NP_DTYPES[param.type.dtype], order="C")
            bad = _non_finite(name, weights[name])
            if bad:
                problems.append(bad)
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        lines = "\n".join(f"  {p}" for p in problems)
        raise WeightsError(f"weights in {source} do not fit graph '{graph.name}' ({count}):\n{lines}", problems)
    return weights


def load_weights(path: str | os.PathLike[str], graph: Graph) -> dict[str, np.ndarray]:
    """Weights for every parameter of ``graph`` from a ``.safetensors``/``.npz``/``.pt``/``.pth`` file.

    Each tensor is matched by name and cast to its parameter's dtype. Raises WeightsError on an
    unreadable file, one declaring more data than :func:`max_file_bytes`, or once with every
    missing/unexpected/mis-shaped/non-finite tensor listed.
    """
    return match_weights(read_tensors(path, max_file_bytes(graph)), graph, str(path))


def save_safetensors(weights: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write ``weights`` to a ``.safetensors`` file atomically."""
    from safetensors.numpy import save

    atomic_write_bytes(path, save({name: np.asarray(value, order="C") for name, value in weights.items()}))
