"""Output allocation. With COSMOS_KERNELS_POISON=1 (the tests set it) every output a kernel is
about to write is NaN-filled first, so a kernel that forgets to write an element cannot pass."""
from __future__ import annotations

import os

import torch


def poisoning() -> bool:
    return os.environ.get("COSMOS_KERNELS_POISON", "0") == "1"


def _poison(t: torch.Tensor) -> torch.Tensor:
    if poisoning() and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def empty(*shape, dtype, device) -> torch.Tensor:
    return _poison(torch.empty(*shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return _poison(torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device))
