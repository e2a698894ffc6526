"""Data: video files and the clips, batches and caches a run reads.

    video_io.py     video and image files <-> tensors (PyAV)
    clips.py        clip datasets from a folder (decoding, fps resampling, resize/crop), sidecar text
                    embeddings and cached latents, resumable rank-sharded loaders, joint image/video
                    batches, the generator of synthetic moving-shape clips, the official post-training
                    layout (videos/ + metas/<name>.txt or metadata.csv captions), aspect-ratio buckets
    actions.py      robot actions of the action-conditioned model from official annotation JSONs
    prepare.py      what a training run reads: the tiny configs' synthetic clip set, latent caching,
                    captions embedded (the official layout), the loaders of a run
    example.py      an example dataset in the official layout (python -m cosmos_models.data.example)

May import: cosmos_kernels, cosmos_models._deps, nets/. Nothing from sampling/, training/,
distill/, perf/, cli/ or bench/.
"""
