"""LoRA post-training (`cosmos train --lora RANK[:ALPHA]`), with peft's adapters on our DiT's own modules.

    cosmos train --config predict2.5-2b --init base.pt --data DATASET --lora 16 --out runs/lora
    cosmos sample --checkpoint base.pt --lora runs/lora/lora.safetensors:0.8 ...     # unmerged, scaled
    cosmos sample --checkpoint runs/lora/ema.safetensors ...                          # merged at export
    cosmos export --checkpoint base.pt --lora runs/lora/lora.safetensors --out merged.safetensors

peft (`inject_adapter_in_model`) wraps the chosen nn.Linear layers in place, so our blocks, fused
kernels, SAC and FSDP2 see the same modules with a low-rank update beside them (W x + (alpha/r) B A x;
B starts at zero, so step 0 is the base model). The default targets are the attention (self and cross:
q, k, v, output) and MLP projections of every block, as the official LoRA post-training adapts. Every
other parameter is frozen: only the adapters are in the optimizer, the EMA and the checkpoints (the base
weights come from --init each time, which run.json records); at the end the EMA adapters are written on
their own (<out>/lora.safetensors, with rank, alpha and targets as metadata) and merged into the base
(<out>/ema.safetensors, plain names, loadable anywhere).

Adapter init (`init_adapters`): A kaiming-uniform (a = sqrt(5), peft's default), B zero, drawn per
layer from a generator seeded by (seed, layer index), on the CPU, whole: the same values for any
process layout and device, and computable after the model is sharded (each rank copies its piece),
so a LoRA run never materializes the full base model on a GPU (the trainer builds it on meta).
"""
from __future__ import annotations

import json
import math
import re

import torch
from torch import Tensor, nn

from cosmos_models._deps import require

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "output_proj", "layer1", "layer2")
ADAPTER = "default"  # peft's adapter name
_KINDS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "output_proj": "attn", "layer1": "mlp",
          "layer2": "mlp"}


def parse_lora(spec: str) -> tuple[int, float]:
    """'16' -> (16, 16.0); '16:32' -> (16, 32.0)."""
    rank, _, alpha = str(spec).partition(":")
    try:
        r = int(rank)
        a = float(alpha) if alpha else float(r)
    except ValueError:
        raise ValueError(f"--lora {spec!r}: expected RANK or RANK:ALPHA (e.g. 16 or 16:32)") from None
    if r < 1 or not a > 0:
        raise ValueError(f"--lora {spec!r}: rank must be >= 1 and alpha > 0")
    return r, a


def parse_targets(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_TARGETS
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in _KINDS]
    if unknown:
        raise ValueError(f"--lora-targets: {unknown} are not projections of a block; choose from {sorted(_KINDS)}")
    return targets


def _pattern(targets: tuple[str, ...]) -> str:
    # the blocks' projections only (not the embedders, AdaLN modulation or the final layer)
    attn = [t for t in targets if _KINDS[t] == "attn"]
    mlp = [t for t in targets if _KINDS[t] == "mlp"]
    parts = []
    if attn:
        parts.append(rf"blocks\.\d+\.(self_attn|cross_attn)\.({'|'.join(attn)})")
    if mlp:
        parts.append(rf"blocks\.\d+\.mlp\.({'|'.join(mlp)})")
    return rf"^({'|'.join(parts)})$"


def add_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Wrap the target projections with LoRA adapters and freeze everything else; returns how many
    layers were adapted."""
    peft = require("peft", "LoRA (--lora)")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                             target_modules=_pattern(targets))
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name))
    adapted = sum(hasattr(module, "lora_A") for module in model.modules())
    if adapted == 0:
        raise ValueError(f"--lora: no layer matched the targets {targets}")
    return adapted


def is_adapter_key(name: str) -> bool:
    return ".lora_" in name


def base_name(name: str) -> str:
    """A wrapped layer's base parameter under its plain name (checkpoints hold plain names)."""
    return name.replace(".base_layer.", ".")


def init_adapters(model: nn.Module, seed: int) -> int:
    """Set every adapter of `model` (plain, or sharded by FSDP2 and allocated): lora_A
    kaiming-uniform from a per-layer CPU generator (seed, index of the layer), lora_B zero (see the
    module docstring). Returns the number of adapted layers."""
    from cosmos_models.training.sharded_init import dtensor_shard

    layers = [m for m in model.modules() if hasattr(m, "lora_A") and ADAPTER in m.lora_A]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            full_a = nn.init.kaiming_uniform_(torch.empty(a.shape), a=math.sqrt(5), generator=gen)
            for target, full in ((a, full_a), (b, torch.zeros(b.shape))):
                local, part = dtensor_shard(target, full)
                local.copy_(part)
    return len(layers)


def merged_state_dict(state: dict[str, Tensor], rank: int, alpha: float, scale: float = 1.0) -> dict[str, Tensor]:
    """A peft-wrapped model's full state dict -> plain names with W + scale * (alpha / rank) * B @ A."""
    out, scaling = {}, scale * alpha / rank
    for name, value in state.items():
        if is_adapter_key(name):
            continue
        if ".base_layer." in name:
            stem = name.split(".base_layer.")[0]
            plain = name.replace(".base_layer.", ".")
            a = state.get(f"{stem}.lora_A.{ADAPTER}.weight")
            b = state.get(f"{stem}.lora_B.{ADAPTER}.weight")
            if name.endswith(".weight") and a is not None and b is not None:
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
            out[plain] = value
        else:
            out[name] = value
    return out


def save_adapter(path: str, adapters: dict[str, Tensor], config: dict, model_config: str) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in adapters.items() if is_adapter_key(k)}
    meta = {"format": "cosmos-lora", "rank": str(config["rank"]), "alpha": str(config["alpha"]),
            "targets": json.dumps(config["targets"]), "config": model_config}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    import os

    os.replace(tmp, path)


def split_spec(spec: str) -> tuple[str, float]:
    """FILE[:SCALE] -> (FILE, SCALE); the scale defaults to 1."""
    found = re.match(r"^(.*\.safetensors):([0-9.eE+-]+)$", spec)
    return (found.group(1), float(found.group(2))) if found else (spec, 1.0)


def read_adapter(spec: str) -> tuple[dict[str, Tensor], dict, float]:
    """FILE[:SCALE] -> (adapter tensors, {"rank", "alpha", "targets", "config"}, scale)."""
    from safetensors import safe_open

    path, scale = split_spec(spec)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise ValueError(f"--lora {path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != "cosmos-lora":
        raise ValueError(f"--lora {path}: not a LoRA adapter written by cosmos train --lora (no cosmos-lora metadata)")
    config = {"rank": int(meta["rank"]), "alpha": float(meta["alpha"]), "targets": json.loads(meta["targets"]),
              "config": meta.get("config")}
    return tensors, config, scale


def apply_adapter(model: nn.Module, spec: str) -> dict:
    """--lora FILE[:SCALE] on a loaded model, unmerged (the adapters' scale times SCALE)."""
    tensors, config, scale = read_adapter(spec)
    add_lora(model, config["rank"], config["alpha"] * scale, tuple(config["targets"]))
    missing = [k for k in model.state_dict() if is_adapter_key(k) and k not in tensors]
    unexpected = [k for k in tensors if k not in model.state_dict()]
    if missing or unexpected:
        raise ValueError(f"--lora {spec}: does not fit this model ({len(missing)} adapter weights missing, "
                         f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[:2]})")
    with torch.no_grad():
        model.load_state_dict(tensors, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return {**config, "scale": scale}
