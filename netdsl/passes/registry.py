"""The pass registry: pass name -> :class:`Pass` (or :class:`WeightedPass`), collected from the pass modules.

Each module listed in :data:`PASS_MODULES` defines its passes as module-level ``Pass`` /
``WeightedPass`` objects; the registry imports the modules and collects every such object. A
module that is not part of this build (``ModuleNotFoundError`` for the module itself) makes its
pass unavailable rather than breaking the others: by convention that pass is named like its
module, and :func:`get_pass` reports it as not available, never skips it.
"""

from __future__ import annotations

import importlib
from functools import cache

from netdsl.diagnostics import Diagnostic, NetdslError, did_you_mean
from netdsl.passes.base import Pass, WeightedPass, Weights

PASS_MODULES = (
    "attention_to_matmul",
    "lower_attention",
    "lower_local_attention",
    "local_attention_to_matmul",
    "matmul_to_conv",
    "gather_to_slice",
    "where_to_blend",
    "shift_to_conv",
    "unfold_to_conv",
    "roll_to_slice_concat",
    "silu_to_sigmoid",
    "gelu_to_erf",
    "groupnorm_to_instancenorm",
    "pool_padding_explicit",
    "maxpool_to_elementwise",
    "pad_to_slice_concat",
    "softmax_decompose",
    "layernorm_decompose",
    "groupnorm_decompose",
    "reduce_max_to_elementwise",
    "reduce_min_to_max",
    "reduce_to_conv",
    "pool_windows",
    "elementwise_rank4",
    "slice_concat_rank4",
    "concat_to_channels",
    "linear_to_conv",
    "hardswish_decompose",
    "clip_to_relu",
    "minmax_to_relu",
    "tanh_decompose",
    "neg_to_mul",
    "pow_decompose",
    "sqrt_decompose",
    "exp_decompose",
    "erf_decompose",
    "fold_batchnorm",
    "fold_pointwise_into_conv",
    "slice_before_conv",
    "conv_before_resize",
    "merge_sibling_convs",
    "pool_before_conv",
    "downscale_to_conv",
    "reduce_to_matmul",
    "strided_slice_to_conv",
    "resize_to_conv",
    "constant_folding",
    "fold_params",
    "cse",
    "cleanup_shuffles",
    "dce",
)

AnyPass = Pass | WeightedPass


def _module_passes(module_name: str) -> list[AnyPass] | None:
    """The passes defined in ``netdsl.passes.<module_name>``, or None when that module is not part of this build."""
    full = f"netdsl.passes.{module_name}"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name != full:
            raise
        return None
    return [obj for obj in vars(module).values() if isinstance(obj, (Pass, WeightedPass))]


@cache
def _load() -> tuple[dict[str, AnyPass], dict[str, str]]:
    """(available passes by name, unavailable pass name -> why)."""
    passes: dict[str, AnyPass] = {}
    missing: dict[str, str] = {}
    for module_name in PASS_MODULES:
        full = f"netdsl.passes.{module_name}"
        found = _module_passes(module_name)
        if found is None:
            missing[module_name] = f"module {full} is not part of this build"
            continue
        for obj in found:
            known = passes.get(obj.name)
            if known is not None and known is not obj:
                raise RuntimeError(f"two passes are named '{obj.name}' ({full} and another module)")
            passes[obj.name] = obj
    return passes, missing


def all_passes() -> dict[str, AnyPass]:
    """Every available pass by name."""
    return dict(_load()[0])


def unavailable_passes() -> dict[str, str]:
    """Passes expected by name whose module is missing, with the reason."""
    return dict(_load()[1])


@cache
def _own_module_pass(name: str) -> AnyPass | None:
    """The pass ``name`` from its own module (``netdsl.passes.<name>``) alone, or None when there is no such
    module in this build or it defines no pass of that name. A target's pipeline then imports only its own
    passes' modules (the ``onnx`` target's 19 of the 51), not every module of the registry."""
    found = _module_passes(name) if name in PASS_MODULES else None
    return next((obj for obj in found or [] if obj.name == name), None)


def lookup(name: str) -> AnyPass:
    """The pass called ``name``; a :class:`NetdslError` with did-you-mean if there is none."""
    own = _own_module_pass(name)
    if own is not None:
        return own
    passes, missing = _load()
    if name in passes:
        return passes[name]
    if name in missing:
        raise NetdslError(Diagnostic(f"pass '{name}' is not available: {missing[name]}"))
    known = sorted(passes)
    raise NetdslError(Diagnostic(f"unknown pass '{name}'", help=did_you_mean(name, known),
                                 notes=["known passes: " + ", ".join(known)]))


def needs_weights(name: str) -> bool:
    """True when pass ``name`` reads or rewrites parameter values."""
    return isinstance(lookup(name), WeightedPass)


def get_pass(name: str, weights: Weights | None = None) -> Pass:
    """The runnable pass ``name``, bound to ``weights`` if it needs them (ValueError if they are missing)."""
    found = lookup(name)
    if isinstance(found, Pass):
        return found
    if weights is None:
        raise ValueError(f"pass '{name}' rewrites parameter values and needs the weights")
    return found.bind(weights)
