"""`cosmos sample`: generate a video with `cosmos_models.sampling.sampler.Sampler` and write it as an mp4.

    cosmos sample --config tiny --checkpoint runs/tiny/ema.safetensors --out runs/tiny/sample.mp4
    cosmos sample --mode video2world --config predict2.5-2b --checkpoint ckpt.safetensors --vae wan_vae/ \\
        --prompt-embedding prompt.pt --video input.mp4 --frames 181 --out long.mp4
    cosmos sample --mode transfer --config transfer2.5-2b ... --video in.mp4 --control edge depth=0.5 \\
        --control-video depth=depth.mp4 --out out.mp4

Without --checkpoint the config's network is randomly initialized, without --prompt-embedding a random
embedding is used, and without --vae a randomly initialized VAE (the tiny one for tiny configs): all
said loudly, so a tiny config runs end to end on a CPU in seconds as a pipeline check.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from cosmos_kernels import use_backend
from cosmos_models.cli.run_flags import add_kernel_backend
from cosmos_models.nets.checkpoint import config_from_checkpoint
from cosmos_models.sampling.sampler import CHUNK_CONDITIONING, CONDITION_SIGMA, DEFAULT_SEED, MODES, SOLVERS, \
    Sampler, SamplerWarning, load_tensor, loud_warning, \
    variant_modes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="default: text2world / image2world / video2world from the inputs for a predict model, "
                             "else the model's own mode")
    parser.add_argument("--config", default=None,
                        help="model config name (default: the one recorded in the checkpoint)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights: ours (safetensors from save_checkpoint / training export), official or "
                             "diffusers; EMA weights preferred. Without it: random init")
    parser.add_argument("--student", default=None,
                        help="weights of an rCM-distilled student (cosmos distill), instead of --checkpoint: sampled "
                             "with its few-step sampler (--steps default 4, no guidance)")
    parser.add_argument("--vae", default=None,
                        help="a diffusers-format AutoencoderKLWan folder (WAN2.1). Without it: random init "
                             "(the tiny VAE for tiny configs)")
    parser.add_argument("--prompt-embedding", default=None, help=".pt/.safetensors/.npy text embedding (N, C)")
    parser.add_argument("--negative-prompt-embedding", default=None,
                        help="text embedding for the unconditional pass of guidance")
    parser.add_argument("--image", nargs="+", default=None,
                        help="conditioning image (image2world, action first frame); multiview: one per view")
    parser.add_argument("--video", nargs="+", default=None,
                        help="video2world conditioning video / transfer input / action start; multiview: one per view")
    parser.add_argument("--control", nargs="+", default=None, metavar="MODALITY[=WEIGHT]",
                        help="transfer modalities (edge, blur (vis), depth, seg), each with an optional weight: a "
                             "number or a mask file (.pt/.npy, (H, W) or (T, H, W))")
    parser.add_argument("--control-video", nargs="+", default=[], metavar="MODALITY=PATH",
                        help="given control videos (depth and seg must be given; edge / blur are computed)")
    parser.add_argument("--edge-preset", default="medium", help="Canny threshold preset of the edge control")
    parser.add_argument("--blur-preset", default="medium", help="preset of the blur control")
    parser.add_argument("--actions", default=None, help="action mode: (chunks*K, 7) actions (.pt/.npy/.safetensors)")
    parser.add_argument("--num-views", type=int, default=None, help="multiview: number of views")
    parser.add_argument("--steps", type=int, default=None, help="solver steps (default: the config's)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance, official form cond + g*(cond - uncond); 0: conditional "
                             "pass only (default: the config's)")
    parser.add_argument("--frames", type=int, default=None,
                        help="output frames (default: the config's; longer videos are generated in chunks)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--resize", action="store_true", help="scale and center-crop inputs of another size")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--solver", choices=SOLVERS, default="unipc")
    parser.add_argument("--shift", type=float, default=5.0, help="timestep shift of the sigma grid")
    parser.add_argument("--condition-frames", type=int, default=None,
                        help="video2world latent conditioning frames (default 2)")
    parser.add_argument("--continuation-frames", type=int, default=2,
                        help="latent frames each chunk of a long video takes from the previous one")
    parser.add_argument("--chunk-conditioning", choices=CHUNK_CONDITIONING, default="pixel")
    parser.add_argument("--condition-sigma", type=float, default=CONDITION_SIGMA,
                        help="timestep (sigma) of the conditioning frames; negative: the step's own")
    parser.add_argument("--fps", type=float, default=None, help="mp4 frame rate (default: the config's)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: bf16 on GPU, fp32 on CPU)")
    add_kernel_backend(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="output .mp4 (multiview: <stem>_view<i>.mp4 per view)")


def _pairs(items, what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} entries are MODALITY=VALUE, got {item!r}")
        out[name] = value
    return out


def _control(items):
    if items is None:
        return None
    if all("=" not in item for item in items):
        return list(items)
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            out[name] = 1.0
            continue
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = load_tensor(value, "mask")
    return out


def _build_model(args, device, dtype):
    import cosmos_models as cm

    if args.student is not None:
        if args.checkpoint is not None:
            raise ValueError("pass --student or --checkpoint, not both")
        args.checkpoint = args.student

    name = args.config or (config_from_checkpoint(args.checkpoint) if args.checkpoint else None)
    if name is None:
        raise ValueError(f"--config is needed (the checkpoint records none); known configs: {cm.configs()}")
    cfg = cm.get_config(name)
    if args.checkpoint is None:
        loud_warning(f"WARNING: no --checkpoint: the {cfg.name} network is RANDOMLY INITIALIZED; the video shows "
                     "no learnt content (a pipeline check).")
        return cm.build(cfg, device=device, dtype=dtype), "random init"
    model = cm.build(cfg, device="meta")
    cm.load_checkpoint(model, args.checkpoint, prefer_ema=True)
    return model.to(device=device, dtype=dtype), args.checkpoint


def _build_vae(args, cfg, device):
    from cosmos_models.nets.vae import WanVAE

    if args.vae is not None:
        return WanVAE.from_pretrained(args.vae).to(device), args.vae
    kind = "tiny" if cfg.name.startswith("tiny") else "wan2.1"
    loud_warning(f"WARNING: no --vae: using a RANDOMLY INITIALIZED {kind} WAN VAE; the decoded pixels are not a "
                 "real video (a pipeline check). Pass --vae <AutoencoderKLWan folder> for real output.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the random VAE is the same in every run
        vae = WanVAE.from_config(kind)
    return vae.to(device), f"random {kind}"


def run(args) -> int:
    with warnings.catch_warnings():
        # the loud warnings as plain text on stderr, every time (not Python's file:line form)
        warnings.simplefilter("always", SamplerWarning)
        warnings.showwarning = lambda message, *rest, **kw: print(message, file=sys.stderr)
        try:
            with use_backend(args.kernel_backend):
                return _run(args)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            print(f"cosmos sample: error: {exc}", file=sys.stderr)
            return 2


def _steps_text(args, cfg) -> str:
    if args.student is not None:
        return f"{args.steps or 4} rCM student steps"
    return f"{args.steps or cfg.sample_steps} {args.solver} steps"


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
    for flag, path in (("--checkpoint", args.checkpoint), ("--student", args.student), ("--prompt-embedding", args.prompt_embedding),
                       ("--negative-prompt-embedding", args.negative_prompt_embedding), ("--actions", args.actions),
                       *(("--image", p) for p in args.image or ()), *(("--video", p) for p in args.video or ())):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{flag}: no file at {path!r}")


def _run(args) -> int:
    _check_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, model_source = _build_model(args, device, dtype)
    cfg = model.config
    mode = args.mode
    if mode is None:
        if cfg.variant != "predict":
            mode = variant_modes(cfg)[0]
        else:
            mode = "video2world" if args.video else "image2world" if args.image else "text2world"
    vae, vae_source = _build_vae(args, cfg, device)
    if args.student is not None:
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
    paths = sampler.generate(
        mode, prompt_embedding=args.prompt_embedding, negative_prompt_embedding=args.negative_prompt_embedding,
        image=image, video=video, control=_control(args.control),
        control_videos=_pairs(args.control_video, "--control-video") or None, edge_preset=args.edge_preset,
        blur_preset=args.blur_preset, actions=args.actions, num_views=args.num_views, num_frames=args.frames,
        height=args.height, width=args.width, num_steps=args.steps, guidance_scale=args.guidance,
        solver=args.solver, shift=args.shift, seed=args.seed, num_condition_frames=args.condition_frames,
        continuation_frames=args.continuation_frames, chunk_conditioning=args.chunk_conditioning,
        condition_sigma=None if args.condition_sigma < 0 else args.condition_sigma, resize=args.resize,
        fps=args.fps, progress=not args.no_progress, output=args.out)
    print(f"cosmos sample: {mode} with {cfg.name} ({model_source}; VAE: {vae_source}) on {device} {dtype}, "
          f"{len(sampler.last_run)} chunk(s) x {_steps_text(args, cfg)}, "
          f"guidance {0.0 if args.student else cfg.guidance if args.guidance is None else args.guidance}, seed {args.seed}")
    for path in paths if isinstance(paths, list) else [paths]:
        print(f"wrote {path}")
    return 0
