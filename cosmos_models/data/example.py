"""An example post-training dataset in the official layout, for trying the post-training path on a CPU.

    python -m cosmos_models.data.example runs/dataset [--clips 8] [--text-encoder runs/tiny-encoder]

writes runs/dataset/videos/clip_<i>.mp4 (the tiny configs' generated moving shapes, 64x64, 33 frames
at 16 fps) and a caption per clip in runs/dataset/metas/clip_<i>.txt, the layout of the official
post-training guides (DATASET/videos + DATASET/metas). With --text-encoder it also writes a tiny random
Qwen2.5-VL in Cosmos-Reason1-7B's layout (cosmos_models.nets.tiny_text_encoder) whose 48 features fit
the tiny configs, so `cosmos embed --data`, captioned training and `cosmos sample --prompt` run end to end.
"""
from __future__ import annotations

import argparse
import os
import sys

from cosmos_models.data import clips as D

CAPTIONS = ("a red square and a blue disc move over a gradient", "a blue square moves up, a disc moves on the road",
            "shapes move over a gradient, the camera moves", "a square and a disc showing a series of frames")


def make_example_dataset(root: str, clips: int = 8, seed: int = 0) -> list[str]:
    """The dataset under root (see the module doc); returns the video paths."""
    videos = os.path.join(root, D.OFFICIAL_VIDEOS)
    metas = os.path.join(root, D.OFFICIAL_CAPTIONS)
    os.makedirs(metas, exist_ok=True)
    made = D.make_synthetic_videos(videos, n=clips, frames=33, size=(64, 64), fps=16.0, seed=seed)
    paths = []
    for i, path in enumerate(made):
        os.remove(os.path.splitext(path)[0] + ".pt")  # the official layout has captions, not embeddings
        target = os.path.join(videos, f"clip_{i:04d}.mp4")
        os.replace(path, target)
        with open(os.path.join(metas, f"clip_{i:04d}.txt"), "w") as f:
            f.write(CAPTIONS[i % len(CAPTIONS)] + "\n")
        paths.append(target)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cosmos_models.data.example", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="the dataset folder to write")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--text-encoder", default=None, metavar="FOLDER", help="also write a tiny random text encoder here")
    args = p.parse_args(argv)
    if args.clips < 1:
        p.error("--clips must be >= 1")
    paths = make_example_dataset(args.root, args.clips)
    print(f"wrote {len(paths)} clips and captions under {args.root} (videos/, metas/)", file=sys.stderr)
    if args.text_encoder:
        from cosmos_models.nets.tiny_text_encoder import make_tiny_text_encoder

        make_tiny_text_encoder(args.text_encoder)
        print(f"wrote a tiny random text encoder to {args.text_encoder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
