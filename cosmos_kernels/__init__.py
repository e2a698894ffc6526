"""cosmos-kernels: drop-in kernels for Cosmos-Predict2.5 / Transfer2.5 video DiTs.

Every op is a torch.library custom op (namespace `cosmos_kernels`) with a fake implementation,
a backward and, where it matters for rCM distillation, a forward-mode JVP rule; every op takes
`backend=` ("triton" | "cuda" | "torch"), see cosmos_kernels.dispatch.

Public names are loaded lazily (importing the package does not import Triton), each from the
module of its kernel family.
"""
from __future__ import annotations

import importlib
import sys
import types

from cosmos_kernels.dispatch import BACKENDS, BackendUnavailable, backend_for, backend_table, use_backend

__version__ = "0.1.0"

# public name -> module of its kernel family
_EXPORTS = {
    "adaln_modulate": "cosmos_kernels.adaln",
    "gated_residual": "cosmos_kernels.adaln",
    "gated_residual_adaln": "cosmos_kernels.adaln",
    "rope3d_freqs": "cosmos_kernels.rope",
    "apply_rope3d": "cosmos_kernels.rope",
    "qk_norm_rope": "cosmos_kernels.rope",
    "flash_attention": "cosmos_kernels.flash_attention",
    "flash_attention_jvp": "cosmos_kernels.flash_attention",
    "neighborhood_attention_3d": "cosmos_kernels.neighborhood_attention",
    "ulysses_all_to_all": "cosmos_kernels.ulysses",
    "UlyssesAttention": "cosmos_kernels.ulysses",
}

__all__ = ["BACKENDS", "BackendUnavailable", "backend_for", "backend_table", "use_backend", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cosmos_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _load_all() -> None:
    """Import every kernel family (registers all custom ops and their dispatch entries)."""
    for module in sorted(set(_EXPORTS.values())):
        importlib.import_module(module)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The package module. A family module named like its public function
    (cosmos_kernels.flash_attention) would otherwise replace that function on the package when
    the import system binds the loaded submodule; the function wins, the module stays importable."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
