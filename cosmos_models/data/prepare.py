"""What the trainer feeds on: loaders over a clip folder (cosmos_models/data/clips.py), the VAE that encodes
clips without cached latents, the synthetic clip set of the tiny configs, and latent caching.

The tiny configs train without --data: `prepare_synthetic` writes moving-shape mp4s with random text
embeddings (data.make_synthetic_videos) into <out>/data, fits the tiny configs' autoencoder to them
(cosmos_models.nets.block_autoencoder: a block PCA in the WAN VAE's latent layout, fitted in a second,
which reconstructs the clips recognizably where an untrained tiny WAN VAE gives grey noise), saves it
to <out>/vae (for `cosmos sample --vae`) and caches the clips' latents through it. Training then reads
only the cached latents, so a step is a DiT step.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from cosmos_models.data import clips as D
from cosmos_models.nets.block_autoencoder import BlockAutoencoder, is_block_autoencoder
from cosmos_models.nets.config import DiTConfig
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION

SYNTHETIC_MARKER = ".synthetic_complete"
SYNTHETIC_SEED = 0
RANDOM_VAE_SEED = 0  # the seed `cosmos sample` uses for its random VAE


def build_vae(spec: str | None, config: DiTConfig, device: torch.device, dtype: torch.dtype):
    """spec: a diffusers AutoencoderKLWan folder, "tiny" / "wan2.1" (random weights, seed 0), or
    None (the tiny random VAE for tiny configs, else an error naming --vae)."""
    from cosmos_models.nets.vae import WanVAE

    if spec is None:
        if not config.name.startswith("tiny"):
            raise ValueError(f"the data has clips without cached latents, so they must be VAE-encoded: pass --vae "
                             f"<AutoencoderKLWan folder> (the WAN2.1 VAE) for {config.name}, or cache the latents "
                             "(--cache-latents)")
        spec = "tiny"
    if spec in ("tiny", "wan2.1"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_VAE_SEED)
            vae = WanVAE.from_config(spec)
    else:
        if not os.path.isdir(spec):
            raise FileNotFoundError(f"--vae {spec!r}: no such folder (a diffusers AutoencoderKLWan folder, or "
                                    "'tiny' / 'wan2.1' for random weights)")
        vae = WanVAE.load(spec)  # (a tiny run's BlockAutoencoder folder too)
    return vae.to(device=device, dtype=dtype).eval()


def _has_latent(video_path: str, shape: tuple[int, int, int]) -> bool:
    path = os.path.splitext(video_path)[0] + D.LATENT_SUFFIX
    if not os.path.isfile(path):
        return False
    try:
        latent = D.load_sidecar(path, "latent")
    except D.ClipError:
        return False
    return latent.dim() == 4 and tuple(latent.shape[1:]) == shape


def cache_latents(root: str, vae, *, num_frames: int, fps: float, size: tuple[int, int], rank: int = 0,
                  world: int = 1, device: torch.device | None = None, buckets: bool = False) -> int:
    """Encode the first clip of every video under root that has no cached latent of this shape (with
    buckets: of its aspect bucket's size) and write it beside the video as <name>.latent.pt (C, t, h, w)
    fp32. Files are split across ranks. Returns how many this rank wrote."""
    t = 1 + (num_frames - 1) // TEMPORAL_COMPRESSION
    clips = D.ClipDataset(root, num_frames=num_frames, fps=fps, resolution=size, with_text=False,
                          use_latents=False, clip_start="start", buckets=buckets)

    def shape(i):
        h, w = clips.clip_size(i)
        return t, h // SPATIAL_COMPRESSION, w // SPATIAL_COMPRESSION

    todo = [i for i, path in enumerate(clips.files) if not _has_latent(path, shape(i))]
    written = 0
    for i in todo[rank::world]:
        path = clips.files[i]
        item = clips[i]
        if item is None:
            continue
        video = item["video"][None].to(device or "cpu")
        latent = vae.encode(video)[0].float().cpu()
        target = os.path.splitext(path)[0] + D.LATENT_SUFFIX
        tmp = f"{target}.tmp.{os.getpid()}"
        torch.save(latent, tmp)
        os.replace(tmp, target)
        written += 1
    return written


def prepare_synthetic(root: str, config: DiTConfig, *, num_frames: int, size: tuple[int, int], clips: int,
                      vae_dir: str, device: torch.device) -> None:
    """The tiny configs' clip set under root (rank 0 writes it once; every rank waits)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        if not os.path.isfile(os.path.join(root, SYNTHETIC_MARKER)):
            paths = D.make_synthetic_videos(root, n=clips, frames=synthetic_frames(num_frames), size=size,
                                            fps=config.fps, seed=SYNTHETIC_SEED, text_len=config.text_len,
                                            text_dim=config.text_channels)
            if os.path.isdir(vae_dir) and is_block_autoencoder(vae_dir):
                vae = BlockAutoencoder.load(vae_dir)  # a resumed run keeps its code
            else:
                vae = fit_block_autoencoder(paths)
                vae.save(vae_dir)
            cache_latents(root, vae, num_frames=num_frames, fps=config.fps, size=size, device=device)
            with open(os.path.join(root, SYNTHETIC_MARKER), "w") as f:
                f.write(f"{clips} clips, {num_frames} frames at {size[0]}x{size[1]}\n")
    if dist.is_initialized():
        dist.barrier()


def embed_captions(root: str, *, text_encoder: str | None = None, device=None, cache_dir=None,
                   dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> dict:
    """Embed the captions of the official post-training layout under root (DATASET/videos/<name>.mp4 with
    DATASET/metas/<name>.txt, or a row of DATASET/metadata.csv) with the Reason1 encoder (cosmos_models.nets.text_encoder; loaded only
    if a caption needs it, freed after) into DATASET/text_embeddings/<name>.pt, which the loaders read.
    Returns counts: {"written", "present", "no_caption", "encoder"}."""
    from cosmos_models.nets.text_encoder import PromptEncoder, write_embedding

    videos = D._find_files(root, D.VIDEO_EXTENSIONS)
    todo, counts = [], {"written": 0, "present": 0, "no_caption": 0, "encoder": None}
    for path in videos:
        found = D.official_layout(path)
        if found is None:
            continue
        caption = D.caption_of(path)
        if caption is None:
            counts["no_caption"] += 1
            continue
        target = os.path.join(found[0], D.EMBEDDINGS_DIR, found[1] + ".pt")
        if os.path.isfile(target) and not overwrite:
            counts["present"] += 1
            continue
        todo.append((target, caption[1]))
    if todo:
        encoder = PromptEncoder(text_encoder, device=device, cache_dir=cache_dir)
        counts["encoder"] = encoder.path
        for target, text in todo:
            (emb,) = encoder(text)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            write_embedding(target, emb, dtype)
            counts["written"] += 1
        encoder.release()
    return counts


def synthetic_frames(num_frames: int) -> int:
    """Frames of each generated clip: 4k + 1, at least 33 and 8 more than a training clip."""
    frames = max(33, num_frames + 8)
    return frames + (-(frames - 1)) % TEMPORAL_COMPRESSION


def fit_block_autoencoder(paths: list[str]):
    """The tiny configs' autoencoder fitted to the generated clips as decoded from their files (what
    training reads), cosmos_models.nets.block_autoencoder."""
    from cosmos_models.data.video_io import read_video

    clips = []
    for path in paths:
        video, _ = read_video(path)
        frames = 1 + (video.shape[1] - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION
        clips.append(video[:, :frames])
    return BlockAutoencoder.fit(clips)


def build_loader(config: DiTConfig, *, data_root: str, size: tuple[int, int], num_frames: int, batch: int,
                 seed: int, num_workers: int, dp_rank: int, dp_size: int, image_prob: float = 0.0,
                 image_data: str | None = None, image_batch: int | None = None, buckets: bool = False,
                 controls: tuple[str, ...] = ()):
    """The batch source: a ClipLoader over data_root, or a JointLoader of it and an image loader
    (image_prob > 0; images from image_data, or the first frames of data_root's videos); with buckets,
    clips of each aspect-ratio bucket's size, one bucket per batch (clips.ASPECT_BUCKETS).
    controls (Transfer): the clips are decoded (their controls are made from the pixels) and the given
    depth / seg control videos are read beside them (clips.control_video_path).
    Both are sharded over the data-parallel ranks: the ranks of a context-parallel group share batches."""
    common = dict(fps=config.fps, resolution=size, text_len=config.text_len, seed=seed, buckets=buckets)
    videos = D.ClipDataset(data_root, num_frames=num_frames, use_latents=not controls,
                           with_actions=config.variant == "action",
                           controls=[c for c in controls if c in D.GIVEN_CONTROLS], **common)
    video_loader = D.ClipLoader(videos, batch, rank=dp_rank, world_size=dp_size, seed=seed, num_workers=num_workers)
    if image_prob <= 0:
        return video_loader
    if image_data is not None:
        images = D.image_dataset(image_data, source="images", use_latents=False, **common)
    else:
        images = D.image_dataset(data_root, source="videos", use_latents=False, **common)
    image_loader = D.ClipLoader(images, image_batch or batch, rank=dp_rank, world_size=dp_size, seed=seed,
                                num_workers=num_workers)
    return D.JointLoader(video_loader, image_loader, image_prob=image_prob, seed=seed)


class RandomLatents:
    """A batch source of random cached-latent batches of one shape, for measuring a training step
    without data on disk (cosmos_models.perf.mfu): latents (B, 16, T, h, w), text (B, text_len,
    text_channels) and the variant's own inputs (`example_inputs` of its class), each batch drawn from
    a generator seeded by (seed, position), so `state_dict` / `load_state_dict` resume like a ClipLoader."""

    def __init__(self, config: DiTConfig, *, batch: int, latent_shape: tuple[int, int, int], text_len: int | None = None,
                 seed: int = 0):
        from cosmos_models.nets.registry import model_class

        self.config, self.batch, self.latent_shape, self.seed = config, batch, tuple(latent_shape), seed
        self.text_len = config.text_len if text_len is None else text_len
        self.position = 0
        self._cls = model_class(config)

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
            cfg, B = self.config, self.batch
            views = self._cls.flop_views(cfg, self.latent_shape)  # multiview: one prompt per view
            batch = {"latent": torch.randn(B, cfg.latent_channels, *self.latent_shape, generator=g),
                     "text": torch.randn(B, self.text_len * views, cfg.text_channels, generator=g),
                     "is_image": self.latent_shape[0] == 1, "index": torch.arange(B)}
            batch.update(self._cls.example_inputs(cfg, B, self.latent_shape, g))
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
