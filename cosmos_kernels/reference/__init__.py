"""Plain-PyTorch references: the spec of every kernel, short and obviously right."""

import torch


def f32(t: torch.Tensor) -> torch.Tensor:
    """The compute precision of the references: fp32, or fp64 for fp64 inputs (float64 checks)."""
    return t if t.dtype == torch.float64 else t.float()
