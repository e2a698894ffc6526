"""Batch specs for `cosmos sample --spec`: the official inference JSON, one video per entry.

Accepted files (relative paths in them are relative to the spec file's folder, as the official assets are):

- Predict2.5 (`cosmos_predict2/config.py` InferenceArguments): an object with "inference_type"
  (text2world / image2world / video2world) and "samples": {name: {"prompt" | "prompt_path",
  "input_path"}}, plus batch-wide "negative_prompt", "seed", "guidance", "resolution" ("H,W" or
  "none"), "num_output_frames";
- Transfer2.5 (`cosmos_transfer2/config.py`) and per-sample forms: an object, a list of objects or a
  .jsonl file of one object per line, each with "name", "prompt" | "prompt_path", "negative_prompt",
  "seed", "guidance", "num_steps", "input_path" (Predict) or "video_path" (Transfer), "max_frames",
  "resolution" ("720", "480", "H,W"), "num_conditional_frames" (latent frames a chunk takes from the
  previous one), and control blocks "edge" / "vis" / "depth" / "seg" with "control_path",
  "control_weight", "mask_path", "preset_edge_threshold", "preset_blur_strength";
- multiview (`cosmos_predict2/multiview_config.py`): "prompt" | "prompt_path", "n_views",
  "num_input_frames", "fps", "num_steps", and a block per camera ("front_wide", "cross_right",
  "rear_right", "rear", "rear_left", "cross_left", "front_tele", the official camera indices 0 … 6)
  with "video_path";
- our own names for what the official JSON has no field for: "mode", "image", "video", "actions",
  "frames", "height", "width", "steps", "prompt_embedding", "negative_prompt_embedding".

An entry becomes a `SampleSpec`: its name, where it came from (for messages), and the `cosmos sample`
settings it sets (CLI flag names; what it does not set comes from the command line). Official fields we
do not implement (SAM2 mask prompts, SigLIP image context, guided generation, ...) are an error naming
the field, never silently dropped. A bad entry is a `SpecError` in the list, so the rest still runs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from cosmos_models.data.clips import RESOLUTIONS
from cosmos_models.data.video_io import IMAGE_EXTENSIONS

# the official multiview camera names and their view indices (cosmos_predict2/multiview_config.py VIEW_INDEX_DICT)
CAMERAS = {"front_wide": 0, "cross_right": 1, "rear_right": 2, "rear": 3, "rear_left": 4, "cross_left": 5,
           "front_tele": 6}
CONTROL_BLOCKS = ("edge", "vis", "depth", "seg")
_CONTROL_FIELDS = {"control_path", "control_weight", "mask_path", "preset_edge_threshold", "preset_blur_strength"}
# official fields we accept only at the value that means "off"
_OFF_ONLY = {"show_control_condition": False, "show_input": False, "stack_mode": "time", "control_weight": 1.0,
             "keep_input_resolution": False}  # our output has the model's (or the given) resolution
_UNSUPPORTED = {
    "mask_prompt": "masks from a prompt need SAM2 (give mask_path)",
    "control_prompt": "on-the-fly segmentation needs GroundingDINO + SAM2 (give the seg control_path)",
    "image_context_path": "the SigLIP image context of newer Transfer checkpoints is not implemented",
    "context_frame_index": "the SigLIP image context of newer Transfer checkpoints is not implemented",
    "guided_generation_mask": "guided generation is not implemented",
    "guided_generation_step_threshold": "guided generation is not implemented",
    "guided_generation_foreground_labels": "guided generation is not implemented",
    "sigma_max": "partial noising of the input video is not implemented",
}
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # an entry's name names its output file
_SAMPLE_FIELDS = {"name", "prompt", "prompt_path", "negative_prompt", "seed", "guidance", "num_steps", "steps",
                  "input_path", "video_path", "max_frames", "num_output_frames", "frames", "resolution", "height",
                  "width", "num_conditional_frames", "num_input_frames", "inference_type", "mode", "image", "video",
                  "actions", "fps", "n_views", "num_video_frames_per_chunk", "prompt_embedding",
                  "negative_prompt_embedding", *CONTROL_BLOCKS, *CAMERAS, *_OFF_ONLY, *_UNSUPPORTED}


class SpecError(ValueError):
    """One entry of a spec that cannot run (the message names the entry and the field)."""


@dataclass
class SampleSpec:
    name: str
    origin: str                                   # "specs.jsonl line 3", "batch.json samples.robot_welding"
    settings: dict = field(default_factory=dict)  # `cosmos sample` argument names -> values


def read_specs(path: str | os.PathLike) -> list[SampleSpec | SpecError]:
    """The entries of a spec file, in order; an entry that cannot run is a SpecError in its place.
    A file that is not JSON at all raises (ValueError / FileNotFoundError)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--spec: no file at {path!r}")
    base = os.path.dirname(os.path.abspath(path))
    label = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    raw: list[tuple[str, object, dict]] = []  # (origin, entry, batch-wide defaults)
    if path.lower().endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append((f"{label} line {n}", json.loads(line), {}))
            except json.JSONDecodeError as exc:
                raw.append((f"{label} line {n}", SpecError(f"{label} line {n}: not JSON ({exc.msg})"), {}))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--spec {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, list):
            raw = [(f"{label} entry {i}", entry, {}) for i, entry in enumerate(data)]
        elif isinstance(data, dict) and "samples" in data:
            raw = _predict_batch(label, data)
        elif isinstance(data, dict):
            raw = [(label, data, {})]
        else:
            raise ValueError(f"--spec {path}: expected an object, a list of objects, or a .jsonl file")
    out: list[SampleSpec | SpecError] = []
    for i, (origin, entry, defaults) in enumerate(raw):
        if isinstance(entry, SpecError):
            out.append(entry)
            continue
        try:
            out.append(_entry(origin, entry, defaults, base, i))
        except SpecError as exc:
            out.append(exc)
    names = [s.name for s in out if isinstance(s, SampleSpec)]
    for i, s in enumerate(out):
        if isinstance(s, SampleSpec) and names.count(s.name) > 1:
            out[i] = SpecError(f"{s.origin}: the name {s.name!r} is used by more than one entry (each names its "
                               "output file)")
    return out


def _predict_batch(label: str, data: dict) -> list[tuple[str, object, dict]]:
    samples = data["samples"]
    if not isinstance(samples, dict):
        raise ValueError(f"--spec {label}: \"samples\" must be an object name -> sample")
    defaults = {k: v for k, v in data.items() if k != "samples"}
    return [(f"{label} samples.{name}", {"name": name, **sample} if isinstance(sample, dict) else sample, defaults)
            for name, sample in samples.items()]


def _fail(origin: str, key: str, why: str) -> SpecError:
    return SpecError(f"{origin}: field {key!r}: {why}")


def _entry(origin: str, entry, defaults: dict, base: str, index: int) -> SampleSpec:
    if not isinstance(entry, dict):
        raise SpecError(f"{origin}: expected an object, got {type(entry).__name__}")
    merged = {**defaults, **entry}
    for key in merged:
        if key not in _SAMPLE_FIELDS:
            raise _fail(origin, key, "not a known field (see `cosmos sample --help`)")
        if key in _UNSUPPORTED and merged[key] is not None:
            raise _fail(origin, key, _UNSUPPORTED[key])
        if key in _OFF_ONLY and merged[key] != _OFF_ONLY[key]:
            raise _fail(origin, key, f"only {json.dumps(_OFF_ONLY[key])} is supported")
    get = _Getter(origin, merged, base)
    name = merged.get("name", f"sample_{index:05d}")
    if not isinstance(name, str) or not FILE_NAME.match(name):
        raise _fail(origin, "name", f"{name!r} is not a file name (letters, digits, '.', '_', '-')")
    s: dict = {}
    prompt = get.text("prompt")
    prompt_path = get.path("prompt_path")
    if prompt is not None and prompt_path is not None:
        raise _fail(origin, "prompt_path", "give prompt or prompt_path, not both")
    if prompt_path is not None:
        with open(prompt_path, encoding="utf-8") as f:
            prompt = f.read().strip()
    embedding = get.path("prompt_embedding")
    if prompt is None and embedding is None:
        raise SpecError(f"{origin}: no prompt (give \"prompt\", \"prompt_path\" or \"prompt_embedding\")")
    s.update(prompt=prompt, prompt_embedding=embedding)
    for key, dest in (("negative_prompt", "negative_prompt"),):
        if get.text(key) is not None:
            s[dest] = get.text(key)
    if get.path("negative_prompt_embedding") is not None:
        s["negative_prompt_embedding"] = get.path("negative_prompt_embedding")
    for key, dest in (("seed", "seed"), ("num_steps", "steps"), ("steps", "steps"), ("num_output_frames", "frames"),
                      ("max_frames", "frames"), ("frames", "frames"), ("height", "height"), ("width", "width"),
                      ("num_conditional_frames", "continuation_frames"), ("num_input_frames", "condition_frames"),
                      ("n_views", "num_views"), ("num_video_frames_per_chunk", "chunk_frames")):
        value = get.integer(key, minimum=0 if key in ("seed", "num_conditional_frames", "num_input_frames") else 1)
        if value is not None:
            s[dest] = value
    for key in ("guidance", "fps"):
        value = get.number(key)
        if value is not None:
            s[key] = value
    if merged.get("resolution") not in (None, "none"):
        s["height"], s["width"] = _resolution(origin, merged["resolution"])
    mode = merged.get("mode") or merged.get("inference_type")
    if mode is not None and not isinstance(mode, str):
        raise _fail(origin, "mode" if "mode" in merged else "inference_type", "must be a string")
    # inputs
    for key in ("image", "video", "actions"):
        if get.path(key) is not None:
            s[key] = [get.path(key)] if key != "actions" else get.path(key)
    source = get.path("input_path")
    if source is not None:
        s["image" if source.lower().endswith(IMAGE_EXTENSIONS) else "video"] = [source]
    if get.path("video_path") is not None:
        s["video"] = [get.path("video_path")]
        mode = mode or "transfer"
    controls, control_videos = [], {}
    for block in CONTROL_BLOCKS:
        spec = merged.get(block)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise _fail(origin, block, "must be an object (control_path, control_weight, mask_path, ...)")
        for key in spec:
            if key not in _CONTROL_FIELDS:
                raise _fail(origin, f"{block}.{key}", _UNSUPPORTED.get(key, "not a known field of a control block"))
        sub = _Getter(f"{origin} {block}", spec, base)
        weight = sub.number("control_weight")
        controls.append((block, None, 1.0 if weight is None else weight, sub.path("mask_path")))
        if sub.path("control_path") is not None:
            control_videos[block] = sub.path("control_path")
        for key, dest in (("preset_edge_threshold", "edge_preset"), ("preset_blur_strength", "blur_preset")):
            if sub.text(key) is not None:
                s[dest] = sub.text(key)
    if controls:
        s["control"] = controls
        s["control_video"] = control_videos
        mode = mode or "transfer"
    cameras = [c for c in CAMERAS if merged.get(c) is not None]
    if cameras:
        videos = []
        for camera in cameras:
            block = merged[camera]
            if not isinstance(block, dict) or set(block) - {"video_path"}:
                raise _fail(origin, camera, "must be an object {\"video_path\": ...}")
            path = _Getter(f"{origin} {camera}", block, base).path("video_path")
            if path is not None:
                videos.append((camera, path))
        if videos:
            s["video"] = [p for _, p in videos]
            s["view_indices"] = [CAMERAS[c] for c, _ in videos]
            s.setdefault("num_views", len(videos))
        mode = mode or "multiview"
    if mode is not None:
        s["mode"] = mode
    return SampleSpec(name, origin, s)


def _resolution(origin: str, value) -> tuple[int, int]:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*,\s*\d+\s*", value):
        h, w = (int(v) for v in value.split(","))
        return h, w
    key = f"{str(value).strip()}p" if str(value).strip().isdigit() else str(value)
    if key in RESOLUTIONS:
        return RESOLUTIONS[key]
    raise _fail(origin, "resolution", f"{value!r} is not \"H,W\", \"none\" or one of "
                                      f"{sorted(k[:-1] for k in RESOLUTIONS)}")


class _Getter:
    """Typed reads of an entry's fields, each error naming the entry and the field."""

    def __init__(self, origin: str, entry: dict, base: str):
        self.origin, self.entry, self.base = origin, entry, base

    def text(self, key: str) -> str | None:
        value = self.entry.get(key)
        if value is not None and not isinstance(value, str):
            raise _fail(self.origin, key, f"must be a string, got {json.dumps(value)[:80]}")
        return value

    def path(self, key: str) -> str | None:
        value = self.text(key)
        if value is None:
            return None
        full = value if os.path.isabs(value) else os.path.join(self.base, value)
        if not os.path.exists(full):
            raise _fail(self.origin, key, f"no file at {full!r}")
        return full

    def integer(self, key: str, minimum: int) -> int | None:
        value = self.entry.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(self.origin, key, f"must be an integer >= {minimum}, got {json.dumps(value)[:80]}")
        return value

    def number(self, key: str) -> float | None:
        value = self.entry.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _fail(self.origin, key, f"must be a number >= 0, got {json.dumps(value)[:80]}")
        return float(value)
