"""Video and image files <-> tensors, through PyAV (FFmpeg).

In memory a video is (C, T, H, W) with C = 3 (RGB), float in [−1, 1] (the model's range) or
uint8 in [0, 255]; `write_video` also takes (T, H, W, C). Files: mp4 with H.264 (libx264), or
MPEG-4 part 2 where this FFmpeg build has no H.264 encoder; images: anything FFmpeg decodes
(PNG, JPEG, WebP, BMP, ...).
"""
from __future__ import annotations

import numbers
import os
from fractions import Fraction

import numpy as np
import torch

from cosmos_models._deps import require

LAYOUTS = ("CTHW", "THWC")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _av():
    """PyAV, imported on first use (reading and writing video and image files needs it)."""
    return require("av", "reading or writing video/image files")


# ----------------------------------------------------------------------------- conversions
def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[−1, 1] float → uint8 [0, 255] (rounded, clamped); uint8 passes through."""
    if video.dtype == torch.uint8:
        return video
    if not video.is_floating_point():
        raise TypeError(f"to_uint8: video has dtype {video.dtype}; expected uint8 or a float type in [-1, 1]")
    return ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] → float in [−1, 1]; a float tensor is only cast."""
    if video.dtype == torch.uint8:
        return video.to(dtype) / 127.5 - 1
    if not video.is_floating_point():
        raise TypeError(f"to_float: video has dtype {video.dtype}; expected uint8 or a float type")
    return video.to(dtype)


def as_cthw(video: torch.Tensor, layout: str | None = None, *, name: str = "video") -> torch.Tensor:
    """(C, T, H, W) view of a 4-D video given in either layout. Without `layout` the one whose
    channel axis has 1 or 3 entries is taken; when both axes fit, `layout` must say which."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 4:
        raise ValueError(f"{name} must be 4-D, (C, T, H, W) or (T, H, W, C), got shape {tuple(video.shape)}")
    if layout is None:
        first, last = video.shape[0] in (1, 3), video.shape[-1] in (1, 3)
        if first == last:
            raise ValueError(f"{name} of shape {tuple(video.shape)} is ambiguous or has no 1/3-channel axis; "
                             f"pass layout= one of {LAYOUTS}")
        layout = "CTHW" if first else "THWC"
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; expected one of {LAYOUTS}")
    out = video if layout == "CTHW" else video.permute(3, 0, 1, 2)
    if out.shape[0] not in (1, 3):
        raise ValueError(f"{name} has {out.shape[0]} channels in layout {layout}; expected 1 or 3 (RGB)")
    return out


# ----------------------------------------------------------------------------- video
def default_codec() -> str:
    """libx264 (H.264) where this FFmpeg has it, else mpeg4."""
    av = _av()
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several types for a missing encoder
            continue
    raise RuntimeError("this PyAV/FFmpeg build has neither the libx264 nor the mpeg4 encoder")


def write_video(path: str | os.PathLike, video: torch.Tensor, fps: float, *, layout: str | None = None,
                codec: str | None = None, crf: int = 18) -> str:
    """Write `video` ((C, T, H, W) or (T, H, W, C); float in [−1, 1] or uint8) as an mp4 at `fps`
    frames per second. H and W must be even (4:2:0 chroma). `crf` sets the H.264 quality
    (0 = lossless, 18 ≈ visually lossless). Returns the codec used."""
    frames = as_cthw(video, layout)
    if frames.shape[0] == 1:
        frames = frames.expand(3, -1, -1, -1)
    _, t, h, w = frames.shape
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < 1000:
        raise ValueError(f"write_video: fps must be a number in (0, 1000), got {fps!r}")
    if t == 0:
        raise ValueError("write_video: video has no frames")
    if h % 2 or w % 2:
        raise ValueError(f"write_video: height and width must be even for 4:2:0 video, got {h}x{w}; "
                         "crop or pad the video first")
    codec = codec or default_codec()
    data = to_uint8(frames).permute(1, 2, 3, 0).cpu().contiguous().numpy()  # (T, H, W, 3)
    av = _av()
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(float(fps)).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            # one encoder thread: x264's threaded encoding is not byte-reproducible, and a seed must
            # give the same file (cosmos sample); the encode is small next to the generation
            stream.options = {"crf": str(int(crf)), "threads": "1"}
        else:
            stream.bit_rate = max(2_000_000, 24 * w * h)  # mpeg4 has no crf: a generous bit rate
            stream.thread_count = 1
        for frame in data:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return codec


def read_video(path: str | os.PathLike, *, max_frames: int | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """Decode a video file to ((3, T, H, W), fps): float `dtype` in [−1, 1], or uint8 for
    `dtype=torch.uint8`. `max_frames` stops after that many frames."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"read_video: max_frames must be >= 1 or None, got {max_frames!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_video: no file at {path!r}")
    av = _av()
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"read_video: {path!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"read_video: {path!r} has no decodable frames")
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).contiguous()  # (3, T, H, W)
    return (video if dtype == torch.uint8 else to_float(video, dtype)), fps


# ----------------------------------------------------------------------------- image
def read_image(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode an image file (PNG, JPEG, ...) to (3, H, W): float `dtype` in [−1, 1], or uint8."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_image: no file at {path!r}")
    av = _av()
    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0))
            image = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, IndexError) as exc:
        raise ValueError(f"read_image: cannot decode {path!r} as an image ({exc})") from None
    image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    return image if dtype == torch.uint8 else to_float(image, dtype)


def read_image_or_video(path: str | os.PathLike, *, max_frames: int | None = None,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float | None]:
    """(3, T, H, W) from an image (T = 1, fps None) or a video file, chosen by the file extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return read_image(path, dtype=dtype)[:, None], None
    return read_video(path, max_frames=max_frames, dtype=dtype)
