"""Training data: clips from a folder of real video files, sidecar text embeddings, resumable
sharded batches, joint image/video batches, and a generator of small synthetic videos.

Folder layout (files found recursively, sorted by path, so every rank sees the same list):

    clip.mp4                 a video (.mp4, .webm, .mkv, .mov, .avi), or an image for image datasets
    clip.pt                  its text embedding, shape (L, C) (or (1, L, C)); also clip.safetensors
                             or clip.npy. A .pt/.safetensors file holds one tensor, or several with
                             the one named "embedding". Stored dtype is kept (bf16 stays bf16).
    clip.latent.pt           optional cached VAE latents (C, t, h, w) of the clip (or {"latent": ...});
                             when present and of the right shape the video is not decoded.

The official post-training layout is read too: DATASET/videos/<name>.mp4 with the caption in
DATASET/metas/<name>.txt or a row of DATASET/metadata.csv; `cosmos embed --data` (or `cosmos train
--text-encoder`) embeds the captions once into DATASET/text_embeddings/<name>.pt, where the text is found.

Clips: `num_frames` frames (93 by default) at `fps` (16), resampled by frame timestamps (each target
time takes the nearest decoded frame, so 30 fps is thinned and 8 fps is repeated), resized with
the aspect ratio kept until the frame covers the stage resolution, then center-cropped to it
(`RESOLUTIONS`); float in [−1, 1], (3, T, H, W). Images are 1-frame clips (3, 1, H, W).
With buckets=True the size is instead that of the clip's aspect-ratio bucket at the stage resolution
(`ASPECT_BUCKETS`: 16:9, 4:3, 1:1, 3:4, 9:16 as officially), and the loader batches one bucket at a time.

A file that cannot be opened or decoded, or is shorter than a clip, or a cached latent or text
embedding that is unreadable or holds NaN/Inf, is skipped with one `DataWarning` (once per file and
process, whichever dataset reads it; files found bad when the dataset is built are dropped from it;
a file that fails in a DataLoader worker is reported to the main process, which warns once).

Order and resume: `ShardedSampler` permutes the file list per epoch with (seed, epoch) and hands
rank r every world_size-th entry; `ClipLoader` batches one rank's shard and counts the batches it
has handed out, so `state_dict()` -> {epoch, position, seed, ...} and `load_state_dict` resume at the
next batch exactly (clip starts are drawn from (seed, epoch, index), not from a running stream).
Context-parallel ranks of one group must get the same data: shard over data-parallel ranks only.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from cosmos_models.data import video_io
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION

# Stage resolutions, (H, W) in pixels: 256p is 320×192, 480p 832×480, 720p 1280×704 (W×H).
RESOLUTIONS: dict[str, tuple[int, int]] = {"256p": (192, 320), "480p": (480, 832), "720p": (704, 1280)}
# Aspect-ratio buckets per stage resolution, (H, W): the official loader's VIDEO_RES_SIZE_INFO tables
# ("256", "480p", "720"; there as (W, H)). A clip goes to the bucket of the nearest aspect ratio
# (squared difference of W/H, as the official detect_aspect_ratio) and is resized and center-cropped
# to its size, so a 4:3 or portrait clip is not cropped to 16:9; a batch holds one bucket.
ASPECT_RATIOS: dict[str, float] = {"16,9": 16 / 9, "4,3": 4 / 3, "1,1": 1.0, "3,4": 3 / 4, "9,16": 9 / 16}
ASPECT_BUCKETS: dict[str, dict[str, tuple[int, int]]] = {
    "256p": {"16,9": (192, 320), "4,3": (256, 320), "1,1": (256, 256), "3,4": (320, 256), "9,16": (320, 192)},
    "480p": {"16,9": (480, 832), "4,3": (480, 640), "1,1": (640, 640), "3,4": (640, 480), "9,16": (832, 480)},
    "720p": {"16,9": (704, 1280), "4,3": (704, 960), "1,1": (960, 960), "3,4": (960, 704), "9,16": (1280, 704)},
}
BUCKET_MULTIPLE = 16  # VAE ×8 and patch ×2: a bucket's sides must be multiples of 16
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
IMAGE_EXTENSIONS = video_io.IMAGE_EXTENSIONS
TEXT_SUFFIXES = (".pt", ".safetensors", ".npy")
LATENT_SUFFIX = ".latent.pt"
DEFAULT_NUM_FRAMES = 93
DEFAULT_FPS = 16.0
DEFAULT_TEXT_LEN = 512
CLIP_STARTS = ("random", "start", "center")


_WARNED: set[str] = set()  # the files this process has warned about (each once, whichever dataset read it)


class DataWarning(UserWarning):
    """A data file was skipped (corrupt, too short, missing sidecar)."""


def resolve_resolution(resolution: str | Sequence[int]) -> tuple[int, int]:
    """"256p" / "480p" / "720p", "HxW" in pixels (e.g. "704x1280") or an (H, W) pair -> (H, W)."""
    if isinstance(resolution, str):
        if resolution in RESOLUTIONS:
            return RESOLUTIONS[resolution]
        m = re.fullmatch(r"(\d+)x(\d+)", resolution.lower())
        if m is None:
            raise ValueError(f"resolution {resolution!r} is not one of {sorted(RESOLUTIONS)} or HxW "
                             "(e.g. 704x1280); or pass (H, W)")
        resolution = (int(m.group(1)), int(m.group(2)))
    if (isinstance(resolution, Sequence) and len(resolution) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resolution)):
        return int(resolution[0]), int(resolution[1])
    raise ValueError(f"resolution must be one of {sorted(RESOLUTIONS)} or (H, W) positive ints, got {resolution!r}")


def aspect_key(width: int, height: int) -> str:
    """The aspect-ratio bucket ("16,9", "4,3", "1,1", "3,4", "9,16") nearest to width / height."""
    ratio = width / height
    return min(ASPECT_RATIOS, key=lambda k: (ASPECT_RATIOS[k] - ratio) ** 2)


def aspect_buckets(resolution: str | Sequence[int]) -> dict[str, tuple[int, int]]:
    """aspect key -> (H, W) for a stage resolution: the official table of "256p" / "480p" / "720p" (or
    their sizes); for another size (H, W), buckets of about its pixel count, sides rounded to multiples of 16."""
    h, w = resolve_resolution(resolution)
    for name, size in RESOLUTIONS.items():
        if size == (h, w):
            return dict(ASPECT_BUCKETS[name])
    area, m = h * w, BUCKET_MULTIPLE
    return {key: (max(m, round(math.sqrt(area / r) / m) * m), max(m, round(math.sqrt(area * r) / m) * m))
            for key, r in ASPECT_RATIOS.items()}


def _seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from small ints (stable across processes and Python runs)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- decoding
class ClipError(Exception):
    """This file cannot give a clip (unreadable, no video stream, too short)."""


def _video_stream(container):
    if not container.streams.video:
        raise ClipError("no video stream")
    return container.streams.video[0]


def probe_video(path: str) -> tuple[float, float]:
    """(span, period) in seconds: span = time of the last frame − time of the first; period = one
    source frame. From the container's metadata, or by reading the packets where it has none."""
    av = video_io._av()
    try:
        with av.open(path) as container:
            stream = _video_stream(container)
            rate = stream.average_rate or stream.guessed_rate
            period = 1.0 / float(rate) if rate else None
            if stream.frames and rate:
                return (stream.frames - 1) / float(rate), period
            if stream.duration and stream.time_base and period:
                return max(0.0, float(stream.duration * stream.time_base) - period), period
            if container.duration and period:
                return max(0.0, container.duration / av.time_base - period), period
            times = sorted(float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None)
    except ClipError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg reports damage as many error types
        raise ClipError(f"cannot read it ({type(exc).__name__}: {exc})") from None
    if not times:
        raise ClipError("no video frames")
    gaps = np.diff(times)
    period = float(np.median(gaps)) if len(gaps) else (period or 1.0)
    return times[-1] - times[0], period


def probe_frame_size(path: str) -> tuple[int, int]:
    """(width, height) of a video's (or image's) frames, from its stream's header. Raises ClipError."""
    av = video_io._av()
    try:
        with av.open(path) as container:
            stream = _video_stream(container)
            width, height = stream.codec_context.width, stream.codec_context.height
            if not (width and height):
                frame = next(container.decode(stream))
                width, height = frame.width, frame.height
    except ClipError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg reports damage as many error types
        raise ClipError(f"cannot read it ({type(exc).__name__}: {exc})") from None
    return int(width), int(height)


def _cover_size(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Smallest aspect-preserving size that covers (out_h, out_w)."""
    scale = max(out_h / h, out_w / w)
    return max(out_h, round(h * scale)), max(out_w, round(w * scale))


def _to_rgb(frame, out_h: int, out_w: int) -> np.ndarray:
    """Resize (shorter side, aspect kept) and center-crop one frame to (out_h, out_w, 3) uint8."""
    nh, nw = _cover_size(frame.height, frame.width, out_h, out_w)
    shrink = nh * nw < frame.height * frame.width
    rgb = frame.reformat(width=nw, height=nh, format="rgb24",
                         interpolation="AREA" if shrink else "BICUBIC").to_ndarray()
    top, left = (nh - out_h) // 2, (nw - out_w) // 2
    return rgb[top:top + out_h, left:left + out_w]


def decode_clip(path: str, num_frames: int, fps: float, size: tuple[int, int], start: float = 0.0) -> Tensor:
    """(3, num_frames, H, W) uint8: the frames nearest to the times start + k/fps (seconds from the
    stream's first frame), resized and center-cropped to size = (H, W). Raises ClipError."""
    out_h, out_w = size
    av = video_io._av()
    try:
        with av.open(path) as container:
            stream = _video_stream(container)
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            tolerance = 0.5 / float(rate) if rate else 0.5 / fps
            tb = stream.time_base or Fraction(1, 1)
            origin = float(stream.start_time * tb) if stream.start_time is not None else None
            if start > 0 and origin is not None:
                # lands on the key frame at or before start; frames before it are skipped below
                container.seek(int((origin + start) / tb), stream=stream, backward=True, any_frame=False)
            targets = [start + k / fps for k in range(num_frames)]
            picked: list[np.ndarray] = []
            prev = prev_time = prev_rgb = None
            for index, frame in enumerate(container.decode(stream)):
                ft = float(frame.pts * tb) if frame.pts is not None else index * (2 * tolerance)
                if origin is None:
                    origin = ft
                ft -= origin
                cur_rgb = None
                while len(picked) < num_frames and ft >= targets[len(picked)] - 1e-9:
                    target = targets[len(picked)]
                    if prev is not None and target - prev_time <= ft - target:
                        prev_rgb = prev_rgb if prev_rgb is not None else _to_rgb(prev, out_h, out_w)
                        picked.append(prev_rgb)
                    else:
                        cur_rgb = cur_rgb if cur_rgb is not None else _to_rgb(frame, out_h, out_w)
                        picked.append(cur_rgb)
                if len(picked) == num_frames:
                    break
                prev, prev_time, prev_rgb = frame, ft, cur_rgb
            # past the last frame: it still covers half a source period
            while (len(picked) < num_frames and prev is not None
                   and targets[len(picked)] - prev_time <= tolerance + 1e-6):
                prev_rgb = prev_rgb if prev_rgb is not None else _to_rgb(prev, out_h, out_w)
                picked.append(prev_rgb)
    except ClipError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg reports damage as many error types
        raise ClipError(f"cannot decode it ({type(exc).__name__}: {exc})") from None
    if len(picked) < num_frames:
        raise ClipError(f"too short: {len(picked)} of {num_frames} frames at {fps} fps from {start:.3f} s")
    return torch.from_numpy(np.stack(picked)).permute(3, 0, 1, 2).contiguous()


# ----------------------------------------------------------------------------- sidecars
def _single_tensor(obj, key: str, path: str) -> Tensor:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], Tensor):
            return obj[key]
        tensors = [v for v in obj.values() if isinstance(v, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    raise ClipError(f"{path} holds no single tensor and none named {key!r}")


def load_sidecar(path: str, key: str) -> Tensor:
    """A tensor from a .pt / .safetensors / .npy file (one tensor, or the one named `key`)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return _single_tensor(load_file(path), key, path)
        if path.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False))
        return _single_tensor(torch.load(path, map_location="cpu", weights_only=True, mmap=True), key, path)
    except ClipError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ClipError(f"cannot load {path} ({type(exc).__name__}: {exc})") from None


OFFICIAL_VIDEOS, OFFICIAL_CAPTIONS = "videos", "metas"  # the official post-training layout's folders
METADATA_CSV = "metadata.csv"  # the official layout's optional caption table: a header, then "video,caption" rows
CAPTIONS_JSON = "captions"     # Transfer2.5's single-view layout: DATASET/captions/<name>.json {"caption": ...}
EMBEDDINGS_DIR = "text_embeddings"  # where `cosmos embed --data` puts the captions' embeddings in that layout

_CSV_CACHE: dict[str, tuple[float, dict[str, str]]] = {}  # path -> (mtime, video name -> caption)


def official_layout(video_path: str) -> tuple[str, str] | None:
    """(dataset folder, name) of a video in the official layout DATASET/videos/<name>.mp4 (captions in
    DATASET/metas/<name>.txt, DATASET/captions/<name>.json and/or DATASET/metadata.csv), else None."""
    folder, file = os.path.split(os.path.abspath(video_path))
    if os.path.basename(folder) != OFFICIAL_VIDEOS:
        return None
    root = os.path.dirname(folder)
    if not (os.path.isdir(os.path.join(root, OFFICIAL_CAPTIONS)) or os.path.isdir(os.path.join(root, CAPTIONS_JSON))
            or os.path.isfile(os.path.join(root, METADATA_CSV))):
        return None
    return root, os.path.splitext(file)[0]


def read_metadata_csv(path: str) -> dict[str, str]:
    """video name (file name without extension) -> caption of an official metadata.csv: a header row,
    then one row per clip whose first column is the video file (a path or a name) and second its caption
    (quoted when it holds commas). Cached per file and modification time."""
    import csv

    mtime = os.path.getmtime(path)
    if path in _CSV_CACHE and _CSV_CACHE[path][0] == mtime:
        return _CSV_CACHE[path][1]
    table: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        next(rows, None)  # the header
        for row in rows:
            if len(row) >= 2 and row[0].strip():
                # a caption with unquoted commas comes as several columns: the official reader splits once
                caption = ",".join(row[1:]).strip()
                table[os.path.splitext(os.path.basename(row[0].strip()))[0]] = caption
    _CSV_CACHE[path] = (mtime, table)
    return table


GIVEN_CONTROLS = ("depth", "seg")  # Transfer controls read from videos (edge and blur are computed from the clip)


def control_video_path(video_path: str, kind: str) -> str | None:
    """The given control video of a clip: DATASET/<kind>/<name>.mp4 for DATASET/videos/<name>.mp4 (the
    official Transfer2.5 single-view layout), else <name>_<kind>.mp4 beside the video; None if neither."""
    folder, file = os.path.split(os.path.abspath(video_path))
    name, ext = os.path.splitext(file)
    candidates = [os.path.join(folder, f"{name}_{kind}{ext}")]
    if os.path.basename(folder) == OFFICIAL_VIDEOS:
        candidates.insert(0, os.path.join(os.path.dirname(folder), kind, file))
    return next((c for c in candidates if os.path.isfile(c)), None)


def is_control_video(path: str) -> bool:
    """Whether a video file is another clip's given control (DATASET/depth/<name>.mp4 beside
    DATASET/videos/, or <name>_depth.mp4 beside <name>.mp4): not a training clip itself."""
    folder, file = os.path.split(os.path.abspath(path))
    name, ext = os.path.splitext(file)
    if os.path.basename(folder) in GIVEN_CONTROLS and \
            os.path.isfile(os.path.join(os.path.dirname(folder), OFFICIAL_VIDEOS, file)):
        return True
    return any(name.endswith("_" + kind) and os.path.isfile(os.path.join(folder, name[:-len(kind) - 1] + ext))
               for kind in GIVEN_CONTROLS)


def caption_file(video_path: str) -> str | None:
    """The official layout's caption file of a video (DATASET/metas/<name>.txt), if it exists."""
    found = official_layout(video_path)
    if found is None:
        return None
    path = os.path.join(found[0], OFFICIAL_CAPTIONS, found[1] + ".txt")
    return path if os.path.isfile(path) else None


def caption_of(video_path: str) -> tuple[str, str] | None:
    """(where, caption) of a video in the official layout: metas/<name>.txt, else captions/<name>.json
    ({"caption": ...}, Transfer2.5's form), else its metadata.csv row; None when it has none (or an empty one)."""
    path = caption_file(video_path)
    if path is not None:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        return (path, text) if text else None
    found = official_layout(video_path)
    if found is None:
        return None
    json_path = os.path.join(found[0], CAPTIONS_JSON, found[1] + ".json")
    if os.path.isfile(json_path):
        import json
        try:
            with open(json_path, encoding="utf-8") as f:
                text = json.load(f).get("caption", "")
        except (OSError, ValueError, AttributeError):
            text = ""
        if isinstance(text, str) and text.strip():
            return json_path, text.strip()
    table_path = os.path.join(found[0], METADATA_CSV)
    if os.path.isfile(table_path):
        text = read_metadata_csv(table_path).get(found[1], "")
        if text:
            return f"{table_path} ({found[1]})", text
    return None


def text_sidecar(video_path: str) -> str | None:
    """The text embedding of a video: <name>.pt / .safetensors / .npy beside it, or, in the official
    layout, DATASET/text_embeddings/<name>.pt (written by `cosmos embed --data DATASET`)."""
    stem = os.path.splitext(video_path)[0]
    found = official_layout(video_path)
    stems = [stem] + ([os.path.join(found[0], EMBEDDINGS_DIR, found[1])] if found else [])
    for base in stems:
        for suffix in TEXT_SUFFIXES:
            if os.path.isfile(base + suffix):
                return base + suffix
    return None


def missing_text_reason(video_path: str) -> str:
    """Why a video has no text embedding, and what to do."""
    found = official_layout(video_path)
    if found is None:
        return f"no text embedding ({' / '.join('<name>' + s for s in TEXT_SUFFIXES)} beside it)"
    caption = caption_of(video_path)
    if caption is None:
        return (f"no caption ({os.path.join(found[0], OFFICIAL_CAPTIONS, found[1] + '.txt')} or a row of "
                f"{os.path.join(found[0], METADATA_CSV)})")
    return (f"its caption {caption[0]} is not embedded yet (cosmos embed --data {found[0]}, or cosmos train "
            "--text-encoder FOLDER)")


def fit_text(embedding: Tensor, length: int | None) -> Tensor:
    """(L, C) (or (1, L, C)) -> (length, C): truncated, or zero-padded at the end."""
    if embedding.dim() == 3 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.dim() != 2:
        raise ClipError(f"text embedding must be (L, C), got shape {tuple(embedding.shape)}")
    if length is None or embedding.shape[0] == length:
        return embedding.contiguous()
    if embedding.shape[0] > length:
        return embedding[:length].contiguous()
    pad = embedding.new_zeros(length - embedding.shape[0], embedding.shape[1])
    return torch.cat([embedding, pad])


def _find_files(root: str, extensions: Sequence[str]) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(folder, f) for f in files if os.path.splitext(f)[1].lower() in extensions]
    return sorted(found)


# ----------------------------------------------------------------------------- dataset
class ClipDataset(torch.utils.data.Dataset):
    """Clips of the videos (or images) under `root` (see the module docstring).

    An item is {"video": (3, T, H, W) float in [−1, 1]} or, from a cached latent, {"latent": (C, t, h, w)},
    plus "text" (text_len, C) when with_text, "path" and "index". Index the dataset with an int, or
    with (epoch, index) so random clip starts change per epoch (the samplers below do that).
    A bad file gives None (after its one warning); `collate` drops it.
    """

    def __init__(self, root: str | os.PathLike, *, num_frames: int = DEFAULT_NUM_FRAMES, fps: float = DEFAULT_FPS,
                 resolution: str | Sequence[int] = "720p", text_len: int | None = DEFAULT_TEXT_LEN,
                 with_text: bool = True, use_latents: bool = True, clip_start: str = "random", seed: int = 0,
                 dtype: torch.dtype = torch.float32, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 probe: bool = True, buckets: bool = False, with_actions: bool = False,
                 controls: Sequence[str] = ()):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ClipDataset: no folder at {root!r}")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"ClipDataset: num_frames must be an int >= 1, got {num_frames!r}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"ClipDataset: fps must be a number > 0, got {fps!r}")
        if text_len is not None and (isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1):
            raise ValueError(f"ClipDataset: text_len must be an int >= 1 or None, got {text_len!r}")
        if clip_start not in CLIP_STARTS:
            raise ValueError(f"ClipDataset: clip_start={clip_start!r}; expected one of {CLIP_STARTS}")
        if not dtype.is_floating_point:
            raise TypeError(f"ClipDataset: dtype must be a floating point dtype, got {dtype}")
        self.root, self.num_frames, self.fps = root, num_frames, float(fps)
        self.size = resolve_resolution(resolution)
        # buckets: each file's clip size is the bucket of its aspect ratio (aspect_buckets), else `size`
        self.buckets = aspect_buckets(resolution) if buckets else None
        self._sizes: dict[str, tuple[int, int]] = {}
        self.text_len, self.with_text, self.use_latents = text_len, with_text, use_latents
        self.clip_start, self.seed, self.dtype = clip_start, int(seed), dtype
        self.with_actions = with_actions  # "action": the clip's robot actions (cosmos_models/data/actions.py)
        self.controls = tuple(controls)    # Transfer: the clip's given control videos (control_video_path)
        unknown = [c for c in self.controls if c not in GIVEN_CONTROLS]
        if unknown:
            raise ValueError(f"ClipDataset: controls {unknown} are not among the given kinds {GIVEN_CONTROLS} (edge "
                             "and blur are computed from the clip by the trainer)")
        if self.controls:
            self.use_latents = False  # a control is decoded at the clip's own times: decode the clip too
        self._annotations: dict = {}
        self._warned: set[str] = set()
        self._spans: dict[str, tuple[float, float]] = {}
        files = [f for f in _find_files(root, tuple(e.lower() for e in extensions)) if not is_control_video(f)]
        self.files = [f for f in files if self._usable(f)] if probe else files
        self.skipped = len(files) - len(self.files)  # files dropped at the start (each warned about)
        if not self.files:
            raise ValueError(f"ClipDataset: no usable files with extensions {tuple(extensions)} under {root!r}"
                             + (f" ({len(files)} skipped, see the warnings)" if files else ""))

    def __len__(self) -> int:
        return len(self.files)

    def clip_size(self, index: int) -> tuple[int, int]:
        """(H, W) of the clips of file `index`: its aspect bucket's size with buckets, else `size`."""
        return self._clip_size(self.files[index])

    def _clip_size(self, path: str) -> tuple[int, int]:
        if self.buckets is None:
            return self.size
        if path not in self._sizes:
            self._sizes[path] = self.buckets[aspect_key(*probe_frame_size(path))]
        return self._sizes[path]

    # -- checks ---------------------------------------------------------------------------------
    def _warn_once(self, path: str, why: str) -> None:
        if path in self._warned:
            return
        self._warned.add(path)
        if path not in _WARNED:  # another dataset of this process (the latent cache, images) may have said it
            _WARNED.add(path)
            warnings.warn(f"skipping {path}: {why}", DataWarning, stacklevel=3)

    def _required_span(self) -> float:
        return (self.num_frames - 1) / self.fps

    def _span(self, path: str) -> tuple[float, float]:
        if path not in self._spans:
            self._spans[path] = probe_video(path)
        return self._spans[path]

    def _usable(self, path: str) -> bool:
        try:
            if self.with_text and text_sidecar(path) is None:
                raise ClipError(missing_text_reason(path))
            self._clip_size(path)
            if self.with_actions:
                self._check_annotation(path)
            for kind in self.controls:
                self._check_control(path, kind)
            if self._latent(path) is not None:
                return True
            span, period = self._span(path)
            if span + 0.5 * period + 1e-6 < self._required_span():
                raise ClipError(f"too short: {span + period:.3f} s, a clip of {self.num_frames} frames at "
                                f"{self.fps:g} fps needs {self._required_span() + 1 / self.fps:.3f} s")
        except ClipError as exc:
            self._warn_once(path, str(exc))
            return False
        return True

    def _check_control(self, path: str, kind: str) -> None:
        """A given control video (depth, seg) must exist and last as long as the clip's video."""
        control = control_video_path(path, kind)
        if control is None:
            raise ClipError(f"no {kind} control video ({os.path.join('DATASET', kind, '<name>.mp4')} or "
                            f"<name>_{kind}.mp4 beside it)")
        span, period = self._span(path)
        c_span, c_period = self._span(control)
        frames, c_frames = int(round(span / period)) + 1, int(round(c_span / c_period)) + 1
        if c_frames != frames:
            raise ClipError(f"its {kind} control video {control} has {c_frames} frames but the video {frames}; "
                            "they must match frame for frame")

    def _control_videos(self, path: str, start: float) -> dict[str, Tensor]:
        """{kind: (3, T, H, W) float in [-1, 1]}: each given control video decoded at the clip's times."""
        out = {}
        for kind in self.controls:
            given = decode_clip(control_video_path(path, kind), self.num_frames, self.fps, self._clip_size(path), start)
            out[kind] = given.to(self.dtype).div_(127.5).sub_(1)
        return out

    def _annotation(self, path: str):
        from cosmos_models.data import actions

        if path not in self._annotations:
            found = actions.annotation_path(path)
            if found is None:
                raise ClipError("no action annotation (DATASET/annotations/<name>.json or <name>.json beside it)")
            try:
                self._annotations[path] = actions.Annotation(found)
            except actions.ActionFileError as exc:
                raise ClipError(str(exc)) from None
        return self._annotations[path]

    def _check_annotation(self, path: str) -> None:
        """The annotation must cover every frame of the video (a shorter one is a mismatched file)."""
        ann = self._annotation(path)
        span, period = self._span(path)
        frames = int(round(span / period)) + 1
        if ann.frames < frames:
            raise ClipError(f"its annotation {ann.path} has {ann.frames} frames but the video {frames}; "
                            "they must match frame for frame")

    def _clip_actions(self, path: str, start: float) -> Tensor:
        from cosmos_models.data.actions import source_frame_ids

        ann = self._annotation(path)
        _, period = self._span(path)
        ids = source_frame_ids(start, self.num_frames, self.fps, period)
        return ann.clip_actions([min(i, ann.frames - 1) for i in ids])

    def _latent(self, path: str) -> Tensor | None:
        """The cached latent of this clip when present and shaped for this dataset, else None."""
        if not self.use_latents:
            return None
        latent_path = os.path.splitext(path)[0] + LATENT_SUFFIX
        if not os.path.isfile(latent_path):
            return None
        latent = load_sidecar(latent_path, "latent")
        size = self._clip_size(path)
        h, w = size[0] // SPATIAL_COMPRESSION, size[1] // SPATIAL_COMPRESSION
        t = 1 + (self.num_frames - 1) // TEMPORAL_COMPRESSION
        if latent.dim() != 4 or tuple(latent.shape[1:]) != (t, h, w):
            self._warn_once(latent_path, f"cached latent has shape {tuple(latent.shape)}, expected (C, {t}, {h}, {w}) "
                                         "for this num_frames/resolution; decoding the video instead")
            return None
        return latent

    # -- items ----------------------------------------------------------------------------------
    def clip_start_time(self, path: str, epoch: int, index: int) -> float:
        if self.clip_start == "start":
            return 0.0
        span, period = self._span(path)
        room = max(0.0, span + 0.5 * period - self._required_span())
        if self.clip_start == "center":
            return room / 2
        g = torch.Generator().manual_seed(_seed_for(self.seed, epoch, index))
        return room * float(torch.rand((), generator=g, dtype=torch.float64))

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path = self.files[index]
        try:
            item: dict = {"path": path, "index": index}
            if self.with_text:
                text_path = text_sidecar(path)
                if text_path is None:
                    raise ClipError(missing_text_reason(path))
                item["text"] = fit_text(load_sidecar(text_path, "embedding"), self.text_len)
                if not torch.isfinite(item["text"]).all():
                    raise ClipError(f"its text embedding {text_path} holds NaN or Inf values")
            latent = self._latent(path)
            start = 0.0 if latent is not None else self.clip_start_time(path, epoch, index)  # (latents: the first clip)
            if self.with_actions:
                item["action"] = self._clip_actions(path, start)
            if latent is not None:
                item["latent"] = latent.clone()
                if not torch.isfinite(item["latent"]).all():
                    raise ClipError(f"its cached latent {os.path.splitext(path)[0] + LATENT_SUFFIX} holds NaN or Inf "
                                    "values (delete it to encode the video again)")
            else:
                clip = decode_clip(path, self.num_frames, self.fps, self._clip_size(path), start)
                # in place: a 720p clip is ~1 GB in fp32, temporaries would double it
                item["video"] = clip.to(self.dtype).div_(127.5).sub_(1)
                if self.controls:
                    item["control_video"] = self._control_videos(path, start)
            return item
        except ClipError as exc:
            if torch.utils.data.get_worker_info() is not None:
                # a DataLoader worker: its warnings would be repeated by the next epoch's workers, so
                # the main process says it (ClipLoader), once
                return {"skipped": path, "why": str(exc)}
            self._warn_once(path, str(exc))
            return None


def image_dataset(root: str | os.PathLike, *, source: str = "images", **kwargs) -> ClipDataset:
    """Images as 1-frame clips (3, 1, H, W): image files under root (source="images") or the first
    frame of each video (source="videos"). Other arguments as ClipDataset."""
    if source not in ("images", "videos"):
        raise ValueError(f"image_dataset: source={source!r}; expected 'images' or 'videos'")
    ext = IMAGE_EXTENSIONS if source == "images" else VIDEO_EXTENSIONS
    return ClipDataset(root, num_frames=1, clip_start="start", extensions=ext, **kwargs)


def collate(items: Sequence[dict | None]) -> dict | None:
    """Stack items into a batch, dropping the None of skipped files (None if nothing is left).
    A batch holds one kind, all of one shape: videos, images (T = 1) or latents; joint image/video
    training alternates whole batches (`JointLoader`). Text is zero-padded to the longest in the batch.
    Returns {"video" | "latent", "text"?, "path", "index", "is_image"}, plus "skipped": [(path, why)]
    of the files a DataLoader worker could not read (only that key if none could be read)."""
    skipped = [(it["skipped"], it["why"]) for it in items if it is not None and "skipped" in it]
    items = [it for it in items if it is not None and "skipped" not in it]
    if not items:
        return {"skipped": skipped} if skipped else None
    kind = "latent" if "latent" in items[0] else "video"
    for it in items:
        if kind not in it:
            raise ValueError("collate: a batch mixes cached latents and decoded videos; cache all or none "
                             "of a dataset's latents (or pass use_latents=False)")
        if it[kind].shape != items[0][kind].shape:
            raise ValueError(f"collate: {kind} shapes differ in one batch ({tuple(items[0][kind].shape)} vs "
                             f"{tuple(it[kind].shape)}); batch images and videos separately (JointLoader)")
    batch = {kind: torch.stack([it[kind] for it in items]),
             "path": [it["path"] for it in items],
             "index": torch.tensor([it["index"] for it in items], dtype=torch.int64)}
    batch["is_image"] = batch[kind].shape[2] == 1  # an image is a 1-frame clip (1 latent frame)
    if "action" in items[0]:
        batch["action"] = torch.stack([it["action"] for it in items])
    if "control_video" in items[0]:
        batch["control_video"] = {k: torch.stack([it["control_video"][k] for it in items])
                                  for k in items[0]["control_video"]}
    if "text" in items[0]:
        length = max(it["text"].shape[0] for it in items)
        batch["text"] = torch.stack([fit_text(it["text"], length) for it in items])
    if skipped:
        batch["skipped"] = skipped
    return batch


# ----------------------------------------------------------------------------- order, shards, resume
class ShardedSampler:
    """Per-epoch order of `size` items, split across data-parallel ranks.

    Epoch e is `randperm(size)` drawn from (seed, e) (or 0..size−1 when shuffle=False); rank r takes
    entries r, r + world_size, ... . even=True first drops the size % world_size last entries of the
    permutation (different ones each epoch) so every rank has as many items, which collectives need.
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, even: bool = True):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ShardedSampler: size must be an int >= 1, got {size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"ShardedSampler: need 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        if even and size < world_size:
            raise ValueError(f"ShardedSampler: {size} items cannot be split evenly over {world_size} ranks")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.even = int(seed), shuffle, even

    def order(self, epoch: int) -> list[int]:
        """Epoch e's order of all items (every rank computes the same)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed_for(self.seed, epoch))
            return torch.randperm(self.size, generator=g).tolist()
        return list(range(self.size))

    def indices(self, epoch: int) -> list[int]:
        order = self.order(epoch)
        if self.even:
            order = order[: self.size - self.size % self.world_size]
        return order[self.rank::self.world_size]


class ClipLoader:
    """Batches of one rank's shard, epoch after epoch, resumable at the next batch.

    Iterating goes on forever (training counts steps); `state_dict()` after a batch was received,
    then `load_state_dict` in a new loader (same dataset, seed, batch size, world size) and a new
    `iter()` give the same next batches. Batches with a skipped file are one item short; a batch of
    only skipped files is not yielded (it still counts as consumed). num_workers > 0 decodes in
    DataLoader worker processes; the order does not depend on it.
    """

    def __init__(self, dataset: ClipDataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, even_shards: bool = True, num_workers: int = 0,
                 pin_memory: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ClipLoader: batch_size must be an int >= 1, got {batch_size!r}")
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.sampler = ShardedSampler(len(dataset), rank=rank, world_size=world_size, seed=seed,
                                      shuffle=shuffle, even=even_shards)
        self.bucketed = getattr(dataset, "buckets", None) is not None
        if self.bucketed and not self.batches(0):
            sizes = [dataset.clip_size(i) for i in range(len(dataset))]
            counts = {f"{h}x{w}": sizes.count((h, w)) for h, w in sorted(set(sizes))}
            raise ValueError(f"ClipLoader: no aspect bucket holds one global batch of {batch_size} x {world_size} "
                             f"clips (clips per bucket: {counts}); lower the batch or add clips")
        if not self.bucketed and drop_last and len(self.sampler.indices(0)) < batch_size:
            raise ValueError(f"ClipLoader: rank {rank} has {len(self.sampler.indices(0))} items, fewer than one "
                             f"batch of {batch_size} (drop_last=True)")
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch, self.position = 0, 0

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The (epoch, index) keys of every batch of that epoch on this rank."""
        if self.bucketed:
            return self._bucket_batches(epoch)
        shard = self.sampler.indices(epoch)
        stop = len(shard) - len(shard) % self.batch_size if self.drop_last else len(shard)
        return [[(epoch, i) for i in shard[s:s + self.batch_size]] for s in range(0, stop, self.batch_size)]

    def _bucket_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Aspect buckets: the epoch's order is walked once, each clip joining the pending list of its
        bucket; a list that reaches one global batch (batch_size x world_size) becomes the epoch's next
        global batch, rank r taking its entries r, r + world_size, ... So global batch j is the same on
        every layout of the same global batch size; what is left in the lists at the end of the epoch is
        dropped (other clips next epoch: the order changes)."""
        world, rank, per = self.sampler.world_size, self.sampler.rank, self.batch_size * self.sampler.world_size
        pending: dict[tuple[int, int], list[int]] = {}
        out = []
        for i in self.sampler.order(epoch):
            group = pending.setdefault(self.dataset.clip_size(i), [])
            group.append(i)
            if len(group) == per:
                out.append([(epoch, j) for j in group[rank::world]])
                group.clear()
        if not self.drop_last and world == 1:
            out += [[(epoch, j) for j in group] for group in pending.values() if group]
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.sampler.seed,
                "rank": self.sampler.rank, "world_size": self.sampler.world_size,
                "size": self.sampler.size, "batch_size": self.batch_size, "bucketed": self.bucketed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size", "size", "batch_size", "bucketed"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"ClipLoader.load_state_dict: the saved {key} is {state[key]} but this loader's is "
                                 f"{mine}; an exact resume needs the same data order")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def resharded(self, state: dict) -> dict:
        """A state saved by a loader of another layout (world size, batch size), moved to this one:
        the same epoch, and the position after the same number of the epoch's samples. A rank's
        batch j of an epoch holds its shard's entries j·b … j·b + b − 1, i.e. permutation entries
        (j·b + i)·W + rank: together the ranks' batch j is the epoch's samples j·b·W … (j + 1)·b·W − 1,
        whatever the layout, so a position p of the old layout is p·b·W / (b'·W') in the new one.
        Refused (ValueError) when that is not a whole number of batches, or the data differs."""
        for key in ("seed", "size"):
            if key in state and state[key] != self.state_dict()[key]:
                raise ValueError(f"cannot resume the data position: the saved loader's {key} is {state[key]} but this "
                                 f"one's is {self.state_dict()[key]} (another data folder or --seed)")
        consumed = int(state["position"]) * int(state["batch_size"]) * int(state["world_size"])
        per_batch = self.batch_size * self.sampler.world_size
        if self.bucketed and int(state["batch_size"]) * int(state["world_size"]) != per_batch:
            raise ValueError(f"cannot resume the data position on this layout: with aspect buckets a global batch is "
                             f"one bucket's, so the global batch must stay {state['batch_size']} x "
                             f"{state['world_size']} (this run: {self.batch_size} x {self.sampler.world_size})")
        if consumed % per_batch:
            raise ValueError(f"cannot resume the data position on this layout: {consumed} samples of epoch "
                             f"{state['epoch']} were consumed ({state['position']} batches of {state['batch_size']} on "
                             f"{state['world_size']} data-parallel ranks), not a whole number of this run's global "
                             f"batches of {per_batch} ({self.batch_size} x {self.sampler.world_size}); keep --batch x "
                             "data-parallel ranks equal to the saved run's")
        return {**state, "position": consumed // per_batch, "rank": self.sampler.rank,
                "world_size": self.sampler.world_size, "batch_size": self.batch_size}

    def adopted(self, state: dict) -> dict:
        """A state saved with another data order (a changed --seed, data folder or global batch that
        --allow-change accepted), as a state of this loader: the same epoch, and the same fraction of
        it consumed (rounded down to a whole batch) in this loader's own order. Not an exact resume:
        the order from here is this run's."""
        consumed = int(state["position"]) * int(state["batch_size"]) * int(state["world_size"])
        consumed = min(consumed, self.sampler.size)
        fresh = self.state_dict()
        return {**fresh, "epoch": int(state["epoch"]),
                "position": consumed // (self.batch_size * self.sampler.world_size)}

    def _epoch_batches(self, keys: list[list[tuple[int, int]]]) -> Iterator[dict | None]:
        if self.num_workers == 0:
            for batch_keys in keys:
                yield collate([self.dataset[k] for k in batch_keys])
            return
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=keys, collate_fn=collate,
                                             num_workers=self.num_workers, pin_memory=self.pin_memory)
        yield from loader

    def __iter__(self) -> Iterator[dict]:
        while True:
            keys = self.batches(self.epoch)[self.position:]
            whole_epoch, yielded = self.position == 0, False
            for batch in self._epoch_batches(keys):
                self.position += 1
                for path, why in (batch or {}).pop("skipped", ()):
                    self.dataset._warn_once(path, why)
                if batch is not None and "index" in batch:
                    yielded = True
                    yield batch
            if whole_epoch and not yielded:
                raise RuntimeError(f"ClipLoader: epoch {self.epoch} gave no batch (every file skipped?)")
            self.epoch, self.position = self.epoch + 1, 0


class JointLoader:
    """Joint image/video training: each step is a whole image batch (with probability image_prob,
    drawn from (seed, step)) or a whole video batch. Context parallelism is for video batches only;
    the batch's "is_image" says which. Resumable like ClipLoader."""

    def __init__(self, video: ClipLoader, image: ClipLoader, *, image_prob: float = 0.5, seed: int = 0):
        if not 0.0 <= image_prob <= 1.0:
            raise ValueError(f"JointLoader: image_prob must be in [0, 1], got {image_prob!r}")
        self.video, self.image, self.image_prob, self.seed = video, image, float(image_prob), int(seed)
        self.step = 0
        self._iters: dict[str, Iterator[dict]] = {}

    def is_image_step(self, step: int) -> bool:
        g = torch.Generator().manual_seed(_seed_for(self.seed, step, 0x1A6E))
        return float(torch.rand((), generator=g, dtype=torch.float64)) < self.image_prob

    def __iter__(self) -> Iterator[dict]:
        while True:
            kind = "image" if self.is_image_step(self.step) else "video"
            if kind not in self._iters:
                self._iters[kind] = iter(getattr(self, kind))
            batch = next(self._iters[kind])
            self.step += 1
            yield batch

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "image_prob": self.image_prob,
                "video": self.video.state_dict(), "image": self.image.state_dict()}

    def resharded(self, state: dict) -> dict:
        """A state of another layout moved to this one (ClipLoader.resharded of both loaders)."""
        return {**state, "video": self.video.resharded(state["video"]), "image": self.image.resharded(state["image"])}

    def adopted(self, state: dict) -> dict:
        """A state of another data order moved to this one (ClipLoader.adopted of both loaders)."""
        return {**state, "seed": self.seed, "video": self.video.adopted(state["video"]),
                "image": self.image.adopted(state["image"])}

    def load_state_dict(self, state: dict) -> None:
        self.video.load_state_dict(state["video"])
        self.image.load_state_dict(state["image"])
        self.step = int(state["step"])
        self._iters = {}


# ----------------------------------------------------------------------------- synthetic videos
def _moving_shapes(frames: int, height: int, width: int, g: torch.Generator) -> Tensor:
    """(T, H, W, 3) uint8: a colored gradient background, a square and a disc moving on straight lines."""
    def rand(*shape):
        return torch.rand(*shape, generator=g)

    unit = min(height, width)  # shapes are measured in units of the shorter side, so they stay round
    yy, xx = torch.meshgrid(torch.arange(height) / unit, torch.arange(width) / unit, indexing="ij")
    extent = torch.tensor([height / unit, width / unit])
    c0, c1 = rand(3) * 0.6, rand(3) * 0.6
    background = c0 * (1 - xx[..., None] / extent[1]) + c1 * yy[..., None] / extent[0]
    colors = 0.4 + 0.6 * rand(2, 3)
    size = 0.15 + 0.15 * rand(2)
    start, velocity = rand(2, 2) * extent, (rand(2, 2) - 0.5) * 0.1
    video = background.expand(frames, height, width, 3).clone()
    for t in range(frames):
        # positions bounce inside the frame (triangle wave per axis)
        pos = (start + velocity * t) % (2 * extent)
        pos = torch.where(pos > extent, 2 * extent - pos, pos)
        cy, cx = pos[0]
        square = ((yy - cy).abs() < size[0] / 2) & ((xx - cx).abs() < size[0] / 2)
        cy, cx = pos[1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size[1] / 2) ** 2
        video[t][square] = colors[0]
        video[t][disc] = colors[1]
    return (video * 255).round().clamp(0, 255).to(torch.uint8)


def make_synthetic_videos(directory: str | os.PathLike, n: int = 8, frames: int = 33,
                          size: int | Sequence[int] = (64, 64), fps: float = 16.0, seed: int = 0, *,
                          text_len: int = 8, text_dim: int = 48, extension: str = ".mp4") -> list[str]:
    """Write n moving-shape videos (frames × H × W at fps, H and W even; MPEG-4 part 2) with random
    (text_len, text_dim) sidecar embeddings `<name>.pt` into directory; returns the video paths. The
    files are byte-identical for a seed. The defaults match the tiny model config (text 8 × 48)."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height % 2 or width % 2 or height < 2 or width < 2:
        raise ValueError(f"make_synthetic_videos: size must be even (4:2:0 video), got {(height, width)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"make_synthetic_videos: n and frames must be ints >= 1, got n={n!r}, frames={frames!r}")
    os.makedirs(directory, exist_ok=True)
    g = torch.Generator().manual_seed(int(seed))
    paths = []
    for i in range(n):
        path = os.path.join(os.fspath(directory), f"synthetic_{i:04d}{extension}")
        # mpeg4, not libx264: x264's output changes with thread timing under load, and the same seed
        # must give the same bytes (runs compared or resumed across fresh data sets)
        video_io.write_video(path, _moving_shapes(frames, height, width, g), fps, layout="THWC", codec="mpeg4")
        torch.save(torch.randn(text_len, text_dim, generator=g), os.path.splitext(path)[0] + ".pt")
        paths.append(path)
    return paths
