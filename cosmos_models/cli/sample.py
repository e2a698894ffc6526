"""`cosmos sample`: generate a video with `cosmos_models.sampling.sampler.Sampler` and write it as an mp4.

    cosmos sample --config tiny --checkpoint runs/tiny/ema.safetensors --out runs/tiny/sample.mp4
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

Without --checkpoint the config's network is randomly initialized (seeded, so a seed gives the same
video every time), without --prompt-embedding a random embedding is used, and without --vae a randomly
initialized VAE (the tiny one for tiny configs): all said loudly, so a tiny config runs end to end on a
CPU in seconds as a pipeline check.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from cosmos_kernels import use_backend
from cosmos_models.cli.run_flags import add_kernel_backend
from cosmos_models.nets.checkpoint import config_from_checkpoint, detect_config, read_state_dict, to_ours
from cosmos_models.sampling import presets
from cosmos_models.sampling.sampler import CHUNK_CONDITIONING, MODES, SOLVERS, Sampler, SamplerWarning, \
    loud_warning, variant_modes
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
    a("--preset", default=None, choices=sorted(presets.PRESETS),
      help="sampling settings of a released checkpoint (default: recognized from the checkpoint file)")
    a("--vae", default=None, help="a diffusers AutoencoderKLWan folder or the official tokenizer.pth (WAN2.1). "
                                  "Without it: random init (the tiny VAE for tiny configs)")
    a("--prompt-embedding", default=None, help=".pt/.safetensors/.npy text embedding (N, C)")
    a("--negative-prompt-embedding", default=None, help="text embedding for the unconditional pass of guidance")
    a("--image", nargs="+", default=None, help="conditioning image (image2world, action first frame); multiview: one per view")
    a("--video", nargs="+", default=None,
      help="video2world conditioning video / transfer input / action start; multiview: one per view")
    a("--control", nargs="+", default=None, metavar="MODALITY[=CKPT][:WEIGHT[:MASK]]",
      help="transfer modalities (edge, blur (vis), depth, seg), each optionally with its own checkpoint, a weight "
           "and a mask (see below)")
    a("--control-video", nargs="+", default=[], metavar="MODALITY=PATH",
      help="given control videos (depth and seg must be given; edge / blur are computed)")
    a("--edge-preset", default="medium", help="Canny threshold preset of the edge control")
    a("--blur-preset", default="medium", help="preset of the blur control")
    a("--actions", default=None, help="action mode: (chunks*K, 7) actions (.pt/.npy/.safetensors)")
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
    a("--out", required=True, help="output .mp4 (multiview: <stem>_view<i>.mp4 per view)")


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
def _build_model(args, device, dtype, notes: list[str]):
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
            return cm.build(cfg, device=device, dtype=dtype), "random init"
    weights = read_state_dict(args.checkpoint, prefer_ema=True, notes=notes)
    name = args.config or config_from_checkpoint(args.checkpoint) or detect_config(weights)
    if name is None:
        raise ValueError(f"{args.checkpoint}: its parameter names and shapes match no known config; pass --config "
                         f"(known: {cm.configs()})")
    model = cm.build(name, device="meta")
    cm.load_checkpoint(model, weights, prefer_ema=True)
    return model.to(device=device, dtype=dtype), args.checkpoint


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
        warnings.simplefilter("always", SamplerWarning)
        warnings.showwarning = lambda message, *rest, **kw: print(message, file=sys.stderr)
        with use_backend(args.kernel_backend):
            return _run(args)


def _check_args(args) -> None:
    """Argument errors before any model is built (a 2B network takes a while)."""
    from cosmos_models.sampling.solvers import check_guidance

    if args.guidance is not None:
        check_guidance(args.guidance)
    for flag, value in (("--steps", args.steps), ("--frames", args.frames), ("--num-views", args.num_views),
                        ("--condition-frames", args.condition_frames)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out must be an .mp4 path, got {args.out!r}")
    controls = _controls(args.control) or []
    for flag, path in (("--checkpoint", args.checkpoint), ("--student", args.student), ("--vae", args.vae),
                       ("--prompt-embedding", args.prompt_embedding),
                       ("--negative-prompt-embedding", args.negative_prompt_embedding), ("--actions", args.actions),
                       *(("--image", p) for p in args.image or ()), *(("--video", p) for p in args.video or ()),
                       *((f"--control {c[0]}", c[1]) for c in controls), *((f"--control {c[0]} mask", c[3]) for c in controls)):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{flag}: no file at {path!r}")


def _run(args) -> int:
    _check_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    notes: list[str] = []
    model, model_source = _build_model(args, device, dtype, notes)
    cfg = model.config
    preset, why = _preset(args, cfg)
    controls = _controls(args.control)
    if controls is None and preset.control is not None and cfg.variant == "transfer":
        controls = [(preset.control, None, 1.0, None)]
    _add_branches(model, controls, notes)
    model = model.to(device=device, dtype=dtype)
    for note in notes:
        print(f"cosmos sample: {note}", file=sys.stderr)
    mode = args.mode
    if mode is None:
        if cfg.variant != "predict":
            mode = variant_modes(cfg)[0]
        else:
            mode = "video2world" if args.video else "image2world" if args.image else "text2world"
    vae, vae_source = _build_vae(args, cfg, device)
    distilled = args.student is not None or preset.distilled
    if distilled:
        from cosmos_models.distill.rcm import StudentSampler
        sampler = StudentSampler(model, vae, device=device, dtype=dtype)
    else:
        sampler = Sampler(model, vae, device=device, dtype=dtype)
    single = mode != "multiview"
    for flag, values in (("--image", args.image), ("--video", args.video)):
        if single and values is not None and len(values) > 1:
            raise ValueError(f"{flag} takes one path in {mode} mode (several only for multiview)")
    image = args.image[0] if single and args.image else args.image
    video = args.video[0] if single and args.video else args.video
    steps = args.steps if args.steps is not None else (None if distilled and args.student else preset.steps)
    guidance = 0.0 if distilled else (preset.guidance if args.guidance is None else args.guidance)
    seed = preset.seed if args.seed is None else args.seed
    cond_sigma = preset.condition_sigma if args.condition_sigma is None else (
        None if args.condition_sigma < 0 else args.condition_sigma)
    control = None if controls is None else {n: (w, m) if m else w for n, _, w, m in controls}
    paths = sampler.generate(
        mode, prompt_embedding=args.prompt_embedding, negative_prompt_embedding=args.negative_prompt_embedding,
        image=image, video=video, control=control,
        control_videos=_pairs(args.control_video, "--control-video") or None, edge_preset=args.edge_preset,
        blur_preset=args.blur_preset, actions=args.actions, num_views=args.num_views, num_frames=args.frames,
        height=args.height, width=args.width, num_steps=steps, guidance_scale=None if distilled else guidance,
        solver=args.solver, shift=preset.shift if args.shift is None else args.shift,
        grid=args.grid or preset.grid, seed=seed, num_condition_frames=args.condition_frames,
        continuation_frames=args.continuation_frames, chunk_conditioning=args.chunk_conditioning,
        condition_sigma=cond_sigma, resize=args.resize, fps=args.fps or preset.fps,
        progress=not args.no_progress, output=args.out)
    kind = "rCM student steps" if distilled else f"{args.solver} steps ({args.grid or preset.grid} grid)"
    print(f"cosmos sample: {mode} with {cfg.name} ({model_source}; VAE: {vae_source}) on {device} {dtype}, preset "
          f"{preset.name} (from {why}), {len(sampler.last_run)} chunk(s) x {steps or 4} {kind}, guidance {guidance}, "
          f"seed {seed}")
    for path in paths if isinstance(paths, list) else [paths]:
        print(f"wrote {path}")
    return 0
