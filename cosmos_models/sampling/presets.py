"""Inference presets: how each released checkpoint samples in the official code.

One preset per released checkpoint of the official checkpoint lists (cosmos-predict2.5
`imaginaire/utils/checkpoint_db.py`, cosmos-transfer2.5 `packages/cosmos-oss/cosmos_oss/checkpoints_*.py`),
with what their experiments and inference entry points set:

- σ grid: "shifted" (the flow scheduler's linear grid shifted by `shift`, 5) or "karras" (the post-
  trained 2B's `use_kerras_sigma_at_inference=True`: EDM σ from 200 to 0.01 with ρ = 7 over N + 1
  points, mapped by σ/(1 + σ), no shift; the official scheduler then runs N + 1 steps to σ = 0);
- conditioning-frame timestep, in σ units: 1e-4 for the post-trained 2B (its `conditional_frame_timestep
  = 0.1` is in the 0…1000 units of the scheduler's timesteps, which the network scales by 0.001), None
  (the step's own σ: the official default −1) for the others; diffusers' pipeline uses 1e-4 for all;
- guidance (official form cond + g·(cond − uncond)), steps, seed and fps of the official entry points
  (Predict 7 / 35 / 1; Transfer 3 / 35 / 2025; multiview 3 / 35 / 0 at 30 fps; action 0 at 4 fps);
- the default negative prompt (the official inference's text) for the unconditional pass;
- Transfer2.5: the modality each single-modality checkpoint was trained on (its latent goes in
  control slot 0); distilled checkpoints: the few-step student sampler, no guidance.

`preset_for_file(path)` recognizes a released file by the checkpoint UUID in its name (the official
files are named `<uuid>_ema_bf16.pt` / `<uuid>/model_ema_bf16.pt`) or our safetensors metadata; a file
it cannot recognize gets the default preset of the config its shapes match (`default_preset(config)`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from cosmos_models.nets.config import get_config

# The official inference's default negative prompt (cosmos-predict2.5 cosmos_predict2/config.py,
# DEFAULT_NEGATIVE_PROMPT; the same text in cosmos-transfer2.5).
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality.")

GRIDS = ("shifted", "karras")


@dataclass(frozen=True)
class Preset:
    name: str                           # ours: "<config>/<what>"
    checkpoint: str                     # the official checkpoint name
    uuids: tuple[str, ...]              # the official checkpoint UUIDs (in the released file names)
    config: str                         # our model config
    grid: str = "shifted"
    shift: float = 5.0
    steps: int = 35
    guidance: float = 7.0
    condition_sigma: float | None = None  # σ of the conditioning frames; None: the step's own σ
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    seed: int = 1
    fps: float | None = None            # None: the config's
    control: str | None = None          # Transfer2.5: the modality the checkpoint was trained on
    distilled: bool = False             # the few-step student sampler (no guidance)

    def __post_init__(self):
        if self.grid not in GRIDS:
            raise ValueError(f"preset {self.name}: grid {self.grid!r} not one of {GRIDS}")

    def describe(self) -> str:
        cond = "the step's σ" if self.condition_sigma is None else f"σ={self.condition_sigma:g}"
        return (f"{self.name} ({self.checkpoint}): {self.grid} grid" + (f" shift {self.shift:g}" if self.grid == "shifted"
                else "") + f", {self.steps} steps, guidance {self.guidance:g}, conditioning frames at {cond}, "
                f"seed {self.seed}" + (f", control {self.control} in slot 0" if self.control else "")
                + (", few-step student" if self.distilled else ""))


def _transfer(modality: str, official: str, uuids: tuple[str, ...]) -> Preset:
    return Preset(f"transfer2.5-2b/{modality}", f"nvidia/Cosmos-Transfer2.5-2B/general/{official}", uuids,
                  "transfer2.5-2b", guidance=3.0, seed=2025, control=modality)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("predict2.5-2b/pre-trained", "nvidia/Cosmos-Predict2.5-2B/base/pre-trained",
           ("d20b7120-df3e-4911-919d-db6e08bad31c",), "predict2.5-2b"),
    Preset("predict2.5-2b/post-trained", "nvidia/Cosmos-Predict2.5-2B/base/post-trained",
           ("81edfebe-bd6a-4039-8c1d-737df1a790bf",), "predict2.5-2b", grid="karras", condition_sigma=1e-4),
    Preset("predict2.5-2b/distilled", "nvidia/Cosmos-Predict2.5-2B/base/distilled",
           ("575edf0f-d973-4c74-b52c-69929a08d0a5",), "predict2.5-2b", steps=4, guidance=0.0,
           negative_prompt=None, distilled=True),
    Preset("predict2.5-14b/pre-trained", "nvidia/Cosmos-Predict2.5-14B/base/pre-trained",
           ("54937b8c-29de-4f04-862c-e67b04ec41e8",), "predict2.5-14b"),
    Preset("predict2.5-14b/post-trained", "nvidia/Cosmos-Predict2.5-14B/base/post-trained",
           ("e21d2a49-4747-44c8-ba44-9f6f9243715f",), "predict2.5-14b"),
    Preset("predict2.5-2b-multiview/auto", "nvidia/Cosmos-Predict2.5-2B/auto/multiview",
           ("6b9d7548-33bb-4517-b5e8-60caf47edba7", "524af350-2e43-496c-8590-3646ae1325da"),
           "predict2.5-2b-multiview", guidance=3.0, seed=0, fps=30),
    Preset("predict2.5-2b-action/robot", "nvidia/Cosmos-Predict2.5-2B/robot/action-cond",
           ("38c6c645-7d41-4560-8eeb-6f4ddc0e6574",), "predict2.5-2b-action", guidance=0.0, negative_prompt=None,
           fps=4),
    _transfer("edge", "edge", ("61f5694b-0ad5-4ecd-8ad7-c8545627d125", "ecd0ba00-d598-4f94-aa09-e8627899c431")),
    _transfer("blur", "blur", ("ba2f44f2-c726-4fe7-949f-597069d9b91c", "20d9fd0b-af4c-4cca-ad0b-f9b45f0805f1")),
    _transfer("depth", "depth", ("626e6618-bfcd-4d9a-a077-1409e2ce353f", "0f214f66-ae98-43cf-ab25-d65d09a7e68f")),
    _transfer("seg", "seg", ("5136ef49-6d8d-42e8-8abf-7dac722a304a", "fcab44fe-6fe7-492e-b9c6-67ef8c1a52ab")),
    Preset("transfer2.5-2b/distilled-edge", "nvidia/Cosmos-Transfer2.5-2B/distilled/edge",
           ("41f07f13-f2e4-4e34-ba4c-86f595acbc20",), "transfer2.5-2b", steps=4, guidance=0.0, seed=2025,
           negative_prompt=None, control="edge", distilled=True),
)}

# the preset a config gets when nothing else says which checkpoint it is; tiny configs follow the
# shape of the big ones (the project's own trained checkpoints sample like the pre-trained 2B)
_DEFAULT_FOR_CONFIG = {"predict2.5-2b": "predict2.5-2b/pre-trained", "predict2.5-14b": "predict2.5-14b/pre-trained",
                       "predict2.5-2b-multiview": "predict2.5-2b-multiview/auto",
                       "predict2.5-2b-action": "predict2.5-2b-action/robot", "transfer2.5-2b": "transfer2.5-2b/edge"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def default_preset(config) -> Preset:
    """The preset of a config (a DiTConfig or its name) when no file says which checkpoint it is:
    its published model's default; a tiny config the official sampling defaults on its own config."""
    name = config if isinstance(config, str) else config.name
    if name in _DEFAULT_FOR_CONFIG:
        return PRESETS[_DEFAULT_FOR_CONFIG[name]]
    cfg = get_config(name)
    # conditioning frames at σ = 1e-4 (the public diffusers pipeline's choice), as before presets existed
    return Preset(f"{name}/default", "(none: the project's own model)", (), name, steps=cfg.sample_steps,
                  guidance=cfg.guidance, condition_sigma=1e-4)


def preset_for_uuid(text: str) -> Preset | None:
    """The preset whose official checkpoint UUID appears in `text` (a path or a file name), if any."""
    for uuid in _UUID.findall(text.lower()):
        for preset in PRESETS.values():
            if uuid in preset.uuids:
                return preset
    return None


def preset_for_file(path: str | os.PathLike | None, config=None) -> tuple[Preset, str]:
    """(preset, how it was chosen) for a weight file: a `preset` in our safetensors metadata, the
    official UUID in its path, else the default of `config` (the config the file's shapes match)."""
    if path is not None:
        path = os.fspath(path)
        meta = _safetensors_metadata(path)
        if meta.get("preset") in PRESETS:
            return PRESETS[meta["preset"]], "the file's metadata"
        found = preset_for_uuid(path)
        if found is not None:
            return found, f"the official checkpoint UUID in {os.path.basename(path)}"
    if config is None:
        raise ValueError("preset_for_file: give a file the preset can be recognized from, or its config")
    return default_preset(config), f"the default of {config if isinstance(config, str) else config.name}"


def with_overrides(preset: Preset, **changes) -> Preset:
    """The preset with the given settings replaced (None values keep the preset's)."""
    return dataclasses.replace(preset, **{k: v for k, v in changes.items() if v is not None})


def _safetensors_metadata(path: str) -> dict:
    if not (path.endswith(".safetensors") and os.path.isfile(path)):
        return {}
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the loader, not here
        return {}
