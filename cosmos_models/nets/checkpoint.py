"""Checkpoints: load official, diffusers and our own state dicts strictly; save ours in safetensors.

Key maps (documented so a user can check what is loaded):
- ours == the official MiniTrainDIT names (`blocks.0.self_attn.q_proj.weight`, ...). Official files
  prefix them with `net.` (EMA weights in `net_ema.` for training checkpoints) and may carry
  non-parameter entries that are dropped: `pos_embedder.{seq,dim_spatial_range,dim_temporal_range}`
  (RoPE tables we compute), `accum_*` counters, Transformer Engine `._extra_state`.
- diffusers (`CosmosTransformer3DModel`, from its scripts/convert_cosmos_to_diffusers.py for 2.x):
  `time_embed.t_embedder` <-> `t_embedder.1`, `time_embed.norm` <-> `t_embedding_norm`,
  `transformer_blocks` <-> `blocks`, `norm{1,2,3}.linear_{1,2}` <-> `adaln_modulation_{self_attn,
  cross_attn,mlp}.{1,2}`, `attn1`/`attn2` <-> `self_attn`/`cross_attn`, `to_q/to_k/to_v/to_out.0`
  <-> `q_proj/k_proj/v_proj/output_proj`, `norm_q/norm_k` <-> `q_norm/k_norm`, `ff.net.0.proj`/
  `ff.net.2` <-> `mlp.layer1`/`mlp.layer2`, `patch_embed.proj` <-> `x_embedder.proj.1`,
  `norm_out.linear_{1,2}` <-> `final_layer.adaln_modulation.{1,2}`, `proj_out` <-> `final_layer.linear`.
  Transfer2.5's `CosmosControlNetModel` weights are taken with a `controlnet.` prefix:
  `controlnet.patch_embed.proj` <-> `control_embedder.proj.1`, `controlnet.control_blocks.N.*` <->
  `control_blocks.N.*` (block names as above); its copies of the base embedders (`patch_embed_base`,
  `time_embed`, `crossattn_proj`, `img_context_proj`) are dropped. A diffusers folder
  (`save_pretrained` output, with an optional `controlnet/` subfolder) loads directly.

Files: every format of cosmos_models.nets.weight_files (safetensors, torch pickles through
weights_only=True, DCP folders, diffusers folders); nothing but tensors and plain data is unpickled.
`detect_config(state_dict)` names the registered config whose parameter names and shapes a file has.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from cosmos_models.nets.weight_files import WeightFileError, read_weights, tensors_of

class CheckpointMismatch(WeightFileError):
    """A readable checkpoint whose names or shapes do not fit the model (listed in the message)."""


# diffusers name -> ours, applied as substring replacements in this order
_DIFFUSERS_TO_OURS = (
    ("time_embed.t_embedder.", "t_embedder.1."),
    ("time_embed.norm.", "t_embedding_norm."),
    ("transformer_blocks.", "blocks."),
    (".norm1.linear_1.", ".adaln_modulation_self_attn.1."),
    (".norm1.linear_2.", ".adaln_modulation_self_attn.2."),
    (".norm2.linear_1.", ".adaln_modulation_cross_attn.1."),
    (".norm2.linear_2.", ".adaln_modulation_cross_attn.2."),
    (".norm3.linear_1.", ".adaln_modulation_mlp.1."),
    (".norm3.linear_2.", ".adaln_modulation_mlp.2."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q_proj."),
    (".to_k.", ".k_proj."),
    (".to_v.", ".v_proj."),
    (".to_out.0.", ".output_proj."),
    (".norm_q.", ".q_norm."),
    (".norm_k.", ".k_norm."),
    (".ff.net.0.proj.", ".mlp.layer1."),
    (".ff.net.2.", ".mlp.layer2."),
    ("patch_embed.proj.", "x_embedder.proj.1."),
    ("norm_out.linear_1.", "final_layer.adaln_modulation.1."),
    ("norm_out.linear_2.", "final_layer.adaln_modulation.2."),
    ("proj_out.", "final_layer.linear."),
)
_DIFFUSERS_MARKERS = ("transformer_blocks.", "time_embed.", "patch_embed.", "norm_out.", "proj_out.")
_CONTROLNET = "controlnet."
_CONTROLNET_COPIES = ("patch_embed_base.", "time_embed.", "crossattn_proj.", "img_context_proj.",
                      "learnable_pos_embed.")
# official entries that are not parameters of the network
_OFFICIAL_DROPPED = ("pos_embedder.", "accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration",
                     "accum_train_in_hours", "_extra_state")


def _replace_all(key: str, pairs) -> str:
    key = "." + key  # leading dot so patterns anchored on "." also match the first component
    for old, new in pairs:
        key = key.replace(old if old.startswith(".") else "." + old, new if new.startswith(".") else "." + new)
    return key[1:]


def from_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers CosmosTransformer3DModel (+ `controlnet.`-prefixed CosmosControlNetModel) names -> ours."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_CONTROLNET):
            sub = key[len(_CONTROLNET):]
            if sub.startswith(_CONTROLNET_COPIES):
                continue
            if sub.startswith("patch_embed.proj."):
                out["control_embedder.proj.1." + sub[len("patch_embed.proj."):]] = value
                continue
            out[_replace_all(sub, _DIFFUSERS_TO_OURS)] = value
        else:
            out[_replace_all(key, _DIFFUSERS_TO_OURS)] = value
    return out


def to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> diffusers names (control branch under `controlnet.`); the inverse of from_diffusers
    (the controlnet's copies of the base embedders are not produced)."""
    inverse = tuple((new, old) for old, new in reversed(_DIFFUSERS_TO_OURS))
    out = {}
    for key, value in state_dict.items():
        if key.startswith("control_embedder.proj.1."):
            out[_CONTROLNET + "patch_embed.proj." + key[len("control_embedder.proj.1."):]] = value
        elif key.startswith("control_blocks."):
            out[_CONTROLNET + _replace_all(key, inverse)] = value
        else:
            out[_replace_all(key, inverse)] = value
    return out


def to_official(state_dict: Mapping[str, Tensor], prefix: str = "net.") -> dict[str, Tensor]:
    """Ours -> the official checkpoint layout (same names under `net.`)."""
    return {prefix + k: v for k, v in state_dict.items()}


def from_official(state_dict: Mapping[str, Tensor], prefer_ema: bool = False) -> dict[str, Tensor]:
    """Official names (optionally under `net.` / `net_ema.`) -> ours; non-parameter entries dropped."""
    prefixes = ("net_ema.", "net.") if prefer_ema else ("net.", "net_ema.")
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in state_dict.items() if not _dropped(k)}


def _dropped(key: str) -> bool:
    return key.startswith(_OFFICIAL_DROPPED[0]) or any(m in key for m in _OFFICIAL_DROPPED[1:])


def is_diffusers(state_dict: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(_DIFFUSERS_MARKERS) or k.startswith(_CONTROLNET) for k in state_dict)


def to_ours(state_dict: Mapping[str, Tensor], prefer_ema: bool = False) -> dict[str, Tensor]:
    """Any supported layout (ours, official, diffusers) -> ours."""
    state_dict = _unwrap(state_dict)
    if is_diffusers(state_dict):
        return from_diffusers(state_dict)
    return from_official(state_dict, prefer_ema=prefer_ema)


def _unwrap(obj) -> dict[str, Tensor]:
    return tensors_of(obj, [], "the state dict")


def read_state_dict(path: str | os.PathLike, *, prefer_ema: bool = False, notes: list[str] | None = None
                    ) -> dict[str, Tensor]:
    """A state dict from any file or folder users have (cosmos_models.nets.weight_files); what was
    dropped or chosen goes to `notes`."""
    sd, found = read_weights(path, prefer_ema=prefer_ema)
    if notes is not None:
        notes.extend(found)
    return sd


def load_checkpoint(model: nn.Module, path_or_state_dict, *, prefer_ema: bool = False,
                    notes: list[str] | None = None) -> nn.Module:
    """Load official, diffusers or our names into `model` strictly (missing/unexpected/mis-shaped
    entries raise a CheckpointMismatch listing them). Works on meta-device models (the tensors are
    assigned). `notes` collects what the reader dropped or chose (non-tensor entries, DCP entries)."""
    sd = matched_state_dict(model, path_or_state_dict, prefer_ema=prefer_ema, notes=notes)
    expected = model.state_dict()
    on_meta = any(t.is_meta for t in expected.values())
    if on_meta:
        sd = {k: v.to(expected[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=on_meta)
    return model


def matched_state_dict(model: nn.Module, path_or_state_dict, *, prefer_ema: bool = False,
                       notes: list[str] | None = None) -> dict[str, Tensor]:
    """The checkpoint (a path or a state dict in any supported layout) in our names, checked strictly
    against `model`'s names and (global) shapes: a CheckpointMismatch lists what is missing,
    unexpected or mis-shaped. `model` may be on the meta device; nothing is loaded into it."""
    raw = path_or_state_dict if isinstance(path_or_state_dict, Mapping) else read_state_dict(
        path_or_state_dict, prefer_ema=prefer_ema, notes=notes)
    sd = to_ours(raw, prefer_ema=prefer_ema)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        source = "" if isinstance(path_or_state_dict, Mapping) else f"{path_or_state_dict}: "
        raise CheckpointMismatch(f"{source}the checkpoint does not match the model " +
                         f"({type(model).__name__}, config {getattr(getattr(model, 'config', None), 'name', '?')}):"
                         + _listing("missing", missing) + _listing("unexpected", unexpected)
                         + _listing("shape mismatch", shapes))
    return sd


def _listing(what: str, keys: list[str], limit: int = 20) -> str:
    if not keys:
        return ""
    shown = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n  {what} ({len(keys)}):\n    {shown}{more}"


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Our names, safetensors (config name in the metadata). FSDP2 (DTensor) weights are gathered."""
    from safetensors.torch import save_file

    sd = {}
    for k, v in model.state_dict().items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        sd[k] = v.detach().to("cpu").contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=_file_metadata(getattr(model, "config", None)))


def _file_metadata(config) -> dict[str, str]:
    """What our safetensors files record: the format, and the config name when known."""
    return {"format": "cosmos_models", **({"config": config.name} if config is not None else {})}


def meta_network(config) -> torch.nn.Module:
    """`config`'s network on the meta device: its parameter names and shapes, no memory."""
    from cosmos_models.nets.registry import model_class

    with torch.device("meta"):
        return model_class(config)(config)


def config_from_checkpoint(path: str) -> str | None:
    """The config name `save_checkpoint` records in a safetensors file's metadata, if any."""
    if not (os.path.isfile(path) and path.endswith(".safetensors")):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("config")


def write_weights(config, weights: Mapping[str, Tensor] | None, path: str | os.PathLike) -> None:
    """A full state dict of `config`'s network as a safetensors file, written atomically (a temporary
    file renamed into place). `weights` None (a rank that holds no gathered copy) writes nothing."""
    if weights is None:
        return
    holder = meta_network(config)
    holder.load_state_dict(weights, assign=True, strict=True)
    tmp = f"{os.fspath(path)}.tmp.{os.getpid()}"
    save_checkpoint(holder, tmp)
    os.replace(tmp, path)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_weights_streamed(config, tensors, path: str | os.PathLike, *, write: bool = True) -> None:
    """`write_weights` one tensor at a time: `tensors` yields (name, tensor) in any order, each
    gathered when asked for (e.g. a sharded EMA's full_tensor(), a collective every rank runs), and
    each is written and dropped before the next, so no process ever holds the whole model. The
    header comes first from the network's own parameter shapes (a meta build of `config`); `write`
    False (ranks other than 0) only runs the iteration. Safetensors' own writer needs every tensor
    at once, hence this writer of its format: an 8-byte little-endian header length, the JSON
    header padded to 8 bytes, then the raw little-endian data at the header's offsets."""
    import json
    import struct

    expected = meta_network(config).state_dict()
    header, offset, order = {}, 0, []
    for name, v in expected.items():
        nbytes = v.numel() * v.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[v.dtype], "shape": list(v.shape),
                        "data_offsets": [offset, offset + nbytes]}
        order.append(name)
        offset += nbytes
    header["__metadata__"] = _file_metadata(config)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = f"{os.fspath(path)}.tmp.{os.getpid()}"
    f = open(tmp, "wb") if write else None
    try:
        if f is not None:
            f.write(struct.pack("<Q", len(blob)) + blob)
        seen = set()
        for name, tensor in tensors:
            if name not in expected:
                raise ValueError(f"write_weights_streamed: {name!r} is not a parameter of {config.name}")
            want = expected[name]
            if tuple(tensor.shape) != tuple(want.shape):
                raise ValueError(f"write_weights_streamed: {name} has shape {tuple(tensor.shape)}, "
                                 f"{config.name} expects {tuple(want.shape)}")
            if f is not None:
                start = header[name]["data_offsets"][0]
                f.seek(8 + len(blob) + start)
                data = tensor.detach().to("cpu", want.dtype).contiguous()
                f.write(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            seen.add(name)
        missing = sorted(set(order) - seen)
        if missing:
            raise ValueError(f"write_weights_streamed: no tensor for {missing[:5]}")
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            f = None
            os.replace(tmp, path)
    finally:
        if f is not None:
            f.close()
        if write and os.path.exists(tmp):
            os.unlink(tmp)


def detect_config(state_dict: Mapping[str, Tensor]) -> str | None:
    """The registered config whose parameter names and shapes `state_dict` (any supported naming)
    has exactly, or None. Each candidate is built on the meta device (no memory)."""
    from cosmos_models.nets.config import configs, get_config

    sd = to_ours(state_dict)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    width = shapes.get("x_embedder.proj.1.weight")
    for name in configs():
        cfg = get_config(name)
        if width is not None and width[0] != cfg.model_channels:
            continue  # cheap filter before building
        model = meta_network(cfg)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            return name
    return None
