"""Transfer2.5 control inputs, computed from or checked against an input video.

Every control comes out as a (3, T, H, W) float video in [−1, 1], the input video's frames and
size, ready for the VAE (the sampler encodes each modality to its control latent slot). Inputs
are (3, T, H, W) videos, float in [−1, 1] or uint8 in [0, 255].

The presets are the official inference ones (cosmos-transfer2.5 `augmentors/control_input.py`,
`augmentors/blur.py`, `use_random=False`):
- edge: OpenCV Canny on each RGB frame with (low, high) thresholds per preset, the 0/255 map
  repeated on 3 channels. Default "medium" = (100, 200).
- blur ("vis" in the official code): per preset, shrink by `blur_downscale` (area), bilateral
  filter (d 30, σ_color 150, σ_space 100, once), resize back (bilinear), then a bicubic
  antialiased down/up-sampling by `downup`. "none" returns the input. Default "medium".
- depth, seg: given videos (the frame count must match, 1-channel videos are repeated to 3, and a
  different spatial size is an error unless `resize=True`: bilinear for depth, nearest for seg, as
  there), or computed from the input by a transformers depth estimator / segmenter the user points
  to (`control_models`, cosmos_models.sampling.control_models; the official networks are not shipped).
Weights: `latent_weight_map` brings a pixel-space spatial weight mask to the latent token grid;
the transfer model normalizes the per-modality weights (sum ≤ 1 at every position).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from cosmos_models._deps import require
from cosmos_models.nets.config import CONTROL_MODALITIES
from cosmos_models.data.video_io import to_float, to_uint8

PRESETS = ("none", "very_low", "low", "medium", "high", "very_high")
EDGE_THRESHOLDS = {  # Canny (low, high)
    "none": (20, 50), "very_low": (20, 50), "low": (50, 100),
    "medium": (100, 200), "high": (200, 300), "very_high": (300, 400),
}
BLUR_DOWNSCALE = {"none": 1, "very_low": 1, "low": 4, "medium": 2, "high": 1, "very_high": 4}
BLUR_DOWNUP = {"none": 1, "very_low": 4, "low": 4, "medium": 10, "high": 16, "very_high": 16}
BILATERAL = dict(d=30, sigmaColor=150, sigmaSpace=100)
COMPUTED = ("edge", "blur")   # derived from the input video
GIVEN = ("depth", "seg")      # must be supplied as videos
ALIASES = {"vis": "blur"}     # the official name of the blur control


def _check_video(name: str, video, *, channels=(3,)) -> torch.Tensor:
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (C, T, H, W), got {type(video).__name__}")
    if video.dim() != 4 or video.shape[0] not in channels or 0 in video.shape:
        raise ValueError(f"{name} must be a non-empty (C, T, H, W) video with C in {channels}, "
                         f"got shape {tuple(video.shape)}")
    if video.dtype != torch.uint8 and not video.is_floating_point():
        raise TypeError(f"{name} has dtype {video.dtype}; expected uint8 [0, 255] or float [-1, 1]")
    return video


def _check_preset(name: str, preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"{name}={preset!r} is not supported; expected one of {PRESETS}")


def _frames_u8(video: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) → contiguous uint8 numpy (T, H, W, C) for OpenCV."""
    return np.ascontiguousarray(to_uint8(video).permute(1, 2, 3, 0).cpu().numpy())


def _from_frames_u8(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (T, H, W, C) → float (C, T, H, W) in [−1, 1]."""
    return to_float(torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()).to(device)


def edge_control(video: torch.Tensor, preset: str = "medium") -> torch.Tensor:
    """Canny edges of each frame (official thresholds per preset) as a 3-channel video in [−1, 1]:
    1 on edges, −1 elsewhere."""
    _check_video("edge_control: video", video)
    _check_preset("edge_control: preset", preset)
    low, high = EDGE_THRESHOLDS[preset]
    cv2 = require("cv2", "the edge control (Canny)")
    edges = np.stack([cv2.Canny(frame, low, high) for frame in _frames_u8(video)])  # (T, H, W) 0/255
    return _from_frames_u8(np.repeat(edges[..., None], 3, axis=-1), video.device)


def blur_control(video: torch.Tensor, preset: str = "medium") -> torch.Tensor:
    """The official inference blur ("vis"): shrink, bilateral filter, grow back, then a bicubic
    down/up-sampling; a 3-channel video in [−1, 1] of the input's size."""
    _check_video("blur_control: video", video)
    _check_preset("blur_control: preset", preset)
    frames = _frames_u8(video)
    if preset == "none":
        return _from_frames_u8(frames, video.device)
    _, h, w, _ = frames.shape
    cv2 = require("cv2", "the blur control (bilateral filter)")
    k = BLUR_DOWNSCALE[preset]
    small = (max(1, w // k), max(1, h // k))  # OpenCV sizes are (width, height)
    out = []
    for frame in frames:
        frame = cv2.resize(frame, small, interpolation=cv2.INTER_AREA)
        frame = cv2.bilateralFilter(frame, **BILATERAL)
        out.append(cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR))
    blurred = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()  # (T, 3, H, W), 0..255
    f = BLUR_DOWNUP[preset]
    blurred = _resize_u8(_resize_u8(blurred, (max(1, int(h / f)), max(1, int(w / f)))), (h, w))
    return (blurred.permute(1, 0, 2, 3) / 127.5 - 1).contiguous().to(video.device)


def _resize_u8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of 0..255 images, rounded and clamped like a uint8 image."""
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)


def given_control(name: str, control: torch.Tensor | None, video: torch.Tensor, *,
                  resize: bool = False) -> torch.Tensor:
    """A supplied control video (depth or seg) checked against the input `video`: the same frame
    count, 1 or 3 channels (1 is repeated), the same size unless `resize` (then bilinear for depth,
    nearest for seg). Returns (3, T, H, W) float in [−1, 1]."""
    name = ALIASES.get(name, name)
    if control is None:
        raise ValueError(f"the {name!r} control needs a {name} video (C, T, H, W) of the input's "
                         f"{video.shape[1]} frames (--control-video {name}=PATH), or a model to compute it "
                         f"(--{name}-model FOLDER); neither was given")
    _check_video(f"{name} control video", control, channels=(1, 3))
    _, t, h, w = video.shape
    if control.shape[1] != t:
        raise ValueError(f"the {name} control video has {control.shape[1]} frames but the input video has {t}; "
                         "they must match frame for frame")
    out = to_float(control).to(video.device)
    if out.shape[-2:] != (h, w):
        if not resize:
            raise ValueError(f"the {name} control video is {tuple(control.shape[-2:])} (H, W) but the input video "
                             f"is {(h, w)}; resize it, or pass resize=True")
        mode = "nearest" if name == "seg" else "bilinear"
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        out = F.interpolate(out.transpose(0, 1), size=(h, w), mode=mode, **kwargs).transpose(0, 1)
    return out.expand(3, -1, -1, -1).contiguous() if out.shape[0] == 1 else out.contiguous()


def control_inputs(video: torch.Tensor, modalities, *, control_videos: Mapping[str, torch.Tensor] | None = None,
                   edge_preset: str = "medium", blur_preset: str = "medium",
                   resize: bool = False, control_models: Mapping | None = None) -> dict[str, torch.Tensor]:
    """{modality: (3, T, H, W) control video in [−1, 1]} for the requested `modalities` (a subset of
    ("edge", "blur", "depth", "seg"); "vis" means "blur"). Edge and blur are computed from `video`
    unless `control_videos` supplies them (as the official pipeline does with given paths);
    depth and seg come from `control_videos`, else from `control_models` ({"depth" | "seg": a
    transformers model folder or a control_models.ControlModel}), computed from `video`."""
    _check_video("control_inputs: video", video)
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    if not names:
        raise ValueError(f"control_inputs: modalities is empty; expected some of {CONTROL_MODALITIES}")
    canonical = [ALIASES.get(n, n) for n in names]
    for raw, n in zip(names, canonical):
        if n not in CONTROL_MODALITIES:
            raise ValueError(f"control_inputs: unknown modality {raw!r}; supported: {CONTROL_MODALITIES} "
                             f"(and 'vis' for 'blur')")
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"control_inputs: modalities {names} name one modality twice")
    given = {ALIASES.get(k, k): v for k, v in (control_videos or {}).items()}
    unused = set(given) - set(canonical)
    if unused:
        raise ValueError(f"control_inputs: control_videos has {sorted(unused)}, which are not among the "
                         f"requested modalities {canonical}")
    models = dict(control_models or {})
    wrong = set(models) - set(GIVEN)
    if wrong:
        raise ValueError(f"control_inputs: control_models has {sorted(wrong)}; only {GIVEN} are computed by a model")
    out = {}
    for name in canonical:
        if name not in given and name in models:
            from cosmos_models.sampling.control_models import ControlModel
            model = models[name]
            model = model if isinstance(model, ControlModel) else ControlModel(name, model, device=video.device)
            out[name] = model(video)
        elif name in given or name in GIVEN:
            out[name] = given_control(name, given.get(name), video, resize=resize)
        elif name == "edge":
            out[name] = edge_control(video, edge_preset)
        else:
            out[name] = blur_control(video, blur_preset)
    return out


def latent_weight_map(mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """A spatial weight mask of the pixel video, (T, H, W) or (B, T, H, W) in [0, 1], on the latent
    token grid `grid` = (T', H', W') as (B, T', H', W'). As in the official code, pixel frame 0
    maps to latent frame 0 and frames 1… (4·(T'−1) of them) to latent frames 1…, by trilinear
    interpolation."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4) or not mask.is_floating_point():
        raise ValueError(f"latent_weight_map: mask must be a float (T, H, W) or (B, T, H, W) tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.min() < 0:
        raise ValueError("latent_weight_map: mask has negative weights; weights must be >= 0")
    t, h, w = grid
    m = (mask if mask.dim() == 4 else mask[None])[:, None]  # (B, 1, T, H, W)
    if m.shape[2] == t:
        out = F.interpolate(m, size=(t, h, w), mode="trilinear", align_corners=False)
    else:
        if t < 2 or m.shape[2] != 1 + 4 * (t - 1):
            raise ValueError(f"latent_weight_map: mask has {m.shape[2]} frames, the latent grid {t}; expected "
                             f"{t} or the pixel count 1 + 4·({t} − 1) = {1 + 4 * (t - 1)}")
        first = F.interpolate(m[:, :, :1], size=(1, h, w), mode="trilinear", align_corners=False)
        rest = F.interpolate(m[:, :, 1:], size=(t - 1, h, w), mode="trilinear", align_corners=False)
        out = torch.cat([first, rest], dim=2)
    return out[:, 0]
