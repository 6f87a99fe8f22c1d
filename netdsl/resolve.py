"""Name resolution of every block of a program, used or not.

Elaboration only visits the blocks the entry instantiates, so a misspelt name in any other block
(an unused variant, a library block no model calls yet) would pass unnoticed. This module walks
the text of every block of the main file and of its imports and reports, as located errors:

- unknown names (a variable read before any statement binds it),
- unknown ops, blocks and builtins (with did-you-mean),
- unknown keyword arguments of ops, blocks and initialisers,
- unknown names inside the ``{expr}`` interpolations of ``require`` messages,
- unknown ``with init`` selectors and tensor attributes.

Binding follows the language's rules: ``for`` and ``if`` bodies share the block's variables, so a
name bound in either branch of an ``if`` is visible after it; an input's unbound dim names bind
symbols. Resolution is textual: it needs no argument values, so it covers blocks that cannot be
elaborated on their own (those with required parameters or symbolic input dims).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from netdsl import ast
from netdsl.diagnostics import Diagnostic, NetdslError, did_you_mean
from netdsl.elaborate import BUILTIN_FUNCS
from netdsl.init_funcs import INIT_FUNCS
from netdsl.ir import Span
from netdsl.loader import Program
from netdsl.parser import parse_source
from netdsl.signatures import signature_text
from netdsl.surface_ops import SURFACE_OPS

TENSOR_ATTRIBUTES = ("shape", "dtype", "rank")
_INTERPOLATION = re.compile(r"\{([^{}]+)\}")


def resolve_program(program: Program) -> None:
    """Raise a located :class:`NetdslError` for the first unresolved name in any block of ``program``."""
    for source in program.files:
        for block in source.blocks:
            _BlockResolver(program, block).run()


def standalone(block: ast.BlockDef) -> bool:
    """Whether ``block`` can be elaborated with no arguments: every parameter has a default and every
    input dim is given (a default, or an expression of names bound before it)."""
    if any(p.default is None for p in block.params):
        return False
    bound = {p.name for p in block.params}
    for st in _walk(block.body):
        if isinstance(st, ast.Let):
            bound.add(st.name)
        if isinstance(st, ast.InputDecl):
            for d in st.type.dims:
                if d.default is None and isinstance(d.expr, ast.Name) and d.expr.id not in bound:
                    return False
                if isinstance(d.expr, ast.Name):
                    bound.add(d.expr.id)
    return True


def _walk(stmts: Iterable[ast.Stmt]) -> Iterable[ast.Stmt]:
    for st in stmts:
        yield st
        if isinstance(st, ast.For):
            yield from _walk(st.body)
        elif isinstance(st, ast.If):
            yield from _walk(st.then)
            yield from _walk(st.orelse)


class _BlockResolver:
    """Resolves the names of one block in statement order."""

    def __init__(self, program: Program, block: ast.BlockDef):
        self.program = program
        self.block = block
        self.ops = SURFACE_OPS
        self.builtins = BUILTIN_FUNCS
        self.inits = INIT_FUNCS
        self.bound: set[str] = {p.name for p in block.params}

    def error(self, message: str, span: Span, help: str | None = None) -> NetdslError:
        return NetdslError(Diagnostic(message, span, help=help))

    def run(self) -> None:
        for p in self.block.params:
            if p.default is not None:
                self.expr(p.default)
        self.stmts(self.block.body)

    # ------------------------------------------------------------------ statements
    def stmts(self, stmts: list[ast.Stmt]) -> None:
        for st in stmts:
            self.stmt(st)

    def stmt(self, st: ast.Stmt) -> None:
        if isinstance(st, ast.InputDecl):
            self.tensor_type(st.type, binds=True)
            self.bound.add(st.name)
        elif isinstance(st, ast.Let):
            self.expr(st.value)
            self.bound.add(st.name)
        elif isinstance(st, ast.Assign):
            self.init_clause(st.init)
            self.expr(st.value)
            self.bound.update(st.targets)
        elif isinstance(st, ast.OutputStmt):
            if st.value is None:
                self.name(st.name, st.span)
            else:
                self.init_clause(st.init)
                self.expr(st.value)
            self.bound.add(st.name)
        elif isinstance(st, ast.Require):
            self.expr(st.cond)
            if st.message:
                self.message(st)
        elif isinstance(st, ast.For):
            self.expr(st.iterable)
            self.bound.add(st.var)
            self.stmts(st.body)
        elif isinstance(st, ast.If):
            self.expr(st.cond)
            self.stmts(st.then)
            self.stmts(st.orelse)
        elif isinstance(st, ast.ParamDeclStmt):
            self.tensor_type(st.type, binds=False)
            self.initialiser(st.init)
            self.bound.add(st.name)

    def tensor_type(self, t: ast.TensorTypeExpr, binds: bool) -> None:
        for d in t.dims:
            if d.default is not None:
                self.expr(d.default)
            if binds and isinstance(d.expr, ast.Name) and (d.default is not None or d.expr.id not in self.bound):
                self.bound.add(d.expr.id)  # an input dim naming an unbound symbol binds it
            else:
                self.expr(d.expr)

    def init_clause(self, clause: ast.InitClause | None) -> None:
        """The initialisers of a ``with init`` clause (its selectors are checked where the clause applies)."""
        for item in clause.items if clause is not None else []:
            self.initialiser(item.value)

    def initialiser(self, e: ast.Expr) -> None:
        if not isinstance(e, ast.Call):
            self.expr(e)
        elif e.func in self.inits:
            self.arguments(e, [a.name for a in self.inits[e.func].args], f"{e.func}()")
        else:
            raise self.error(f"unknown initialiser '{e.func}'", e.func_span,
                             help=did_you_mean(e.func, self.inits) or f"initialisers: {', '.join(sorted(self.inits))}")

    def message(self, st: ast.Require) -> None:
        """Names inside the message's ``{expr}`` interpolations, located at the interpolation."""
        assert st.message is not None
        for m in _INTERPOLATION.finditer(st.message):
            where = self.message_span(st, m.group(0))
            try:
                sub = parse_source(f"block __msg() {{ let __v = {m.group(1)} }}", "<message>")
            except NetdslError as err:
                raise self.error(f"in the message's {m.group(0)}: {err.diag.message}", where) from None
            let = sub.blocks[0].body[0]
            assert isinstance(let, ast.Let)
            try:
                self.expr(let.value)
            except NetdslError as err:
                raise self.error(f"in the message's {m.group(0)}: {err.diag.message}",
                                 where, help=err.diag.help) from None

    def message_span(self, st: ast.Require, text: str) -> Span:
        """Where ``text`` (an interpolation) is written in the require statement, else the statement."""
        source = self.block.source.text if self.block.source else ""
        lines = source.splitlines()
        for n in range(st.span.line, min(st.span.end_line, len(lines)) + 1):
            col = lines[n - 1].find(text)
            if col >= 0:
                return Span(st.span.file, n, col + 1, n, col + 1 + len(text))
        return st.span

    # ------------------------------------------------------------------ expressions
    def name(self, name: str, span: Span) -> None:
        if name not in self.bound:
            raise self.error(f"unknown name '{name}'", span, help=did_you_mean(name, self.bound))

    def expr(self, e: ast.Expr) -> None:
        if isinstance(e, ast.Name):
            self.name(e.id, e.span)
        elif isinstance(e, ast.ListExpr):
            for x in e.items:
                self.expr(x)
        elif isinstance(e, ast.UnaryOp):
            self.expr(e.operand)
        elif isinstance(e, ast.BinOp):
            self.expr(e.left)
            self.expr(e.right)
        elif isinstance(e, ast.Index):
            self.expr(e.obj)
            self.expr(e.index)
        elif isinstance(e, ast.Attribute):
            self.expr(e.obj)
            if e.attr not in TENSOR_ATTRIBUTES:
                raise self.error(f"tensor has no attribute '{e.attr}'", e.span, help=did_you_mean(
                    e.attr, TENSOR_ATTRIBUTES) or "tensors have .shape, .dtype and .rank")
        elif isinstance(e, ast.Call):
            self.call(e)

    def call(self, e: ast.Call) -> None:
        if e.func in self.program.blocks:
            block = self.program.blocks[e.func]
            accepted = [p.name for p in block.params]
            self.arguments(e, accepted, f"{e.func}", "parameter",
                           f"{e.func} takes: " + ", ".join(f"{p.name}: {p.type}" for p in block.params))
        elif e.func in self.ops:
            op = self.ops[e.func]
            self.arguments(e, [a.name for a in op.args], f"{e.func}()", "argument", signature_text(op))
        elif e.func in self.builtins:
            self.arguments(e, [], f"{e.func}()")
        else:
            names = list(self.program.blocks) + list(self.ops) + list(self.builtins)
            raise self.error(f"unknown op or block '{e.func}'", e.func_span, help=did_you_mean(e.func, names))
        if e.name is not None:
            for seg in e.name.segments:
                if isinstance(seg.value, ast.Expr):
                    self.expr(seg.value)

    def arguments(self, e: ast.Call, accepted: list[str], what: str, noun: str = "argument",
                  listing: str | None = None) -> None:
        """The call's arguments; a keyword the callee does not take is an error worded like the elaborator's."""
        for a in e.args:
            self.expr(a)
        for kw in e.kwargs:
            if kw.name not in accepted:
                raise self.error(f"{what} has no {noun} '{kw.name}'", kw.span,
                                 help=did_you_mean(kw.name, accepted) or listing)
            self.expr(kw.value)
