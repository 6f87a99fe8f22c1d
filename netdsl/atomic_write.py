"""Atomic file output: a target path holds either its old content or the complete new one.

Every file netdsl writes (ONNX models and their external data, weights, generated sources,
reports) goes through here, so a failure half-way never leaves a truncated output behind.
New content is written into a private staging directory created next to each target (same
file system, so :func:`os.replace` is atomic), flushed to disk, then moved onto the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the renames themselves durable; directories cannot be opened this way outside POSIX.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_paths(*paths: str | os.PathLike[str]) -> Iterator[tuple[Path, ...]]:
    """Stage several output files and publish them together when the block succeeds.

    Yields one temporary path per target; each has the target's file name and lives in a
    staging directory inside the target's directory, so files that refer to each other by
    relative name (an ONNX model and its external data) find each other while staged. On a
    clean exit every staged file is moved onto its target, in the order given; on an exception
    nothing is published. The staging directories are always removed.
    """
    targets = [Path(p).absolute() for p in paths]
    staging: dict[Path, Path] = {}
    try:
        for target in targets:
            if target.parent not in staging:
                staging[target.parent] = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        staged = tuple(staging[t.parent] / t.name for t in targets)
        yield staged
        for tmp in staged:
            _fsync_file(tmp)
        for tmp, target in zip(staged, targets, strict=True):
            os.replace(tmp, target)
        for parent in staging:
            _fsync_dir(parent)
    finally:
        for tmp_dir in staging.values():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (no partial file is ever visible at ``path``)."""
    with atomic_paths(path) as (tmp,):
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))
