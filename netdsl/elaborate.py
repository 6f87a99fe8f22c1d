"""Elaboration: instantiate blocks with their arguments, evaluate compile-time expressions,
bind symbolic dims from input shapes, infer every value's type, and build the typed IR.

Errors are :class:`~netdsl.diagnostics.NetdslError` located in the spec, carrying the chain of
block instantiations that led to them.

One job, one file: statements and expressions are evaluated by one recursive walk over the
syntax tree, sharing its scopes; the ops themselves live in surface_ops.py and opdefs.py.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from netdsl import ast
from netdsl.builder import GraphBuilder
from netdsl.diagnostics import Diagnostic, NetdslError, did_you_mean
from netdsl.init_funcs import INIT_FUNCS
from netdsl.init_overrides import InitOverrides
from netdsl.ir import DTYPES, FLOAT_MAX, INT_RANGE, Frame, Graph, Init, Provenance, Span, TensorType
from netdsl.loader import Program
from netdsl.opdefs import OpTypeError
from netdsl.parser import parse_source
from netdsl.signatures import bind
from netdsl.surface_ops import SURFACE_OPS, call_op
from netdsl.values import Tensor, show, type_name


@dataclass
class Limits:
    """Resource limits of elaboration (configurable; each breach is a located error)."""

    max_nodes: int = 200_000
    max_depth: int = 64
    max_loop_iterations: int = 100_000
    max_tensor_bytes: int = 1 << 40
    max_steps: int = 1_000_000  # statements executed, over all loops and blocks
    max_int_bits: int = 64
    max_list_items: int = 100_000


@dataclass
class Scope:
    """Variables of one block instance, its parameter-name prefix and instantiation chain."""

    block: ast.BlockDef
    prefix: str
    chain: tuple[Frame, ...]
    vars: dict[str, Any] = field(default_factory=dict)
    outputs: list[tuple[str, Tensor]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    shared: bool = False  # inside a block applied with `as shared NAME`: its parameters may exist already

    def local_name(self, name: str) -> str:
        """Full hierarchical name of a parameter or sub-block declared here."""
        return f"{self.prefix}{name}"

    def auto_name(self, op: str) -> str:
        n = self.counters.get(op, 0)
        self.counters[op] = n + 1
        return f"{op}{n}"


BUILTIN_FUNCS = ("range", "len", "sum", "min", "max", "int", "float", "str", "abs", "prod", "ceil", "floor", "sqrt")


class Elaborator:
    """Turns one entry block of a :class:`Program` into a typed :class:`Graph`."""

    def __init__(self, program: Program, limits: Limits | None = None):
        self.program = program
        self.limits = limits or Limits()
        self.b: GraphBuilder | None = None
        self.depth = 0
        self.steps = 0
        self.init_overrides = InitOverrides()

    # ------------------------------------------------------------------ errors
    def error(self, scope: Scope | None, message: str, span: Span | None, **kw: Any) -> NetdslError:
        kw.setdefault("chain", scope.chain if scope else ())
        return NetdslError(Diagnostic(message, span, **kw))

    @property
    def builder(self) -> GraphBuilder:
        assert self.b is not None
        return self.b

    def tensor_type(self, t: Tensor) -> TensorType:
        return self.builder.graph.type_of(t.name)

    # ------------------------------------------------------------------ entry
    def elaborate(self, entry: ast.BlockDef, params: dict[str, Any], input_shapes: dict[str, tuple[int, ...]]) -> Graph:
        """Instantiate ``entry`` with parameter overrides and input shapes; return the graph."""
        self.b = GraphBuilder(entry.name)
        decls = {p.name: p for p in entry.params}
        for key in params:
            if key not in decls:
                raise self.error(None, f"{entry.kind} {entry.name} has no parameter '{key}' (from --set)",
                                 entry.name_span, help=did_you_mean(key, decls) or self._param_list(entry))
        inputs = [s for s in entry.body if isinstance(s, ast.InputDecl)]
        for name in input_shapes:
            if name not in {i.name for i in inputs}:
                raise self.error(None, f"{entry.name} has no input '{name}' (from --input)", entry.name_span,
                                 help=did_you_mean(name, [i.name for i in inputs]))
        scope = Scope(entry, "", (Frame(entry.name, "", None),))
        params = {k: [v] if decls[k].type.list_of is not None and not isinstance(v, list) else v
                  for k, v in params.items()}
        self._bind_params(scope, entry, [], {k: (v, None) for k, v in params.items()}, entry.name_span)
        outs = self._run_body(scope, entry, tensor_args=None, input_shapes=input_shapes)
        graph = self.builder.graph
        if not outs:
            raise self.error(scope, f"{entry.kind} {entry.name} has no output", entry.name_span)
        for name, t in outs:
            self._publish_output(name, t)
        return graph

    def _param_list(self, block: ast.BlockDef) -> str:
        return f"{block.name} takes: " + ", ".join(f"{p.name}: {p.type}" for p in block.params)

    def _publish_output(self, name: str, t: Tensor) -> None:
        graph = self.builder.graph
        producer = graph.producers().get(t.name)
        if producer is not None and t.name == name and name not in graph.outputs:
            graph.outputs.append(name)
        elif producer is not None and t.name not in graph.outputs and name not in graph.values:
            self._rename_value(t.name, name)
            graph.outputs.append(name)
        else:
            out = self.builder.op("identity", [t.name], name=name)
            graph.outputs.append(out)

    def _rename_value(self, old: str, new: str) -> None:
        graph = self.builder.graph
        graph.values = {(new if k == old else k): v for k, v in graph.values.items()}
        for n in graph.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
            n.outputs = [new if o == old else o for o in n.outputs]

    # ------------------------------------------------------------------ blocks
    def _bind_params(self, scope: Scope, block: ast.BlockDef, positional: list[tuple[Any, Span]],
                     named: dict[str, tuple[Any, Span | None]], call_span: Span) -> None:
        decls = block.params
        if len(positional) > len(decls):
            raise self.error(scope, f"{block.name} takes {_count(len(decls), 'parameter')}, found "
                             f"{_count(len(positional), 'positional argument')}", positional[len(decls)][1],
                             help=self._param_list(block))
        given: dict[str, tuple[Any, Span | None]] = {}
        for decl, (val, span) in zip(decls, positional):
            given[decl.name] = (val, span)
        for key, (val, span) in named.items():
            if key in given:
                raise self.error(scope, f"parameter '{key}' of {block.name} given twice", span or call_span)
            given[key] = (val, span)
        for decl in decls:
            if decl.name in given:
                val, span = given[decl.name]
                scope.vars[decl.name] = self._coerce_param(scope, block, decl, val, span or call_span)
            elif decl.default is not None:
                val = self.eval(decl.default, scope)
                scope.vars[decl.name] = self._coerce_param(scope, block, decl, val, decl.default.span)
            else:
                raise self.error(scope, f"missing parameter '{decl.name}: {decl.type}' of {block.name}", call_span,
                                 help=self._param_list(block))

    def _coerce_param(self, scope: Scope, block: ast.BlockDef, decl: ast.ParamDecl, val: Any, span: Span) -> Any:
        ok, out = _coerce(decl.type, val)
        if not ok:
            raise self.error(scope, f"parameter '{decl.name}' of {block.name} expects {decl.type}, "
                             f"found {type_name(val)} {show(val) if not isinstance(val, Tensor) else ''}".rstrip(),
                             span)
        return out

    def _run_body(self, scope: Scope, block: ast.BlockDef, tensor_args: list[tuple[Tensor, Span]] | None,
                  input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[tuple[str, Tensor]]:
        state = {"inputs": 0}
        self._exec_stmts(scope, block.body, tensor_args, input_shapes, state)
        if tensor_args is not None and state["inputs"] < len(tensor_args):
            _, span = tensor_args[state["inputs"]]
            raise self.error(scope, f"{block.name} takes {_count(state['inputs'], 'tensor input')}, found "
                             f"{len(tensor_args)}", span)
        return scope.outputs

    def instantiate(self, caller: Scope, block: ast.BlockDef, call: ast.Call) -> Any:
        """Instantiate a user block at a call site; return its output tensor(s)."""
        if self.depth >= self.limits.max_depth:
            raise self.error(caller, f"blocks nested deeper than the limit of {self.limits.max_depth} "
                             f"(is '{block.name}' recursive?)", call.func_span)
        tensors: list[tuple[Tensor, Span]] = []
        positional: list[tuple[Any, Span]] = []
        inputs = [st for st in block.body if isinstance(st, ast.InputDecl)]
        for a in call.args:
            v = self.eval(a, caller)
            if len(tensors) < len(inputs):
                if not isinstance(v, Tensor):
                    decl = inputs[len(tensors)]
                    raise self.error(caller, f"input '{decl.name}' of {block.name} expects a tensor, found "
                                     f"{type_name(v)} {show(v)}", a.span, notes=[f"'{decl.name}' is declared at "
                                                                                 f"{decl.span}"])
                tensors.append((v, a.span))
            else:
                positional.append((v, a.span))
        named: dict[str, tuple[Any, Span | None]] = {}
        decl_names = [p.name for p in block.params]
        for kw in call.kwargs:
            if kw.name not in decl_names:
                raise self.error(caller, f"{block.name} has no parameter '{kw.name}'", kw.span,
                                 help=did_you_mean(kw.name, decl_names) or self._param_list(block))
            named[kw.name] = (self.eval(kw.value, caller), kw.span)
        if call.name is not None:
            path = self.eval_path(call.name, caller)
            prefix = caller.prefix + path + "."
        else:
            path = ""
            prefix = caller.prefix
        frame = Frame(block.name, caller.prefix + path if path else caller.prefix.rstrip("."), call.span)
        shared = caller.shared or (call.name is not None and call.name.shared)
        scope = Scope(block, prefix, caller.chain + (frame,), shared=shared)
        self._bind_params(scope, block, positional, named, call.span)
        self.depth += 1
        try:
            outs = self._run_body(scope, block, tensors)
        finally:
            self.depth -= 1
        if not outs:
            raise self.error(scope, f"block {block.name} has no output", block.name_span)
        return outs[0][1] if len(outs) == 1 else [t for _, t in outs]

    # ------------------------------------------------------------------ statements
    def _exec_stmts(self, scope: Scope, stmts: list[ast.Stmt], tensor_args: list[tuple[Tensor, Span]] | None,
                    input_shapes: dict[str, tuple[int, ...]] | None, state: dict[str, int]) -> None:
        for st in stmts:
            self._exec(scope, st, tensor_args, input_shapes, state)

    def _exec(self, scope: Scope, st: ast.Stmt, tensor_args: list[tuple[Tensor, Span]] | None,
              input_shapes: dict[str, tuple[int, ...]] | None, state: dict[str, int]) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise self.error(scope, f"elaboration exceeds the limit of {self.limits.max_steps} statements executed",
                             st.span, help="a loop runs too many times (nested loops multiply)")
        if isinstance(st, ast.InputDecl):
            self._exec_input(scope, st, tensor_args, input_shapes, state)
        elif isinstance(st, ast.Let):
            scope.vars[st.name] = self.eval(st.value, scope)
        elif isinstance(st, ast.Assign):
            self._exec_assign(scope, st)
        elif isinstance(st, ast.OutputStmt):
            if st.value is not None:
                with self.init_overrides.clause(self, scope, st.init):
                    val = self.eval(st.value, scope)
            elif st.name in scope.vars:
                val = scope.vars[st.name]
            else:
                raise self.error(scope, f"unknown name '{st.name}'", st.span,
                                 help=did_you_mean(st.name, scope.vars))
            if not isinstance(val, Tensor):
                raise self.error(scope, f"output '{st.name}' must be a tensor, found {type_name(val)} {show(val)}",
                                 st.value.span if st.value else st.span)
            if any(n == st.name for n, _ in scope.outputs):
                raise self.error(scope, f"output '{st.name}' is declared twice", st.span)
            scope.vars[st.name] = val
            scope.outputs.append((st.name, val))
        elif isinstance(st, ast.Require):
            cond = self.eval(st.cond, scope)
            if not isinstance(cond, bool):
                raise self.error(scope, f"require needs a bool condition, found {type_name(cond)}", st.cond.span)
            if not cond:
                msg = self._interpolate(st.message, scope, st.span) if st.message else "requirement failed"
                raise self.error(scope, f"constraint failed: {msg}", st.cond.span,
                                 notes=[self._explain_condition(st.cond, scope)])
        elif isinstance(st, ast.For):
            items = self.eval(st.iterable, scope)
            if not isinstance(items, list):
                raise self.error(scope, f"for needs a list to iterate over, found {type_name(items)}", st.iterable.span)
            if len(items) > self.limits.max_loop_iterations:
                raise self.error(scope, f"loop of {len(items)} iterations exceeds the limit of "
                                 f"{self.limits.max_loop_iterations}", st.iterable.span)
            self.steps += len(items)  # empty bodies still cost their iterations
            if self.steps > self.limits.max_steps:
                raise self.error(scope, f"elaboration exceeds the limit of {self.limits.max_steps} statements "
                                 "executed", st.iterable.span, help="nested loops multiply their iterations")
            for item in items:
                scope.vars[st.var] = item
                self._exec_stmts(scope, st.body, tensor_args, input_shapes, state)
        elif isinstance(st, ast.If):
            cond = self.eval(st.cond, scope)
            if not isinstance(cond, bool):
                raise self.error(scope, f"if needs a bool condition, found {type_name(cond)}", st.cond.span)
            self._exec_stmts(scope, st.then if cond else st.orelse, tensor_args, input_shapes, state)
        elif isinstance(st, ast.ParamDeclStmt):
            self._exec_param(scope, st)
        else:  # pragma: no cover - the parser produces no other statements
            raise TypeError(f"unknown statement {st!r}")

    def _explain_condition(self, cond: ast.Expr, scope: Scope) -> str:
        if isinstance(cond, ast.BinOp) and cond.op in ("==", "!=", "<", "<=", ">", ">="):
            left, right = self.eval(cond.left, scope), self.eval(cond.right, scope)
            return f"{show(left)} {cond.op} {show(right)} is false"
        return "the condition evaluated to false"

    def _interpolate(self, message: str, scope: Scope, span: Span) -> str:
        def repl(m: re.Match[str]) -> str:
            try:
                sub = parse_source(f"block __msg() {{ let __v = {m.group(1)} }}", "<message>")
                stmt = sub.blocks[0].body[0]
                assert isinstance(stmt, ast.Let)
                v = self.eval(stmt.value, scope)
            except NetdslError as err:
                raise self.error(scope, f"in the message's {{{m.group(1)}}}: {err.diag.message}", span,
                                 help=err.diag.help) from None
            if isinstance(v, Tensor):
                return str(self.tensor_type(v))
            return show(v) if not isinstance(v, str) else v

        return re.sub(r"\{([^{}]+)\}", repl, message)

    def _exec_assign(self, scope: Scope, st: ast.Assign) -> None:
        before = len(self.builder.graph.nodes)
        with self.init_overrides.clause(self, scope, st.init):
            val = self.eval(st.value, scope)
        if len(st.targets) == 1:
            scope.vars[st.targets[0]] = val
            if isinstance(val, Tensor):
                self._name_hint(scope, val, st.targets[0], before)
            return
        if not isinstance(val, list) or len(val) != len(st.targets):
            n = len(val) if isinstance(val, list) else 1
            raise self.error(scope, f"cannot unpack {n} value(s) into {len(st.targets)} names", st.span)
        for name, v in zip(st.targets, val):
            scope.vars[name] = v

    def _name_hint(self, scope: Scope, t: Tensor, var: str, first_new_node: int) -> None:
        """Give the value just computed a readable name like ``stages.0.1/v``."""
        graph = self.builder.graph
        if len(graph.nodes) <= first_new_node or t.name not in graph.nodes[-1].outputs:
            return
        hint = f"{scope.prefix.rstrip('.')}/{var}" if scope.prefix else var
        new = graph.fresh_name(hint)
        if new != t.name:
            # The value is the newest one: only its producer (the last node) mentions it.
            last = graph.nodes[-1]
            graph.values[new] = graph.values.pop(t.name)
            last.outputs = [new if o == t.name else o for o in last.outputs]
            # Rebind every variable of this scope that referred to the old name.
            for k, v in scope.vars.items():
                if v == t:
                    scope.vars[k] = Tensor(new)
            scope.vars[var] = Tensor(new)

    def _exec_input(self, scope: Scope, st: ast.InputDecl, tensor_args: list[tuple[Tensor, Span]] | None,
                    input_shapes: dict[str, tuple[int, ...]] | None, state: dict[str, int]) -> None:
        decl = st.type
        if decl.dtype not in DTYPES:
            raise self.error(scope, f"unknown dtype '{decl.dtype}'", decl.dtype_span,
                             help=did_you_mean(decl.dtype, DTYPES) or f"dtypes: {', '.join(DTYPES)}")
        idx = state["inputs"]
        state["inputs"] += 1
        if tensor_args is None:  # the entry: shapes from --input or the declared defaults
            shape = (input_shapes or {}).get(st.name)
            if shape is not None and len(shape) != len(decl.dims):
                raise self.error(scope, f"--input {st.name} has rank {len(shape)}, but '{st.name}' is declared "
                                 f"with {len(decl.dims)} dims", st.span)
            dims = []
            for k, d in enumerate(decl.dims):
                if shape is not None:
                    given = (d.span, TensorType(decl.dtype, shape))
                    dims.append(self._bind_dim(scope, d, shape[k], st.name, decl, given))
                elif d.default is not None:
                    dims.append(self._bind_dim(scope, d, self._int(self.eval(d.default, scope), d.default.span, scope),
                                               st.name, decl, None))
                elif isinstance(d.expr, ast.Name) and d.expr.id not in scope.vars:
                    raise self.error(scope, f"input '{st.name}' has a symbolic dim '{d.expr.id}' with no value",
                                     d.span, help=f"give the shape with --input {st.name}=..., or declare a default "
                                     f"like '{d.expr.id}=1'")
                else:
                    dims.append(self._int(self.eval(d.expr, scope), d.span, scope))
            t = TensorType(decl.dtype, tuple(dims))
            self.check_size(scope, t, st.span)
            scope.vars[st.name] = Tensor(self.builder.input(st.name, t))
            return
        if idx >= len(tensor_args):
            raise self.error(scope, f"missing tensor input '{st.name}' of {scope.block.name}",
                             scope.chain[-1].call or st.span)
        arg, arg_span = tensor_args[idx]
        t = self.tensor_type(arg)
        if t.dtype != decl.dtype or t.rank != len(decl.dims):
            raise self.error(scope, f"input '{st.name}' of {scope.block.name} expects {decl.dtype} with "
                             f"{len(decl.dims)} dims, found {t}", arg_span,
                             notes=[f"'{st.name}' is declared at {st.span}"], chain=scope.chain[:-1])
        for k, d in enumerate(decl.dims):
            self._bind_dim(scope, d, t.shape[k], st.name, decl, (arg_span, t))
        scope.vars[st.name] = arg

    def _bind_dim(self, scope: Scope, d: ast.Dim, actual: int, name: str, decl: ast.TensorTypeExpr,
                  arg: tuple[Span, TensorType] | None) -> int:
        if isinstance(d.expr, ast.Name) and d.expr.id not in scope.vars:
            scope.vars[d.expr.id] = actual
            return actual
        want = self._int(self.eval(d.expr, scope), d.span, scope)
        if want != actual:
            dims_txt = ", ".join(_src(x.expr) for x in decl.dims)
            where = arg[0] if arg else d.span
            found = str(arg[1]) if arg else f"{actual}"
            raise self.error(scope, f"shape mismatch for input '{name}': expected {decl.dtype}[{dims_txt}] with "
                             f"{_src(d.expr)} = {want}, found {found}", where,
                             notes=[f"'{name}' is declared at {decl.span}"] if where.line != decl.span.line else [],
                             chain=scope.chain[:-1] if arg else scope.chain)
        return actual

    def check_size(self, scope: Scope, t: TensorType, span: Span) -> None:
        """Located error when a tensor type has an empty dim or is over the byte limit."""
        if any(d < 1 for d in t.shape):
            raise self.error(scope, f"tensor type {t} has a dim below 1", span)
        nbytes = t.numel * (8 if t.dtype in ("i64", "f64") else 4)
        if nbytes > self.limits.max_tensor_bytes:
            raise self.error(scope, f"tensor {t} needs {nbytes} bytes, over the limit of "
                             f"{self.limits.max_tensor_bytes} bytes", span)

    def _exec_param(self, scope: Scope, st: ast.ParamDeclStmt) -> None:
        decl = st.type
        if decl.dtype not in DTYPES:
            raise self.error(scope, f"unknown dtype '{decl.dtype}'", decl.dtype_span,
                             help=did_you_mean(decl.dtype, DTYPES))
        dims = tuple(self._int(self.eval(d.expr, scope), d.span, scope) for d in decl.dims)
        t = TensorType(decl.dtype, dims)
        self.check_size(scope, t, decl.span)
        init = self._init(scope, st.init, t)
        full = scope.local_name(st.name)
        if self.reuse_param(scope, full, t, st.kind, scope.shared, st.span):
            scope.vars[st.name] = Tensor(full)
            return
        self.builder.param(full, t, init, kind=st.kind, provenance=Provenance(st.span, scope.chain))
        scope.vars[st.name] = Tensor(full)

    def reuse_param(self, scope: Scope, name: str, t: TensorType, kind: str, shared: bool, span: Span) -> bool:
        """Whether parameter ``name`` exists already and is reused (``as shared``); a located error when it
        exists but is not shared, or is shared with another type or kind."""
        if name in self.builder.graph.values:
            # Parameters and values share one namespace in the IR (and in ONNX, as initializers and tensors).
            raise self.error(scope, f"parameter '{name}' has the name of a value already defined (an input or "
                             "an op's result)", span, help="give the parameter a name of its own")
        first = self.builder.graph.params.get(name)
        if first is None:
            return False
        where = f"'{name}' is first created at {first.provenance.span}" if first.provenance.span else None
        if not shared:
            raise self.error(scope, f"parameter '{name}' is already defined", span, notes=[where] if where else [],
                             help="give each layer a distinct name with 'as', or apply the same layer again "
                                  "with 'as shared NAME'")
        if first.type != t or first.kind != kind:
            raise self.error(scope, f"shared parameter '{name}' would be {kind} {t} here, but it was created as "
                             f"{first.kind} {first.type}", span, notes=[where] if where else [],
                             help="a shared layer needs the same input channels and sizes at every use")
        return True

    def _init(self, scope: Scope, e: ast.Expr, t: TensorType) -> Init:
        if isinstance(e, ast.Call) and e.func in INIT_FUNCS:
            func = INIT_FUNCS[e.func]
            values = bind(self, scope, func, e).values
            problem = func.problem(t, values)
            if problem:
                raise self.error(scope, f"{func.name}() cannot initialise {t}: {problem}", e.span)
            return func.make(t, values)
        v = self.eval(e, scope)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return Init("fill", (("value", float(v) if t.dtype.startswith("f") else int(v)),))
        raise self.error(scope, f"a parameter initialiser must be a number or one of "
                         f"{', '.join(sorted(INIT_FUNCS))}, found {type_name(v)}", e.span)

    # ------------------------------------------------------------------ expressions
    def eval_path(self, path: ast.Path, scope: Scope) -> str:
        parts = []
        for seg in path.segments:
            if isinstance(seg.value, ast.Expr):
                v = self.eval(seg.value, scope)
                if not isinstance(v, (int, str)) or isinstance(v, bool):
                    raise self.error(scope, f"a name segment must be an int or str, found {type_name(v)}", seg.span)
                parts.append(str(v))
            else:
                parts.append(str(seg.value))
        return ".".join(parts)

    def _int(self, v: Any, span: Span, scope: Scope) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                raise self.error(scope, f"expected an int, found float {show(v)}", span,
                                 help="use // for integer division")
            shown = "" if isinstance(v, Tensor) else f" {show(v)}"
            raise self.error(scope, f"expected an int, found {type_name(v)}{shown}", span)
        return v

    def eval(self, e: ast.Expr, scope: Scope) -> Any:
        """Evaluate an expression: compile-time values, or tensors (building IR nodes)."""
        if isinstance(e, ast.Num):
            return e.value
        if isinstance(e, (ast.Str, ast.Bool)):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in scope.vars:
                return scope.vars[e.id]
            raise self.error(scope, f"unknown name '{e.id}'", e.span, help=did_you_mean(e.id, scope.vars))
        if isinstance(e, ast.ListExpr):
            return [self.eval(x, scope) for x in e.items]
        if isinstance(e, ast.UnaryOp):
            return self._eval_unary(e, scope)
        if isinstance(e, ast.BinOp):
            return self._eval_binop(e, scope)
        if isinstance(e, ast.Index):
            return self._eval_index(e, scope)
        if isinstance(e, ast.Attribute):
            return self._eval_attr(e, scope)
        if isinstance(e, ast.Call):
            return self._eval_call(e, scope)
        raise TypeError(f"unknown expression {e!r}")  # pragma: no cover

    def _eval_unary(self, e: ast.UnaryOp, scope: Scope) -> Any:
        v = self.eval(e.operand, scope)
        if e.op == "not":
            if not isinstance(v, bool):
                raise self.error(scope, f"'not' needs a bool, found {type_name(v)}", e.operand.span)
            return not v
        if isinstance(v, Tensor):
            return v if e.op == "+" else self.emit(scope, "neg", [v], e.span)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(scope, f"unary '{e.op}' needs a number or tensor, found {type_name(v)}", e.operand.span)
        return -v if e.op == "-" else v

    def _eval_binop(self, e: ast.BinOp, scope: Scope) -> Any:
        if e.op in ("and", "or"):
            left = self.eval(e.left, scope)
            if not isinstance(left, bool):
                raise self.error(scope, f"'{e.op}' needs bools, found {type_name(left)}", e.left.span)
            if (e.op == "and" and not left) or (e.op == "or" and left):
                return left
            right = self.eval(e.right, scope)
            if not isinstance(right, bool):
                raise self.error(scope, f"'{e.op}' needs bools, found {type_name(right)}", e.right.span)
            return right
        left, right = self.eval(e.left, scope), self.eval(e.right, scope)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            return self._tensor_binop(e, scope, left, right)
        if e.op in ("==", "!="):
            return (left == right) == (e.op == "==")
        for side, v in ((e.left, left), (e.right, right)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                if e.op == "+" and type(left) is type(right) and isinstance(left, (list, str)):
                    if len(left) + len(right) > self.limits.max_list_items:
                        raise self.error(scope, f"{type_name(left)} of {len(left) + len(right)} items exceeds the "
                                         f"limit of {self.limits.max_list_items}", e.span)
                    return left + right
                raise self.error(scope, f"'{e.op}' needs numbers, found {type_name(v)} {show(v)}", side.span)
        result = self._arith(e, scope, left, right)
        if isinstance(result, complex):
            raise self.error(scope, f"{show(left)} ** {show(right)} is not a real number", e.span)
        if isinstance(result, int) and not isinstance(result, bool) and \
                result.bit_length() > self.limits.max_int_bits:
            raise self.error(scope, f"integer result exceeds the limit of {self.limits.max_int_bits} bits", e.span)
        return result

    def _arith(self, e: ast.BinOp, scope: Scope, left: Any, right: Any) -> Any:
        try:
            if e.op == "+":
                return left + right
            if e.op == "-":
                return left - right
            if e.op == "*":
                return left * right
            if e.op == "/":
                return left / right
            if e.op == "//":
                return left // right
            if e.op == "%":
                return left % right
            if e.op == "**":
                if isinstance(right, int) and abs(right) > 64:
                    raise self.error(scope, f"exponent {right} is over the limit of 64", e.right.span)
                return left**right
            return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[e.op]
        except ZeroDivisionError:
            raise self.error(scope, "division by zero", e.right.span) from None
        except OverflowError:
            raise self.error(scope, "number too large", e.span) from None

    def _tensor_binop(self, e: ast.BinOp, scope: Scope, left: Any, right: Any) -> Tensor:
        ops = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
        if e.op == "**":
            return self._tensor_pow(e, scope, left, right)
        if e.op not in ops:
            raise self.error(scope, f"operator '{e.op}' is not defined on tensors", e.op_span,
                             help="tensors support + - * / (element-wise, with broadcasting) and ** with a "
                                  "constant exponent")
        dtype = self.tensor_type(left if isinstance(left, Tensor) else right).dtype
        args = []
        for side, v in ((e.left, left), (e.right, right)):
            if isinstance(v, Tensor):
                args.append(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                args.append(self.constant(scope, v, dtype, side.span))
            else:
                raise self.error(scope, f"'{e.op}' cannot combine a tensor with {type_name(v)}", side.span)
        return self.emit(scope, ops[e.op], args, e.span, arg_spans=[e.left.span, e.right.span])

    def _tensor_pow(self, e: ast.BinOp, scope: Scope, left: Any, right: Any) -> Tensor:
        """``tensor ** c`` for a compile-time number ``c``: the ``pow`` op."""
        if not isinstance(left, Tensor):
            raise self.error(scope, "'**' with a tensor exponent is not defined", e.right.span,
                             help="the exponent of '**' must be a constant number, e.g. x ** 2 or x ** -0.5")
        if isinstance(right, bool) or not isinstance(right, (int, float)):
            raise self.error(scope, f"the exponent of '**' on a tensor must be a constant number, found "
                             f"{type_name(right)}", e.right.span)
        return self.emit(scope, "pow", [left], e.span, arg_spans=[e.left.span], exponent=float(right))

    def check_fits(self, scope: Scope, value: float, dtype: str, span: Span) -> None:
        """A located error unless ``value`` is exactly representable in range as a number of IR dtype ``dtype``
        (integers: a whole number within the type's bounds; floats: finite and within the largest magnitude)."""
        if dtype == "bool":
            return
        if dtype in INT_RANGE and not float(value).is_integer():
            raise self.error(scope, f"cannot combine a {dtype} tensor with the non-integer {show(value)}", span)
        if dtype in INT_RANGE:
            low, high = INT_RANGE[dtype]
            fits = low <= int(value) <= high
        else:
            fits = math.isfinite(value) and abs(value) <= FLOAT_MAX[dtype]
        if not fits:
            raise self.error(scope, f"the constant {show(value)} does not fit a {dtype} tensor", span)

    def constant(self, scope: Scope, value: float, dtype: str, span: Span) -> Tensor:
        if dtype == "bool":
            raise self.error(scope, f"arithmetic on a {dtype} tensor is not defined", span)
        self.check_fits(scope, value, dtype, span)
        from netdsl.const_values import scalar  # numpy, only for specs with constants (see netdsl.const_values)

        return self.emit(scope, "const", [], span, value=scalar(value, dtype), dtype=dtype)

    def _eval_index(self, e: ast.Index, scope: Scope) -> Any:
        obj = self.eval(e.obj, scope)
        idx = self.eval(e.index, scope)
        if not isinstance(obj, list):
            raise self.error(scope, f"only lists can be indexed, found {type_name(obj)}", e.obj.span,
                             help="use .shape[i] for a tensor's dims" if isinstance(obj, Tensor) else None)
        i = self._int(idx, e.index.span, scope)
        if not -len(obj) <= i < len(obj):
            raise self.error(scope, f"index {i} out of range for a list of length {len(obj)}", e.index.span)
        return obj[i]

    def _eval_attr(self, e: ast.Attribute, scope: Scope) -> Any:
        obj = self.eval(e.obj, scope)
        if not isinstance(obj, Tensor):
            raise self.error(scope, f"{type_name(obj)} has no attribute '{e.attr}'", e.span)
        t = self.tensor_type(obj)
        attrs = {"shape": list(t.shape), "dtype": t.dtype, "rank": t.rank}
        if e.attr not in attrs:
            raise self.error(scope, f"tensor has no attribute '{e.attr}'", e.span,
                             help=did_you_mean(e.attr, attrs) or "tensors have .shape, .dtype and .rank")
        return attrs[e.attr]

    def _eval_call(self, e: ast.Call, scope: Scope) -> Any:
        if e.func in self.program.blocks:
            return self.instantiate(scope, self.program.blocks[e.func], e)
        if e.func in SURFACE_OPS:
            return call_op(self, scope, e)
        if e.func in BUILTIN_FUNCS:
            if e.name is not None:
                raise self.error(scope, f"'{e.func}' has no parameters to name", e.name.span)
            return self._builtin(e, scope)
        names = list(self.program.blocks) + list(SURFACE_OPS) + list(BUILTIN_FUNCS)
        raise self.error(scope, f"unknown op or block '{e.func}'", e.func_span, help=did_you_mean(e.func, names))

    def _builtin(self, e: ast.Call, scope: Scope) -> Any:
        if e.kwargs:
            raise self.error(scope, f"{e.func}() takes no keyword arguments", e.kwargs[0].span)
        args = [self.eval(a, scope) for a in e.args]
        f = e.func
        if f == "range":
            if not 1 <= len(args) <= 3:
                raise self.error(scope, f"range() takes 1 to 3 ints, found {len(args)} arguments", e.span)
            ints = [self._int(a, s.span, scope) for a, s in zip(args, e.args)]
            if len(ints) == 3 and ints[2] == 0:
                raise self.error(scope, "range() step must not be zero", e.args[2].span)
            start, stop, step = (0, ints[0], 1) if len(ints) == 1 else (ints[0], ints[1], ints[2:] and ints[2] or 1)
            n = max(0, (stop - start + step - (1 if step > 0 else -1)) // step)  # len() overflows for huge ranges
            if n > self.limits.max_loop_iterations:
                raise self.error(scope, f"range of {n} items exceeds the limit of "
                                 f"{self.limits.max_loop_iterations}", e.span)
            r = range(start, stop, step)
            return list(r)
        if len(args) != 1 and f not in ("min", "max"):
            raise self.error(scope, f"{f}() takes 1 argument, found {len(args)}", e.span)
        a = args[0] if len(args) == 1 else args
        try:
            if f == "len":
                if not isinstance(a, list):
                    raise self.error(scope, f"len() needs a list, found {type_name(a)}", e.args[0].span)
                return len(a)
            if f in ("sum", "prod", "min", "max"):
                items = a if isinstance(a, list) else [a]
                if not items or any(isinstance(x, (bool, Tensor, list, str)) for x in items):
                    raise self.error(scope, f"{f}() needs a non-empty list of numbers", e.span)
                return {"sum": sum, "min": min, "max": max, "prod": math.prod}[f](items)
            if f == "str" and isinstance(a, (int, str)) and not isinstance(a, bool):
                return str(a)
            if isinstance(a, (bool, Tensor, list, str)):
                raise self.error(scope, f"{f}() needs a number, found {type_name(a)}", e.args[0].span)
            if f == "int":
                return int(a)
            if f == "float":
                return float(a)
            if f == "abs":
                return abs(a)
            if f == "sqrt":
                return math.sqrt(a)
            return math.ceil(a) if f == "ceil" else math.floor(a)
        except (ValueError, OverflowError) as err:
            raise self.error(scope, f"{f}(): {err}", e.span) from None

    # ------------------------------------------------------------------ IR emission
    def emit(self, scope: Scope, op: str, inputs: list[Tensor], span: Span, arg_spans: list[Span] | None = None,
             kw_spans: dict[str, Span] | None = None, n_outputs: int = 1, **attrs: Any) -> Any:
        """Append an IR node; located error on a type error. Returns a Tensor (or a list for multi-output)."""
        if len(self.builder.graph.nodes) >= self.limits.max_nodes:
            raise self.error(scope, f"the graph exceeds the limit of {self.limits.max_nodes} ops", span)
        prov = Provenance(span, scope.chain)
        hint = f"{scope.prefix.rstrip('.')}/{op}" if scope.prefix else op
        try:
            outs = self.builder.op_multi(op, [t.name for t in inputs], prov, [hint], **attrs)
        except OpTypeError as err:
            where = span
            if isinstance(err.arg, int) and arg_spans and err.arg < len(arg_spans):
                where = arg_spans[err.arg]
            elif isinstance(err.arg, str) and kw_spans and err.arg in kw_spans:
                where = kw_spans[err.arg]
            notes = ([err.note] if err.note else []) + self._operand_origins(inputs, span)
            raise self.error(scope, err.message, where, notes=notes) from None
        for o in outs:
            self.check_size(scope, self.builder.graph.values[o], span)
        tensors = [Tensor(o) for o in outs]
        return tensors[0] if n_outputs == 1 else tensors


    def _operand_origins(self, inputs: list[Tensor], span: Span) -> list[str]:
        """Notes saying where each tensor operand of a failing op was produced (other than at the op itself)."""
        graph = self.builder.graph
        producers = graph.producers()
        notes = []
        for k, t in enumerate(inputs):
            node = producers.get(t.name)
            origin = node.provenance.span if node is not None else None
            if node is None and t.name in graph.params:
                origin = graph.params[t.name].provenance.span
            if origin is not None and origin != span and not (node is not None and node.op == "const"):
                what = node.op if node is not None else "parameter"
                notes.append(f"operand {k + 1} ({graph.type_of(t.name)}) is produced by {what} at {origin}")
            elif node is None and t.name in graph.inputs:
                notes.append(f"operand {k + 1} ({graph.type_of(t.name)}) is the input '{t.name}'")
        return notes


def _coerce(t: ast.TypeName, v: Any) -> tuple[bool, Any]:
    """Check ``v`` against a parameter type, converting int -> float where a float is expected."""
    if t.list_of is not None:
        if not isinstance(v, list):
            return False, v
        out = []
        for x in v:
            ok, cx = _coerce(t.list_of, x)
            if not ok:
                return False, v
            out.append(cx)
        return True, out
    if t.base == "int":
        return isinstance(v, int) and not isinstance(v, bool), v
    if t.base == "float":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return True, float(v)
        return False, v
    if t.base == "bool":
        return isinstance(v, bool), v
    if t.base == "str":
        return isinstance(v, str), v
    if t.base == "tensor":
        return isinstance(v, Tensor), v
    return False, v


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _src(e: ast.Expr) -> str:
    """Source-like text of a simple expression (for messages)."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Num):
        return str(e.value)
    if isinstance(e, ast.BinOp):
        return f"{_src(e.left)} {e.op} {_src(e.right)}"
    if isinstance(e, ast.UnaryOp):
        return f"{e.op}{_src(e.operand)}"
    if isinstance(e, ast.Attribute):
        return f"{_src(e.obj)}.{e.attr}"
    if isinstance(e, ast.Index):
        return f"{_src(e.obj)}[{_src(e.index)}]"
    if isinstance(e, ast.Call):
        return f"{e.func}(...)"
    return "..."


def elaborate_program(program: Program, entry: str | None = None, params: dict[str, Any] | None = None,
                      input_shapes: dict[str, tuple[int, ...]] | None = None, limits: Limits | None = None) -> Graph:
    """Elaborate ``entry`` (default: the main file's model) into a typed graph."""
    block = program.entry(entry)
    # Nesting is bounded by Limits.max_depth and the parser's tree-depth limit; the Python stack
    # must hold that much recursion.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    try:
        return Elaborator(program, limits).elaborate(block, params or {}, input_shapes or {})
    except RecursionError:
        raise NetdslError(Diagnostic(f"{block.name} is nested too deeply to elaborate", block.name_span)) from None
