"""Load a spec file and, transitively, the files it imports.

Imports resolve relative to the importing file's folder, or else in the configured search
path; absolute paths are refused so that a spec cannot reach arbitrary places. Missing
files, cycles and two blocks of the same name are located errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from netdsl import ast
from netdsl.diagnostics import Diagnostic, NetdslError, did_you_mean
from netdsl.ir import Span
from netdsl.parser import parse_source, too_large

MAX_IMPORT_DEPTH = 32


@dataclass
class Program:
    """All blocks visible from the main file, by name, plus the main file itself."""

    main: ast.SourceFile
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    files: list[ast.SourceFile] = field(default_factory=list)

    def default_entry(self) -> ast.BlockDef:
        """The main file's last model, else its only block."""
        models = [b for b in self.main.blocks if b.kind == "model"]
        if models:
            return models[-1]
        if len(self.main.blocks) == 1:
            return self.main.blocks[0]
        if not self.main.blocks:
            raise NetdslError(Diagnostic(f"{self.main.path} defines no block or model",
                                         Span(self.main.path, 1, 1, 1, 2)))
        names = ", ".join(b.name for b in self.main.blocks)
        raise NetdslError(Diagnostic(
            f"{self.main.path} has no model and {len(self.main.blocks)} blocks ({names}); choose one with --entry",
            None))

    def entry(self, name: str | None) -> ast.BlockDef:
        """The block or model called ``name`` (default: :meth:`default_entry`)."""
        if name is None:
            return self.default_entry()
        if name not in self.blocks:
            raise NetdslError(Diagnostic(
                f"no block or model named '{name}' in {self.main.path}", None,
                help=did_you_mean(name, self.blocks) or f"available: {', '.join(sorted(self.blocks))}"))
        return self.blocks[name]


def _display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def _read(path: Path, shown: str, span: object = None) -> str:
    try:
        # Check the size before reading: a huge file must not be loaded into memory first.
        err = too_large(_display_path(path.resolve()) if span else shown, path.stat().st_size)
        if err:
            raise err
        data = path.read_bytes()
    except FileNotFoundError:
        raise NetdslError(Diagnostic(f"file not found: {shown}", span)) from None  # type: ignore[arg-type]
    except IsADirectoryError:
        raise NetdslError(Diagnostic(f"{shown} is a folder, not a .net file", span)) from None  # type: ignore[arg-type]
    except OSError as e:
        raise NetdslError(Diagnostic(f"cannot read {shown}: {e.strerror}", span)) from None  # type: ignore[arg-type]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        where = Span(shown if span is None else _display_path(path), line, col, line, col + 1)
        raise NetdslError(Diagnostic(f"{shown} is not UTF-8 text (byte {e.start})", where,
                                     notes=[f"imported at {span}"] if span else [])) from None


def load_program(path: str | Path, search_path: list[Path] | None = None) -> Program:
    """Parse ``path`` and everything it imports into a :class:`Program`."""
    main_path = Path(path).resolve()
    shown = _display_path(main_path)
    main = parse_source(_read(main_path, str(path)), shown)
    prog = Program(main)
    search = [p.resolve() for p in (search_path or [])]
    done: dict[Path, ast.SourceFile] = {main_path: main}
    _load_imports(prog, main, main_path, done, [main_path], search)
    prog.files = list(done.values())
    for sf in prog.files:
        for b in sf.blocks:
            if b.name in prog.blocks and prog.blocks[b.name] is not b:
                first = prog.blocks[b.name]
                raise NetdslError(Diagnostic(
                    f"block '{b.name}' is defined twice", b.name_span,
                    notes=[f"first defined at {first.name_span}"]))
            prog.blocks[b.name] = b
    return prog


def _resolve(imp: ast.Import, importer: Path, search: list[Path]) -> Path:
    if os.path.isabs(imp.path):
        raise NetdslError(Diagnostic(
            f"import of an absolute path '{imp.path}' is not allowed", imp.span,
            help="import relative to this file, or add the folder to the search path (--lib)"))
    candidates = [importer.parent / imp.path] + [d / imp.path for d in search]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    tried = ", ".join(_display_path(c) for c in candidates)
    raise NetdslError(Diagnostic(f"imported file '{imp.path}' not found (looked at {tried})", imp.span))


def _load_imports(prog: Program, sf: ast.SourceFile, path: Path, done: dict[Path, ast.SourceFile],
                  stack: list[Path], search: list[Path]) -> None:
    for imp in sf.imports:
        if len(stack) >= MAX_IMPORT_DEPTH:
            raise NetdslError(Diagnostic(f"imports nested deeper than the limit of {MAX_IMPORT_DEPTH} files",
                                         imp.span))
        target = _resolve(imp, path, search)
        if target in stack:
            cycle = " -> ".join(_display_path(p) for p in stack[stack.index(target):] + [target])
            raise NetdslError(Diagnostic(f"import cycle: {cycle}", imp.span))
        if target in done:
            continue
        child = parse_source(_read(target, imp.path, imp.span), _display_path(target))
        done[target] = child
        _load_imports(prog, child, target, done, stack + [target], search)
