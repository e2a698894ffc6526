"""The training recipe's optimizer, shared by `cosmos train` (cosmos_models.training.trainer) and the measured
training step of `cosmos mfu` / `cosmos bench train-step` (cosmos_models.perf.mfu), so both run the same
update: AdamW β = (0.9, 0.999), ε = 1e-8, after gradient clipping at 0.1 (the official values). The
trainer clips, looks at the norm (a non-finite one skips the step), then steps the optimizer."""
from __future__ import annotations

import math

import torch
from torch import nn

ADAMW_BETAS = (0.9, 0.999)
GRAD_CLIP = 0.1  # the official trainer's max gradient norm


def adamw(model: nn.Module, lr: float, weight_decay: float, *, fused: bool | None = None) -> torch.optim.AdamW:
    trainable = [p for p in model.parameters() if p.requires_grad]  # (LoRA: the adapters only)
    return torch.optim.AdamW(trainable, lr=lr, betas=ADAMW_BETAS, eps=1e-8, weight_decay=weight_decay, fused=fused)


def clip(model: nn.Module, max_norm: float = GRAD_CLIP) -> float:
    """Clip the gradients to `max_norm` (0: no clipping); returns the gradient norm before clipping,
    over all ranks (a float; NaN or Inf when a gradient is not finite)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    return float(grad_norm)
