"""The lean model-and-trainer layer of cosmos-kernels (DiT, trainer, samplers, distillation).

    cosmos_models.configs()                      names of the model configs
    cosmos_models.get_config(name)               a DiTConfig
    cosmos_models.build(name_or_config, device=None, dtype=None)   -> nn.Module (device="meta" works)
    cosmos_models.load_checkpoint(model, path_or_state_dict)        official / diffusers / our names, strict
    cosmos_models.save_checkpoint(model, path)                      safetensors
    cosmos_models.flops.count(config, batch=, frames=, height=, width=, text_len=)   analytic FLOPs

The package is a few rooms, one per stage of the data's way through the system (each package's
docstring says what lives there and what it may import; tests/test_import_graph.py enforces it):
nets/ (networks, configs, variant registry, FLOPs, weights, VAE, text encoder) <- data/ <- sampling/
<- training/ <- distill/ <- perf/ <- cli/; cosmos_kernels below all, bench/ above all.
"""
from __future__ import annotations

import importlib

import torch

from cosmos_models.nets import registry
from cosmos_models.nets.config import DiTConfig, SparseWindow, configs, get_config

_LAZY = {
    "load_checkpoint": "cosmos_models.nets.checkpoint",
    "save_checkpoint": "cosmos_models.nets.checkpoint",
    "DiT": "cosmos_models.nets.dit",
    "TransferDiT": "cosmos_models.nets.transfer",
    "MultiviewDiT": "cosmos_models.nets.variants",
    "ActionDiT": "cosmos_models.nets.variants",
}

__all__ = ["DiTConfig", "SparseWindow", "configs", "get_config", "build", "model_class", "flops", *_LAZY]


def __getattr__(name: str):
    if name == "flops":  # cosmos_models.flops.count(...): the analytic FLOP counter (nets/flops.py)
        value = importlib.import_module("cosmos_models.nets.flops")
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cosmos_models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def model_class(config: DiTConfig | str):
    """The network class of a config (cosmos_models.nets.registry)."""
    return registry.model_class(get_config(config))


def build(name_or_config: DiTConfig | str, device=None, dtype: torch.dtype | None = None, *,
          cp_group=None) -> torch.nn.Module:
    """The network of a config, randomly initialized (official init) on `device` in `dtype`.

    device="meta" gives the structure without memory (parameter counts, sharding plans); on a real
    device the weights are allocated once, directly in `dtype`.
    """
    cfg = get_config(name_or_config)
    cls = model_class(cfg)
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"build: dtype must be a floating point dtype, got {dtype}")
    with torch.device("meta"):
        model = cls(cfg, cp_group=cp_group)
    if dtype is not None:
        model.to(dtype)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if target.type != "meta":
        model.to_empty(device=target)
        with torch.no_grad():
            for p in model.parameters():  # so a parameter that reset_parameters misses cannot go unnoticed
                p.fill_(float("nan"))
            model.reset_parameters()
        missed = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if missed:
            raise RuntimeError(f"build({cfg.name}): reset_parameters left these parameters uninitialized: {missed}")
    return model
