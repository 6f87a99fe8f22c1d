"""TensorRT target profiles: which ONNX ops a TensorRT flow accepts, with what limits, and why.

A profile is data (a TOML file, schema documented at the top of ``profiles/trt-restricted.toml``):
per ONNX op the TensorRT layer it maps to, whether it is allowed, numeric or structural limits,
the public source of each rule and how well it is established (``status``). This module loads and
validates such files; it knows the *names* of the checks a limit may use (:data:`CHECKS`,
:data:`GLOBAL_CHECKS`) but not how to measure them on a model: that is the job of the coverage
checker beside it (:mod:`netdsl.coverage.checks` implements each name of :data:`CHECKS` under
that name, tests/test_profiles.py checks that the names match both ways; :mod:`netdsl.coverage.checker`
applies :data:`GLOBAL_CHECKS`). It needs no onnx, so loading a profile stays cheap.

Three profiles are bundled (``trt``, ``trt-restricted``, ``trt-dla``); a user passes a file path
to use their own.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netdsl

BUNDLED_PROFILES = ("trt", "trt-restricted", "trt-dla")
_PACKAGE_DIR = os.path.dirname(netdsl.__file__)
"""The ``netdsl`` package folder; the bundled profiles are in its ``profiles`` folder."""

STATUSES = ("confirmed", "documented for DLA", "evidenced", "unknown")
"""How a rule is established: stated by public TensorRT documentation (``confirmed``), by the DLA
guides (``documented for DLA``), shown by a model NVIDIA states runs in the flow, such as the CSA
reference model (``evidenced``), or not established (``unknown``). An ``unknown`` op rule is not
allowed unless it says ``allowed = true`` and explains the ``assumption``."""

LEVELS = ("confirmed", "evidenced", "assumed")
"""Evidence levels of a verdict, strongest first: what reports count and ``--strict`` checks."""

STATUS_LEVEL = {"confirmed": "confirmed", "documented for DLA": "confirmed", "evidenced": "evidenced",
                "unknown": "assumed"}


@dataclass(frozen=True)
class CheckSpec:
    """A check a limit may name: ``numeric`` (values compared with min/max/one_of),
    ``predicate`` (holds or not; no bounds) or ``value`` (an ONNX attribute, ``attr:<name>``)."""

    kind: str
    description: str


CHECKS: dict[str, CheckSpec] = {
    # numeric: the measured values (one per spatial axis where that applies) must lie in the bounds
    "kernel": CheckSpec("numeric", "kernel size per spatial axis (Conv, ConvTranspose, pooling)"),
    "stride": CheckSpec("numeric", "stride per spatial axis"),
    "padding": CheckSpec("numeric", "padding per side (begin and end of every spatial axis)"),
    "dilation": CheckSpec("numeric", "dilation per spatial axis"),
    "groups": CheckSpec("numeric", "convolution groups"),
    "in_channels": CheckSpec("numeric", "input channels of a convolution"),
    "out_channels": CheckSpec("numeric", "output channels of a convolution"),
    "spatial_rank": CheckSpec("numeric", "number of spatial axes of a convolution or pooling window"),
    "rank": CheckSpec("numeric", "rank of the first run-time (non-constant) input"),
    "axis": CheckSpec("numeric", "the op's axis attribute, normalised to 0..rank-1"),
    "axis_from_end": CheckSpec("numeric", "rank minus the normalised axis (3 = third from last, e.g. C of NCHW)"),
    "axis_length": CheckSpec("numeric", "length of the first input along the op's axis"),
    "num_inputs": CheckSpec("numeric", "number of (non-empty) inputs"),
    "non_batch_dims": CheckSpec("numeric", "every dimension of the first input except the first"),
    "resize_scale": CheckSpec("numeric", "Resize/Upsample scale factors of the spatial axes (all but the first two)"),
    "slice_step": CheckSpec("numeric", "Slice steps"),
    # predicates: the node must satisfy them
    "constant_params": CheckSpec("predicate", "every input after the first is a constant (initializer/Constant)"),
    "constant_axes": CheckSpec("predicate", "the axes input (Slice, Squeeze, Unsqueeze, Reduce*, Pad) is constant"),
    "constant_scales": CheckSpec("predicate", "Resize/Upsample sizes its output by constant `scales`, not `sizes`"),
    "constant_second_input": CheckSpec("predicate", "MatMul/Gemm second operand is a constant (weights)"),
    "int32_params": CheckSpec("predicate", "Slice starts/ends/steps fit INT32 once clamped to the static input"),
    "padding_lt_kernel": CheckSpec("predicate", "every padding is smaller than the kernel along its axis"),
    "zero_point_zero": CheckSpec("predicate", "QuantizeLinear/DequantizeLinear zero point is absent or all zeros"),
    "per_tensor_or_per_channel": CheckSpec("predicate", "Q/DQ scale is a scalar or a 1-D per-channel vector"),
    "no_batch_axis": CheckSpec("predicate", "the op does not slice or concatenate along the first axis"),
    "only_first_output_used": CheckSpec("predicate", "optional outputs after the first are unused"),
    "integer_scales": CheckSpec("predicate", "Resize/Upsample scales are whole numbers"),
    "unit_leading_scales": CheckSpec("predicate", "Resize/Upsample scales of the first two axes are 1"),
}

GLOBAL_CHECKS: dict[str, type] = {
    "static_shapes": bool,  # every run-time tensor has a fully known static shape
    "no_int64_runtime": bool,  # no INT64 tensor computed at run time (build-time constants are fine)
    "dtypes": list,  # element types allowed for run-time tensors (ONNX names in lower case)
    "max_rank": int,
    "max_volume": int,  # maximum number of elements of any run-time tensor
    "max_batch": int,  # first dimension of the graph inputs
    "max_channels": int,  # dimension 1 of rank-4 run-time tensors
    "max_spatial": int,  # dimensions 2 and 3 of rank-4 run-time tensors
    "max_non_batch_dim": int,  # every dimension but the first of run-time tensors
}

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")

_OP_KEYS = {"layer", "status", "allowed", "source", "note", "assumption", "rewrite", "limits"}
_LIMIT_KEYS = {"check", "min", "max", "one_of", "when", "status", "source", "note", "rewrite"}
_GLOBAL_KEYS = {"value", "status", "source", "note"}
_PROFILE_KEYS = {"name", "description", "flow", "tensorrt", "unlisted"}
_TOP_KEYS = {"profile", "sources", "global", "ops"}


class ProfileError(Exception):
    """A bad profile file: where (path, line when found, dotted key) and what is wrong."""

    def __init__(self, path: str, key: str | None, message: str, line: int | None = None):
        self.path = path
        self.key = key
        self.message = message
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class Limit:
    """One constraint on an op: a named check with bounds (``min``/``max``/``one_of``), optionally
    only when the node's attributes match ``when`` (attribute defaults applied)."""

    check: str
    min: float | None = None
    max: float | None = None
    one_of: tuple[Any, ...] | None = None
    when: tuple[tuple[str, Any], ...] = ()
    status: str = "confirmed"
    source: tuple[str, ...] = ()
    note: str = ""
    rewrite: str | None = None

    def bounds_text(self) -> str:
        """The allowed range as written in messages, e.g. ``1..8`` or ``one of [1, 4]``."""
        if self.one_of is not None:
            return "one of [" + ", ".join(str(v) for v in self.one_of) + "]"
        lo = "" if self.min is None else _num(self.min)
        hi = "" if self.max is None else _num(self.max)
        return f"{lo}..{hi}"


@dataclass(frozen=True)
class OpRule:
    """What a profile says about one ONNX op."""

    op: str
    layer: str
    allowed: bool
    status: str
    source: tuple[str, ...] = ()
    note: str = ""
    assumption: str = ""
    rewrite: str | None = None
    limits: tuple[Limit, ...] = ()

    @property
    def level(self) -> str:
        """The evidence level of the rule (:data:`LEVELS`)."""
        return STATUS_LEVEL[self.status]

    @property
    def assumed(self) -> bool:
        """Allowed although no public source establishes it (the ``assumption`` says why)."""
        return self.allowed and self.level == "assumed"


@dataclass(frozen=True)
class GlobalRule:
    """A whole-model rule such as static shapes or the maximum rank."""

    check: str
    value: Any
    status: str
    source: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Profile:
    """A loaded, validated profile."""

    name: str
    description: str
    path: str
    flow: str = ""
    tensorrt: str = ""
    unlisted: str = "not listed in this profile"
    sources: dict[str, str] = field(default_factory=dict)
    global_rules: dict[str, GlobalRule] = field(default_factory=dict)
    ops: dict[str, OpRule] = field(default_factory=dict)

    def rule_for(self, op: str) -> OpRule | None:
        """The rule of an op (``Conv``, or ``domain.Op`` for ops outside the default domain)."""
        return self.ops.get(op)

    def global_value(self, check: str, default: Any = None) -> Any:
        """The value of a global rule, or ``default`` when the profile does not set it."""
        rule = self.global_rules.get(check)
        return default if rule is None else rule.value

    def source_url(self, tag: str) -> str:
        """The URL a source tag stands for (URLs given inline are returned as they are)."""
        return self.sources.get(tag, tag)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a bundled profile by name (``trt``, ``trt-restricted``, ``trt-dla``) or a TOML file.

    Raises :class:`ProfileError` naming the file, line (when found), key and problem."""
    text_name = str(name_or_path)
    if text_name in BUNDLED_PROFILES:
        return _bundled_profile(text_name)
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(BUNDLED_PROFILES)
        raise ProfileError(text_name, None, f"no such profile: not one of {names} and no file at that path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(text_name, None, f"cannot read profile file: {e}") from e
    return parse_profile(text, text_name, default_name=path.stem)


@functools.cache
def _bundled_profile(name: str) -> Profile:
    """A bundled profile, parsed once per process (package data does not change; callers only read profiles)."""
    # Read from the package folder (installed as files): importlib.resources would add its own imports (zipfile)
    # to the start-up of every TensorRT compile.
    with open(os.path.join(_PACKAGE_DIR, "profiles", f"{name}.toml"), encoding="utf-8") as f:
        return parse_profile(f.read(), f"<bundled profile {name}>")


def parse_profile(text: str, path: str, default_name: str = "profile") -> Profile:
    """Validate the TOML text of a profile; ``path`` is only used in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        where = re.search(r"at line (\d+)", str(e))
        raise ProfileError(path, None, f"invalid TOML: {e}", int(where.group(1)) if where else None) from e
    return _Validator(text, path).profile(data, default_name)


class _Validator:
    """Turns parsed TOML into a :class:`Profile`, raising located :class:`ProfileError` s."""

    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.source_tags: set[str] = set()

    def fail(self, key: str, message: str) -> ProfileError:
        return ProfileError(self.path, key, message, _locate(self.text, key))

    def keys(self, table: dict[str, Any], allowed: set[str], key: str) -> None:
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, sorted(allowed), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of {', '.join(sorted(allowed))}"
                raise self.fail(f"{key}.{k}" if key else k, f"unknown key{hint}")

    def table(self, data: dict[str, Any], k: str, key: str, required: bool = False) -> dict[str, Any]:
        value = data.get(k, {})
        if required and k not in data:
            raise self.fail(key, "missing table")
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, found {type(value).__name__}")
        return value

    def string(self, data: dict[str, Any], k: str, key: str, default: str | None = None) -> str:
        if k not in data:
            if default is None:
                raise self.fail(key, "missing (a string is required)")
            return default
        if not isinstance(data[k], str):
            raise self.fail(key, f"expected a string, found {data[k]!r}")
        return data[k]

    def status(self, data: dict[str, Any], key: str) -> str:
        status = self.string(data, "status", f"{key}.status")
        if status not in STATUSES:
            raise self.fail(f"{key}.status", f"'{status}' is not a status; expected one of {', '.join(STATUSES)}")
        return status

    def sources(self, data: dict[str, Any], key: str) -> tuple[str, ...]:
        raw = data.get("source", [])
        tags = [raw] if isinstance(raw, str) else raw
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise self.fail(f"{key}.source", "expected a source tag or a list of tags")
        for tag in tags:
            if tag not in self.source_tags and not tag.startswith(("http://", "https://")):
                close = difflib.get_close_matches(tag, sorted(self.source_tags), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.fail(f"{key}.source", f"unknown source tag '{tag}' (not in [sources], not a URL){hint}")
        return tuple(tags)

    def profile(self, data: dict[str, Any], default_name: str) -> Profile:
        self.keys(data, _TOP_KEYS, "")
        head = self.table(data, "profile", "profile")
        self.keys(head, _PROFILE_KEYS, "profile")
        sources = self.table(data, "sources", "sources")
        for tag, url in sources.items():
            if not isinstance(url, str):
                raise self.fail(f"sources.{tag}", f"expected a URL string, found {url!r}")
        self.source_tags = set(sources)
        rules = self.table(data, "global", "global")
        ops = self.table(data, "ops", "ops", required=True)
        return Profile(
            name=self.string(head, "name", "profile.name", default_name),
            description=self.string(head, "description", "profile.description", ""),
            path=self.path,
            flow=self.string(head, "flow", "profile.flow", ""),
            tensorrt=self.string(head, "tensorrt", "profile.tensorrt", ""),
            unlisted=self.string(head, "unlisted", "profile.unlisted", "not listed in this profile"),
            sources=dict(sources),
            global_rules={k: self.global_rule(k, v) for k, v in rules.items()},
            ops={op: self.op_rule(op, v) for op, v in ops.items()},
        )

    def global_rule(self, check: str, data: Any) -> GlobalRule:
        key = f"global.{check}"
        if check not in GLOBAL_CHECKS:
            close = difflib.get_close_matches(check, sorted(GLOBAL_CHECKS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of {', '.join(GLOBAL_CHECKS)}"
            raise self.fail(key, f"unknown global check{hint}")
        if not isinstance(data, dict):
            raise self.fail(key, "expected a table with value, status, source, note")
        self.keys(data, _GLOBAL_KEYS, key)
        if "value" not in data:
            raise self.fail(f"{key}.value", "missing")
        value = data["value"]
        expected = GLOBAL_CHECKS[check]
        # bool is a subclass of int in Python: reject it where a number is expected
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise self.fail(f"{key}.value", f"expected {expected.__name__}, found {value!r}")
        if check == "dtypes":
            for name in value:
                if name not in DTYPE_NAMES:
                    raise self.fail(f"{key}.value", f"unknown dtype {name!r}; expected names from {list(DTYPE_NAMES)}")
        return GlobalRule(check, value, self.status(data, key), self.sources(data, key),
                          self.string(data, "note", f"{key}.note", ""))

    def op_rule(self, op: str, data: Any) -> OpRule:
        key = f"ops.{op}"
        if not isinstance(data, dict):
            raise self.fail(key, "expected a table")
        self.keys(data, _OP_KEYS, key)
        status = self.status(data, key)
        allowed = data.get("allowed", status != "unknown")
        if not isinstance(allowed, bool):
            raise self.fail(f"{key}.allowed", f"expected true or false, found {allowed!r}")
        assumption = self.string(data, "assumption", f"{key}.assumption", "")
        if allowed and status == "unknown" and not assumption:
            raise self.fail(f"{key}.assumption",
                            "an op with status 'unknown' may only be allowed with an 'assumption' saying why")
        raw_limits = data.get("limits", [])
        if not isinstance(raw_limits, list):
            raise self.fail(f"{key}.limits", "expected an array of tables ([[ops.<Op>.limits]])")
        return OpRule(
            op=op,
            layer=self.string(data, "layer", f"{key}.layer"),
            allowed=allowed,
            status=status,
            source=self.sources(data, key),
            note=self.string(data, "note", f"{key}.note", ""),
            assumption=assumption,
            rewrite=self.string(data, "rewrite", f"{key}.rewrite", "") or None,
            limits=tuple(self.limit(f"{key}.limits[{i}]", lim) for i, lim in enumerate(raw_limits)),
        )

    def limit(self, key: str, data: Any) -> Limit:
        if not isinstance(data, dict):
            raise self.fail(key, "expected a table")
        self.keys(data, _LIMIT_KEYS, key)
        check = self.string(data, "check", f"{key}.check")
        kind = check_kind(check)
        if kind is None:
            close = difflib.get_close_matches(check, sorted(CHECKS), n=1)
            hint = (f"; did you mean '{close[0]}'?" if close
                    else "; see CHECKS in netdsl.coverage.profile or 'attr:<name>'")
            raise self.fail(f"{key}.check", f"unknown check '{check}'{hint}")
        bounds = {k: data[k] for k in ("min", "max", "one_of") if k in data}
        if kind == "predicate" and bounds:
            raise self.fail(key, f"'{check}' is a predicate and takes no {', '.join(bounds)}")
        if kind != "predicate" and not bounds:
            raise self.fail(key, f"'{check}' needs min, max or one_of")
        for k in ("min", "max"):
            if k in data and (isinstance(data[k], bool) or not isinstance(data[k], int | float)):
                raise self.fail(f"{key}.{k}", f"expected a number, found {data[k]!r}")
        if "min" in data and "max" in data and data["min"] > data["max"]:
            raise self.fail(key, f"min {data['min']} is greater than max {data['max']}")
        one_of = data.get("one_of")
        if one_of is not None and not isinstance(one_of, list):
            raise self.fail(f"{key}.one_of", f"expected a list, found {one_of!r}")
        when = data.get("when", {})
        if not isinstance(when, dict):
            raise self.fail(f"{key}.when", "expected an inline table of attribute values, e.g. { mode = \"linear\" }")
        return Limit(
            check=check,
            min=data.get("min"),
            max=data.get("max"),
            one_of=tuple(one_of) if one_of is not None else None,
            when=tuple(sorted(when.items())),
            status=self.status(data, key) if "status" in data else "confirmed",
            source=self.sources(data, key),
            note=self.string(data, "note", f"{key}.note", ""),
            rewrite=self.string(data, "rewrite", f"{key}.rewrite", "") or None,
        )


def check_kind(check: str) -> str | None:
    """``numeric``, ``predicate`` or ``value`` for a known check name, else None."""
    if check.startswith("attr:") and len(check) > len("attr:"):
        return "value"
    spec = CHECKS.get(check)
    return spec.kind if spec else None


_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


def _locate(text: str, key: str) -> int | None:
    """Best-effort 1-based line of a dotted key such as ``ops.Conv.limits[1].max`` in TOML text.

    tomllib reports no positions for keys, so this searches for the table header and then the key
    line below it; it returns None when the layout is unusual (inline tables, quoted keys)."""
    parts = key.split(".")
    lines = text.splitlines()
    # find the longest prefix of the key that is a table header, honouring [n] for arrays of tables
    for cut in range(len(parts), 0, -1):
        header, index = ".".join(parts[:cut]), 0
        match = _INDEX.match(header)
        if match:
            header, index = match.group(1), int(match.group(2))
        pattern = re.compile(r"^\s*\[\[?\s*" + re.escape(header) + r"\s*\]\]?\s*(#.*)?$")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        if len(hits) > index:
            start = hits[index]
            rest = parts[cut:]
            if not rest:
                return start + 1
            key_line = re.compile(r"^\s*" + re.escape(rest[0]) + r"\s*=")
            for i in range(start + 1, len(lines)):
                if lines[i].lstrip().startswith("["):
                    break
                if key_line.match(lines[i]):
                    return i + 1
            return start + 1
    return None
