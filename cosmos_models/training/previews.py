"""`cosmos train --sample-every N`: a short video from the EMA weights every N steps, so a user sees
the model learn.

Each preview is text2world from the EMA weights as `ema.safetensors` would hold them (a LoRA run's
adapters merged into the base), with a fixed prompt set and seed: the text embeddings of the first
`--sample-prompts` clips of the data (file order, so the same on every run and resume), seed 0, the
run's frames and resolution, `--sample-steps` solver steps, guidance 0 (no negative prompt needed; a
preview shows what the conditional model learned). The videos go to OUT/samples/step_XXXXXX_pK.mp4
(decoded by --vae; for the tiny configs' generated clips, the autoencoder fitted to them, OUT/vae) and,
with --log-to, a strip of their first, middle and last frames to TensorBoard / W&B. Gathering the EMA
weights is a collective; only rank 0 builds the sampling copy and generates.
"""
from __future__ import annotations

import os

import torch

import cosmos_models as cm
from cosmos_models.data import clips as D
from cosmos_models.data.video_io import write_video

SEED = 0


def prompt_set(data_root: str, count: int, text_len: int) -> list[torch.Tensor]:
    """The text embeddings of the first `count` videos under data_root that have one (sorted paths)."""
    found = []
    for path in D._find_files(data_root, D.VIDEO_EXTENSIONS):
        sidecar = D.text_sidecar(path)
        if sidecar is None:
            continue
        try:
            found.append(D.fit_text(D.load_sidecar(sidecar, "embedding"), text_len).float())
        except D.ClipError:
            continue
        if len(found) == count:
            break
    if not found:
        raise ValueError(f"--sample-every: no text embedding under {data_root} to prompt the previews with")
    return found


def frame_strip(video: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) in [-1, 1] -> (3, H, 3W) uint8: the first, middle and last frames side by side."""
    t = video.shape[1]
    frames = [video[:, i] for i in sorted({0, t // 2, t - 1})]
    return ((torch.cat(frames, dim=-1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Previews:
    """The previews of one run (every rank makes one; rank 0 does the work)."""

    def __init__(self, trainer, *, prompts: int, steps: int):
        self.trainer, self.steps = trainer, steps
        self.folder = os.path.join(trainer.cfg.out, "samples")
        self.prompts = prompt_set(trainer.data_root, prompts, trainer.model_cfg.text_len) if trainer.is_main else []

    def write(self, step: int) -> list[str]:
        """Generate and write this step's previews (rank 0); returns their paths ([] on other ranks)."""
        from cosmos_models.sampling.sampler import Sampler

        t = self.trainer
        weights = t.ema_weights()  # a collective
        if not t.is_main:
            return []
        model = cm.build(t.model_cfg.name)
        cm.load_checkpoint(model, weights)
        del weights
        dtype = torch.bfloat16 if t.layout.device.type == "cuda" else torch.float32
        sampler = Sampler(model, t.vae(), device=t.layout.device, dtype=dtype)
        os.makedirs(self.folder, exist_ok=True)
        paths = []
        for k, text in enumerate(self.prompts):
            path = os.path.join(self.folder, f"step_{step:06d}_p{k}.mp4")
            video = sampler.generate("text2world", prompt_embedding=text, num_frames=t.shape.frames,
                                     height=t.shape.size[0], width=t.shape.size[1], num_steps=self.steps,
                                     guidance_scale=0.0, seed=SEED, progress=False)
            write_video(path, video, t.model_cfg.fps)
            t._loggers.log_media(step, f"sample_p{k}", frame_strip(video), path)
            paths.append(path)
        t.print(f"cosmos {t.name}: step {step}: previews {', '.join(paths)}")
        return paths
