"""The training recipe's optimizer, shared by `cosmos train` (cosmos_models.training.trainer) and the measured
training step of `cosmos mfu` / `cosmos bench train-step` (cosmos_models.perf.mfu), so both run the same
update: AdamW β = (0.9, 0.999), ε = 1e-8, then gradient clipping at 0.1 (the official values)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ADAMW_BETAS = (0.9, 0.999)
GRAD_CLIP = 0.1  # the official trainer's max gradient norm


def adamw(model: nn.Module, lr: float, weight_decay: float, *, fused: bool | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAMW_BETAS, eps=1e-8, weight_decay=weight_decay,
                             fused=fused)


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float = GRAD_CLIP) -> Tensor:
    """Clip the gradients to `max_norm` (0: no clipping), step, zero the gradients; returns the
    gradient norm before clipping (a DTensor under FSDP2)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
