"""The documentation runs: the tutorial's specs, commands and Python steps, and every API example.

Conventions of the pages (kept by the writers, read here):

- a ``net`` block starts with ``# file: NAME.net`` and is written to that file;
- a ``sh`` block holds ``netdsl ...`` commands, run in order; a ``text`` block after it shows the
  last command's output: an ``error:`` text is its whole stderr (exit status 2), any other text
  lists lines of its stdout (exit status 0);
- a ``python`` block runs in one namespace shared by the page's blocks; ``# ...`` lines at its end
  are its expected stdout.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced_blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of a markdown page, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def expected_output(code: str) -> list[str]:
    """The ``# ...`` lines that end a Python block: what it prints."""
    lines = code.rstrip("\n").split("\n")
    tail: list[str] = []
    while lines and lines[-1].startswith("# "):
        tail.insert(0, lines.pop()[2:])
    return tail


def run_python(code: str, namespace: dict) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<docs>", "exec"), namespace)
    expected = expected_output(code)
    if expected:
        assert out.getvalue().rstrip("\n").split("\n") == expected


def run_page(page: Path, run_cli, folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run every block of ``page`` in ``folder``; return the languages run, in order."""
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    namespace: dict = {"__name__": "__docs__"}
    last: tuple[int, str, str] | None = None
    ran = []
    for lang, text in fenced_blocks(page):
        ran.append(lang)
        if lang == "net":
            first, _, _ = text.partition("\n")
            name = re.fullmatch(r"# file: (\S+\.net)", first)
            assert name, f"a net block of {page.name} does not start with '# file: NAME.net'"
            (folder / name.group(1)).write_text(text, encoding="utf-8")
        elif lang == "sh":
            for line in text.splitlines():
                argv = shlex.split(line)
                assert argv[0] == "netdsl", line
                last = run_cli(argv[1:])
        elif lang == "text":
            assert last is not None, "a text block with no command before it"
            code, out, err = last
            if text.startswith("error:"):
                assert code == 2 and err.rstrip() == text.rstrip(), err
            else:
                assert code == 0, err
                shown = [line.rstrip() for line in out.splitlines()]
                for line in text.splitlines():
                    assert line.rstrip() in shown, f"{line!r} is not in the output:\n{out}"
        elif lang == "python":
            run_python(text, namespace)
    return ran


def test_tutorial_runs(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = run_page(REPO / "docs" / "tutorial.md", run_cli, tmp_path, monkeypatch)
    assert ran.count("sh") >= 4 and "python" in ran and ran.count("net") == 2
    assert (tmp_path / "tiny.onnx").exists() and (tmp_path / "tiny.py").exists()
    sys.modules.pop("tiny", None)  # the generated module imported by the tutorial


def test_api_examples_run(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs").symlink_to(REPO / "specs")
    ran = run_page(REPO / "docs" / "api.md", run_cli, tmp_path, monkeypatch)
    assert ran.count("python") >= 7


def test_readme_is_a_short_page_whose_examples_hold(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160
    python = re.search(r'requires-python = ">=(\d+\.\d+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"Python {python} or newer" in text
    # The spec shown is the tutorial's, which the tutorial test checks, compiles and trains.
    (shown,) = [code for lang, code in fenced_blocks(readme) if lang == "net"]
    tutorial_spec = next(code for lang, code in fenced_blocks(REPO / "docs" / "tutorial.md") if lang == "net")
    assert tutorial_spec.split("\n", 1)[1] == shown
    (tmp_path / "specs").symlink_to(REPO / "specs")
    monkeypatch.chdir(tmp_path)
    for lang, code in fenced_blocks(readme):
        if lang == "python":
            run_python(code, {"__name__": "__docs__"})
