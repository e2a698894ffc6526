"""The sidecar JSON of a sampled video: every setting that made it, so it can be made again.

`<out>.json` beside `<out>.mp4` holds the mode, the prompt texts (or embedding files), seed, solver,
σ grid, shift, steps, guidance, conditioning-frame timestep, frames, size, fps, the preset, the
model and VAE files with their SHA-256 (a folder: over its files' names and contents), the inputs
with theirs, the text encoder, the device, dtype and kernel backend, the package versions and the
command line. `reproduce_command(record)` turns it back into a `cosmos sample` command.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys

_HASHES: dict[str, str] = {}  # path -> digest, within a process (a batch hashes the model once)


def file_digest(path: str | None) -> str | None:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted); None for None."""
    if path is None or not os.path.exists(path):
        return None
    path = os.path.abspath(path)
    st = os.stat(path)
    key = f"{path}\0{st.st_mtime_ns}\0{st.st_size}"
    if key in _HASHES:
        return _HASHES[key]
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    for file in files:
        if file != path:
            h.update(os.path.relpath(file, path).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "cosmos_kernels", "transformers", "diffusers", "av"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        out[name] = getattr(module, "__version__", "unknown")
    try:
        from importlib.metadata import version
        out["cosmos-kernels"] = version("cosmos-kernels")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source checkout)
        pass
    return out


def sidecar_path(video_path: str) -> str:
    return os.path.splitext(video_path)[0] + ".json"


def write_record(video_path: str, record: dict) -> str:
    """Write `record` (+ versions and the command line) beside the video, atomically; returns its path."""
    record = {**record, "versions": versions(), "command": shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}
    target = sidecar_path(video_path)
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, target)
    return target


# record key -> `cosmos sample` flag (values written as given)
_FLAGS = {"mode": "--mode", "config": "--config", "checkpoint": "--checkpoint", "student": "--student",
          "preset": "--preset", "lora": "--lora", "vae": "--vae", "prompt": "--prompt", "prompt_embedding": "--prompt-embedding",
          "negative_prompt": "--negative-prompt", "negative_prompt_embedding": "--negative-prompt-embedding",
          "text_encoder": "--text-encoder", "actions": "--actions", "num_views": "--num-views", "steps": "--steps",
          "guidance": "--guidance", "frames": "--frames", "height": "--height", "width": "--width", "seed": "--seed",
          "solver": "--solver", "grid": "--grid", "shift": "--shift", "condition_frames": "--condition-frames",
          "continuation_frames": "--continuation-frames", "chunk_conditioning": "--chunk-conditioning",
          "fps": "--fps", "dtype": "--dtype", "kernel_backend": "--kernel-backend", "edge_preset": "--edge-preset",
          "blur_preset": "--blur-preset"}


def reproduce_command(record: dict, out: str) -> list[str]:
    """The `cosmos sample` arguments that make the recorded video again (to `out`)."""
    from cosmos_models.sampling.presets import PRESETS

    cmd = ["sample"]
    for key, flag in _FLAGS.items():
        value = record.get(key)
        if key == "preset" and value not in PRESETS:
            continue  # a config's default preset has no name to give: every setting it made is given instead
        if value is not None and value is not False:
            cmd += [flag, str(value)]
    if record.get("condition_sigma", "") is None:
        cmd += ["--condition-sigma", "-1"]
    elif record.get("condition_sigma") is not None:
        cmd += ["--condition-sigma", str(record["condition_sigma"])]
    for key, flag in (("image", "--image"), ("video", "--video")):
        if record.get(key):
            cmd += [flag, *record[key]]
    if record.get("control"):
        cmd += ["--control", *(f"{c['modality']}" + (f"={c['checkpoint']}" if c.get("checkpoint") else "")
                               + f":{c['weight']}" + (f":{c['mask']}" if c.get("mask") else "")
                               for c in record["control"])]
    if record.get("control_video"):
        cmd += ["--control-video", *(f"{k}={v}" for k, v in record["control_video"].items())]
    for kind, folder in (record.get("control_models") or {}).items():
        cmd += [f"--{kind}-model", folder]
    if record.get("resize"):
        cmd.append("--resize")
    return cmd + ["--no-progress", "--out", out]
