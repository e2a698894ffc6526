"""`cosmos export`: a checkpoint with a LoRA adapter merged in, as one safetensors file `cosmos sample` loads.

    cosmos export --checkpoint base/post-trained/81edfebe-..._ema_bf16.pt --lora runs/lora/lora.safetensors \
        --out merged.safetensors
    cosmos export --checkpoint base.safetensors --lora runs/lora/lora.safetensors:0.5 --out half.safetensors

--checkpoint takes every weight format `cosmos sample` does (EMA weights preferred); --lora FILE[:SCALE]
is `cosmos train --lora`'s lora.safetensors, its update W + SCALE * (alpha / rank) * B A folded into W.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    a = parser.add_argument
    a("--checkpoint", required=True, help="the base weights")
    a("--lora", required=True, metavar="FILE[:SCALE]", help="the adapter to merge (cosmos train --lora)")
    a("--config", default=None, help="model config (default: recorded in the checkpoint or found by its shapes)")
    a("--out", required=True, help="the merged .safetensors")


def run(args) -> int:
    import cosmos_models as cm
    from cosmos_models.cli.sample import resolve_checkpoint
    from cosmos_models.nets.checkpoint import config_from_checkpoint, detect_config, read_state_dict, write_weights
    from cosmos_models.training import lora

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out must be a .safetensors path, got {args.out!r}")
    checkpoint = resolve_checkpoint(args.checkpoint)
    if checkpoint is None or not os.path.exists(checkpoint):
        raise FileNotFoundError(f"--checkpoint: no file at {args.checkpoint!r}")
    weights = read_state_dict(checkpoint, prefer_ema=True, notes=[])
    name = args.config or config_from_checkpoint(checkpoint) or detect_config(weights)
    if name is None:
        raise ValueError(f"{checkpoint}: its parameter names and shapes match no known config; pass --config")
    model = cm.build(name, device="meta")
    cm.load_checkpoint(model, weights, prefer_ema=True)
    model = model.to(torch.float32)
    applied = lora.apply_adapter(model, args.lora)
    if applied["config"] not in (None, model.config.name):
        print(f"cosmos export: note: the adapter was trained on {applied['config']}, the base is {model.config.name}",
              file=sys.stderr)
    merged = lora.merged_state_dict(model.state_dict(), applied["rank"], applied["alpha"], applied["scale"])
    write_weights(model.config, merged, args.out)
    print(f"cosmos export: wrote {args.out} ({model.config.name} with {args.lora} merged: rank {applied['rank']}, "
          f"alpha {applied['alpha']:g}, scale {applied['scale']:g})", file=sys.stderr)
    return 0
