"""Reading the weight files users have, safely, with a one-line reason when it cannot be done.

    read_weights(path, prefer_ema=False) -> (state dict of tensors, notes)

Formats:
- `.safetensors`, or a folder of them (diffusers `save_pretrained`, an optional `controlnet/` subfolder);
- torch pickles (`.pt`, `.pth`, `.bin`, anything else) through `torch.load(weights_only=True)`: only
  tensors and plain data are rebuilt, never code. Transformer Engine's `_extra_state` entries of the
  released Cosmos files (byte buffers: `io.BytesIO`, allowed as data) and other non-tensor entries are
  dropped and listed in the notes. A pickle that asks for anything else (a class, a function) is refused,
  naming what it asked for;
- `torch.distributed.checkpoint` folders (a `.metadata` file): ours (`step_*`, entries "ema" preferred
  with prefer_ema, else "model") and the official training checkpoints (entries "net_ema." / "net."):
  only the chosen entry's tensors are read, into templates made from the folder's metadata.

Every failure is a `WeightFileError` (a ValueError) whose message says which file, what is wrong
(missing, empty, corrupt header, truncated, code in the pickle refused, not a weight file) and what to do.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

CONTROLNET = "controlnet."


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message is one line saying why and what to do."""


class MissingWeightFile(WeightFileError, FileNotFoundError):
    """The path given holds nothing."""


def read_weights(path: str | os.PathLike, *, prefer_ema: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """(state dict, notes) of any supported file or folder (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise MissingWeightFile(f"{p}: no such file or folder")
    notes: list[str] = []
    if p.is_dir():
        if (p / ".metadata").is_file():
            return read_dcp(p, prefer_ema=prefer_ema, notes=notes), notes
        if (p / "model" / ".metadata").is_file():  # an official iter_XXXXXXXXX folder
            return read_dcp(p / "model", prefer_ema=prefer_ema, notes=notes), notes
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise WeightFileError(f"{p}: a folder with no *.safetensors files and no torch.distributed.checkpoint "
                                  "'.metadata'; give a weight file, a diffusers folder, or a checkpoint folder")
        sd = {}
        for f in files:
            sd.update(read_safetensors(f))
        if (p / "controlnet").is_dir():
            sub, _ = read_weights(p / "controlnet")
            sd.update({CONTROLNET + k: v for k, v in sub.items()})
        return sd, notes
    if p.stat().st_size == 0:
        raise WeightFileError(f"{p}: the file is empty (0 bytes); the download or copy did not finish")
    if p.suffix == ".safetensors":
        return read_safetensors(p), notes
    return read_pickle(p, notes), notes


# ----------------------------------------------------------------------------- safetensors
def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    _check_safetensors_header(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors reports damage as its own error types
        raise WeightFileError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                              "re-download or re-export it") from None


def _check_safetensors_header(path: Path) -> None:
    """The 8-byte header length, the JSON header, and the file size the header promises."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError(f"{path}: truncated ({size} bytes, shorter than a safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise WeightFileError(f"{path}: corrupt safetensors header (it claims {n} header bytes in a {size}-byte "
                                  "file); re-download or re-export it")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightFileError(f"{path}: corrupt safetensors header (not JSON); re-download or re-export it") \
                from None
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + (max(ends) if ends else 0)
    if size < expected:
        raise WeightFileError(f"{path}: truncated ({size} of the {expected} bytes its header describes); the download "
                              "or copy did not finish")


# ----------------------------------------------------------------------------- torch pickles
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# Transformer Engine's _extra_state buffers (a BytesIO rebuilt from its bytes): data, no code
_ALLOWED_DATA = (io.BytesIO, bytes)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # a torch zip archive, or a legacy pickle


def read_pickle(path: Path, notes: list[str]) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise WeightFileError(f"{path}: not a torch file (nor safetensors: give .safetensors files that name); it "
                              f"starts with {head!r}")
    try:
        with torch.serialization.safe_globals(list(_ALLOWED_DATA)):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - classified below into one line
        text = str(exc)
        found = _GLOBAL.search(text)
        if found:
            raise WeightFileError(f"{path}: refused: the pickle asks to run {found.group(1)} on loading, and only "
                                  "tensors and plain data are loaded (weights_only=True); if you trust the file, "
                                  "convert it to safetensors where it was made") from None
        if "zip archive" in text or "central directory" in text or isinstance(exc, EOFError):
            raise WeightFileError(f"{path}: truncated or not a torch file ({text.splitlines()[0][:120]}); the "
                                  "download or copy did not finish, or the file is of another kind") from None
        raise WeightFileError(f"{path}: not a readable torch weight file ({type(exc).__name__}: "
                              f"{text.splitlines()[0][:160] if text else ''})") from None
    return tensors_of(obj, notes, str(path))


def tensors_of(obj, notes: list[str], source: str) -> dict[str, Tensor]:
    """The tensors of a loaded object: training checkpoints nest them ({"model": ...}, {"state_dict":
    ...}, {"module": ...}); non-tensor entries are dropped, and said so in `notes`."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{source}: holds a {type(obj).__name__}, not a mapping of names to tensors")
    dropped = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
    if dropped:
        shown = ", ".join(dropped[:4]) + (f", ... ({len(dropped)} in all)" if len(dropped) > 4 else "")
        notes.append(f"dropped {len(dropped)} non-tensor entries (Transformer Engine _extra_state and the like): {shown}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


# ----------------------------------------------------------------------------- DCP folders
def read_dcp(path: Path, *, prefer_ema: bool, notes: list[str]) -> dict[str, Tensor]:
    """The weights of a torch.distributed.checkpoint folder: our "ema"/"model" entries or the official
    "net_ema."/"net." ones, read into CPU templates of the sizes the metadata records."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    try:
        meta = reader.read_metadata()
    except Exception as exc:  # noqa: BLE001
        raise WeightFileError(f"{path}: unreadable torch.distributed.checkpoint metadata ({type(exc).__name__}: "
                              f"{exc}); the checkpoint was not written to the end") from None
    tensors = {k: v for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    order = ("ema.", "model.", "net_ema.", "net.") if prefer_ema else ("model.", "ema.", "net.", "net_ema.")
    prefix = next((p for p in order if any(k.startswith(p) for k in tensors)), "")
    chosen = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    if not chosen:
        raise WeightFileError(f"{path}: a torch.distributed.checkpoint folder with no tensors")
    template = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in chosen.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process"
        try:
            dcp.load(template, storage_reader=reader)
        except Exception as exc:  # noqa: BLE001
            raise WeightFileError(f"{path}: reading the checkpoint's shards failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160]}); a shard is missing or truncated") from None
    if prefix:
        notes.append(f"read the {prefix.rstrip('.')!r} entries of the checkpoint folder")
    return {k[len(prefix):]: v for k, v in template.items()}
