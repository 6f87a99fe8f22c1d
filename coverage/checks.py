"""The checks a profile's limits name, measured on one node: numeric measurements (``NUMERIC``: kernel,
stride, axis, ...) and predicates (``PREDICATES``: ``None`` when the property holds, else the reason).

The names are the contract with :mod:`netdsl.coverage.profile`, whose ``CHECKS`` declares each name's kind
for validating profile files: every name there has its implementation here, under the same name
(tests/test_profiles.py checks both directions)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from netdsl.coverage.node_view import CONV_OPS, INT32_MAX, INT32_MIN, POOL_OPS, SHAPE_LIKE, NodeView
from netdsl.coverage.profile import Limit, check_kind

# ------------------------------------------------------------ numeric measurements


def _kernel(v: NodeView) -> list[int] | None:
    if v.op in CONV_OPS:
        if "kernel_shape" in v.attrs:
            return list(v.attrs["kernel_shape"])
        weight = v.facts.info(v.input(1))
        if weight and weight.static and weight.dims:
            return list(weight.known_dims()[2:])  # type: ignore[index]
        return None
    if v.op in POOL_OPS:
        return list(v.attrs["kernel_shape"]) if "kernel_shape" in v.attrs else None
    return None


def _stride(v: NodeView) -> list[int] | None:
    kernel = _kernel(v)
    if kernel is None:
        return None
    return list(v.attrs.get("strides") or [1] * len(kernel))


def _dilation(v: NodeView) -> list[int] | None:
    kernel = _kernel(v)
    if kernel is None:
        return None
    return list(v.attrs.get("dilations") or [1] * len(kernel))


def _padding(v: NodeView) -> list[int] | None:
    """Begin and end padding of every spatial axis (ONNX order), auto_pad resolved."""
    kernel = _kernel(v)
    if kernel is None:
        return None
    n = len(kernel)
    auto_pad = v.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        return list(v.attrs.get("pads") or [0] * 2 * n) if auto_pad == "NOTSET" else [0] * 2 * n
    dims = v.input_dims(0)
    if dims is None or not all(isinstance(d, int) for d in dims[2:]) or v.op == "ConvTranspose":
        return None
    strides, dilations = _stride(v) or [1] * n, _dilation(v) or [1] * n
    begin, end = [], []
    for size, k, s, d in zip(dims[2:], kernel, strides, dilations, strict=False):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(large if auto_pad == "SAME_LOWER" else small)
        end.append(small if auto_pad == "SAME_LOWER" else large)
    return begin + end


def _groups(v: NodeView) -> list[int] | None:
    return [int(v.attrs.get("group", 1))] if v.op in CONV_OPS else None


def _channels(v: NodeView, which: str) -> list[int] | None:
    if v.op not in CONV_OPS:
        return None
    weight = v.facts.info(v.input(1))
    if weight is None or weight.dims is None or len(weight.dims) < 2:
        return None
    a, b = weight.dims[0], weight.dims[1]
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    group = int(v.attrs.get("group", 1))
    # Conv weights are [out, in/group, k...]; ConvTranspose weights are [in, out/group, k...]
    conv_in, conv_out = (b * group, a) if v.op == "Conv" else (a, b * group)
    return [conv_in if which == "in" else conv_out]


def _spatial_rank(v: NodeView) -> list[int] | None:
    kernel = _kernel(v)
    return None if kernel is None else [len(kernel)]


def _rank(v: NodeView) -> list[int] | None:
    # the data operand: Add(bias, x) from a torch export has the constant first
    names = [i for i in v.node.input if i]
    data = next((i for i in names if not v.facts.is_constant(i)), names[0] if names else "")
    info = v.facts.info(data)
    return None if info is None or info.dims is None else [len(info.dims)]


def _axis(v: NodeView) -> list[int] | None:
    axis = v.axis()
    return None if axis is None else [axis]


def _axis_from_end(v: NodeView) -> list[int] | None:
    axis, rank = v.axis(), v.rank()
    return None if axis is None or rank is None else [rank - axis]


def _axis_length(v: NodeView) -> list[int] | None:
    axis, dims = v.axis(), v.input_dims(0)
    if axis is None or dims is None or not isinstance(dims[axis], int):
        return None
    return [dims[axis]]  # type: ignore[list-item]


def _num_inputs(v: NodeView) -> list[int]:
    return [sum(1 for i in v.node.input if i)]


def _non_batch_dims(v: NodeView) -> list[int] | None:
    dims = v.input_dims(0)
    return None if dims is None else [d for d in dims[1:] if isinstance(d, int)]


def _scales(v: NodeView) -> np.ndarray | None:
    """Constant Resize/Upsample scales, or None."""
    if v.op == "Upsample" and "scales" in v.attrs:
        return np.asarray(v.attrs["scales"], dtype=np.float64)
    index = 1 if v.op == "Upsample" or (v.op == "Resize" and v.facts.opset < 11) else 2
    scales = v.const(index)
    return None if scales is None or scales.size == 0 else scales.astype(np.float64)


def _resize_scale(v: NodeView) -> list[float] | None:
    scales = _scales(v)
    return None if scales is None else [float(s) for s in scales[2:]]


def _slice_step(v: NodeView) -> list[int] | None:
    if v.op != "Slice":
        return None
    if not v.input(4):
        starts = v.const(1)
        return None if starts is None else [1] * starts.size
    steps = v.const(4)
    return None if steps is None else [int(s) for s in steps.reshape(-1)]


NUMERIC: dict[str, Callable[[NodeView], Sequence[float] | None]] = {
    "kernel": _kernel,
    "stride": _stride,
    "padding": _padding,
    "dilation": _dilation,
    "groups": _groups,
    "in_channels": lambda v: _channels(v, "in"),
    "out_channels": lambda v: _channels(v, "out"),
    "spatial_rank": _spatial_rank,
    "rank": _rank,
    "axis": _axis,
    "axis_from_end": _axis_from_end,
    "axis_length": _axis_length,
    "num_inputs": _num_inputs,
    "non_batch_dims": _non_batch_dims,
    "resize_scale": _resize_scale,
    "slice_step": _slice_step,
}


# ------------------------------------------------------------ predicates (None = holds)


def _constant_params(v: NodeView) -> str | None:
    for index, name in enumerate(v.node.input[1:], 1):
        if name and not v.facts.is_constant(name):
            role = v.input_role(index)
            return f"{v.op} input '{role}' ({name}) is computed at run time; the profile needs a constant"
    return None


_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}


def _constant_axes(v: NodeView) -> str | None:
    index = _AXES_INPUT.get(v.op, 1 if v.op.startswith("Reduce") else None)
    if index is None:
        return None
    name = v.input(index)
    if name and not v.facts.is_constant(name):
        return f"{v.op} axes ({name}) are computed at run time; the profile needs constant axes"
    return None


def _constant_scales(v: NodeView) -> str | None:
    if v.op == "Resize" and v.input(3):
        return "Resize uses `sizes`; the profile allows only constant `scales`"
    if v.op == "Upsample" and "scales" in v.attrs:
        return None
    index = 1 if v.op == "Upsample" or (v.op == "Resize" and v.facts.opset < 11) else 2
    name = v.input(index)
    if not name:
        return f"{v.op} has no `scales`; the profile allows only constant `scales`"
    if not v.facts.is_constant(name):
        return f"{v.op} scales ({name}) are computed at run time; the profile allows only constant `scales`"
    return None


def _constant_second_input(v: NodeView) -> str | None:
    name = v.input(1)
    if name and not v.facts.is_constant(name):
        return (f"{v.op} multiplies two run-time tensors ({v.input(0)} x {name}); "
                "the profile allows only a constant second input")
    return None


def _int32_params(v: NodeView) -> str | None:
    if v.op != "Slice":
        return None
    dims = v.input_dims(0)
    starts, ends, axes, steps = v.const(1), v.const(2), v.const(3), v.const(4)
    if starts is None or ends is None:
        return None  # run-time parameters are the business of constant_params
    if steps is not None and any(not INT32_MIN <= s <= INT32_MAX for s in steps.reshape(-1)):
        return "Slice steps do not fit INT32"
    axes_list = list(axes.reshape(-1)) if axes is not None else list(range(starts.size))
    for start, end, axis in zip(starts.reshape(-1), ends.reshape(-1), axes_list, strict=False):
        dim = None
        if dims is not None and -len(dims) <= axis < len(dims):
            dim = dims[int(axis)]
        if isinstance(dim, int):
            continue  # ONNX clamps start/end into [-1, dim], which always fits INT32 for dim < 2^31
        if not (INT32_MIN <= start <= INT32_MAX and INT32_MIN <= end <= INT32_MAX):
            bounds = f"{int(start)}..{int(end)}"
            return f"Slice bounds {bounds} on axis {int(axis)} do not fit INT32 and the dim is not static"
    return None


def _padding_lt_kernel(v: NodeView) -> str | None:
    kernel, pads = _kernel(v), _padding(v)
    if kernel is None or pads is None:
        return None
    n = len(kernel)
    for i, pad in enumerate(pads):
        if pad >= kernel[i % n]:
            return f"{v.op} padding {pad} is not smaller than kernel {kernel[i % n]} on axis {i % n}"
    return None


def _zero_point_zero(v: NodeView) -> str | None:
    name = v.input(2)
    if not name:
        return None
    value = v.facts.value(name)
    if value is None:
        return f"{v.op} zero point ({name}) is computed at run time; the profile needs a zero point of 0"
    if np.any(value != 0):
        return f"{v.op} zero point is not 0 (asymmetric quantization); the profile needs 0"
    return None


def _per_tensor_or_per_channel(v: NodeView) -> str | None:
    if int(v.attrs.get("block_size", 0) or 0) > 0:
        return f"{v.op} uses block quantization (block_size {v.attrs['block_size']})"
    info = v.facts.info(v.input(1))
    if info is not None and info.dims is not None and len(info.dims) > 1:
        return f"{v.op} scale has shape {info.shape_text()}; the profile needs per-tensor or per-channel (1-D) scales"
    return None


def _slice_touches_batch(v: NodeView) -> bool:
    starts, ends, axes, steps = v.const(1), v.const(2), v.const(3), v.const(4)
    if starts is None or ends is None:
        return False
    axes_list = [int(a) for a in axes.reshape(-1)] if axes is not None else list(range(starts.size))
    steps_list = [int(s) for s in steps.reshape(-1)] if steps is not None else [1] * len(axes_list)
    dims = v.input_dims(0)
    first = dims[0] if dims else None
    for start, end, axis, step in zip(starts.reshape(-1), ends.reshape(-1), axes_list, steps_list, strict=False):
        if axis not in (0, -(len(dims) if dims else 0)):
            continue
        full = int(start) == 0 and step == 1 and isinstance(first, int) and int(end) >= first
        if not full:
            return True
    return False


def _reduce_axes(v: NodeView) -> list[int] | None:
    axes = v.attrs.get("axes")
    if axes is None and v.input(1):
        value = v.const(1)
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    if axes is None and not v.attrs.get("noop_with_empty_axes", 0):
        rank = v.rank()
        axes = list(range(rank)) if rank is not None else None
    return axes


def _no_batch_axis(v: NodeView) -> str | None:
    if v.op == "Slice":
        touched = _slice_touches_batch(v)
    elif v.op in ("Concat", "Split"):
        touched = v.axis() == 0
    elif v.op.startswith("Reduce"):
        rank = v.rank() or 0
        touched = any(a in (0, -rank) for a in (_reduce_axes(v) or []))
    else:
        return None
    return f"{v.op} works along the first (batch) axis; the profile forbids that" if touched else None


def _only_first_output_used(v: NodeView) -> str | None:
    extra = [o for o in v.node.output[1:] if v.facts.used(o)]
    if extra:
        return f"{v.op} optional output(s) {', '.join(extra)} are used; the profile supports only the first output"
    return None


def _integer_scales(v: NodeView) -> str | None:
    scales = _scales(v)
    if scales is None:
        return None
    if not np.all(np.equal(np.round(scales), scales)):
        text = ", ".join(f"{s:g}" for s in scales)
        return f"{v.op} scales [{text}] are not whole numbers"
    return None


def _unit_leading_scales(v: NodeView) -> str | None:
    scales = _scales(v)
    if scales is None or scales.size < 2:
        return None
    if not np.all(scales[:2] == 1):
        return f"{v.op} scales the batch/channel axes ({scales[0]:g}, {scales[1]:g}); they must be 1"
    return None


PREDICATES: dict[str, Callable[[NodeView], str | None]] = {
    "constant_params": _constant_params,
    "constant_axes": _constant_axes,
    "constant_scales": _constant_scales,
    "constant_second_input": _constant_second_input,
    "int32_params": _int32_params,
    "padding_lt_kernel": _padding_lt_kernel,
    "zero_point_zero": _zero_point_zero,
    "per_tensor_or_per_channel": _per_tensor_or_per_channel,
    "no_batch_axis": _no_batch_axis,
    "only_first_output_used": _only_first_output_used,
    "integer_scales": _integer_scales,
    "unit_leading_scales": _unit_leading_scales,
}


# ------------------------------------------------------------ limits


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, str):
        return repr(x)
    return str(x)


def evaluate_limit(limit: Limit, view: NodeView) -> str | None:
    """The violation message of ``limit`` on the node, or None when it holds or does not apply."""
    if not view.matches(limit.when):
        return None
    kind = check_kind(limit.check)
    if kind == "predicate":
        return PREDICATES[limit.check](view)
    if kind == "value":
        name = limit.check[len("attr:"):]
        if name not in view.attrs:
            return None
        raw = view.attrs[name]
        values = raw if isinstance(raw, list) else [raw]
        label = f"attribute {name}"
    else:
        measured = NUMERIC[limit.check](view)
        if measured is None:
            return None
        values = list(measured)
        label = limit.check.replace("_", " ")
    if limit.one_of is not None:
        bad = [x for x in values if x not in limit.one_of]
        if bad:
            return f"{view.op} {label} {', '.join(_fmt(b) for b in bad)} is not {limit.bounds_text()}"
        return None
    if any(isinstance(x, bool) or not isinstance(x, int | float) for x in values):
        shown = ", ".join(_fmt(x) for x in values)
        return f"{view.op} {label} {shown} is not a number; the profile bounds it to {limit.bounds_text()}"
    too_big = limit.max is not None and any(x > limit.max for x in values)
    too_small = limit.min is not None and any(x < limit.min for x in values)
    if not (too_big or too_small):
        return None
    joiner = "x" if limit.check in SHAPE_LIKE else ", "
    shown = joiner.join(_fmt(x) for x in values)
    verb = "exceeds" if too_big else "is below"
    return f"{view.op} {label} {shown} {verb} limit {limit.bounds_text()}"
