"""Typed intermediate representation: an SSA graph of tensor ops.

Every value has a concrete :class:`TensorType`; every node its op name (see
:mod:`netdsl.opdefs` for the catalogue and exact semantics), attributes and
:class:`Provenance`; every parameter a stable hierarchical name such as
``stages.0.blocks.1.attn.conv1.weight``.

Values and parameters share one namespace: a node input is either the name
of a value (graph input or node output) or the name of a parameter.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("f32", "f16", "f64", "i64", "i32", "bool")
# The range of each numeric dtype, held here so that type checking needs no numpy (its start-up is
# most of `netdsl check`'s); tests/test_ir.py checks them against numpy's finfo and iinfo.
FLOAT_MAX = {"f16": 65504.0, "f32": 3.4028234663852886e38, "f64": sys.float_info.max}
"""The largest finite magnitude of each float dtype."""
INT_RANGE = {"i32": (-2**31, 2**31 - 1), "i64": (-2**63, 2**63 - 1)}
"""The smallest and largest value of each integer dtype."""


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and concrete shape, e.g. ``f32[2,64,14,14]``."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Span:
    """A region of a source file (1-based lines and columns, end exclusive)."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Frame:
    """One step of an instantiation chain: block ``block`` instantiated as ``path`` at ``call``."""

    block: str
    path: str
    call: Span | None

    def __str__(self) -> str:
        where = f" at {self.call}" if self.call else ""
        return f"{self.block} '{self.path}'{where}" if self.path else f"{self.block}{where}"


@dataclass(frozen=True)
class Provenance:
    """Where a node comes from: spec span, instantiation chain, and the rewrite rules applied."""

    span: Span | None = None
    chain: tuple[Frame, ...] = ()
    rules: tuple[str, ...] = ()

    def with_rule(self, rule: str) -> Provenance:
        return Provenance(self.span, self.chain, self.rules + (rule,))

    @property
    def block_path(self) -> str:
        """Full instance path of the innermost named block (each frame holds its full path)."""
        return next((f.path for f in reversed(self.chain) if f.path), "")

    def __str__(self) -> str:
        parts = [str(self.span) if self.span else "<generated>"]
        if self.block_path:
            parts.append(f"in {self.block_path}")
        if self.rules:
            parts.append("via " + " > ".join(self.rules))
        return " ".join(parts)


@dataclass(frozen=True)
class Init:
    """How a parameter is initialised when no weights are loaded.

    kinds: ``fill`` (args: value), ``uniform_fan_in`` (U(-b, b), b = 1/sqrt(fan_in); PyTorch's
    default for conv/linear weights and biases; args: fan_in), ``normal`` (std), ``trunc_normal``
    (std, a, b), ``kaiming_normal_fan_out`` (fan_out), ``shift`` (one-hot conv kernels:
    in-group channel j has a single 1 at (j // k, j % k); args: kernel), ``relative_position_index``
    (Swin index table; args: window), ``zeros``, ``ones``.
    """

    kind: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, key: str, default: Any = None) -> Any:
        for k, v in self.args:
            if k == key:
                return v
        return default

    def __str__(self) -> str:
        if not self.args:
            return self.kind
        return f"{self.kind}(" + ", ".join(f"{k}={v}" for k, v in self.args) + ")"


@dataclass
class Parameter:
    """A named weight (``kind='param'``, trainable) or buffer (``kind='buffer'``)."""

    name: str
    type: TensorType
    init: Init
    kind: str = "param"
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def trainable(self) -> bool:
        return self.kind == "param"


@dataclass
class Node:
    """One op application: ``outputs = op(inputs) {attrs}``."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)


@dataclass
class Graph:
    """An SSA graph. ``values`` maps every activation name to its type (inputs included)."""

    name: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    values: dict[str, TensorType] = field(default_factory=dict)
    params: dict[str, Parameter] = field(default_factory=dict)
    # Next suffix to try per name hint, so that fresh_name does not rescan from _1 every time.
    _next_suffix: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def type_of(self, name: str) -> TensorType:
        """Type of a value or parameter."""
        if name in self.values:
            return self.values[name]
        return self.params[name].type

    def is_param(self, name: str) -> bool:
        return name in self.params

    def producers(self) -> dict[str, Node]:
        """Map value name -> node that produces it."""
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """Map value or parameter name -> nodes that read it."""
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n)
        return users

    def fresh_name(self, hint: str) -> str:
        """A value name not used yet, derived from ``hint`` (amortised constant time)."""
        if hint not in self.values and hint not in self.params:
            return hint
        i = self._next_suffix.get(hint, 1)
        while f"{hint}_{i}" in self.values or f"{hint}_{i}" in self.params:
            i += 1
        self._next_suffix[hint] = i + 1
        return f"{hint}_{i}"
