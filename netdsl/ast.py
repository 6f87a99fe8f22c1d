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
    value: int | float


@dataclass
class Str(Expr):
    value: str


@dataclass
class Bool(Expr):
    value: bool


@dataclass
class Name(Expr):
    id: str


@dataclass
class ListExpr(Expr):
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
    op: str  # "-", "+", "not"
    operand: Expr


@dataclass
class KwArg:
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
    func: str
    func_span: Span
    args: list[Expr]
    kwargs: list[KwArg]
    name: Path | None = None  # the ``as`` clause


@dataclass
class Index(Expr):
    obj: Expr
    index: Expr


@dataclass
class Attribute(Expr):
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
    span: Span


@dataclass
class InputDecl(Stmt):
    name: str
    type: TensorTypeExpr


@dataclass
class OutputStmt(Stmt):
    name: str
    value: Expr | None
    init: InitClause | None = None


@dataclass
class Let(Stmt):
    name: str
    value: Expr


@dataclass
class Assign(Stmt):
    targets: list[str]
    value: Expr
    init: InitClause | None = None


@dataclass
class Require(Stmt):
    cond: Expr
    message: str | None


@dataclass
class For(Stmt):
    var: str
    iterable: Expr
    body: list[Stmt]


@dataclass
class If(Stmt):
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
    name: str
    type: TypeName
    default: Expr | None
    span: Span


@dataclass
class BlockDef:
    kind: str  # "block" or "model"
    name: str
    name_span: Span
    params: list[ParamDecl]
    body: list[Stmt]
    span: Span
    source: SourceFile | None = None


@dataclass
class Import:
    path: str
    span: Span


@dataclass
class SourceFile:
    """A parsed file: its path as shown in diagnostics, its text, imports and blocks."""

    path: str
    text: str
    imports: list[Import] = field(default_factory=list)
    blocks: list[BlockDef] = field(default_factory=list)
