"""``with init(...)`` clauses: initialisers that override those of the parameters a statement creates.

``f = CSAFeatures(x, ...) with init(conv.weight = trunc_normal(std=0.02), conv.bias = zeros())``
gives every ``conv`` weight and bias created while the right-hand side is evaluated -- through
nested blocks, at any depth -- the clause's initialiser instead of the one its op declares, like
PyTorch's ``module.apply(fn)`` run on that submodule after it is built. A selector is
``op.role``: a surface op that creates parameters and one of the roles it creates (see
:attr:`netdsl.surface_ops.SurfaceOp.roles`).

Rules:

- When clauses nest, the outermost one wins for the parameters both select: in PyTorch the
  enclosing model's ``apply`` runs last.
- ``param``/``buffer`` declarations are not affected: no op creates them.
- A selector that matches no parameter created by its statement is an error (a misspelt or
  stale selector must not silently do nothing). A selector that matched but lost to an outer
  clause counts as matched.
- The winning clause is recorded in the parameter's provenance rules, which ``netdsl show --ir``
  prints next to the parameter's (effective) initialiser.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netdsl import ast
from netdsl.diagnostics import did_you_mean
from netdsl.init_funcs import INIT_FUNCS, InitFunc
from netdsl.ir import Frame, Init, Span, TensorType
from netdsl.signatures import bind
from netdsl.surface_ops import SURFACE_OPS
from netdsl.values import show, type_name

if TYPE_CHECKING:
    from netdsl.elaborate import Elaborator, Scope


@dataclass
class Override:
    """One resolved ``op.role = initialiser(...)`` entry of an active clause."""

    item: ast.InitOverride
    func: InitFunc
    values: dict[str, Any]
    chain: tuple[Frame, ...]  # where the clause is written, for errors raised while it applies
    matched: int = 0

    @property
    def rule(self) -> str:
        """The provenance rule of a parameter this entry initialised."""
        args = ", ".join(f"{k}={show(v)}" for k, v in self.values.items())
        return f"with init({self.item.selector} = {self.func.name}({args})) at {self.item.span}"


@dataclass
class Clause:
    """The entries of one active clause by selector, and the selectors its statement created."""

    overrides: dict[str, Override]
    created: set[str] = field(default_factory=set)


class InitOverrides:
    """The clauses active during one elaboration, outermost first."""

    def __init__(self) -> None:
        self._active: list[Clause] = []

    @contextmanager
    def clause(self, el: Elaborator, scope: Scope, clause: ast.InitClause | None) -> Iterator[None]:
        """Apply ``clause`` (if any) to the parameters created inside the ``with`` body; afterwards,
        a located error for any selector that matched nothing."""
        if clause is None:
            yield
            return
        active = Clause(_resolve(el, scope, clause))
        self._active.append(active)
        try:
            yield
        finally:
            self._active.pop()
        for o in active.overrides.values():
            if not o.matched:
                made = ", ".join(sorted(active.created))
                raise el.error(scope, f"init selector '{o.item.selector}' matches no parameter created by this "
                               "statement", _selector_span(o.item),
                               help=f"the statement creates {made}" if made else
                               "the statement creates no parameters")

    def apply(self, el: Elaborator, op: str, role: str, name: str, t: TensorType, declared: Init,
              where: Span) -> tuple[Init, str | None]:
        """The initialiser of new parameter ``name`` (role ``role`` of op ``op``), and the provenance
        rule of the clause that set it (None: the declared one stands)."""
        selector = f"{op}.{role}"
        winner: Override | None = None
        for active in self._active:  # outermost first: the first match wins
            active.created.add(selector)
            o = active.overrides.get(selector)
            if o is not None:
                o.matched += 1
                winner = winner or o
        if winner is None:
            return declared, None
        problem = winner.func.problem(t, winner.values)
        if problem:
            raise el.error(None, f"{winner.func.name}() cannot initialise '{name}' ({t}): {problem}",
                           winner.item.value.span, chain=winner.chain, notes=[f"'{name}' is created at {where}"])
        return winner.func.make(t, winner.values), winner.rule


def _selector_span(item: ast.InitOverride) -> Span:
    return Span(item.op_span.file, item.op_span.line, item.op_span.col, item.role_span.end_line,
                item.role_span.end_col)


def _resolve(el: Elaborator, scope: Scope, clause: ast.InitClause) -> dict[str, Override]:
    """Check a clause's selectors and initialisers (located errors) and evaluate its arguments in ``scope``."""
    roles = {name: op.roles for name, op in SURFACE_OPS.items() if op.roles}
    listing = f"ops that create parameters: {', '.join(sorted(roles))}"
    out: dict[str, Override] = {}
    for item in clause.items:
        if item.op not in roles:
            if item.op in SURFACE_OPS:
                raise el.error(scope, f"{item.op}() creates no parameters, so '{item.selector}' selects nothing",
                               item.op_span, help=listing)
            raise el.error(scope, f"unknown op '{item.op}' in init selector '{item.selector}'", item.op_span,
                           help=did_you_mean(item.op, roles) or listing)
        if item.role not in roles[item.op]:
            raise el.error(scope, f"{item.op} creates no parameter '{item.role}'", item.role_span,
                           help=did_you_mean(item.role, roles[item.op]) or
                           f"{item.op} creates: {', '.join(roles[item.op])}")
        if item.selector in out:
            raise el.error(scope, f"init selector '{item.selector}' is given twice", _selector_span(item))
        value = item.value
        known = f"initialisers: {', '.join(sorted(INIT_FUNCS))}"
        if not isinstance(value, ast.Call):
            v = el.eval(value, scope)
            shown = "a tensor" if type_name(v) == "tensor" else f"{type_name(v)} {show(v)}"
            raise el.error(scope, f"'{item.selector}' needs an initialiser call such as trunc_normal(std=0.02), "
                           f"found {shown}", value.span, help=known)
        if value.func not in INIT_FUNCS:
            raise el.error(scope, f"unknown initialiser '{value.func}'", value.func_span,
                           help=did_you_mean(value.func, INIT_FUNCS) or known)
        func = INIT_FUNCS[value.func]
        out[item.selector] = Override(item, func, bind(el, scope, func, value).values, scope.chain)
    return out
