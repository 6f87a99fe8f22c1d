"""Parse .net source text into the AST (:mod:`netdsl.ast`), with located syntax errors."""

from __future__ import annotations

import ast as pyast
import json
import os
from functools import lru_cache
from typing import Any

from netdsl import ast
from netdsl.diagnostics import Diagnostic, NetdslError, SourceCache
from netdsl.ir import Span
from netdsl.lalr import LalrParser, Meta, Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

# What each terminal is called in an error message.
TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "COLON": "':'",
    "DOT": "'.'",
    "EQUAL": "'='",
    "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/', '//' or '%'",
    "POW": "'**'",
    "IMPORT": "'import'",
    "BLOCK_KW": "'block' or 'model'",
    "INPUT": "'input'",
    "OUTPUT": "'output'",
    "LET": "'let'",
    "REQUIRE": "'require'",
    "FOR": "'for'",
    "IN": "'in'",
    "IF": "'if'",
    "ELSE": "'else'",
    "PARAM_KW": "'param' or 'buffer'",
    "AS": "'as'",
    "SHARED": "'shared'",
    "WITH": "'with'",
    "AND": "'and'",
    "OR": "'or'",
    "NOT": "'not'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "$END": "the end of the file",
}

# Grouping of expected terminals into one phrase, so messages stay short.
_EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "TRUE", "FALSE", "ADD_OP", "NOT"}
_STMT_START = {"INPUT", "OUTPUT", "LET", "REQUIRE", "FOR", "IF", "PARAM_KW"}

MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_TREE_DEPTH = 600  # parse-tree levels; deeper sources are refused before recursive stages run


# How the grammar is compiled; the tables in ``grammar/netdsl.tables.json`` are generated with
# these options by ``scripts/generate_parser.py`` (and carry them).
LARK_OPTIONS: dict[str, Any] = {"parser": "lalr", "lexer": "contextual", "propagate_positions": True,
                                "maybe_placeholders": True}
TABLES_FILE = "grammar/netdsl.tables.json"


def decode_tables(tables: dict[str, Any]) -> tuple[dict[str, Any], dict[int, Any]]:
    """lark's serialised parser ``(data, memo)`` from the JSON of the tables file.

    JSON turned the integer keys of the memo, of the symbol list and of the parse states into
    strings and tuples into lists; lark looks states, symbols and memo entries up by integer.
    """
    data, memo = tables["data"], tables["memo"]
    table = data["parser"]["parser"]
    table["tokens"] = {int(k): v for k, v in table["tokens"].items()}
    table["states"] = {int(s): {int(k): tuple(a) for k, a in row.items()} for s, row in table["states"].items()}
    return data, {int(k): v for k, v in memo.items()}


@lru_cache(maxsize=1)
def _parser() -> LalrParser:
    """The parser, from the generated tables shipped in the package.

    The tables are JSON data: loading them runs no code from outside the package, and nothing is
    built or cached at run time. :mod:`netdsl.lalr` runs them as lark would, without importing lark
    (only ``scripts/generate_parser.py`` needs it).
    """
    # Read beside this module (the package is installed as files): importlib.resources would add its own
    # imports (zipfile, tempfile) to the start-up of every command.
    with open(os.path.join(os.path.dirname(__file__), TABLES_FILE), encoding="utf-8") as f:
        text = f.read()
    return LalrParser(*decode_tables(json.loads(text)))


def expected_words(expected: set[str]) -> str:
    """Human phrase for a set of expected terminal names."""
    names = set(expected)
    if len(names) > 1:
        # A `with` clause may follow any assigned value; naming it after every value is noise.
        names.discard("WITH")
    parts: list[str] = []
    if _STMT_START & names and len(names & _STMT_START) >= 3:
        parts.append("a statement")
        names -= _STMT_START
        names.discard("NAME")
    if len(_EXPR_START & names) >= 4:
        parts.append("an expression")
        names -= _EXPR_START
    parts += sorted(TERMINAL_WORDS.get(n, n.lower()) for n in names if not n.startswith("__"))
    if not parts:
        return "something else"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _token_words(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    return f"{TERMINAL_WORDS.get(tok.type, tok.type.lower())} '{tok.value}'" if tok.type in (
        "NAME", "INT", "FLOAT") else f"'{tok.value}'"


def _span(meta: Meta | Token, path: str) -> Span:
    return Span(path, meta.line, meta.column, meta.end_line, meta.end_column)


def _syntax_error(err: UnexpectedInput, path: str, text: str) -> NetdslError:
    line = err.line or 1
    col = err.column or 1
    if isinstance(err, UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
            span = Span(path, line, col, line, col + 1)
        else:
            span = Span(path, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
        msg = f"syntax error: expected {expected_words(set(err.expected))}, found {_token_words(tok)}"
        hint = None
        if tok.type == "NAME" and tok.value in ("def", "fn", "function"):
            hint = "blocks are declared with 'block NAME(params) { ... }'"
        elif "RBRACE" in err.expected and tok.type == "$END":
            hint = "a '{' was opened and never closed"
        return NetdslError(Diagnostic(msg, span, help=hint))
    assert isinstance(err, UnexpectedCharacters)
    ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
    span = Span(path, line, col, line, col + 1)
    if ch == '"':
        return NetdslError(Diagnostic("syntax error: unterminated string", span,
                                      help="a string ends with '\"' on the same line"))
    hint = "strings use double quotes" if ch == "'" else None
    return NetdslError(Diagnostic(f"syntax error: unexpected character {ch!r}", span, help=hint))


class _ToAst:
    """Parse tree -> :mod:`netdsl.ast` nodes, bottom up: the method named like a tree's rule (or alias) gets the
    tree's meta and its transformed children; a tree without one stays a tree."""

    def __init__(self, path: str):
        self.file = path

    def transform(self, root: Tree) -> Any:
        """The value of ``root``, built without recursion (children before their parent)."""
        values: list[Any] = []
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if not isinstance(node, Tree):
                values.append(node)
            elif not children_done:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.children))
            else:
                count = len(node.children)
                children = values[len(values) - count:]
                del values[len(values) - count:]
                method = getattr(self, node.data, None)
                values.append(method(node.meta, *children) if method is not None else
                              Tree(node.data, children, node.meta))
        return values[0]

    def sp(self, m: Meta | Token) -> Span:
        return _span(m, self.file)

    # -- top level
    def start(self, meta: Meta, *items: Any) -> ast.SourceFile:
        sf = ast.SourceFile(self.file, "")
        for it in items:
            if isinstance(it, ast.Import):
                sf.imports.append(it)
            else:
                it.source = sf
                sf.blocks.append(it)
        return sf

    def import_stmt(self, meta: Meta, _kw: Token, s: Token) -> ast.Import:
        return ast.Import(pyast.literal_eval(s), self.sp(meta))

    def block_def(self, meta: Meta, kw: Token, name: Token, _l: Token, params: Any, _r: Token,
                  body: list) -> ast.BlockDef:
        return ast.BlockDef(str(kw), str(name), self.sp(name), params or [], body, self.sp(meta))

    def param_list(self, meta: Meta, *items: Any) -> list[ast.ParamDecl]:
        return [i for i in items if isinstance(i, ast.ParamDecl)]

    def param_decl(self, meta: Meta, name: Token, _c: Token, t: ast.TypeName, *rest: Any) -> ast.ParamDecl:
        default = rest[1] if len(rest) == 2 else None
        return ast.ParamDecl(str(name), t, default, self.sp(meta))

    def scalar_type(self, meta: Meta, name: Token) -> ast.TypeName:
        return ast.TypeName(str(name), None, self.sp(meta))

    def list_type(self, meta: Meta, _l: Token, inner: ast.TypeName, _r: Token) -> ast.TypeName:
        return ast.TypeName("list", inner, self.sp(meta))

    def body(self, meta: Meta, _l: Token, *rest: Any) -> list[ast.Stmt]:
        return list(rest[:-1])

    # -- statements
    def input_decl(self, meta: Meta, _kw: Token, name: Token, _c: Token, t: ast.TensorTypeExpr) -> ast.InputDecl:
        return ast.InputDecl(self.sp(meta), str(name), t)

    def tensor_type(self, meta: Meta, dtype: Token, _l: Token, *rest: Any) -> ast.TensorTypeExpr:
        dims = [d for d in rest if isinstance(d, ast.Dim)]
        return ast.TensorTypeExpr(str(dtype), self.sp(dtype), dims, self.sp(meta))

    def dim_default(self, meta: Meta, name: Token, _e: Token, value: ast.Expr) -> ast.Dim:
        return ast.Dim(ast.Name(self.sp(name), str(name)), value, self.sp(meta))

    def dim_expr(self, meta: Meta, e: ast.Expr) -> ast.Dim:
        return ast.Dim(e, None, self.sp(meta))

    def output_stmt(self, meta: Meta, _kw: Token, name: Token, *rest: Any) -> ast.OutputStmt:
        clause = rest[2] if len(rest) == 3 else None
        return ast.OutputStmt(self.sp(meta), str(name), rest[1] if rest else None, clause)

    def let_stmt(self, meta: Meta, _kw: Token, name: Token, _e: Token, value: ast.Expr) -> ast.Let:
        return ast.Let(self.sp(meta), str(name), value)

    def assign_stmt(self, meta: Meta, *items: Any) -> ast.Assign:
        clause = items[-1] if isinstance(items[-1], ast.InitClause) else None
        value = items[-2] if clause else items[-1]
        targets = [str(t) for t in items if isinstance(t, Token) and t.type == "NAME"]
        return ast.Assign(self.sp(meta), targets, value, clause)

    def init_clause(self, meta: Meta, _with: Token, kind: Token, *rest: Any) -> ast.InitClause:
        if str(kind) != "init":
            raise NetdslError(Diagnostic(f"unknown clause 'with {kind}'", self.sp(kind),
                                         help="the clause is 'with init(op.role = initialiser(...), ...)'"))
        return ast.InitClause([i for i in rest if isinstance(i, ast.InitOverride)], self.sp(meta))

    def init_item(self, meta: Meta, op: Token, _d: Token, role: Token, _e: Token, value: ast.Expr) -> ast.InitOverride:
        return ast.InitOverride(str(op), self.sp(op), str(role), self.sp(role), value, self.sp(meta))

    def require_stmt(self, meta: Meta, _kw: Token, cond: ast.Expr, *rest: Any) -> ast.Require:
        msg = pyast.literal_eval(rest[1]) if len(rest) == 2 else None
        return ast.Require(self.sp(meta), cond, msg)

    def for_stmt(self, meta: Meta, _kw: Token, var: Token, _in: Token, it: ast.Expr, body: list) -> ast.For:
        return ast.For(self.sp(meta), str(var), it, body)

    def if_stmt(self, meta: Meta, _kw: Token, cond: ast.Expr, then: list, *rest: Any) -> ast.If:
        orelse: list = []
        if rest:
            other = rest[1]
            orelse = [other] if isinstance(other, ast.If) else other
        return ast.If(self.sp(meta), cond, then, orelse)

    def param_stmt(self, meta: Meta, kw: Token, name: Token, _c: Token, t: ast.TensorTypeExpr, _e: Token,
                   init: ast.Expr) -> ast.ParamDeclStmt:
        return ast.ParamDeclStmt(self.sp(meta), str(kw), str(name), t, init)

    # -- expressions
    def _chain(self, meta: Meta, *items: Any) -> ast.Expr:
        left = items[0]
        for i in range(1, len(items), 2):
            op, right = items[i], items[i + 1]
            left = ast.BinOp(self.sp(meta), str(op), left, right, self.sp(op))
        return left

    or_expr = _chain
    and_expr = _chain
    comparison = _chain
    binop = _chain
    power = _chain

    def paren(self, meta: Meta, _l: Token, e: ast.Expr, _r: Token) -> ast.Expr:
        return e

    def not_op(self, meta: Meta, _kw: Token, e: ast.Expr) -> ast.Expr:
        return ast.UnaryOp(self.sp(meta), "not", e)

    def unary(self, meta: Meta, op: Token, e: ast.Expr) -> ast.Expr:
        return ast.UnaryOp(self.sp(meta), str(op), e)

    def call(self, meta: Meta, fn: ast.Expr, _l: Token, args: Any, _r: Token, name: Any = None) -> ast.Expr:
        if not isinstance(fn, ast.Name):
            raise NetdslError(Diagnostic("only ops and blocks can be called", fn.span))
        pos = [a for a in (args or []) if isinstance(a, ast.Expr)]
        kws = [a for a in (args or []) if isinstance(a, ast.KwArg)]
        return ast.Call(self.sp(meta), fn.id, fn.span, pos, kws, name)

    def as_clause(self, meta: Meta, _as: Token, *rest: Any) -> ast.Path:
        path = rest[-1]
        path.shared = len(rest) == 2
        return path

    def path(self, meta: Meta, *items: Any) -> ast.Path:
        return ast.Path([s for s in items if isinstance(s, ast.Segment)], self.sp(meta))

    def seg_name(self, meta: Meta, t: Token) -> ast.Segment:
        return ast.Segment(str(t), self.sp(meta))

    def seg_int(self, meta: Meta, t: Token) -> ast.Segment:
        return ast.Segment(int(t), self.sp(meta))

    def seg_expr(self, meta: Meta, _l: Token, e: ast.Expr, _r: Token) -> ast.Segment:
        return ast.Segment(e, self.sp(meta))

    def args(self, meta: Meta, *items: Any) -> list:
        return [i for i in items if not isinstance(i, Token)]

    def pos_arg(self, meta: Meta, e: ast.Expr) -> ast.Expr:
        return e

    def kw_arg(self, meta: Meta, name: Token, _e: Token, value: ast.Expr) -> ast.KwArg:
        return ast.KwArg(str(name), value, self.sp(meta))

    def index(self, meta: Meta, obj: ast.Expr, _l: Token, idx: ast.Expr, _r: Token) -> ast.Expr:
        return ast.Index(self.sp(meta), obj, idx)

    def attribute(self, meta: Meta, obj: ast.Expr, _d: Token, name: Token) -> ast.Expr:
        return ast.Attribute(self.sp(meta), obj, str(name))

    def int_lit(self, meta: Meta, t: Token) -> ast.Expr:
        if len(t) > 19:  # beyond 64 bits; also keeps int() clear of Python's digit limit
            raise NetdslError(Diagnostic("integer literal exceeds the limit of 64 bits", self.sp(meta)))
        return ast.Num(self.sp(meta), int(t))

    def float_lit(self, meta: Meta, t: Token) -> ast.Expr:
        return ast.Num(self.sp(meta), float(t))

    def string_lit(self, meta: Meta, t: Token) -> ast.Expr:
        return ast.Str(self.sp(meta), pyast.literal_eval(t))

    def true_lit(self, meta: Meta, t: Token) -> ast.Expr:
        return ast.Bool(self.sp(meta), True)

    def false_lit(self, meta: Meta, t: Token) -> ast.Expr:
        return ast.Bool(self.sp(meta), False)

    def name(self, meta: Meta, t: Token) -> ast.Expr:
        return ast.Name(self.sp(meta), str(t))

    def list_lit(self, meta: Meta, _l: Token, *rest: Any) -> ast.Expr:
        return ast.ListExpr(self.sp(meta), [r for r in rest if isinstance(r, ast.Expr)])


def max_source_bytes() -> int:
    """The source size limit: :data:`MAX_SOURCE_BYTES`, or ``NETDSL_MAX_SOURCE_BYTES`` if set."""
    value = os.environ.get("NETDSL_MAX_SOURCE_BYTES", "")
    return int(value) if value.isdigit() else MAX_SOURCE_BYTES


def too_large(path: str, size: int) -> NetdslError | None:
    """The located error for a source of ``size`` bytes over the limit, or None."""
    limit = max_source_bytes()
    if size <= limit:
        return None
    return NetdslError(Diagnostic(f"file is larger than the limit of {limit} bytes", Span(path, 1, 1, 1, 2),
                                  help="raise the limit with NETDSL_MAX_SOURCE_BYTES if this is intended"))


def _check_depth(tree: Tree, path: str) -> None:
    """Refuse trees deeper than :data:`MAX_TREE_DEPTH` (walked without recursion), before the
    recursive stages (AST building, elaboration) could run out of stack."""
    stack: list[tuple[Tree, int, bool]] = [(tree, 1, False)]
    while stack:
        node, depth, in_body = stack.pop()
        if depth > MAX_TREE_DEPTH:
            meta = node.meta
            span = Span(path, getattr(meta, "line", 1), getattr(meta, "column", 1), getattr(meta, "line", 1),
                        getattr(meta, "column", 1) + 1)
            what = "statements" if in_body and node.data in ("body", "if_stmt", "for_stmt") else "expression"
            raise NetdslError(Diagnostic(f"{what} nested too deeply to parse", span,
                                         notes=[f"the limit is {MAX_TREE_DEPTH} levels of nesting"]))
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth + 1, in_body or node.data == "body"))


def parse_source(text: str, path: str) -> ast.SourceFile:
    """Parse ``text`` (shown in diagnostics as ``path``) into a :class:`~netdsl.ast.SourceFile`."""
    SourceCache.add(path, text)
    err = too_large(path, len(text.encode("utf-8", "replace")))
    if err:
        raise err
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, path, text) from None
    _check_depth(tree, path)
    sf = _ToAst(path).transform(tree)
    sf.text = text
    return sf
