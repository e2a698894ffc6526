"""`cosmos sample`: generate a video with `cosmos_models.sampling.sampler.Sampler` and write it as an mp4.

    cosmos sample --config tiny --checkpoint runs/tiny/ema.safetensors --out runs/tiny/sample.mp4
    cosmos sample --checkpoint base/post-trained/81edfebe-..._ema_bf16.pt --vae tokenizer.pth \
        --text-encoder Cosmos-Reason1-7B/ --prompt "a robot arm picks up a red cube" --out cube.mp4
    cosmos sample --checkpoint ... --vae tokenizer.pth --spec assets/base/image2world.json --out outputs/
    cosmos sample --mode video2world --checkpoint base/post-trained/81edfebe-..._ema_bf16.pt \
        --vae tokenizer.pth --prompt-embedding prompt.pt --video input.mp4 --frames 181 --out long.mp4
    cosmos sample --mode transfer --checkpoint general/edge/61f5694b-..._ema_bf16.pt --video in.mp4 \
        --control edge:0.7 depth=general/depth/626e6618-..._ema_bf16.pt:0.5:depth_mask.mp4 \
        --control-video depth=depth.mp4 --out out.mp4

Weights (--checkpoint, --student, the CKPT of --control): safetensors, torch files (loaded with
weights_only=True; Transformer Engine _extra_state entries dropped and listed), torch.distributed
checkpoint folders (official iter_* folders and our step_* folders; a run folder means its newest
checkpoint, EMA weights preferred), diffusers folders. --vae: a diffusers AutoencoderKLWan folder or
the official tokenizer.pth. A file that cannot be loaded is one line saying why (--debug: the traceback).

Presets (cosmos_models.sampling.presets): the sampling settings of each released checkpoint (σ grid,
shift, steps, guidance, conditioning-frame timestep, seed, fps, negative prompt), picked from the
official checkpoint UUID in the file name or our file's metadata, else the config's default, or named
by --preset; any flag given explicitly overrides the preset. A distilled preset samples with the
few-step student sampler.

--control MODALITY[=CKPT][:WEIGHT[:MASK]] (Transfer2.5): each modality's latent goes in control slot 0
of its own checkpoint's branch (CKPT; default: the --checkpoint model's branch), all over one base
forward; WEIGHT (default 1) times MASK (a video, a folder of frames, or .npy/.pt, white = apply) is
mixed as officially (scalars as given; with a mask, capped to a sum of 1 at every position).

Prompts (--prompt, --negative-prompt): embedded by Cosmos-Reason1-7B as officially (cosmos_models.nets.
text_encoder): --text-encoder FOLDER, else $COSMOS_TEXT_ENCODER, else the Hugging Face cache (never a
download); each embedding cached on disk, the encoder freed before the DiT is moved to the device.
With guidance and no negative prompt, the preset's (the official default) is used.

--spec FILE (cosmos_models.sampling.specs): the official inference JSON of Predict2.5 ("inference_type"
+ "samples"), Transfer2.5 (per-sample objects with control blocks), multiview (camera blocks), as a
.json object or list or a .jsonl; the flags are the defaults of every entry. A bad entry fails alone
(named, with its field); the exit code is the number of entries that failed.

Without --checkpoint the config's network is randomly initialized (seeded, so a seed gives the same
video every time), without a prompt a random embedding is used, and without --vae a randomly
initialized VAE (the tiny one for tiny configs): all said loudly, so a tiny config runs end to end on a
CPU in seconds as a pipeline check.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from dataclasses import dataclass

import torch

from cosmos_kernels import use_backend
from cosmos_models.cli.run_flags import add_kernel_backend
from cosmos_models.nets.checkpoint import config_from_checkpoint, detect_config, read_state_dict, to_ours
from cosmos_models.nets.text_encoder import ENV_CACHE, ENV_ENCODER, PromptEncoder, TextEncoderNotFound, \
    cache_dir_flag, locate_text_encoder
from cosmos_models.sampling import presets
from cosmos_models.sampling.sampler import CHUNK_CONDITIONING, MODES, SOLVERS, Sampler, SamplerWarning, \
    condition_pixel_frames, loud_warning, pixel_chunk_plan, variant_modes
from cosmos_models.sampling.solvers import GRIDS
from cosmos_models.training.checkpointing import find_latest

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RANDOM_INIT_SEED = 0  # a network without --checkpoint is the same random network every run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    a = parser.add_argument
    a("--mode", choices=MODES, default=None,
      help="default: text2world / image2world / video2world from the inputs for a predict model, else the model's own")
    a("--config", default=None, help="model config name (default: recorded in the checkpoint, or found by its shapes)")
    a("--checkpoint", default=None, help="weights (see below); EMA weights preferred. Without it: random init")
    a("--student", default=None, help="weights of an rCM-distilled student (cosmos distill), instead of --checkpoint: "
                                      "sampled with its few-step sampler (--steps default 4, no guidance)")
    a("--lora", default=None, metavar="FILE[:SCALE]",
      help="apply a LoRA adapter (cosmos train --lora's lora.safetensors) unmerged, its update times SCALE (default 1)")
    a("--preset", default=None, choices=sorted(presets.PRESETS),
      help="sampling settings of a released checkpoint (default: recognized from the checkpoint file)")
    a("--vae", default=None, help="a diffusers AutoencoderKLWan folder or the official tokenizer.pth (WAN2.1). "
                                  "Without it: random init (the tiny VAE for tiny configs)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="the text prompt (embedded by the Reason1 text encoder)")
    prompt.add_argument("--prompt-embedding", default=None, help=".pt/.safetensors/.npy text embedding (N, C)")
    negative = parser.add_mutually_exclusive_group()
    negative.add_argument("--negative-prompt", default=None,
                          help="text of the unconditional pass of guidance (default: the preset's, the official one)")
    negative.add_argument("--negative-prompt-embedding", default=None,
                          help="text embedding for the unconditional pass of guidance")
    a("--text-encoder", default=None, metavar="FOLDER",
      help=f"transformers folder of Cosmos-Reason1-7B (default: ${ENV_ENCODER}, else the Hugging Face cache; "
           "never downloaded)")
    a("--text-encoder-device", default=None, metavar="DEVICE",
      help="where the text encoder runs (default: the sampling device; 'cpu' keeps its 17 GB off the GPU)")
    a("--embedding-cache", default=None, metavar="DIR",
      help=f"where prompt embeddings are cached (default: ${ENV_CACHE} or ~/.cache/cosmos-kernels/embeddings; "
           "'none': no cache)")
    a("--image", nargs="+", default=None, help="conditioning image (image2world, action first frame); multiview: one per view")
    a("--video", nargs="+", default=None,
      help="video2world conditioning video / transfer input / action start; multiview: one per view")
    a("--control", nargs="+", default=None, metavar="MODALITY[=CKPT][:WEIGHT[:MASK]]",
      help="transfer modalities (edge, blur (vis), depth, seg), each optionally with its own checkpoint, a weight "
           "and a mask (see below)")
    a("--control-video", nargs="+", default=[], metavar="MODALITY=PATH",
      help="given control videos (edge / blur are computed when not given; depth / seg computed by --depth-model / "
           "--seg-model when not given)")
    a("--depth-model", default=None, metavar="FOLDER",
      help="transformers depth estimator (e.g. Depth-Anything-V2) computing the depth control from the input video")
    a("--seg-model", default=None, metavar="FOLDER",
      help="transformers segmenter (Segformer, Mask2Former, ...) computing the seg control from the input video")
    a("--edge-preset", default="medium", help="Canny threshold preset of the edge control")
    a("--blur-preset", default="medium", help="preset of the blur control")
    a("--actions", default=None,
      help="action mode: an official annotation .json (per-frame \"state\" + \"continuous_gripper_state\", or "
           "\"action\") or (chunks*K, 7) actions (.pt/.npy/.safetensors)")
    a("--num-views", type=int, default=None, help="multiview: number of views")
    a("--steps", type=int, default=None, help="solver steps (default: the preset's)")
    a("--guidance", type=float, default=None, help="classifier-free guidance, official form cond + g*(cond - uncond); "
                                                   "0: conditional pass only (default: the preset's)")
    a("--frames", type=int, default=None, help="output frames (default: the config's; longer videos are generated in chunks)")
    a("--height", type=int, default=None)
    a("--width", type=int, default=None)
    a("--resize", action="store_true", help="scale and center-crop inputs of another size")
    a("--seed", type=int, default=None, help="default: the preset's (official: 1, Transfer 2025)")
    a("--solver", choices=SOLVERS, default="unipc")
    a("--grid", choices=GRIDS, default=None, help="sigma grid (default: the preset's)")
    a("--shift", type=float, default=None, help="timestep shift of the shifted grid (default: the preset's, 5)")
    a("--condition-frames", type=int, default=None, help="video2world latent conditioning frames (default 2)")
    a("--continuation-frames", type=int, default=2, help="latent frames each chunk of a long video takes from the previous one")
    a("--chunk-conditioning", choices=CHUNK_CONDITIONING, default="pixel")
    a("--condition-sigma", type=float, default=None,
      help="timestep (sigma) of the conditioning frames; negative: the step's own (default: the preset's)")
    a("--fps", type=float, default=None, help="mp4 frame rate (default: the preset's or the config's)")
    a("--device", default=None, help="default: cuda if available, else cpu")
    a("--dtype", choices=DTYPES, default=None, help="model dtype (default: bf16 on GPU, fp32 on CPU)")
    add_kernel_backend(parser)
    a("--no-progress", action="store_true")
    a("--views", nargs="+", default=None, metavar="CAMERA",
      help="multiview: the camera of each view, in the order of --image / --video, by its official name (front_wide, "
           "cross_right, rear_right, rear, rear_left, cross_left, front_tele; or camera_front_wide_120fov, ...); "
           "sets --num-views and the camera conditioning")
    a("--view-indices", type=int, nargs="+", default=None, metavar="CAMERA",
      help="multiview: the camera index of each view (official: front_wide 0, cross_right 1, rear_right 2, rear 3, "
           "rear_left 4, cross_left 5, front_tele 6; default 0, 1, ...)")
    a("--offload", action="store_true",
      help="keep one network on the device at a time (DiT while denoising, VAE while encoding/decoding; the text "
           "encoder is always freed first): the peak is the larger network's, at the cost of the moves")
    a("--vae-tile", default=None, metavar="PIXELS[:STRIDE]",
      help="VAE encode/decode in overlapping spatial tiles (seams blended; stride default 3/4 of a tile), e.g. 256")
    a("--dry-run", action="store_true",
      help="print the estimated FLOPs and peak device memory of each video (cosmos_models.sampling.estimate) and exit")
    a("--parallel", choices=("context", "batch"), default=None,
      help="under torchrun: 'context' (default) samples each video on all ranks with Ulysses context parallelism; "
           "'batch' deals the --spec entries out to the ranks")
    a("--spec", default=None, metavar="FILE",
      help="a batch: .json / .jsonl of the official inference fields, one video per entry (see below); --out is "
           "then a folder")
    a("--out", required=True, help="output .mp4 (multiview: <stem>_view<i>.mp4 per view); with --spec a folder of "
                                   "<name>.mp4. Each video gets a <stem>.json of the settings that made it")


# ----------------------------------------------------------------------------- flags
def _pairs(items, what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} entries are MODALITY=VALUE, got {item!r}")
        out[name] = value
    return out


def parse_control(item: str) -> tuple[str, str | None, float, str | None]:
    """MODALITY[=CKPT][:WEIGHT[:MASK]] -> (modality, checkpoint, weight, mask). The old form
    MODALITY=WEIGHT (a number) is still a weight."""
    head, _, tail = item.partition(":")
    name, sep, ckpt = head.partition("=")
    if not name:
        raise ValueError(f"--control entry {item!r}: expected MODALITY[=CKPT][:WEIGHT[:MASK]]")
    if sep and not ckpt:
        raise ValueError(f"--control entry {item!r}: '=' needs a checkpoint after it")
    weight_text, _, mask = tail.partition(":")
    try:
        if sep and not tail:
            weight, ckpt = float(ckpt), None  # MODALITY=WEIGHT
        else:
            weight = float(weight_text) if weight_text else 1.0
    except ValueError:
        if sep and not tail:
            weight = 1.0
        else:
            raise ValueError(f"--control entry {item!r}: the weight {weight_text!r} is not a number") from None
    return name, ckpt or None, weight, mask or None


def _controls(items) -> list[tuple[str, str | None, float, str | None]] | None:
    return None if items is None else [parse_control(item) for item in items]


def resolve_checkpoint(path: str | None) -> str | None:
    """A run folder (checkpoints/ with step_* folders) means its newest complete checkpoint."""
    if path is None or not os.path.isdir(path):
        return path
    root = os.path.join(path, "checkpoints")
    if os.path.isdir(root):
        latest = find_latest(root)
        if latest is None:
            raise ValueError(f"--checkpoint {path}: a run folder without a complete checkpoint under {root}")
        return latest
    return path


# ----------------------------------------------------------------------------- model, VAE, preset
def _build_model(args, dtype, notes: list[str]):
    """The network on the CPU (moved to the device once the text encoder is done with it)."""
    import cosmos_models as cm

    if args.student is not None:
        if args.checkpoint is not None:
            raise ValueError("pass --student or --checkpoint, not both")
        args.checkpoint = args.student
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if args.checkpoint is None:
        if args.config is None:
            raise ValueError(f"--config is needed without --checkpoint; known configs: {cm.configs()}")
        cfg = cm.get_config(args.config)
        loud_warning(f"WARNING: no --checkpoint: the {cfg.name} network is RANDOMLY INITIALIZED; the video shows "
                     "no learnt content (a pipeline check).")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # a function of the inputs and --seed, run after run
            return cm.build(cfg, device="cpu", dtype=dtype), "random init"  # the same network on every device
    weights = read_state_dict(args.checkpoint, prefer_ema=True, notes=notes)
    name = args.config or config_from_checkpoint(args.checkpoint) or detect_config(weights)
    if name is None:
        raise ValueError(f"{args.checkpoint}: its parameter names and shapes match no known config; pass --config "
                         f"(known: {cm.configs()})")
    model = cm.build(name, device="meta")
    cm.load_checkpoint(model, weights, prefer_ema=True)
    return model.to(dtype=dtype), args.checkpoint


def _build_vae(args, cfg, device):
    from cosmos_models.nets.vae import WanVAE

    if args.vae is not None:
        return WanVAE.load(args.vae).to(device), args.vae
    kind = "tiny" if cfg.name.startswith("tiny") else "wan2.1"
    loud_warning(f"WARNING: no --vae: using a RANDOMLY INITIALIZED {kind} WAN VAE; the decoded pixels are not a "
                 "real video (a pipeline check). Pass --vae <AutoencoderKLWan folder or tokenizer.pth> for real output.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the random VAE is the same in every run
        vae = WanVAE.from_config(kind)
    return vae.to(device), f"random {kind}"


def _preset(args, cfg) -> tuple[presets.Preset, str]:
    if args.preset is not None:
        preset = presets.get_preset(args.preset)
        if preset.config != cfg.name and not cfg.name.startswith("tiny"):
            raise ValueError(f"--preset {args.preset} is for {preset.config} models; this checkpoint is {cfg.name}")
        return preset, "--preset"
    return presets.preset_for_file(args.checkpoint, cfg)


def _add_branches(model, controls, notes: list[str]) -> None:
    """--control MODALITY=CKPT: that checkpoint's control branch, over this model's base."""
    for name, ckpt, _, _ in controls or ():
        if ckpt is None:
            continue
        if model.config.variant != "transfer":
            raise ValueError(f"--control {name}={ckpt}: only a Transfer2.5 model takes control checkpoints")
        from cosmos_models.sampling.control import ALIASES
        weights = to_ours(read_state_dict(resolve_checkpoint(ckpt), prefer_ema=True, notes=notes))
        model.add_control_branch(ALIASES.get(name, name), weights)


# ----------------------------------------------------------------------------- run
def run(args) -> int:
    with warnings.catch_warnings():
        # the loud warnings as plain text on stderr, every time (not Python's file:line form)
        # (said by rank 0 only: every rank of a torchrun sample has the same inputs)
        warnings.simplefilter("always" if os.environ.get("RANK", "0") == "0" else "ignore", SamplerWarning)
        warnings.showwarning = lambda message, *rest, **kw: print(message, file=sys.stderr)
        with use_backend(args.kernel_backend):
            return _run(args)


@dataclass
class Job:
    """One video: its name, where it came from, its settings (flag names) and its output path."""
    name: str
    origin: str
    settings: argparse.Namespace
    out: str
    chunk_frames: int | None = None
    error: str | None = None


def camera_indices(names: list[str]) -> list[int]:
    """--views: official camera names (front_wide, ..., or the long camera_front_wide_120fov form) -> view indices."""
    from cosmos_models.sampling.specs import CAMERAS

    out = []
    for name in names:
        short = re.sub(r"^camera_|_\d+fov$", "", name)
        short = {"rear_tele": "rear"}.get(short, short)  # the long name of the rear camera is rear_tele_30fov
        if short not in CAMERAS:
            raise ValueError(f"--views {name!r}: not an official camera; expected one of {list(CAMERAS)}")
        out.append(CAMERAS[short])
    if len(set(out)) != len(out):
        raise ValueError(f"--views {' '.join(names)}: a camera is named twice")
    return out


def _jobs(args) -> list[Job]:
    if args.views is not None:
        if args.view_indices is not None:
            raise ValueError("pass --views or --view-indices, not both")
        args.view_indices = camera_indices(args.views)
        if args.num_views is not None and args.num_views != len(args.view_indices):
            raise ValueError(f"--num-views {args.num_views} but --views names {len(args.view_indices)} cameras")
        args.num_views = len(args.view_indices)
    if args.spec is None:
        return [Job(os.path.splitext(os.path.basename(args.out))[0], "the command line", args, args.out)]
    from cosmos_models.sampling.specs import SpecError, read_specs

    jobs = []
    for entry in read_specs(args.spec):
        if isinstance(entry, SpecError):
            jobs.append(Job("?", "", args, "", error=str(entry)))
            continue
        settings = argparse.Namespace(**vars(args))
        chunk = entry.settings.pop("chunk_frames", None)
        for key, value in entry.settings.items():
            if key == "control":
                value = [c if isinstance(c, tuple) else parse_control(c) for c in value]
                settings.control_parsed = value
                continue
            if key == "control_video":
                settings.control_video = [f"{k}={v}" for k, v in value.items()]
                continue
            setattr(settings, key, value)  # (an entry always sets prompt and prompt_embedding, one of them None)
        jobs.append(Job(entry.name, entry.origin, settings, os.path.join(args.out, entry.name + ".mp4"), chunk))
    return jobs


def _control_models(args) -> dict[str, str]:
    """--depth-model / --seg-model: the networks computing depth / seg controls not given as videos."""
    return {k: v for k, v in (("depth", args.depth_model), ("seg", args.seg_model)) if v is not None}


def _job_controls(a):
    return getattr(a, "control_parsed", None) or _controls(a.control)


def _text_embeddings(jobs: list[Job], args, preset: presets.Preset, guidances: list[float], device,
                     lead: bool = True) -> tuple[str, PromptEncoder | None]:
    """Each job's prompt and negative-prompt texts (set on job.settings as `negative_text`; files are
    used as given), embedded by the Reason1 encoder: with the disk cache, all the batch's texts are
    computed here (by the lead rank; the others find them cached) and each job reads its own back when
    it runs (`_job_embeddings`), so memory holds one video's embeddings, not the batch's; without the
    cache they are kept in memory. The encoder is freed before returning, so the DiT never shares the
    GPU with it. Without a negative one, guidance > 0 uses the preset's negative prompt (the official
    default) when an encoder can be found. Returns (a note for the summary line, the encoder)."""
    for job, guidance in zip(jobs, guidances):
        a = job.settings
        a.negative_text = None
        if guidance > 0 and a.negative_prompt_embedding is None:
            a.negative_text = a.negative_prompt if a.negative_prompt is not None else preset.negative_prompt
        a.context_embedding, a.negative_embedding = a.prompt_embedding, a.negative_prompt_embedding
    texts = list(dict.fromkeys(t for j in jobs for t in (j.settings.prompt, j.settings.negative_text) if t is not None))
    if not texts:
        return "", None
    explicit = any(j.settings.prompt is not None or j.settings.negative_prompt is not None for j in jobs)
    try:
        encoder = PromptEncoder(args.text_encoder, device=args.text_encoder_device or device,
                                cache_dir=cache_dir_flag(args.embedding_cache))
    except TextEncoderNotFound:
        if explicit or args.text_encoder is not None:
            raise
        # only the default negative prompt wanted: the sampler's random stand-in, said loudly
        loud_warning("WARNING: no text encoder for the official default negative prompt; the unconditional pass "
                     "uses a random embedding. Pass --text-encoder FOLDER or --negative-prompt-embedding FILE.")
        for job in jobs:
            job.settings.negative_text = None
        return "", None
    if encoder.cache_dir is not None:
        if lead:
            encoder.warm(texts)
    else:  # no disk cache: every text in memory
        memory = dict(zip(texts, encoder(texts)))
        for job in jobs:
            job.settings.embedded = memory
    encoder.release()
    args.text_encoder_path = encoder.path
    return f"text embedded by {encoder.path} ({encoder.hits} cached, {encoder.misses} computed)", encoder


def _job_embeddings(a, encoder: PromptEncoder | None) -> None:
    """A job's context / negative embeddings from its texts, read back just before it runs."""
    memory = getattr(a, "embedded", None)
    for text, attr in ((a.prompt, "context_embedding"), (a.negative_text, "negative_embedding")):
        if text is not None and encoder is not None:
            setattr(a, attr, memory[text] if memory is not None else encoder.cached(text))


def _check_args(args) -> None:
    """Argument errors before any model is built (a 2B network takes a while)."""
    _check_settings(args)
    if args.spec is None and not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out must be an .mp4 path, got {args.out!r}")
    if args.parallel == "batch" and args.spec is None:
        raise ValueError("--parallel batch deals out the entries of a --spec; one video uses --parallel context")
    if args.spec is not None and args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out with --spec is a folder (one <name>.mp4 per entry), got {args.out!r}")
    lora_file = None
    if args.lora is not None:
        from cosmos_models.training.lora import split_spec
        lora_file = split_spec(args.lora)[0]
    for flag, path in (("--checkpoint", args.checkpoint), ("--student", args.student), ("--vae", args.vae),
                       ("--spec", args.spec), ("--lora", lora_file)):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{flag}: no file at {path!r}")
    if args.prompt is not None or args.negative_prompt is not None or args.text_encoder is not None:
        locate_text_encoder(args.text_encoder)  # a missing encoder is said before the network is built


def _check_settings(a) -> None:
    """The checks of one video's settings (the command line's, or a spec entry's)."""
    from cosmos_models.sampling.solvers import check_guidance

    if a.guidance is not None:
        check_guidance(a.guidance)
    for flag, value in (("--steps", a.steps), ("--frames", a.frames), ("--num-views", a.num_views)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if a.condition_frames is not None and a.condition_frames < 0:
        raise ValueError(f"--condition-frames must be >= 0, got {a.condition_frames}")
    controls = _job_controls(a) or []
    for flag, path in (("--prompt-embedding", a.prompt_embedding),
                       ("--negative-prompt-embedding", a.negative_prompt_embedding), ("--actions", a.actions),
                       *(("--image", p) for p in a.image or ()), *(("--video", p) for p in a.video or ()),
                       *((f"--control {c[0]}", c[1]) for c in controls),
                       *((f"--control {c[0]} mask", c[3]) for c in controls)):
        if path is not None and not isinstance(path, torch.Tensor) and not os.path.exists(path):
            raise FileNotFoundError(f"{flag}: no file at {path!r}")


def _run(args) -> int:
    from cosmos_models.sampling.parallel import join

    _check_args(args)
    jobs = _jobs(args)
    for job in jobs if args.spec is not None else ():  # (the command line's own were checked above)
        if job.error is None:
            try:
                _check_settings(job.settings)
            except (ValueError, OSError) as exc:
                job.error = f"{job.origin}: {exc}"
    if args.dry_run:
        return _dry_run(args, jobs)
    group = join(args.device, args.parallel)
    try:
        return _run_in(args, jobs, group)
    finally:
        group.close()


def _model_dtype(args, device: torch.device) -> torch.dtype:
    return DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)


def _guidance(a, preset: presets.Preset, distilled: bool) -> float:
    """A video's guidance: none for a distilled student, else its own or the preset's."""
    return 0.0 if distilled else (preset.guidance if a.guidance is None else a.guidance)


def _steps(a, preset: presets.Preset, distilled: bool) -> int | None:
    """A video's solver steps: its own, else the preset's; None for a --student (its sampler's default)."""
    return a.steps if a.steps is not None else (None if distilled and a.student else preset.steps)


def _vae_tile(spec: str | None) -> tuple[int, int | None] | None:
    if spec is None:
        return None
    tile, _, stride = spec.partition(":")
    try:
        return int(tile), (int(stride) if stride else None)
    except ValueError:
        raise ValueError(f"--vae-tile {spec!r}: expected PIXELS or PIXELS:STRIDE (integers)") from None


def _dry_run(args, jobs: list[Job]) -> int:
    """The estimate of every video, from the config alone (no weights are loaded unless the config can
    only be found from their shapes)."""
    import cosmos_models as cm
    from cosmos_models.distill.rcm import STUDENT_STEPS  # (imported when used: start-up stays light)
    from cosmos_models.nets.vae import TINY_CONFIG, WAN21_CONFIG
    from cosmos_models.sampling.estimate import estimate

    args.checkpoint = resolve_checkpoint(args.student or args.checkpoint)
    name = args.config or (config_from_checkpoint(args.checkpoint) if args.checkpoint else None)
    if name is None and args.checkpoint is not None:
        name = detect_config(read_state_dict(args.checkpoint, prefer_ema=True, notes=[]))
    if name is None:
        raise ValueError(f"--dry-run needs --config or a checkpoint whose config can be found; known: {cm.configs()}")
    cfg = cm.get_config(name)
    preset, why = _preset(args, cfg)
    distilled = args.student is not None or preset.distilled
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cp = world if args.parallel != "batch" else 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _model_dtype(args, device)
    tile = _vae_tile(args.vae_tile)
    vae_config = TINY_CONFIG if cfg.name.startswith("tiny") else WAN21_CONFIG
    print(f"cosmos sample --dry-run: {cfg.name}, preset {preset.name} (from {why}), {dtype}, "
          f"{'context parallel over ' + str(cp) + ' ranks' if cp > 1 else 'one device'}"
          + (", offload" if args.offload else "") + (f", VAE tiles of {tile[0]} px" if tile else ""))
    for job in jobs:
        if job.error is not None:
            print(f"  {job.error}")
            continue
        a = job.settings
        guidance = _guidance(a, preset, distilled)
        steps = _steps(a, preset, distilled) or STUDENT_STEPS
        total = a.frames or cfg.num_frames
        chunk = min(total, cfg.num_frames)
        chunks = 1 if total <= cfg.num_frames else len(pixel_chunk_plan(total, cfg.num_frames, 0,
                                                                          condition_pixel_frames(a.continuation_frames)))
        controls = _job_controls(a) or []
        est = estimate(cfg, frames=chunk if cfg.variant in ("predict", "transfer") else None, height=a.height,
                       width=a.width, steps=steps, grid=a.grid or preset.grid,
                       shift=preset.shift if a.shift is None else a.shift, guidance=guidance, chunks=chunks,
                       dtype=dtype, cp=cp, control_passes=max(1, len(controls)), distilled=distilled,
                       offload=args.offload, vae_config=vae_config, vae_tile=tile[0] if tile else None,
                       encodes_text=(a.prompt is not None or (guidance > 0 and a.negative_prompt_embedding is None))
                       and torch.device(args.text_encoder_device or device).type != "cpu")
        print(f"{job.name}: {total} frames in {chunks} chunk(s), {steps} steps, guidance {guidance:g}")
        for line in est.lines():
            print(f"  {line}")
    return 0


def _run_in(args, jobs: list[Job], group) -> int:
    device = group.device
    dtype = _model_dtype(args, device)
    lead = group.rank == 0  # says what the run does (every rank of a context-parallel run does the same)
    notes: list[str] = []
    model, model_source = _build_model(args, dtype, notes)
    cfg = model.config
    preset, why = _preset(args, cfg)
    controls = _controls(args.control)
    _add_branches(model, controls, notes)
    if args.lora is not None:
        from cosmos_models.training.lora import apply_adapter

        applied = apply_adapter(model, args.lora)
        notes.append(f"LoRA {args.lora}: rank {applied['rank']}, alpha {applied['alpha']:g}, scale {applied['scale']:g} "
                     f"on {','.join(applied['targets'])}")
        model_source = f"{model_source} + LoRA {args.lora}"
    for note in notes if lead else ():
        print(f"cosmos sample: {note}", file=sys.stderr)
    distilled = args.student is not None or preset.distilled
    runnable = [j for j in jobs if j.error is None]
    guidances = [_guidance(j.settings, preset, distilled) for j in runnable]
    # rank 0 embeds the texts first and fills the disk cache; the other ranks then read it
    if not lead:
        group.barrier()
    try:
        text_note, encoder = _text_embeddings(runnable, args, preset, guidances, device, lead=lead)
    finally:
        if lead:  # also when it failed: the other ranks then try (and fail) on their own, not wait forever
            group.barrier()
    if not args.offload:  # (with it the Sampler keeps each network in host memory until it is needed)
        model = model.to(device=device, dtype=dtype)  # after the text encoder is freed: the peak is the DiT's
    group.context_parallel(model)
    vae, vae_source = _build_vae(args, cfg, "cpu" if args.offload else device)
    tile = _vae_tile(args.vae_tile)
    if tile is not None:
        vae.enable_tiling(*tile)
    if distilled:
        from cosmos_models.distill.rcm import StudentSampler
        sampler = StudentSampler(model, vae, device=device, dtype=dtype, offload=args.offload)
    else:
        sampler = Sampler(model, vae, device=device, dtype=dtype, offload=args.offload)
    context = dict(args=args, cfg=cfg, preset=preset, preset_why=why, distilled=distilled, sampler=sampler,
                   device=device, dtype=dtype, model_source=model_source, vae_source=vae_source, group=group,
                   encoder=encoder)
    failed = [j for j in jobs if j.error is not None]
    for index, (job, guidance) in enumerate(zip(runnable, guidances)):
        if not group.mine(index):
            continue
        if args.spec is None:  # one video: its errors are the command's (one line, exit 2)
            _generate(job, guidance, context)
            continue
        try:
            _generate(job, guidance, context)
        except (ValueError, TypeError, OSError) as exc:
            job.error = f"{job.origin}: {' '.join(str(exc).split())}"
            failed.append(job)
            if group.writes:
                print(f"cosmos sample: FAILED {job.error}", file=sys.stderr)
    if text_note and lead:
        print(f"cosmos sample: {text_note}")
    if args.spec is None:
        return 0
    # batch mode: each rank knows its own failures (and every rank the spec's unreadable entries)
    unreadable = sum(1 for j in jobs if j.error is not None and j not in runnable)
    ran_failed = len(failed) - unreadable
    total_failed = unreadable + (group.total(ran_failed) if group.mode == "batch" else ran_failed)
    if lead:
        print(f"cosmos sample: {len(jobs) - total_failed} of {len(jobs)} spec entries written to {args.out}"
              + (f" by {group.world} ranks ({group.mode} parallel)" if group.world > 1 else "")
              + (f"; {total_failed} failed:" if total_failed else ""))
        for job in failed:
            print(f"  {job.error}", file=sys.stderr)
    return min(total_failed, 100)  # the exit code is the number of failed entries (0: all written)


def _generate(job: Job, guidance: float, c: dict) -> None:
    from cosmos_models.distill.rcm import STUDENT_STEPS
    from cosmos_models.sampling import record

    a, cfg, preset, distilled = job.settings, c["cfg"], c["preset"], c["distilled"]
    _job_embeddings(a, c["encoder"])
    if job.chunk_frames is not None and job.chunk_frames != cfg.num_frames:
        raise ValueError(f"num_video_frames_per_chunk={job.chunk_frames}: this model ({cfg.name}) generates "
                         f"{cfg.num_frames} frames per chunk")
    controls = _job_controls(a)
    if controls is None and preset.control is not None and cfg.variant == "transfer":
        controls = [(preset.control, None, 1.0, None)]
    mode = a.mode
    if mode is None:
        if cfg.variant != "predict":
            mode = variant_modes(cfg)[0]
        else:
            mode = "video2world" if a.video else "image2world" if a.image else "text2world"
    single = mode != "multiview"
    for flag, values in (("--image", a.image), ("--video", a.video)):
        if single and values is not None and len(values) > 1:
            raise ValueError(f"{flag} takes one path in {mode} mode (several only for multiview)")
    image = a.image[0] if single and a.image else a.image
    video = a.video[0] if single and a.video else a.video
    steps = _steps(a, preset, distilled)
    seed = preset.seed if a.seed is None else a.seed
    cond_sigma = preset.condition_sigma if a.condition_sigma is None else (
        None if a.condition_sigma < 0 else a.condition_sigma)
    control = None if controls is None else {n: (w, m) if m else w for n, _, w, m in controls}
    grid = a.grid or preset.grid
    shift = preset.shift if a.shift is None else a.shift
    fps = a.fps or preset.fps
    group = c["group"]
    if group.writes:
        os.makedirs(os.path.dirname(os.path.abspath(job.out)), exist_ok=True)
    sampler = c["sampler"]
    paths = sampler.generate(
        mode, prompt_embedding=a.context_embedding, negative_prompt_embedding=a.negative_embedding,
        image=image, video=video, control=control,
        control_videos=_pairs(a.control_video, "--control-video") or None, edge_preset=a.edge_preset,
        blur_preset=a.blur_preset, control_models=_control_models(c["args"]), actions=a.actions,
        num_views=a.num_views, view_indices=a.view_indices,
        num_frames=a.frames, height=a.height, width=a.width, num_steps=steps,
        guidance_scale=None if distilled else guidance, solver=a.solver, shift=shift, grid=grid, seed=seed,
        num_condition_frames=a.condition_frames, continuation_frames=a.continuation_frames,
        chunk_conditioning=a.chunk_conditioning, condition_sigma=cond_sigma, resize=a.resize, fps=fps,
        progress=not a.no_progress and group.writes, output=job.out if group.writes else "tensor")
    if not group.writes:
        return  # a context-parallel rank other than 0: the same video, written by rank 0
    args, device, dtype = c["args"], c["device"], c["dtype"]
    kind = "rCM student steps" if distilled else f"{a.solver} steps ({grid} grid)"
    print(f"cosmos sample: {job.name}: {mode} with {cfg.name} ({c['model_source']}; VAE: {c['vae_source']}) on "
          f"{device} {dtype}, preset {preset.name} (from {c['preset_why']}), {len(sampler.last_run)} chunk(s) x {steps or STUDENT_STEPS} {kind}, "
          f"guidance {guidance}, seed {seed}" + (f", {group.world} ranks context parallel" if group.mode == "context"
                                                 else f", rank {group.rank} of {group.world}" if group.world > 1 else ""))
    paths = paths if isinstance(paths, list) else [paths]
    for path in paths:
        print(f"wrote {path}")
    inputs = [p for p in ([*(a.image or ()), *(a.video or ())] + ([a.actions] if a.actions else [])) if p]
    checkpoint = args.student or args.checkpoint
    sidecar = record.write_record(job.out, {
        "name": job.name, "origin": job.origin, "outputs": paths, "mode": mode, "config": cfg.name,
        "checkpoint": None if args.student else args.checkpoint, "student": args.student,
        "checkpoint_sha256": record.file_digest(checkpoint), "model": c["model_source"],
        "lora": args.lora, "preset": preset.name, "vae": args.vae, "vae_sha256": record.file_digest(args.vae), "vae_source": c["vae_source"],
        "prompt": a.prompt, "prompt_embedding": a.prompt_embedding,
        "negative_prompt": getattr(a, "negative_text", None), "negative_prompt_embedding": a.negative_prompt_embedding,
        "text_encoder": getattr(args, "text_encoder_path", None) if a.prompt or getattr(a, "negative_text", None)
        else None,
        "image": list(a.image or []), "video": list(a.video or []), "actions": a.actions,
        "inputs_sha256": {p: record.file_digest(p) for p in inputs},
        "control": [{"modality": n, "checkpoint": ck, "weight": w, "mask": m} for n, ck, w, m in controls or []],
        "control_video": _pairs(a.control_video, "--control-video"), "control_models": _control_models(args),
        "edge_preset": a.edge_preset,
        "blur_preset": a.blur_preset, "num_views": a.num_views, "view_indices": a.view_indices,
        "steps": steps, "guidance": guidance, "solver": a.solver, "grid": grid, "shift": shift, "seed": seed,
        "condition_sigma": cond_sigma, "condition_frames": a.condition_frames,
        "continuation_frames": a.continuation_frames, "chunk_conditioning": a.chunk_conditioning,
        "frames": a.frames, "height": a.height, "width": a.width, "fps": fps, "resize": a.resize,
        "device": str(device), "dtype": {v: k for k, v in DTYPES.items()}[dtype], "kernel_backend": args.kernel_backend,
        "distilled": distilled, "ranks": group.world, "parallel": group.mode})
    print(f"wrote {sidecar}")
