"""Importing timm where torchvision does not import: a stand-in for the names timm reads at import time.

timm imports torchvision when its package loads (``FrozenBatchNorm2d`` in its norm layers, the
transforms and datasets in ``timm.data``), but the model forward passes these tests run never call
any of it. Where the real torchvision does not import beside this torch build, :func:`import_timm`
puts a stand-in into ``sys.modules`` while timm imports, then takes it out again: every name the
stand-in gives is an inert placeholder class, except ``FrozenBatchNorm2d``, a batch norm with fixed
statistics as torchvision's.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import torch
from torch import nn

# The torchvision modules timm imports from (timm/layers, timm/data, timm/utils).
_MODULES = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
            "torchvision.transforms.functional", "torchvision.datasets", "torchvision.models",
            "torchvision.models.feature_extraction", "torchvision.utils")


class _Inert(type):
    """Metaclass of the placeholders: any attribute of a placeholder class is another placeholder
    (timm.data builds tables such as ``InterpolationMode.BILINEAR`` when it loads)."""

    def __getattr__(cls, name: str) -> type:
        return placeholder(name)


def placeholder(name: str) -> type:
    """An inert class called ``name``: it can be instantiated and read from, and does nothing.

    Dunder names stay missing (AttributeError), so that ``inspect`` and ``copy`` see ordinary objects.
    """
    if name.startswith("__"):
        raise AttributeError(name)
    return _Inert(name, (), {"__init__": lambda self, *args, **kwargs: None})


class FrozenBatchNorm2d(nn.Module):
    """Batch norm over axis 1 with fixed statistics and affine terms (torchvision's buffers and names)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = placeholder  # type: ignore[method-assign]  # PEP 562: unknown names are placeholders
    return module


def _stand_in() -> dict[str, types.ModuleType]:
    modules = {name: _module(name) for name in _MODULES}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d  # type: ignore[attr-defined]
    return modules


def import_timm() -> tuple[Any, str]:
    """``(timm, how)``: timm imported with the real torchvision, or with the stand-in while it loads.

    Raises ImportError when timm itself is not installed.
    """
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - any failure (ImportError, a C-extension mismatch) means: no torchvision
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    else:
        return importlib.import_module("timm"), "torchvision"
    modules = _stand_in()
    sys.modules.update(modules)
    try:
        return importlib.import_module("timm"), "stand-in"
    finally:
        for name in modules:
            sys.modules.pop(name, None)
