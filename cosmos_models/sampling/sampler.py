"""Sampling pipeline: Text2World, Image2World, Video2World, Transfer control, multiview, action,
long videos in autoregressive chunks, VAE decode, mp4 out. The `cosmos sample` command is
`cosmos_models.cli.sample`.

    sampler = Sampler(model, vae, device="cuda", dtype=torch.bfloat16)
    video = sampler.generate("image2world", prompt_embedding=emb, image=img, seed=1)   # (3, T, H, W) in [-1, 1]
    sampler.generate("video2world", prompt_embedding=emb, video=clip, num_frames=181, output="long.mp4")

What one denoising run does (the official Video2World loop, `video2world_model_rectified_flow.py`,
and diffusers' `Cosmos2_5_PredictBasePipeline`; see shared/DESIGN.md "Reference facts"):
- σ grid `solvers.sigma_grid(grid, num_steps, shift)`: "shifted" (35 steps, shift 5) or "karras" (the
  post-trained 2B; cosmos_models.sampling.presets names each released checkpoint's); the network is fed the
  scheduler's integer timesteps `trunc(1000·σ)` (`solvers.official_timesteps`), converted to the
  model's `timestep_scale` (the DiT multiplies by 0.001, so its sinusoid sees σ).
- Conditioning latent frames `gt` under a mask m (1 on the first c latent frames): the state is
  re-imposed before the first and after every step, `x ← gt·m + x·(1 − m)` (so they come out exactly
  as given), the mask is the network's condition channel, their timestep is `condition_sigma` = 1e-4
  (the public pipeline's; None keeps the step's σ as the official training does), and their velocity
  is replaced by the exact `noise − gt` (official `denoise_replace_gt_frames`).
- Classifier-free guidance in the official form `v = cond + g·(cond − uncond)`: g = 0 is the
  conditional pass alone (no unconditional pass is run); the textbook scale is g + 1. The
  unconditional pass uses the negative prompt embedding (a random one, with a loud warning, when
  none is given; the official default negative prompt needs the Reason1 text encoder).
- UniPC (the official `FlowUniPCMultistepScheduler`) or Euler.

Modes and their conditioning: text2world 0 latent frames, image2world 1 (the image), video2world
`num_condition_frames` (2 by default: the last 4·(2 − 1) + 1 = 5 pixel frames of the input video),
transfer: control videos (edge / blur computed from the input video, depth / seg given) encoded by the
VAE into the model's control slots, per-modality weights (scalars or pixel-space spatial masks),
guidance from the config (3 for transfer2.5); multiview: V views side by side along latent time, each
with its own conditioning and prompt, one video per view out; action: actions per chunk
(4·(T − 1) × 7 for T latent frames), each chunk conditioned on the last generated frame.

Long videos: chunks of the model's frame count (`config.num_frames`, 93 → 24 latent frames), each
conditioned on the last frames of the previous one (`continuation_frames` latent frames, 2 by default),
stitched without duplicates, cropped to exactly `num_frames`. `chunk_conditioning="pixel"` (default,
what Video2World from a video does): the previous chunk is decoded and its last 4·(c − 1) + 1 pixel
frames are encoded again as the next chunk's conditioning latents (the same latent layout the model
was trained on); `"latent"`: the previous chunk's last c latents are reused as they are, the latents
stitched and decoded once (exact continuity in latent space, one decode).

Generation is for one video at a time (batch 1). Outputs are returned on the CPU.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosmos_models.sampling import solvers
from cosmos_models._deps import progress_bar
from cosmos_models.nets import registry
from cosmos_models.nets.config import DiTConfig
from cosmos_models.nets.text import prepare_embeddings
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, latent_frames, pixel_frames
from cosmos_models.data.video_io import IMAGE_EXTENSIONS, read_image, read_image_or_video, to_float, write_video

MODES = ("text2world", "image2world", "video2world", "transfer", "multiview", "action")
CHUNK_CONDITIONING = ("pixel", "latent")
SOLVERS = tuple(solvers.SOLVERS)


def variant_modes(cfg: DiTConfig) -> tuple[str, ...]:
    """The modes a config's variant samples (its class's `sampler_modes`, cosmos_models.nets.registry)."""
    return registry.model_class(cfg).sampler_modes
CONDITION_SIGMA = 1e-4        # timestep of the conditioning frames in the public pipeline (σ units)
DEFAULT_SEED = 1              # the official CLI's default
DEFAULT_VIDEO_CONDITION_FRAMES = 2
SIZE_MULTIPLE = 16            # VAE (8) × patch (2)


class SamplerWarning(UserWarning):
    """Something the user should know about the result (random prompt embeddings, random VAE)."""


def loud_warning(message: str) -> None:
    warnings.warn(f"\n{'!' * 78}\n{message}\n{'!' * 78}", SamplerWarning, stacklevel=3)


@dataclass
class ChunkRecord:
    """One denoising run of the last `generate` call (for inspection and tests). Latents are
    (1, 16, T, h, w) fp32 on the CPU; `condition_latents` the conditioning latents it was given
    (1, 16, c, h, w) (multiview: the views' ones concatenated along T); `start`/`length` are in pixel
    frames of the output video for pixel chaining and in latent frames of the stitched latent video
    for latent chaining and multiview (`unit`)."""

    index: int
    latents: Tensor
    condition_latents: Tensor | None
    start: int
    length: int
    unit: str


@dataclass(frozen=True)
class Span:
    """Where a chunk sits in the output: `start`, `length` in `unit` ("pixel" or "latent") frames."""

    index: int
    start: int
    length: int
    unit: str


# ----------------------------------------------------------------------------- chunk plans
def round_up_to_vae_frames(frames: int) -> int:
    """The smallest 4k + 1 >= frames (the WAN VAE's frame counts)."""
    return TEMPORAL_COMPRESSION * math.ceil((frames - 1) / TEMPORAL_COMPRESSION) + 1


def condition_pixel_frames(latent_count: int) -> int:
    """Pixel frames behind the first `latent_count` latents: 0, 1, 5, 9, ..."""
    return 0 if latent_count == 0 else pixel_frames(latent_count)


def pixel_chunk_plan(total: int, chunk: int, first_condition: int, overlap: int) -> list[tuple[int, int]]:
    """[(start, length)] in pixel frames: chunk 0 at 0 (its first `first_condition` frames given), every
    later chunk starting `overlap` frames before the end of what is done, lengths 4k + 1 <= `chunk`."""
    if total <= first_condition:
        raise ValueError(f"num_frames={total} leaves nothing to generate after the {first_condition} "
                         "conditioning frames; ask for more frames")
    spans = [(0, round_up_to_vae_frames(min(chunk, total)))]
    done = min(spans[0][1], total)
    if done < total and chunk <= overlap:
        raise ValueError(f"a chunk of {chunk} frames cannot continue from {overlap} conditioning frames")
    while done < total:
        start = done - overlap
        spans.append((start, round_up_to_vae_frames(min(chunk, total - start))))
        done = min(start + spans[-1][1], total)
    return spans


def latent_chunk_plan(total: int, chunk: int, first_condition: int, overlap: int) -> list[tuple[int, int]]:
    """[(start, length)] in latent frames of the stitched latent video (see pixel_chunk_plan)."""
    if total <= first_condition:
        raise ValueError(f"{total} latent frames leave nothing to generate after the {first_condition} "
                         "conditioning latent frames; ask for more frames")
    spans = [(0, min(chunk, total))]
    done = spans[0][1]
    if done < total and chunk <= overlap:
        raise ValueError(f"a chunk of {chunk} latent frames cannot continue from {overlap} conditioning frames")
    while done < total:
        start = done - overlap
        spans.append((start, min(chunk, total - start)))
        done = start + spans[-1][1]
    return spans


# ----------------------------------------------------------------------------- input coercion
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def load_tensor(path: str | os.PathLike, key: str = "embedding") -> Tensor:
    """One tensor from a .pt / .safetensors / .npy file (the one named `key` if there are several)."""
    from cosmos_models.data.clips import ClipError, load_sidecar

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path!r}")
    try:
        return load_sidecar(path, key)
    except ClipError as exc:
        raise ValueError(str(exc)) from None


def _as_image(image, name: str = "image") -> Tensor:
    """(3, 1, H, W) float in [-1, 1] from a (3, H, W) tensor (float [-1, 1] or uint8) or an image file."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a (3, H, W) tensor or an image path, got {type(image).__name__}")
    if image.dim() == 4 and image.shape[1] == 1:
        image = image[:, 0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{name} must be (3, H, W) RGB, got shape {tuple(image.shape)}")
    return to_float(image)[:, None]


def _as_video(video, name: str = "video", channels: tuple[int, ...] = (3,)) -> Tensor:
    """(C, T, H, W) float in [-1, 1] from a tensor (float [-1, 1] or uint8) or a video/image file."""
    if isinstance(video, (str, os.PathLike)):
        video = read_image_or_video(video)[0]
    if not isinstance(video, Tensor):
        raise TypeError(f"{name} must be a (C, T, H, W) tensor or a video path, got {type(video).__name__}")
    if video.dim() != 4 or video.shape[0] not in channels or video.shape[1] == 0:
        raise ValueError(f"{name} must be a (C, T, H, W) video with C in {channels} and T >= 1, got shape "
                         f"{tuple(video.shape)}")
    return to_float(video)


def fit_frames(video: Tensor, height: int, width: int, *, resize: bool, name: str) -> Tensor:
    """`video` (C, T, H, W) at (height, width): as is, or (resize=True) scaled to cover the size with
    its aspect ratio kept, then center-cropped (what the official inference does to its inputs)."""
    h, w = video.shape[-2:]
    if (h, w) == (height, width):
        return video
    if not resize:
        raise ValueError(f"{name} is {h}x{w} (HxW) but the video is generated at {height}x{width}; give a "
                         f"{height}x{width} input, pass height/width to match it, or resize=True (--resize) to "
                         "scale and center-crop it")
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
    frames = F.interpolate(video.transpose(0, 1).float(), size=size, mode="bilinear", antialias=True,
                           align_corners=False).clamp(-1, 1)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return frames[..., top:top + height, left:left + width].transpose(0, 1).contiguous()


def _pad_frames(video: Tensor, frames: int) -> Tensor:
    """`video` (C, T, ...) with its last frame repeated up to `frames` frames (T <= frames)."""
    missing = frames - video.shape[1]
    if missing <= 0:
        return video[:, :frames]
    return torch.cat([video, video[:, -1:].expand(-1, missing, *video.shape[2:])], dim=1)


def _weight_and_mask(value, name: str) -> tuple[float, object]:
    """A control entry: a weight, a mask (tensor or file; weight 1), or (weight, mask)."""
    weight, mask = 1.0, None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        weight, mask = value
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        weight = value
    else:
        mask = value
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"control weight of {name!r} must be a finite number >= 0, got {weight!r}")
    return float(weight), mask


def read_mask(path: str | os.PathLike) -> Tensor:
    """A spatio-temporal mask from a file, in [0, 1]: a video (.mp4 ...) or a folder of image frames
    (white = where the control applies, as the official mask videos), or a .npy / .pt / .safetensors
    array ((H, W) or (T, H, W), used as given)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"mask folder {path!r} holds no image frames ({', '.join(IMAGE_EXTENSIONS)})")
        frames = torch.stack([read_image(os.path.join(path, f), dtype=torch.uint8) for f in files], dim=1)
        return frames.float().mean(0) / 255.0
    if path.lower().endswith((".npy", ".pt", ".pth", ".safetensors")):
        return load_tensor(path, "mask").float()
    video, _ = read_image_or_video(path, dtype=torch.uint8)
    return video.float().mean(0) / 255.0  # (T, H, W): the grey level of each pixel


def _mask_video(mask, frames: int, height: int, width: int, name: str) -> Tensor:
    """A spatial weight mask as (frames, H, W) float: from (H, W) (all frames) or (T >= frames, H, W)."""
    if isinstance(mask, (str, os.PathLike)):
        mask = read_mask(mask)
    mask = torch.as_tensor(mask).float()
    if mask.dim() == 2:
        mask = mask[None].expand(frames, -1, -1)
    if mask.dim() != 3 or mask.shape[0] < frames:
        raise ValueError(f"{name} must be a scalar, an (H, W) mask or a (T, H, W) mask over the {frames} "
                         f"frames, got shape {tuple(mask.shape)}")
    if mask.min() < 0:
        raise ValueError(f"{name} has negative weights; weights must be >= 0")
    if mask.shape[-2:] != (height, width):
        raise ValueError(f"{name} is {tuple(mask.shape[-2:])} (H, W); the video is {height}x{width}")
    return mask[:frames]


# ----------------------------------------------------------------------------- the sampler
class Sampler:
    """A DiT + VAE sampling pipeline. `model`: a network from `cosmos_models.build` (any variant);
    `vae`: a `cosmos_models.nets.vae.WanVAE` (needed for image/video inputs, control videos and pixel
    outputs; without one, `output="latent"` text2world still runs). The model itself is moved to
    `device` in `dtype` (bf16 is the usual choice on a GPU) and put in eval mode; the ODE state stays
    fp32."""

    def __init__(self, model: nn.Module, vae: nn.Module | None = None, *, device=None,
                 dtype: torch.dtype | None = None, offload: bool = False):
        config = getattr(model, "config", None)
        if not isinstance(config, DiTConfig):
            raise TypeError(f"model must be a cosmos_models network (with a DiTConfig .config), got "
                            f"{type(model).__name__}")
        first = next(model.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point dtype, got {self.dtype}")
        self.offload = bool(offload)
        # offload: one network on the device at a time (the DiT for denoising, the VAE for encoding and
        # decoding), the other in host memory, so the peak is the larger of the two, not their sum
        home = torch.device("cpu") if self.offload else self.device
        self.model = model.to(device=home, dtype=self.dtype).eval()
        self.config: DiTConfig = config
        self.vae = vae.to(home).eval() if vae is not None else None
        self.resident: str | None = None  # offload: "dit" or "vae", the one on the device now
        self.moves: list[str] = []          # offload: the order of the moves (what a test looks at)
        self.last_run: list[ChunkRecord] = []

    def _use(self, which: str) -> None:
        """Offload: put `which` ("dit" or "vae") on the device and the other in host memory."""
        if not self.offload or self.resident == which:
            return
        keep, away = (self.model, self.vae) if which == "dit" else (self.vae, self.model)
        if away is not None:
            away.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        keep.to(self.device)
        self.resident = which
        self.moves.append(which)

    # -- VAE ------------------------------------------------------------------------------------
    def _need_vae(self, why: str) -> nn.Module:
        if self.vae is None:
            raise ValueError(f"this Sampler has no VAE, which {why} needs; pass vae= (cosmos_models.nets.vae.WanVAE)")
        return self.vae

    def encode(self, video: Tensor) -> Tensor:
        """(3, 4k+1, H, W) pixels in [-1, 1] -> normalized latents (1, 16, k+1, H/8, W/8) fp32."""
        vae = self._need_vae("encoding pixels")
        self._use("vae")
        return vae.encode(video[None].to(self.device)).float()

    def decode(self, latents: Tensor) -> Tensor:
        """(1, 16, k+1, h, w) latents -> (3, 4k+1, 8h, 8w) pixels in [-1, 1] fp32 (on the CPU)."""
        vae = self._need_vae("decoding to pixels")
        self._use("vae")
        return vae.decode(latents.to(self.device))[0].float().cpu()

    # -- one denoising run ------------------------------------------------------------------------
    def _network(self, x: Tensor, timesteps: Tensor, context: Tensor, mask: Tensor | None, inputs: dict) -> Tensor:
        out = self.model(x.to(self.dtype), timesteps, context, condition_video_input_mask=mask,
                         fps=self.config.fps, **inputs)
        return out.float()

    @torch.no_grad()
    def sample_latents(self, latent_shape: tuple[int, int, int], *, context: Tensor,
                       negative_context: Tensor | None, guidance: float, generator: torch.Generator,
                       condition: tuple[Tensor, Tensor] | None = None, num_steps: int | None = None,
                       solver: str = "unipc", shift: float = solvers.DEFAULT_SHIFT, grid: str = "shifted",
                       condition_sigma: float | None = CONDITION_SIGMA, model_inputs: Mapping | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Latents (1, 16, T, h, w) fp32 of one run over `latent_shape` = (T, h, w). `context`,
        `negative_context`: (1, N, C) text embeddings; `condition`: (gt (1, 16, T, h, w), mask
        (1, 1, T, 1, 1)) or None; `model_inputs`: the variant's extra forward inputs."""
        cfg = self.config
        T, h, w = latent_shape
        self._use("dit")
        g = solvers.check_guidance(guidance)
        if g > 0 and negative_context is None:
            raise ValueError(f"guidance={g} > 0 needs negative_context (the unconditional pass)")
        steps = cfg.sample_steps if num_steps is None else num_steps
        sigmas = solvers.sigma_grid(grid, steps, shift)
        # the official loop feeds trunc(1000·σ); the network multiplies what it gets by timestep_scale
        net_t = (solvers.official_timesteps(sigmas).double() / solvers.NUM_TRAIN_TIMESTEPS / cfg.timestep_scale)
        step_of = {s: i for i, s in enumerate(sigmas.tolist())}
        noise = torch.randn((1, cfg.latent_channels, T, h, w), generator=generator,
                            device=generator.device, dtype=torch.float32).to(self.device)
        inputs = dict(model_inputs or {})
        gt = mask = mask_in = None
        frames = torch.zeros(1, T, dtype=torch.float64)
        if condition is not None:
            gt, mask = (t.to(self.device, torch.float32) for t in condition)
            mask_in = mask.expand(1, 1, T, h, w)
            frames = mask.reshape(1, T).double().cpu()

        def timesteps(i: int) -> Tensor:
            t = torch.full((1, T), float(net_t[i]), dtype=torch.float64)
            if condition_sigma is not None:
                t = t * (1 - frames) + frames * (condition_sigma / cfg.timestep_scale)
            return t.float().to(self.device)

        def velocity(x: Tensor, sigma: float) -> Tensor:
            t = timesteps(step_of[sigma])
            cond = self._network(x, t, context, mask_in, inputs)
            uncond = self._network(x, t, negative_context, mask_in, inputs) if g > 0 else None
            if condition is not None:
                cond = solvers.condition_velocity(cond, noise, gt, mask)
                uncond = None if uncond is None else solvers.condition_velocity(uncond, noise, gt, mask)
            return solvers.guided_velocity(cond, uncond, g)

        callback = solvers.condition_frames(gt, mask) if condition is not None else None
        return solvers.sample(velocity, noise, sigmas, solver=solver, callback=callback, progress=progress)

    # -- text ------------------------------------------------------------------------------------
    def _embedding(self, value, name: str, views: int, generator: torch.Generator, required_by: str) -> Tensor:
        """(1, views·text_len, C) context: from a tensor (N, C) / (1, N, C) / (views, N, C) or a file; a
        random one (loudly) when None."""
        cfg = self.config
        if value is None:
            loud_warning(f"WARNING: no {name} given: using a RANDOM one ({required_by}).")
            emb = torch.randn((views, cfg.text_len, cfg.text_channels), generator=generator,
                              device=generator.device)
        else:
            emb = load_tensor(value) if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(emb, Tensor):
                raise TypeError(f"{name} must be a tensor (N, C) / (1, N, C) or a file path, got {type(emb).__name__}")
            if emb.dim() == 2:
                emb = emb[None]
            if emb.dim() != 3 or emb.shape[0] not in (1, views):
                raise ValueError(f"{name} has shape {tuple(emb.shape)}; expected (N, C), (1, N, C)"
                                 + (f" or one per view ({views}, N, C)" if views > 1 else " (one video at a time)"))
            emb = prepare_embeddings(emb.float(), cfg).expand(views, -1, -1)
        return emb.reshape(1, -1, emb.shape[-1]).to(self.device, self.dtype)

    # -- generate --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, mode: str = "text2world", *, prompt_embedding=None, negative_prompt_embedding=None,
                 image=None, video=None, control: Sequence[str] | Mapping | None = None,
                 control_videos: Mapping | None = None, edge_preset: str = "medium", blur_preset: str = "medium",
                 control_scale: float = 1.0, control_models: Mapping | None = None, actions=None, num_views: int | None = None, view_indices=None,
                 num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 num_steps: int | None = None, guidance_scale: float | None = None, solver: str = "unipc",
                 shift: float = solvers.DEFAULT_SHIFT, grid: str = "shifted", seed: int | None = None,
                 generator: torch.Generator | None = None, num_condition_frames: int | None = None,
                 continuation_frames: int = DEFAULT_VIDEO_CONDITION_FRAMES, chunk_conditioning: str = "pixel",
                 condition_sigma: float | None = CONDITION_SIGMA, resize: bool = False, fps: float | None = None,
                 progress: bool = True, output: str | os.PathLike = "tensor"):
        """Generate one video. Returns (3, T, H, W) in [-1, 1] (multiview: (V, 3, T, H, W)), latents
        for `output="latent"`, or writes an mp4 when `output` is a path (multiview: one file per view,
        `<stem>_view<i>.mp4`) and returns the path(s).

        mode: one of MODES; it must fit the model's variant (predict: text/image/video2world).
        prompt_embedding / negative_prompt_embedding: (N, C) or (1, N, C) text features (raw
            `config.text_channels` or projected), a file (.pt/.safetensors/.npy), or None (random, loudly).
            Multiview: one per view (V, N, C) or one for all.
        image: image2world / action / transfer (optional) conditioning frame, (3, H, W) or a file.
        video: video2world conditioning (its last frames), transfer control source, action first frame
            (its last frame); (3, T, H, W) or a file. Multiview: a list of V images / videos in image= / video=.
        control: transfer modalities, a list ("edge", "blur", "depth", "seg") or {modality: weight}, a
            weight being a float or a spatial mask ((H, W) or (T, H, W) in pixels, >= 0); None: the
            modalities of `control_videos`, else edge. control_videos: {modality: video} (depth, seg
            given, or computed by control_models = {"depth" | "seg": a transformers model folder};
            edge / blur given here are used instead of computed).
        actions: action mode, (chunks·K, 7) or (chunks, K, 7) with K = 4·(T − 1) for the model's T latent
            frames per chunk; the video has 1 + chunks·(config.num_frames − 1) frames.
        num_frames: total output frames (default: the config's; transfer: the input video's; more than a
            chunk holds is generated autoregressively). height, width: default the config's resolution;
            inputs of another size are an error unless resize=True.
        num_steps, guidance_scale: default the config's (guidance in the official form, >= 0).
        seed or generator: the noise source (default seed 1, the official CLI's).
        num_condition_frames: video2world latent conditioning frames (default 2), also per view for
            multiview videos. continuation_frames: latent frames carried from chunk to chunk.
        """
        cfg = self.config
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; expected one of {MODES}")
        modes = variant_modes(cfg)
        if mode not in modes:
            raise ValueError(f"mode={mode!r} does not fit model {cfg.name} (a {cfg.variant} model); it runs {modes}")
        if chunk_conditioning not in CHUNK_CONDITIONING:
            raise ValueError(f"chunk_conditioning={chunk_conditioning!r} is not supported; expected one of "
                             f"{CHUNK_CONDITIONING}")
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is not supported; expected one of {SOLVERS}")
        if grid not in solvers.GRIDS:
            raise ValueError(f"grid={grid!r} is not supported; expected one of {solvers.GRIDS}")
        guidance = solvers.check_guidance(cfg.guidance if guidance_scale is None else guidance_scale)
        steps = _check_int("num_steps", cfg.sample_steps if num_steps is None else num_steps, 1)
        height = cfg.resolution[0] if height is None else height
        width = cfg.resolution[1] if width is None else width
        for name, value in (("height", height), ("width", width)):
            if _check_int(name, value, SIZE_MULTIPLE) % SIZE_MULTIPLE:
                raise ValueError(f"{name}={value} must be a multiple of {SIZE_MULTIPLE} (VAE 8 x patch 2)")
        if condition_sigma is not None and not (isinstance(condition_sigma, numbers.Real)
                                                and 0 <= condition_sigma <= 1):
            raise ValueError(f"condition_sigma must be in [0, 1] or None, got {condition_sigma!r}")
        writes = output not in ("tensor", "latent")
        if writes and not os.fspath(output).lower().endswith(".mp4"):
            raise ValueError(f"output must be 'tensor', 'latent' or a path ending in .mp4, got {output!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if generator is None:
            generator = torch.Generator().manual_seed(_check_int("seed", DEFAULT_SEED if seed is None else seed, 0))
        views = self._num_views(mode, num_views, image, video, prompt_embedding)
        need = "the unconditional pass of guidance > 0"
        context = self._embedding(prompt_embedding, "prompt embedding", views, generator,
                                  "the video follows no prompt")
        negative = (self._embedding(negative_prompt_embedding, "negative prompt embedding", views, generator, need)
                    if guidance > 0 else None)
        run = dict(context=context, negative_context=negative, guidance=guidance, generator=generator,
                   num_steps=steps, solver=solver, shift=shift, grid=grid, condition_sigma=condition_sigma)
        self.last_run = []
        if mode == "multiview":
            result = self._multiview(run, views, image, video, view_indices, num_frames, num_condition_frames,
                                     height, width, resize, output == "latent", progress)
        else:
            result = self._single_view(mode, run, image=image, video=video, control=control,
                                       control_videos=control_videos, edge_preset=edge_preset,
                                       blur_preset=blur_preset, control_scale=control_scale,
                                       control_models=control_models, actions=actions,
                                       num_frames=num_frames, height=height, width=width,
                                       num_condition_frames=num_condition_frames,
                                       continuation_frames=continuation_frames, chaining=chunk_conditioning,
                                       resize=resize, latent_out=output == "latent", progress=progress)
        if not writes:
            return result
        return self._write(os.fspath(output), result, fps or cfg.fps, mode == "multiview")

    @staticmethod
    def _write(path: str, video: Tensor, fps: float, per_view: bool):
        if not per_view:
            write_video(path, video, fps)
            return path
        stem = path[: -len(".mp4")]
        paths = [f"{stem}_view{i}.mp4" for i in range(video.shape[0])]
        for p, v in zip(paths, video):
            write_video(p, v, fps)
        return paths

    def _num_views(self, mode: str, num_views, image, video, prompt_embedding) -> int:
        if mode != "multiview":
            if num_views not in (None, 1):
                raise ValueError(f"num_views={num_views!r} applies to multiview only")
            return 1
        given = image if image is not None else video
        stacked_dims = 4 if image is not None else 5  # (V, 3, H, W) images / (V, 3, T, H, W) videos
        if num_views is None:
            if isinstance(given, (list, tuple)) or (isinstance(given, Tensor) and given.dim() == stacked_dims):
                num_views = len(given)
            elif isinstance(prompt_embedding, Tensor) and prompt_embedding.dim() == 3 and prompt_embedding.shape[0] > 1:
                num_views = prompt_embedding.shape[0]
            else:
                num_views = self.config.view_embedding_count
        return _check_int("num_views", num_views, 1)

    # -- single view: text/image/video2world, transfer, action -------------------------------------
    def _single_view(self, mode: str, run: dict, *, image, video, control, control_videos, edge_preset,
                     blur_preset, control_scale, control_models, actions, num_frames, height, width, num_condition_frames,
                     continuation_frames, chaining, resize, latent_out, progress):
        cfg = self.config
        chunk = _check_int("config.num_frames", cfg.num_frames, 1)
        latent_frames(chunk)  # the model's chunk must be a VAE frame count
        c_next = _check_int("continuation_frames", continuation_frames, 1)
        if image is not None and video is not None and mode != "transfer":
            raise ValueError("pass image= or video=, not both")
        first, extra = None, (lambda span: {})
        total = cfg.num_frames if num_frames is None else _check_int("num_frames", num_frames, 1)

        if mode == "text2world":
            if image is not None or video is not None:
                raise ValueError("text2world takes no image or video; use image2world / video2world")
        elif mode == "image2world":
            if image is None:
                raise ValueError("image2world needs image= (3, H, W) or an image file")
            first = fit_frames(_as_image(image), height, width, resize=resize, name="image")
        elif mode == "video2world":
            if video is None:
                raise ValueError("video2world needs video= (3, T, H, W) or a video file")
            c = _check_int("num_condition_frames", DEFAULT_VIDEO_CONDITION_FRAMES if num_condition_frames is None
                           else num_condition_frames, 1)
            clip = _as_video(video)
            need = condition_pixel_frames(c)
            if clip.shape[1] < need:
                raise ValueError(f"video has {clip.shape[1]} frames; {c} latent conditioning frames need its last "
                                 f"{need} (4·({c} − 1) + 1)")
            first = fit_frames(clip[:, -need:], height, width, resize=resize, name="video")
        elif mode == "action":
            if chaining != "pixel":
                raise ValueError("action sampling continues from the last generated frame: chunk_conditioning "
                                 "must be 'pixel'")
            source = image if image is not None else video
            if source is None:
                raise ValueError("action sampling needs the first frame: image= or video= (its last frame)")
            frame = _as_image(source) if image is not None else _as_video(source)[:, -1:]
            first = fit_frames(frame, height, width, resize=resize, name="image" if image is not None else "video")
            chunks = self._action_chunks(actions)
            total_expected = 1 + len(chunks) * (chunk - 1)
            if num_frames is not None and total != total_expected:
                raise ValueError(f"num_frames={total} does not match {len(chunks)} action chunks: they make "
                                 f"1 + {len(chunks)}·({chunk} − 1) = {total_expected} frames (leave it unset)")
            total, c_next = total_expected, 1
            extra = lambda span: {"action": chunks[span.index][None].to(self.device)}  # noqa: E731
        else:  # transfer
            if video is None:
                raise ValueError("transfer needs video= (the input video the control signals come from)")
            source = fit_frames(_as_video(video), height, width, resize=resize, name="video")
            total = source.shape[1] if num_frames is None else total
            if total > source.shape[1]:
                raise ValueError(f"num_frames={total} exceeds the input video's {source.shape[1]} frames, which the "
                                 "control signals are computed from")
            if image is not None:
                first = fit_frames(_as_image(image), height, width, resize=resize, name="image")
            extra = self._transfer_inputs(source[:, :total], control, control_videos, edge_preset, blur_preset,
                                          control_scale, chaining, resize, control_models)
        return self._autoregressive(run, total=total, chunk=chunk, first=first, continuation=c_next,
                                    chaining=chaining, height=height, width=width, extra=extra,
                                    latent_out=latent_out, progress=progress)

    def _action_chunks(self, actions) -> Tensor:
        cfg = self.config
        k = cfg.actions_per_latent_frame * (latent_frames(cfg.num_frames) - 1)
        if actions is None:
            raise ValueError(f"action sampling needs actions= (chunks·{k}, {cfg.action_dim}): {k} actions per chunk")
        if isinstance(actions, (str, os.PathLike)):
            from cosmos_models.data.actions import load_actions
            actions, note = load_actions(actions, k)  # an official annotation .json, or a tensor file
            if note:
                warnings.warn(note, SamplerWarning, stacklevel=3)
        actions = torch.as_tensor(actions, dtype=torch.float32)
        if actions.dim() == 2 and actions.shape[1] == cfg.action_dim and actions.shape[0] % k == 0 and actions.shape[0]:
            actions = actions.reshape(-1, k, cfg.action_dim)
        if actions.dim() != 3 or actions.shape[1:] != (k, cfg.action_dim) or actions.shape[0] == 0:
            raise ValueError(f"actions has shape {tuple(actions.shape)}; expected (chunks·{k}, {cfg.action_dim}) or "
                             f"(chunks, {k}, {cfg.action_dim}): {k} actions per chunk of {cfg.num_frames} frames")
        return actions

    def _transfer_inputs(self, source: Tensor, control, control_videos, edge_preset, blur_preset, scale, chaining,
                         resize: bool, control_models=None):
        """Per-chunk control inputs: {"control_input": {modality: latents}, "control_weights": ...}."""
        from cosmos_models.sampling.control import ALIASES, control_inputs, latent_weight_map

        cfg = self.config
        _, total, height, width = source.shape
        given = {ALIASES.get(k, k): _as_video(v, f"control video {k!r}", (1, 3))[:, :total]
                 for k, v in (control_videos or {}).items()}
        if control is None:
            control = list(given) or ["edge"]
        names = [control] if isinstance(control, str) else list(control)
        weights = dict(control) if isinstance(control, Mapping) else None
        canonical = [ALIASES.get(n, n) for n in names]
        for raw, n in zip(names, canonical):
            if n not in cfg.control_modalities:
                raise ValueError(f"control modality {raw!r} is not one of this model's {cfg.control_modalities}")
        videos = control_inputs(source, canonical, control_videos=given, edge_preset=edge_preset,
                                blur_preset=blur_preset, resize=resize, control_models=control_models)
        maps = {}
        if weights is not None:
            parsed = {ALIASES.get(k, k): _weight_and_mask(v, k) for k, v in weights.items()}
            weights = {n: wt for n, (wt, _) in parsed.items()}
            for n, (wt, mask) in parsed.items():
                if mask is not None:  # the official spatio-temporal weight: mask x weight
                    maps[n] = wt * _mask_video(mask, total, height, width, f"control mask of {n!r}")
        h, w = height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
        if chaining == "latent":  # one encoding of the whole (padded) control videos on the stitched timeline
            padded = round_up_to_vae_frames(total)
            latents = {n: self.encode(_pad_frames(v, padded)) for n, v in videos.items()}
            n_lat = latent_frames(padded)
            lat_maps = {n: latent_weight_map(_pad_frames(m[None], padded)[0], (n_lat, h, w)) for n, m in maps.items()}

            def inputs(span: Span) -> dict:
                sl = slice(span.start, span.start + span.length)
                out = {"control_input": {n: z[:, :, sl] for n, z in latents.items()},
                       "control_context_scale": scale}
                if weights is not None:
                    out["control_weights"] = {n: lat_maps[n][:, sl].to(self.device) if n in lat_maps else float(wt)
                                              for n, wt in weights.items()}
                return out
            return inputs

        def inputs(span: Span) -> dict:  # pixel chaining: encode this chunk's slice of the controls
            n_lat = latent_frames(span.length)
            out = {"control_input": {n: self.encode(_pad_frames(v[:, span.start:], span.length))
                                     for n, v in videos.items()},
                   "control_context_scale": scale}
            if weights is not None:
                out["control_weights"] = {
                    n: latent_weight_map(_pad_frames(maps[n][None, span.start:], span.length)[0],
                                         (n_lat, h, w)).to(self.device) if n in maps else float(wt)
                    for n, wt in weights.items()}
            return out
        return inputs

    def _autoregressive(self, run: dict, *, total: int, chunk: int, first: Tensor | None, continuation: int,
                        chaining: str, height: int, width: int, extra: Callable[[Span], dict], latent_out: bool,
                        progress: bool):
        """Chunks of `chunk` pixel frames; chunk 0 conditioned on the pixel frames `first` (or none), each
        later one on the last `continuation` latent frames of what came before."""
        cfg = self.config
        h, w = height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
        c0 = 0 if first is None else latent_frames(first.shape[1])
        first_latents = self.encode(first) if first is not None else None
        if chaining == "pixel":
            plan = pixel_chunk_plan(total, chunk, condition_pixel_frames(c0), condition_pixel_frames(continuation))
        else:
            plan = latent_chunk_plan(latent_frames(round_up_to_vae_frames(total)), latent_frames(chunk), c0,
                                     continuation)
        if latent_out and chaining == "pixel" and len(plan) > 1:
            raise ValueError("output='latent' of a multi-chunk video needs chunk_conditioning='latent' (pixel "
                             "chaining re-encodes the overlap, so there is no single latent timeline)")
        bar = _progress_bar(progress, len(plan) * run["num_steps"], f"{cfg.name}: {len(plan)} chunk(s)")
        pieces: list[Tensor] = []  # pixel chaining: (3, n, H, W) frames; latent chaining: (1, 16, n, h, w)
        try:
            for index, (start, length) in enumerate(plan):
                span = Span(index, start, length, chaining)
                t = latent_frames(length) if chaining == "pixel" else length
                if index == 0:
                    cond = first_latents
                elif chaining == "pixel":
                    done = torch.cat(pieces, dim=1)
                    cond = self.encode(done[:, start:start + condition_pixel_frames(continuation)])
                else:
                    cond = torch.cat(pieces, dim=2)[:, :, -continuation:]
                latents = self._run_chunk(run, (t, h, w), cond, extra(span), bar)
                self.last_run.append(ChunkRecord(index, latents.cpu(), None if cond is None else cond.cpu(),
                                                 start, length, chaining))
                if chaining == "latent":
                    pieces.append(latents if index == 0 else latents[:, :, continuation:])
                elif latent_out:
                    pieces.append(latents)
                else:
                    frames = self.decode(latents)
                    keep = frames if index == 0 else frames[:, condition_pixel_frames(continuation):]
                    pieces.append(keep[:, : total - sum(p.shape[1] for p in pieces)])
        finally:
            bar.close()
        if latent_out:
            return torch.cat(pieces, dim=2)[0].cpu()
        if chaining == "latent":
            return self.decode(torch.cat(pieces, dim=2))[:, :total]
        return torch.cat(pieces, dim=1)

    def _run_chunk(self, run: dict, shape: tuple[int, int, int], cond: Tensor | None, inputs: dict, bar) -> Tensor:
        T, h, w = shape
        condition = None
        if cond is not None:
            c = cond.shape[2]
            gt = torch.zeros(1, self.config.latent_channels, T, h, w, device=self.device)
            gt[:, :, :c] = cond
            condition = (gt, solvers.condition_mask(T, c, device=self.device))
        return self.sample_latents(shape, condition=condition, model_inputs=inputs,
                                   progress=lambda i, n: bar.update(1), **run)

    # -- multiview ----------------------------------------------------------------------------------
    def _multiview(self, run: dict, views: int, image, video, view_indices, num_frames, num_condition_frames,
                   height, width, resize, latent_out, progress):
        cfg = self.config
        fpv = cfg.frames_per_view
        per_view = pixel_frames(fpv)
        if num_frames is not None and num_frames != per_view:
            raise ValueError(f"multiview generates {per_view} frames per view ({fpv} latent frames, "
                             f"config.frames_per_view); got num_frames={num_frames} (long multiview videos are "
                             "not chunked)")
        if image is not None and video is not None:
            raise ValueError("pass image= or video=, not both")
        h, w = height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
        T = views * fpv
        condition, cond_latents = None, None
        given = image if image is not None else video
        if given is not None:
            items = list(given)
            if len(items) != views:
                raise ValueError(f"multiview conditioning has {len(items)} entries for {views} views; give one "
                                 "image / video per view")
            if image is not None:
                frames = [fit_frames(_as_image(x, f"image[{i}]"), height, width, resize=resize, name=f"image[{i}]")
                          for i, x in enumerate(items)]
            else:
                c = _check_int("num_condition_frames", DEFAULT_VIDEO_CONDITION_FRAMES if num_condition_frames is None
                               else num_condition_frames, 1)
                need = condition_pixel_frames(c)
                clips = [_as_video(x, f"video[{i}]") for i, x in enumerate(items)]
                for i, clip in enumerate(clips):
                    if clip.shape[1] < need:
                        raise ValueError(f"video[{i}] has {clip.shape[1]} frames; {c} latent conditioning frames "
                                         f"need its last {need}")
                frames = [fit_frames(clip[:, -need:], height, width, resize=resize, name=f"video[{i}]")
                          for i, clip in enumerate(clips)]
            cond_latents = [self.encode(f) for f in frames]
            c = cond_latents[0].shape[2]
            if c >= fpv:
                raise ValueError(f"{c} conditioning latent frames per view leave nothing to generate in "
                                 f"{fpv} frames per view")
            gt = torch.zeros(1, cfg.latent_channels, T, h, w, device=self.device)
            mask = torch.zeros(1, 1, T, 1, 1, device=self.device)
            for v, z in enumerate(cond_latents):
                gt[:, :, v * fpv: v * fpv + c] = z
                mask[:, :, v * fpv: v * fpv + c] = 1
            condition = (gt, mask)
        if view_indices is None:
            view_indices = torch.arange(views)
        view_indices = torch.as_tensor(view_indices, dtype=torch.long).reshape(1, -1)
        if view_indices.shape[1] != views:
            raise ValueError(f"view_indices has {view_indices.shape[1]} entries for {views} views")
        if view_indices.min() < 0 or view_indices.max() >= cfg.view_embedding_count:
            raise ValueError(f"view_indices {view_indices[0].tolist()}: camera indices must be in [0, "
                             f"{cfg.view_embedding_count}) for {cfg.name} ({cfg.view_embedding_count} camera embeddings)")
        inputs = {"view_indices": view_indices.to(self.device), "num_views": views}
        bar = _progress_bar(progress, run["num_steps"], f"{cfg.name}: {views} views")
        try:
            latents = self.sample_latents((T, h, w), condition=condition, model_inputs=inputs,
                                          progress=lambda i, n: bar.update(1), **run)
        finally:
            bar.close()
        self.last_run.append(ChunkRecord(0, latents.cpu(), None if cond_latents is None else
                                         torch.cat(cond_latents, dim=2).cpu(), 0, T, "latent"))
        per = latents.split(fpv, dim=2)
        if latent_out:
            return torch.cat(per, dim=0).cpu()
        return torch.stack([self.decode(z) for z in per])


def _progress_bar(enabled: bool, total: int, desc: str):
    return progress_bar(total=total, desc=desc, enabled=enabled, leave=False)


__all__ = ["Sampler", "SamplerWarning", "ChunkRecord", "Span", "MODES", "CONDITION_SIGMA",
           "pixel_chunk_plan", "latent_chunk_plan", "round_up_to_vae_frames", "fit_frames", "load_tensor"]
