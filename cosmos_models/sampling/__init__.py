"""Sampling: from noise (and conditioning) to a video.

    solvers.py      σ grids (the official shifted grid), UniPC and Euler, guidance and conditioning helpers
    sampler.py      Sampler: Text2World, Image2World, Video2World, Transfer, multiview, action, long
                    videos in chunks, VAE decode, mp4 out
    control.py      Transfer2.5 control inputs (edge, blur computed; depth, seg given or computed) and weight maps
    control_models.py depth / segmentation controls by a transformers model the user points to
    presets.py      how each released checkpoint samples (σ grid, steps, guidance, negative prompt, ...)
    specs.py        batch specs: the official inference JSON of every mode, one entry per video
    record.py       the sidecar JSON of a video: every setting and file hash that made it
    parallel.py     several processes: Ulysses context parallel per video, or a batch dealt out
    estimate.py     FLOPs and peak device memory of a run before it runs (--dry-run)

May import: cosmos_kernels, cosmos_models._deps, nets/, data/. Nothing from training/, distill/,
perf/, cli/ or bench/.
"""
