"""Depth and segmentation controls computed by a `transformers` model the user points to.

The official Transfer2.5 tools run Video-Depth-Anything for depth and SAM2 (+ a detector) for
segmentation; neither ships with this library, and we do not reimplement them: any local
`transformers` depth estimator (e.g. a Depth-Anything-V2 folder, `AutoModelForDepthEstimation`) or
semantic / universal segmenter (Segformer, Mask2Former, ... with `post_process_semantic_segmentation`
on its processor) does the job, loaded with `local_files_only` (never downloaded).

    depth = ControlModel("depth", "Depth-Anything-V2-Small-hf/")(video)   # (3, T, H, W) in [-1, 1]

Depth: the model's relative depth per frame, resized (bicubic) to the input's size, then normalized
over the whole clip to 0..255 and floored to uint8 as the official `save_depth_video` writes its depth
video (one min-max for all frames, so brightness does not flicker), the gray map repeated on 3
channels. Segmentation: the per-pixel class of each frame (the processor's semantic post-processing
at the input's size), each class painted with a fixed color (`SEG_PALETTE`, seeded; the official
colors are random per run, so a fixed palette is the reproducible choice). Frames go through the
model `batch_size` at a time.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from cosmos_models._deps import require
from cosmos_models.data.video_io import to_float, to_uint8

KINDS = ("depth", "seg")
FLAGS = {"depth": "--depth-model", "seg": "--seg-model"}


def _palette(n: int = 4096, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct-enough colors, the same on every machine (class id -> color)."""
    g = np.random.default_rng(seed)
    return g.integers(32, 256, size=(n, 3), dtype=np.uint8)


SEG_PALETTE = _palette()


class ControlModel:
    """A depth estimator or segmenter from a local transformers folder, as a video -> control video map."""

    def __init__(self, kind: str, path: str, *, device=None, batch_size: int = 8, flag: str | None = None):
        """flag: the option named in errors (default --depth-model / --seg-model, cosmos sample's)."""
        if kind not in KINDS:
            raise ValueError(f"ControlModel: kind={kind!r}; expected one of {KINDS}")
        flag = flag or FLAGS[kind]
        if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            raise FileNotFoundError(f"{flag} {path!r}: no such folder (a transformers "
                                    f"{'depth-estimation' if kind == 'depth' else 'segmentation'} model saved with "
                                    "save_pretrained, with its preprocessor_config.json)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ControlModel: batch_size must be an int >= 1, got {batch_size!r}")
        transformers = require("transformers", flag)
        self.kind, self.path, self.batch_size = kind, os.fspath(path), batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{flag} {self.path}: cannot load its image processor ({exc})") from None
        self.model = self._load_model(transformers, flag).to(self.device).eval()
        if kind == "seg" and not hasattr(self.processor, "post_process_semantic_segmentation"):
            raise ValueError(f"{flag} {self.path}: its processor {type(self.processor).__name__} has no "
                             "post_process_semantic_segmentation; expected a semantic or universal segmenter")

    def _load_model(self, transformers, flag: str):
        auto = ([transformers.AutoModelForDepthEstimation] if self.kind == "depth" else
                [transformers.AutoModelForSemanticSegmentation, transformers.AutoModelForUniversalSegmentation])
        errors = []
        for cls in auto:
            try:
                return cls.from_pretrained(self.path, local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                errors.append(f"{cls.__name__}: {' '.join(str(exc).split())[:200]}")
        raise ValueError(f"{flag} {self.path}: not a {'depth-estimation' if self.kind == 'depth' else 'segmentation'} "
                         f"model ({'; '.join(errors)})")

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """(3, T, H, W) float in [-1, 1] or uint8 -> the control video (3, T, H, W) float in [-1, 1]."""
        if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[0] != 3 or 0 in video.shape:
            raise ValueError(f"{self.kind} control: video must be a non-empty (3, T, H, W) tensor, got "
                             f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        frames = to_uint8(video).permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3), what processors take
        _, t, h, w = video.shape
        chunks = []
        with torch.inference_mode():
            for s in range(0, t, self.batch_size):
                images = list(frames[s:s + self.batch_size])
                inputs = self.processor(images=images, return_tensors="pt").to(self.device)
                outputs = self.model(**inputs)
                chunks.append(self._depth(outputs, (h, w)) if self.kind == "depth" else self._seg(outputs, len(images), (h, w)))
        out = torch.cat(chunks)  # (T, H, W)
        if self.kind == "depth":
            span = out.max() - out.min()
            gray = torch.zeros_like(out) if span == 0 else ((out - out.min()) / span * 255).floor()
            rgb = gray.to(torch.uint8)[None].expand(3, -1, -1, -1)
        else:
            rgb = torch.from_numpy(SEG_PALETTE[out.numpy() % len(SEG_PALETTE)]).permute(3, 0, 1, 2)
        return to_float(rgb.contiguous()).to(video.device)

    @staticmethod
    def _depth(outputs, size) -> torch.Tensor:
        depth = outputs.predicted_depth.float()  # (B, h, w) relative depth
        return F.interpolate(depth[:, None], size=size, mode="bicubic", align_corners=False)[:, 0].cpu()

    def _seg(self, outputs, n: int, size) -> torch.Tensor:
        maps = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[size] * n)
        return torch.stack([m.to(torch.int64).cpu() for m in maps])

    def release(self) -> None:
        """Free the network (before the DiT runs, so peak memory is the DiT's)."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
