"""Accuracy helpers shared by the tests and the self-check (DESIGN.md "Conventions").

Error is ‖out − ref‖ / ‖ref‖ on fresh random inputs; thresholds per dtype; gradients and tangents
get 2×; a NaN or Inf anywhere never passes.
"""
from __future__ import annotations

import torch

THRESHOLDS = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 1.5e-2,
}
LONG_REDUCTION_FP32 = 1e-4
TF32 = 1e-3


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().double(), ref.detach().double()
    denom = ref64.norm().item()
    num = (out64 - ref64).norm().item()
    return num / denom if denom > 0 else num


def threshold(dtype: torch.dtype, *, grad: bool = False, long_reduction: bool = False) -> float:
    t = THRESHOLDS[dtype]
    if long_reduction and dtype == torch.float32:
        t = LONG_REDUCTION_FP32
    return 2 * t if grad else t


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, *,
                 grad: bool = False, long_reduction: bool = False, name: str = "output") -> float:
    """Raise AssertionError unless `out` is finite, has ref's shape and is within the threshold."""
    dtype = dtype or out.dtype
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: contains NaN/Inf ({(~torch.isfinite(out)).sum().item()} elements)"
    assert torch.isfinite(ref).all(), f"{name}: the reference itself contains NaN/Inf"
    err = rel_err(out, ref)
    tol = threshold(dtype, grad=grad, long_reduction=long_reduction)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} ({dtype})"
    return err
