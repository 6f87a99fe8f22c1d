"""Abstract syntax tree of the .net language. Every node carries its source :class:`Span`."""

from __future__ import annotations

from dataclasses import dataclass, field

from netdsl.ir import Span

# ----------------------------------------------------------------------------- expressions


@dataclass
class Expr:
    """Base of all expressions."""

    span: Span


@dataclass
class Num(Expr):
    """A number literal: ``3``, ``0.5``, ``1e-6``."""

    value: int | float


@dataclass
class Str(Expr):
    """A string literal (quotes removed, escapes applied)."""

    value: str


@dataclass
class Bool(Expr):
    """``true`` or ``false``."""

    value: bool


@dataclass
class Name(Expr):
    """A name: a parameter, a ``let`` binding, a tensor or a loop variable."""

    id: str


@dataclass
class ListExpr(Expr):
    """A list literal ``[a, b, ...]``."""

    items: list[Expr]


@dataclass
class BinOp(Expr):
    """Arithmetic (``+ - * / // % **``), comparison (``== != < <= > >=``) or logic (``and or``)."""

    op: str
    left: Expr
    right: Expr
    op_span: Span


@dataclass
class UnaryOp(Expr):
    """``-x``, ``+x`` or ``not x``."""

    op: str  # "-", "+", "not"
    operand: Expr


@dataclass
class KwArg:
    """A keyword argument ``name=value`` of a call."""

    name: str
    value: Expr
    span: Span


@dataclass
class Segment:
    """One segment of a name path: a name, an integer, or ``{expr}``."""

    value: str | int | Expr
    span: Span


@dataclass
class Path:
    """The name of an ``as`` clause; ``shared`` when written ``as shared NAME`` (reuse NAME's parameters)."""

    segments: list[Segment]
    span: Span
    shared: bool = False


@dataclass
class Call(Expr):
    """A call of an op, a block or a built-in function, with its optional ``as`` name."""

    func: str
    func_span: Span
    args: list[Expr]
    kwargs: list[KwArg]
    name: Path | None = None  # the ``as`` clause


@dataclass
class Index(Expr):
    """``obj[index]``: an element of a list."""

    obj: Expr
    index: Expr


@dataclass
class Attribute(Expr):
    """``obj.attr``: a tensor's ``shape``, ``dtype`` or ``rank``."""

    obj: Expr
    attr: str


# ----------------------------------------------------------------------------- types


@dataclass
class TypeName:
    """A block parameter type: ``int``, ``float``, ``bool``, ``str`` or ``[T]``."""

    base: str
    list_of: TypeName | None
    span: Span

    def __str__(self) -> str:
        return f"[{self.list_of}]" if self.list_of else self.base


@dataclass
class Dim:
    """A dimension of a tensor type: an expression, or ``NAME = default`` (symbol with a default)."""

    expr: Expr
    default: Expr | None
    span: Span


@dataclass
class TensorTypeExpr:
    """A tensor type as written: ``f32[B, dim, H=224, W]``."""

    dtype: str
    dtype_span: Span
    dims: list[Dim]
    span: Span


# ----------------------------------------------------------------------------- statements


@dataclass
class InitOverride:
    """One ``op.role = initialiser(...)`` entry of a ``with init(...)`` clause."""

    op: str
    op_span: Span
    role: str
    role_span: Span
    value: Expr
    span: Span

    @property
    def selector(self) -> str:
        return f"{self.op}.{self.role}"


@dataclass
class InitClause:
    """``with init(...)``: initialisers that override those of every parameter created by a statement's value."""

    items: list[InitOverride]
    span: Span


@dataclass
class Stmt:
    """Base of all statements."""

    span: Span


@dataclass
class InputDecl(Stmt):
    """``input NAME: TYPE``."""

    name: str
    type: TensorTypeExpr


@dataclass
class OutputStmt(Stmt):
    """``output NAME = value`` (or ``output NAME`` for an existing value), with an optional ``with init``."""

    name: str
    value: Expr | None
    init: InitClause | None = None


@dataclass
class Let(Stmt):
    """``let NAME = value``: a compile-time value."""

    name: str
    value: Expr


@dataclass
class Assign(Stmt):
    """``a, b = value``: names bound to a call's tensors, with an optional ``with init``."""

    targets: list[str]
    value: Expr
    init: InitClause | None = None


@dataclass
class Require(Stmt):
    """``require cond, "message"``: a check on the block's parameters and shapes."""

    cond: Expr
    message: str | None


@dataclass
class For(Stmt):
    """``for VAR in iterable { body }``, unrolled at elaboration."""

    var: str
    iterable: Expr
    body: list[Stmt]


@dataclass
class If(Stmt):
    """``if cond { then } else { orelse }``, decided at elaboration."""

    cond: Expr
    then: list[Stmt]
    orelse: list[Stmt]


@dataclass
class ParamDeclStmt(Stmt):
    """``param NAME: f32[...] = init`` (trainable) or ``buffer NAME: ... = init``."""

    kind: str
    name: str
    type: TensorTypeExpr
    init: Expr


# ----------------------------------------------------------------------------- top level


@dataclass
class ParamDecl:
    """A block parameter ``name: type = default``."""

    name: str
    type: TypeName
    default: Expr | None
    span: Span


@dataclass
class BlockDef:
    """A ``block`` or ``model`` definition."""

    kind: str  # "block" or "model"
    name: str
    name_span: Span
    params: list[ParamDecl]
    body: list[Stmt]
    span: Span
    source: SourceFile | None = None


@dataclass
class Import:
    """``import "path.net"``."""

    path: str
    span: Span


@dataclass
class SourceFile:
    """A parsed file: its path as shown in diagnostics, its text, imports and blocks."""

    path: str
    text: str
    imports: list[Import] = field(default_factory=list)
    blocks: list[BlockDef] = field(default_factory=list)
