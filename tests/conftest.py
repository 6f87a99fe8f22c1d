"""Fixtures shared by the test modules: the repository layout, writing spec files, running the CLI."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from netdsl.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]
WriteSpec = Callable[..., Path]


@pytest.fixture
def repo_root() -> Path:
    """The checkout's root folder (holds ``specs/``)."""
    return REPO_ROOT


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``run_cli(argv) -> (exit_code, stdout, stderr)``: ``netdsl.cli.main(argv)`` run in-process."""

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop whatever earlier steps of the test printed
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def write_spec(tmp_path: Path) -> WriteSpec:
    """``write_spec(text, name="t.net") -> path``: write dedented spec text under ``tmp_path``.

    ``name`` may contain folders (``"lib/parts.net"``); they are created.
    """

    def write(text: str, name: str = "t.net") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
