"""Hypothesis strategies that produce .net spec inputs for fuzzing the front end.

Three families, from most to least structured:

* :func:`generated_specs` -- programs following the grammar's structure: blocks with
  parameters, inputs, ``let``/assign/``require``/``for``/``if``/``param`` statements, and calls
  of the real surface ops (:data:`netdsl.surface_ops.SURFACE_OPS`) with arguments of the kinds
  their signatures ask for, mostly plausible and sometimes absurd (0, negative, huge);
* :func:`mutated_specs` -- the bundled specs with tokens deleted, duplicated, swapped or
  replaced, numbers changed to edge values, random characters inserted, or cut short;
* :func:`random_inputs` -- raw bytes, arbitrary unicode, and soups of the language's tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import strategies as st

from netdsl.init_funcs import INIT_FUNCS
from netdsl.ir import DTYPES
from netdsl.signatures import REQUIRED as _REQUIRED
from netdsl.signatures import Arg
from netdsl.surface_ops import SURFACE_OPS

T = TypeVar("T")

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
BUNDLED_SPECS = {p.name: p.read_text() for p in sorted(SPECS_DIR.glob("*.net"))}

# Integers that break things: zero, negatives, the edges of machine ints, and very large.
EDGE_INTS = (0, 1, -1, -2, 2, 3, 7, 64, 2**31 - 1, 2**31, 2**63, 10**12, 10**30, -(10**30))

KEYWORDS = ("import", "block", "model", "input", "output", "let", "require", "for", "in", "if", "else",
            "param", "buffer", "as", "with", "and", "or", "not", "true", "false")
PUNCTUATION = ("(", ")", "[", "]", "{", "}", ",", ":", ".", "=", "==", "!=", "<=", ">=", "<", ">", "+", "-",
               "*", "//", "/", "%", "**", "#", '"', "\n", " ")
BUILTINS = ("range", "len", "sum", "min", "max", "int", "float", "abs", "prod", "ceil", "floor", "sqrt")
SCALAR_BINOPS = ("+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or")
TENSOR_BINOPS = ("+", "-", "*", "/")

# Characters of the language plus a few that are not (quote, tab, non-ASCII, NUL).
GRAMMAR_ALPHABET = "abcdefxyzHWBN_0123456789 \n\t(){}[],:.=<>!+-*/%#\"'\\éλ\x00"

# Parameter initialisers: each init function called without arguments, a few with them, and
# one with an argument it does not take.
INIT_CALLS = tuple(f"{f}()" for f in sorted(INIT_FUNCS)) + ("normal(0.02)", "trunc_normal(std=0.02)", "ones(1)")
# `with init(op.role = value)` clauses: real and misspelt ops and roles, initialisers and non-initialisers.
CLAUSE_OPS = ("conv", "linear", "batchnorm", "layernorm", "relu", "cnv")
CLAUSE_ROLES = ("weight", "bias", "running_mean", "gain")
CLAUSE_VALUES = (*INIT_CALLS, "3", 'kaiming_normal(mode="fan_out")', "kaiming_normal()")
# Block parameter types with a default (the last one of the wrong type).
PARAM_DECLS = (("int", "2"), ("float", "0.5"), ("bool", "true"), ("[int]", "[1, 2]"), ("str", '"zero"'), ("int", "4"),
               ("int", "1.5"))
INSERTED_TEXT = st.text(alphabet=GRAMMAR_ALPHABET, min_size=1, max_size=4)

# One lexical token of .net text (strings, comments, numbers, names, operators, else one character).
TOKEN_RE = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_]\w*|\*\*|//|==|!=|<=|>=|\s+|.',
    re.DOTALL)
NUMBER_RE = re.compile(r"\d")
NAME_RE = re.compile(r"[A-Za-z_]")


# ----------------------------------------------------------------------------- drawing helpers
# Programs are built with many small choices; drawing them from a few cached integer strategies
# is several times faster than building a new strategy for every choice.


@cache
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


def between(draw: st.DrawFn, lo: int, hi: int) -> int:
    """An int in [lo, hi] (shrinking towards lo)."""
    return draw(_integers(lo, hi))


def pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """One of ``options`` (shrinking towards the first)."""
    return options[between(draw, 0, len(options) - 1)]


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True with probability about 1/n."""
    return between(draw, 0, n - 1) == 0


# ----------------------------------------------------------------------------- scalars


# Mostly small positive ints (so that programs get far), sometimes edge or wide values.
EDGE_INT_VALUES = st.one_of(st.integers(1, 16), st.integers(1, 16), st.integers(1, 16), st.sampled_from(EDGE_INTS),
                            st.integers(-(2**70), 2**70))
# Finite non-negative float literals as the grammar writes them (``0.5``, ``1e-05``).
FLOAT_LITERALS = st.one_of(st.sampled_from(("0.0", "0.5", "1.0", "1e-05", "2.5", "1e300")),
                           st.floats(0, 1e308, allow_nan=False, allow_infinity=False).map(repr))


# String literals, some with ``{...}`` interpolations as require messages use them.
STRING_LITERALS = st.one_of(
    st.sampled_from(("", "f32", "zero", "reflect", "linear", "nearest", "shift", "x={x}", "{1 +", "{H}x{W}", "{n}",
                     "{x.shape}", "{{}}")),
    st.text(alphabet="abc {}x.", max_size=12),
).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')


@dataclass
class Scope:
    """Names a generated program can refer to at one point."""

    scalars: list[str] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    counter: list[int] = field(default_factory=lambda: [0])  # shared by copies: names stay unique

    def fresh(self, prefix: str) -> str:
        self.counter[0] += 1
        return f"{prefix}{self.counter[0]}"

    def nested(self) -> Scope:
        """A copy for a nested body: its new names do not leak out."""
        return Scope(list(self.scalars), list(self.tensors), self.counter)


def _maybe_paren(draw: st.DrawFn, text: str) -> str:
    return f"({text})" if one_in(draw, 4) else text


def scalar_expr(draw: st.DrawFn, scope: Scope, depth: int = 2) -> str:
    """A compile-time expression: literals, names, operators, builtins, lists, tensor shapes."""
    choices = ["int", "int", "float", "bool", "str"] + ["name"] * bool(scope.scalars) + ["shape"] * bool(scope.tensors)
    if depth > 0:
        choices += ["binop", "binop", "unary", "builtin", "list", "index"]
    kind = pick(draw, choices)
    if kind == "int":
        return str(draw(EDGE_INT_VALUES))
    if kind == "float":
        return draw(FLOAT_LITERALS)
    if kind == "bool":
        return pick(draw, ("true", "false"))
    if kind == "str":
        return draw(STRING_LITERALS)
    if kind == "name":
        return pick(draw, scope.scalars)
    if kind == "shape":
        attr = pick(draw, ("shape", "rank", "dtype", "size"))
        tail = f"[{between(draw, -5, 5)}]" if attr == "shape" else ""
        return f"{pick(draw, scope.tensors)}.{attr}{tail}"
    if kind == "binop":
        op = pick(draw, SCALAR_BINOPS)
        return _maybe_paren(draw, f"{scalar_expr(draw, scope, depth - 1)} {op} {scalar_expr(draw, scope, depth - 1)}")
    if kind == "unary":
        operand = scalar_expr(draw, scope, depth - 1)
        return f"{pick(draw, ('-', '+'))}{operand}" if one_in(draw, 2) else f"not {operand}"
    if kind == "builtin":
        fn = pick(draw, BUILTINS)
        n_args = between(draw, 0, 3) if fn in ("range", "min", "max") else 1
        return f"{fn}({', '.join(scalar_expr(draw, scope, depth - 1) for _ in range(n_args))})"
    if kind == "list":
        items = [scalar_expr(draw, scope, depth - 1) for _ in range(between(draw, 0, 4))]
        return f"[{', '.join(items)}]"
    items = [scalar_expr(draw, scope, 0) for _ in range(between(draw, 1, 3))]
    return f"[{', '.join(items)}][{scalar_expr(draw, scope, depth - 1)}]"


def int_arg(draw: st.DrawFn, scope: Scope) -> str:
    """An int-valued argument: a literal, or sometimes a scalar name or a computed value."""
    if one_in(draw, 6):
        return scalar_expr(draw, scope, 1)
    return str(draw(EDGE_INT_VALUES))


def int_list(draw: st.DrawFn, scope: Scope, min_size: int = 0, max_size: int = 4) -> str:
    """``[a, b, ...]`` of ints, including -1 (as reshape targets use it)."""
    items = [str(between(draw, -1, 8)) if one_in(draw, 2) else int_arg(draw, scope)
             for _ in range(between(draw, min_size, max_size))]
    return f"[{', '.join(items)}]"


# ----------------------------------------------------------------------------- op arguments


def arg_value(draw: st.DrawFn, scope: Scope, arg: Arg) -> str:
    """Source text for one argument of a surface op, of the kind its signature asks for.

    One time in twelve the value is an arbitrary expression instead, to exercise the binder.
    """
    if one_in(draw, 12):
        return scalar_expr(draw, scope, 1) if one_in(draw, 2) else pick(draw, scope.tensors or ["x"])
    kind = arg.kind
    if kind == "tensor":
        return tensor_expr(draw, scope, depth=between(draw, 0, 1))
    if kind == "tensors":
        return f"[{', '.join(pick(draw, scope.tensors) for _ in range(between(draw, 1, 3)))}]"
    if kind == "int":
        return int_arg(draw, scope)
    if kind == "float":
        return draw(FLOAT_LITERALS) if one_in(draw, 2) else str(draw(EDGE_INT_VALUES))
    if kind == "bool":
        return pick(draw, ("true", "false"))
    if kind == "str":
        options = arg.choices or ("f32", "f16", "i64", "bool", "none")
        return '"' + pick(draw, options if not one_in(draw, 4) else ("", "bogus", "F32")) + '"'
    if kind == "pair":
        return int_arg(draw, scope) if one_in(draw, 2) else f"[{int_arg(draw, scope)}, {int_arg(draw, scope)}]"
    if kind == "pads":
        size = pick(draw, (1, 2, 4))
        return int_arg(draw, scope) if size == 1 else int_list(draw, scope, size, size)
    if kind == "ints":
        return int_list(draw, scope)
    if kind == "floats":
        return f"[{', '.join(draw(FLOAT_LITERALS) for _ in range(between(draw, 1, 2)))}]"
    if kind == "offsets":
        pairs = [f"[{between(draw, -3, 3)}, {between(draw, -3, 3)}]" for _ in range(between(draw, 1, 4))]
        return f"[{', '.join(pairs)}]"
    return scalar_expr(draw, scope, 1)


def op_call(draw: st.DrawFn, scope: Scope) -> str:
    """A call of a real surface op: required arguments mostly given, optional ones sometimes.

    Arguments go positionally up to a random point, then by keyword; now and then a required
    one is left out or an unknown keyword is added. Ops with parameters may get an ``as`` name.
    """
    name = pick(draw, sorted(SURFACE_OPS))
    op = SURFACE_OPS[name]
    n_positional = between(draw, 0, len(op.args))
    parts: list[str] = []
    for i, arg in enumerate(op.args):
        required = arg.default is _REQUIRED
        include = not one_in(draw, 16) if required else one_in(draw, 2)
        if not include:
            continue
        value = arg_value(draw, scope, arg)
        parts.append(value if i < n_positional and len(parts) == i else f"{arg.name}={value}")
    if one_in(draw, 16):
        parts.append(f"bogus={int_arg(draw, scope)}")
    call = f"{name}({', '.join(parts)})"
    if op.named and one_in(draw, 3):
        call += f" as {pick(draw, ('conv1', 'proj', 'layer.0', 'act.{i}', 'b.1.c'))}"
    return call


def tensor_expr(draw: st.DrawFn, scope: Scope, depth: int = 1, blocks: tuple[str, ...] = ()) -> str:
    """An expression that should give a tensor: a name, an op call, arithmetic, or a block call."""
    choices = ["name"] * bool(scope.tensors) + ["op", "op"]
    if depth > 0:
        choices += ["binop", "scalar_binop", "neg"] + ["block"] * bool(blocks)
    kind = pick(draw, choices)
    if kind == "name":
        return pick(draw, scope.tensors)
    if kind == "op":
        return op_call(draw, scope)
    if kind == "binop":
        op = pick(draw, TENSOR_BINOPS)
        return _maybe_paren(draw, f"{tensor_expr(draw, scope, depth - 1)} {op} {tensor_expr(draw, scope, depth - 1)}")
    if kind == "scalar_binop":
        op = pick(draw, TENSOR_BINOPS)
        return f"{tensor_expr(draw, scope, depth - 1)} {op} {draw(FLOAT_LITERALS)}"
    if kind == "neg":
        return f"-{tensor_expr(draw, scope, depth - 1)}"
    block = pick(draw, blocks)
    extra = ", n=" + int_arg(draw, scope) if one_in(draw, 2) else ""
    return f"{block}({pick(draw, scope.tensors or ['x'])}{extra})"


# ----------------------------------------------------------------------------- statements and blocks


def tensor_type_text(draw: st.DrawFn, scope: Scope, symbolic: bool, bound: bool) -> str:
    """``f32[N=1, 4, H=8, W=8]``-like types: small dims, sometimes 0, negative, huge or unknown dtypes.

    ``symbolic`` allows named dims; ``bound`` says whether a named dim may lack a default (it may
    in a block, whose inputs come from the caller, but not in the entry model).
    """
    dtype = pick(draw, DTYPES + ("f128",)) if one_in(draw, 8) else "f32"
    rank = between(draw, 1, 5) if one_in(draw, 4) else 4
    dims = []
    for i in range(rank):
        value = pick(draw, EDGE_INTS) if one_in(draw, 8) else between(draw, 1, 8)
        style = between(draw, 0, 3 if bound else 1) if symbolic else 0
        if style == 1:
            dims.append(f"D{i}={str(value)}")
        elif style == 2:
            dims.append(f"D{i}")
        elif style == 3 and scope.scalars:
            dims.append(pick(draw, scope.scalars))
        else:
            dims.append(str(value))
    return f"{dtype}[{', '.join(dims)}]"


def init_clause(draw: st.DrawFn) -> str:
    """Usually nothing; sometimes a ``with init(...)`` clause with valid or misspelt selectors and values."""
    if not one_in(draw, 4):
        return ""
    items = [f"{pick(draw, CLAUSE_OPS)}.{pick(draw, CLAUSE_ROLES)} = {pick(draw, CLAUSE_VALUES)}"
             for _ in range(between(draw, 0, 2))]
    return f" with init({', '.join(items)})"


def statements(draw: st.DrawFn, scope: Scope, blocks: tuple[str, ...], depth: int, indent: str) -> list[str]:
    """A list of statements (as lines) that may use and extend ``scope``."""
    lines: list[str] = []
    kinds = ["let", "assign", "assign", "assign", "require", "param"] + ["for", "if"] * (depth > 0)
    for _ in range(between(draw, 0, 5)):
        kind = pick(draw, kinds)
        if kind == "let":
            name = scope.fresh("a")
            lines.append(f"{indent}let {name} = {scalar_expr(draw, scope)}")
            scope.scalars.append(name)
        elif kind == "assign":
            reuse = scope.tensors and one_in(draw, 2)
            name = pick(draw, scope.tensors) if reuse else scope.fresh("t")
            lines.append(f"{indent}{name} = {tensor_expr(draw, scope, 1, blocks)}{init_clause(draw)}")
            scope.tensors.append(name)
        elif kind == "require":
            message = f", {draw(STRING_LITERALS)}" if one_in(draw, 2) else ""
            lines.append(f"{indent}require {scalar_expr(draw, scope)}{message}")
        elif kind == "param":
            name = scope.fresh("w")
            init = draw(FLOAT_LITERALS) if one_in(draw, 3) else pick(draw, INIT_CALLS)
            keyword = pick(draw, ("param", "param", "buffer"))
            lines.append(f"{indent}{keyword} {name}: {tensor_type_text(draw, scope, False, False)} = {init}")
            scope.tensors.append(name)
        elif kind == "for":
            inner = scope.nested()
            var = inner.fresh("i")
            inner.scalars.append(var)
            iterable = f"range({between(draw, 0, 4)})" if between(draw, 0, 3) else scalar_expr(draw, scope, 1)
            lines.append(f"{indent}for {var} in {iterable} {{")
            lines += statements(draw, inner, blocks, depth - 1, indent + "  ")
            lines.append(f"{indent}}}")
        else:
            lines.append(f"{indent}if {scalar_expr(draw, scope, 1)} {{")
            lines += statements(draw, scope.nested(), blocks, depth - 1, indent + "  ")
            if one_in(draw, 2):
                lines.append(f"{indent}}} else {{")
                lines += statements(draw, scope.nested(), blocks, depth - 1, indent + "  ")
            lines.append(f"{indent}}}")
    return lines


def block_text(draw: st.DrawFn, keyword: str, name: str, callable_blocks: tuple[str, ...]) -> str:
    """One ``block`` or ``model`` with parameters, inputs, a body and outputs."""
    scope = Scope()
    params = []
    if keyword == "block":
        params.append(f"n: int = {str(draw(EDGE_INT_VALUES))}")
        scope.scalars.append("n")
    for _ in range(between(draw, 0, 2)):
        pname = scope.fresh("p")
        ptype, default = pick(draw, PARAM_DECLS)
        # The entry model gets no arguments, so its parameters need defaults.
        with_default = keyword == "model" or not one_in(draw, 5)
        params.append(f"{pname}: {ptype} = {default}" if with_default else f"{pname}: {ptype}")
        scope.scalars.append(pname)
    lines = [f"{keyword} {name}({', '.join(params)}) {{"]
    for _ in range(between(draw, 1, 2)):
        tname = "x" if not scope.tensors else scope.fresh("x")
        lines.append(f"  input {tname}: {tensor_type_text(draw, scope, True, keyword == 'block')}")
        scope.tensors.append(tname)
    lines += statements(draw, scope, callable_blocks, depth=2, indent="  ")
    for _ in range(between(draw, 1, 2)):
        lines.append(f"  output {scope.fresh('y')} = {tensor_expr(draw, scope, 1, callable_blocks)}")
    lines.append("}")
    return "\n".join(lines)


@st.composite
def generated_specs(draw: st.DrawFn) -> str:
    """A whole spec: zero to two helper blocks, then a model that may call them."""
    blocks: list[str] = []
    texts = []
    for i in range(between(draw, 0, 2)):
        name = f"Blk{i}"
        # A block may call the blocks before it, and sometimes itself (recursion must be caught).
        callable_blocks = tuple(blocks) + ((name,) if one_in(draw, 6) else ())
        texts.append(block_text(draw, "block", name, callable_blocks))
        blocks.append(name)
    texts.append(block_text(draw, "model", "fuzz_model", tuple(blocks)))
    return "\n\n".join(texts) + "\n"


# ----------------------------------------------------------------------------- mutations


def tokens(text: str) -> list[str]:
    """``text`` split into lexical tokens (their concatenation is ``text``)."""
    return TOKEN_RE.findall(text)


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    """A bundled spec with one to four token-level mutations, possibly cut short."""
    toks = tokens(BUNDLED_SPECS[pick(draw, sorted(BUNDLED_SPECS))])
    names = sorted({t for t in toks if NAME_RE.match(t)} | set(KEYWORDS) | set(SURFACE_OPS))
    for _ in range(between(draw, 1, 4)):
        if not toks:
            break
        i = between(draw, 0, len(toks) - 1)
        action = pick(draw, ("delete", "duplicate", "swap", "number", "number", "name", "insert"))
        if action == "delete":
            del toks[i]
        elif action == "duplicate":
            toks.insert(i, toks[i])
        elif action == "swap":
            j = between(draw, 0, len(toks) - 1)
            toks[i], toks[j] = toks[j], toks[i]
        elif action == "number":
            numbers = [k for k, t in enumerate(toks) if NUMBER_RE.match(t)]
            k = numbers[between(draw, 0, len(numbers) - 1)] if numbers else i
            toks[k] = str(pick(draw, EDGE_INTS) if one_in(draw, 2) else between(draw, -(2**80), 2**80))
        elif action == "name":
            toks[i] = pick(draw, names)
        else:
            toks.insert(i, draw(INSERTED_TEXT))
    text = "".join(toks)
    if one_in(draw, 5):
        # Count the cut from the end: the specs open with comments, and small draws are likely.
        text = text[:len(text) - between(draw, 0, len(text))]
    return text


# ----------------------------------------------------------------------------- unstructured input


# Openings of a model, so that token soups also reach the statement and expression rules.
SOUP_PREFIXES = ("", "model m() {\n", "model m() {\n  input x: f32[1, 4, 8, 8]\n", "block b(n: int = 2) {\n")


def token_soups() -> st.SearchStrategy[str]:
    """Random sequences of the language's tokens: they get further into the parser than noise."""
    token = st.one_of(st.sampled_from(KEYWORDS), st.sampled_from(PUNCTUATION), st.sampled_from(sorted(SURFACE_OPS)),
                      st.sampled_from(("x", "y", "H", "W", "f32", "int")), EDGE_INT_VALUES.map(str),
                      STRING_LITERALS)
    return st.tuples(st.sampled_from(SOUP_PREFIXES), st.lists(token, max_size=60).map(" ".join),
                     st.sampled_from(("", "\n}\n"))).map("".join)


def random_inputs() -> st.SearchStrategy[Any]:
    """Raw bytes, arbitrary unicode text, grammar-alphabet noise, and token soups."""
    return st.one_of(st.binary(max_size=512), st.text(max_size=512),
                     st.text(alphabet=GRAMMAR_ALPHABET, max_size=512), token_soups())
