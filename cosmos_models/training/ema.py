"""Exponential moving average of the weights, kept in fp32 and sharded like the parameters.

Two schedules:
- power EMA (default; the official `PowerEMATracker`, from EDM2, with relative width σ_rel = 0.1):
  after optimizer update i (0-based) `ema ← β·ema + (1 − β)·w` with β = 0 for i = 0 (a copy) and
  β = (1 − 1/(i + 1))^(γ + 1) after, γ the largest real root of
  γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0 (σ_rel = 0.1 gives γ ≈ 6.94). The average's
  length grows with training, so early weights are forgotten and no fixed decay must be tuned.
- constant decay d (e.g. 0.9999): β = min(d, (1 + i)/(10 + i)) (the usual warm-up, so the
  average is not dominated by the initialization).

Under FSDP2 every shadow tensor is a DTensor with its parameter's placement: the update is local
to each rank's shard, with no communication.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def power_exponent(sigma_rel: float) -> float:
    """γ of the power EMA for a relative standard deviation σ_rel (EDM2, eq. 3 inverted)."""
    if not (isinstance(sigma_rel, (int, float)) and 0 < sigma_rel < 0.28):
        raise ValueError(f"ema sigma_rel must be in (0, 0.28) (larger has no valid exponent), got {sigma_rel!r}")
    roots = np.roots([1.0, 7.0, 16.0 - sigma_rel ** -2, 12.0 - sigma_rel ** -2])
    return float(roots.real[abs(roots.imag) < 1e-9].max())


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """fp32 shadow copies of `model`'s parameters; `update(model)` after every optimizer step."""

    def __init__(self, model: nn.Module, *, sigma_rel: float | None = 0.1, decay: float | None = None):
        if (sigma_rel is None) == (decay is None):
            raise ValueError("EMA: give exactly one of sigma_rel (power EMA) or decay (constant)")
        if decay is not None and not (isinstance(decay, (int, float)) and 0.0 < decay < 1.0):
            raise ValueError(f"EMA: decay must be in (0, 1), got {decay!r}")
        self.sigma_rel, self.decay = sigma_rel, decay
        self.exponent = power_exponent(sigma_rel) if sigma_rel is not None else None
        with torch.no_grad():
            # the trained parameters (all of them, or a LoRA run's adapters: frozen ones never move)
            self.shadow: dict[str, Tensor] = {name: p.detach().float().clone()
                                              for name, p in model.named_parameters() if p.requires_grad}
        self.updates = 0

    def beta(self, i: int) -> float:
        """The weight of the old average at update i (0-based)."""
        if self.exponent is not None:
            return 0.0 if i == 0 else (1.0 - 1.0 / (i + 1)) ** (self.exponent + 1)
        return min(self.decay, (1.0 + i) / (10.0 + i))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the current weights in; returns the β used."""
        beta = self.beta(self.updates)
        names = list(self.shadow)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(names) != set(params):
            raise ValueError("EMA.update: the model's parameters are not the ones the EMA was made for")
        shadow = [_local(self.shadow[n]) for n in names]
        current = [_local(params[n].detach()).float() for n in names]
        torch._foreach_lerp_(shadow, current, 1.0 - beta)
        self.updates += 1
        return beta

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """In place (the tensors of `state["shadow"]` may be the shadow tensors themselves, as after
        a torch.distributed.checkpoint load)."""
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA.load_state_dict: parameter names differ: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, value in state["shadow"].items():
                if value is not self.shadow[name]:
                    self.shadow[name].copy_(value)
        self.updates = int(state["updates"])

    def full_state_dict(self, rank0_only: bool = True) -> dict[str, Tensor] | None:
        """The whole averaged weights as plain CPU fp32 tensors, gathered one parameter at a time
        (a collective: every rank must call it). None on ranks other than 0 when rank0_only."""
        import torch.distributed as dist

        keep = not rank0_only or not dist.is_initialized() or dist.get_rank() == 0
        out = {}
        for name, full in self.iter_full():
            if keep:
                out[name] = full.detach().to("cpu", copy=True)
            del full
        return out if keep else None

    def iter_full(self):
        """(name, the whole averaged tensor) one parameter at a time (each a collective gather on a
        sharded model: every rank iterates; each tensor is dropped when the next is asked for)."""
        for name, value in self.shadow.items():
            yield name, value.full_tensor() if hasattr(value, "full_tensor") else value

    def describe(self) -> str:
        if self.exponent is not None:
            return f"power EMA sigma_rel={self.sigma_rel} (gamma={self.exponent:.3f})"
        return f"constant EMA decay={self.decay}"

