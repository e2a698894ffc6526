"""Plain-PyTorch references: the spec of every kernel, short and obviously right."""

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The compute precision of the references (and of the fp32 statistics / log-sum-exp the ops
    return): fp32, or fp64 for fp64 inputs (float64 checks)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def f32(t: torch.Tensor) -> torch.Tensor:
    """`t` in the compute precision (compute_dtype)."""
    return t.to(compute_dtype(t))
