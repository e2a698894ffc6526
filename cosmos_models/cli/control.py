"""`cosmos control`: a Transfer2.5 control video computed from an input video.

    cosmos control --kind edge --video clip.mp4 --out clip_edge.mp4                 # Canny, preset medium
    cosmos control --kind blur --preset high --video clip.mp4 --out clip_blur.mp4
    cosmos control --kind depth --model Depth-Anything-V2-Small-hf/ --video clip.mp4 --out clip_depth.mp4
    cosmos control --kind seg --model segformer-b0-finetuned-ade-512-512/ --video clip.mp4 --out clip_seg.mp4
    cosmos control --kind depth --model Depth-Anything-V2-Small-hf/ --data DATASET   # DATASET/depth/<name>.mp4

Edge and blur are the official inference presets (cosmos_models.sampling.control); depth and seg are
computed by the transformers model in --model (cosmos_models.sampling.control_models). The output has
the input's frames, size and frame rate, and is what `cosmos sample --mode transfer --control-video
KIND=OUT.mp4` takes; `cosmos sample --depth-model / --seg-model` computes the same on the fly.

--data DATASET (the official single-view layout, DATASET/videos/<name>.mp4): the control of every video
without one yet goes to DATASET/<kind>/<name>.mp4, where `cosmos train --control depth` (or seg) reads
it. Edge and blur need no files: training computes them from each clip.
"""
from __future__ import annotations

import argparse
import os
import sys

KINDS = ("edge", "blur", "depth", "seg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cosmos_models.sampling.control import PRESETS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    a = parser.add_argument
    a("--kind", required=True, choices=KINDS, help="the control to compute (blur is the official 'vis')")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="the input video")
    source.add_argument("--data", metavar="DATASET", help="every video of DATASET/videos/ (see below)")
    a("--out", default=None, help="the control video (.mp4), with --video")
    a("--overwrite", action="store_true", help="--data: replace existing control videos")
    a("--preset", default="medium", choices=PRESETS, help="edge / blur: the official strength preset")
    a("--model", default=None, metavar="FOLDER", help="depth / seg: the transformers model folder")
    a("--frames", type=int, default=None, help="only the first N frames")
    a("--device", default=None, help="depth / seg: where the model runs (default: cuda if available, else cpu)")
    a("--batch-size", type=int, default=8, help="depth / seg: frames per model call")


def run(args) -> int:
    if args.video is not None and (args.out is None or not args.out.lower().endswith(".mp4")):
        raise ValueError(f"--out {args.out!r}: --video needs --out, a path ending in .mp4")
    if args.data is not None and args.out is not None:
        raise ValueError("--data writes DATASET/<kind>/<name>.mp4; --out is for --video")
    if args.kind in ("depth", "seg") and args.model is None:
        raise ValueError(f"--kind {args.kind} needs --model FOLDER (a transformers "
                         f"{'depth-estimation' if args.kind == 'depth' else 'segmentation'} model)")
    if args.kind in ("edge", "blur") and args.model is not None:
        raise ValueError(f"--model is for depth / seg; --kind {args.kind} is computed with OpenCV (--preset)")
    if args.data is not None and args.frames is not None:
        raise ValueError("--frames is for --video: a dataset's control videos must have all their clip's frames")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    make = _maker(args)
    if args.video is not None:
        _one(make, args.video, args.out, args.frames)
        return 0
    from cosmos_models.data.clips import OFFICIAL_VIDEOS, VIDEO_EXTENSIONS

    videos_dir = os.path.join(args.data, OFFICIAL_VIDEOS)
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"--data {args.data}: expected DATASET/videos/*.mp4 (the official layout)")
    names = sorted(f for f in os.listdir(videos_dir) if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS)
    written = kept = 0
    for name in names:
        target = os.path.join(args.data, args.kind, os.path.splitext(name)[0] + ".mp4")
        if os.path.exists(target) and not args.overwrite:
            kept += 1
            continue
        _one(make, os.path.join(videos_dir, name), target, args.frames)
        written += 1
    print(f"cosmos control: {written} {args.kind} video(s) written to {os.path.join(args.data, args.kind)}"
          + (f"; kept {kept} existing (--overwrite replaces them)" if kept else ""), file=sys.stderr)
    return 0


def _maker(args):
    """video (3, T, H, W) uint8 -> its control (3, T, H, W) float in [-1, 1]."""
    from cosmos_models.sampling import control

    if args.kind == "edge":
        return lambda video: control.edge_control(video, args.preset)
    if args.kind == "blur":
        return lambda video: control.blur_control(video, args.preset)
    from cosmos_models.sampling.control_models import ControlModel
    return ControlModel(args.kind, args.model, device=args.device, batch_size=args.batch_size, flag="--model")


def _one(make, source: str, target: str, frames: int | None) -> None:
    """One control video: `target` gets the control of `source`, its frames, size and frame rate
    (written to a temporary name first, so a stopped run leaves no half file where training looks)."""
    import torch

    from cosmos_models.data.video_io import read_video, write_video

    video, fps = read_video(source, max_frames=frames, dtype=torch.uint8)
    out = make(video)
    if out.shape[-2] % 2 or out.shape[-1] % 2:  # 4:2:0 video needs even sides
        out = out[..., : out.shape[-2] // 2 * 2, : out.shape[-1] // 2 * 2]
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}.mp4"
    write_video(tmp, out, fps or 16.0)
    os.replace(tmp, target)
    print(f"cosmos control: wrote {target} ({out.shape[1]} frames {out.shape[2]}x{out.shape[3]} at {fps or 16.0:g} fps)",
          file=sys.stderr)
