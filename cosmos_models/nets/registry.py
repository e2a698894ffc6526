"""The model variants, registered once.

A variant is its network class (a DiT subclass) and one entry here. Everything the rest of the
library needs to know about a variant it asks the class, through these class attributes and hooks
(defaults in cosmos_models.nets.dit.DiT):

    variant_inputs           keyword inputs of forward() only this variant takes (checked)
    sampler_modes            the Sampler modes it runs (cosmos_models.sampling.sampler)
    example_inputs(...)      random variant inputs of the right shapes (benchmarks, the MFU
                             measurement's batches, tests)
    flop_views(cfg, grid)    prompts per sample (multiview: one per view)
    embed_input_grad         whether the patch embedding's input needs a gradient (FLOP count)
    count_variant_flops(...) the FLOPs of its own layers (cosmos_models.nets.flops)
    checkpoint names         official names are the module names; diffusers names are mapped in
                             cosmos_models.nets.checkpoint

Configs name their variant (`DiTConfig.variant`); `cosmos_models.build` builds the class found here.
Adding a variant: write its class, add it here, add a config (nets/config.py) and its tiny twin;
tests/test_registry.py then builds it, counts its FLOPs against FlopCounterMode, trains one step
and samples one step (CONTRIBUTING.md).

The classes are named by "module:Class" and imported on first use (this module imports nothing of
the networks, so nets/config.py can check variant names against it).
"""
from __future__ import annotations

import importlib

VARIANTS: dict[str, str] = {
    "predict": "cosmos_models.nets.dit:DiT",
    "transfer": "cosmos_models.nets.transfer:TransferDiT",
    "multiview": "cosmos_models.nets.variants:MultiviewDiT",
    "action": "cosmos_models.nets.variants:ActionDiT",
}


def variant_class(variant: str):
    """The network class of a variant name."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; registered: {sorted(VARIANTS)}")
    module, name = VARIANTS[variant].split(":")
    return getattr(importlib.import_module(module), name)


def model_class(config):
    """The network class of a config (a DiTConfig)."""
    return variant_class(config.variant)
