"""Data: video files and the clips, batches and caches a run reads.

    video_io.py     video and image files <-> tensors (PyAV)
    clips.py        clip datasets from a folder (decoding, fps resampling, resize/crop), sidecar text
                    embeddings and cached latents, resumable rank-sharded loaders, joint image/video
                    batches, the generator of synthetic moving-shape clips
    prepare.py      what a training run reads: the tiny configs' synthetic clip set, latent caching,
                    the loaders of a run

May import: cosmos_kernels, cosmos_models._deps, nets/. Nothing from sampling/, training/,
distill/, perf/, cli/ or bench/.
"""
