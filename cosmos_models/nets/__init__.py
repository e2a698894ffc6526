"""The networks: what turns tensors into tensors, and nothing about how they are trained or sampled.

    config.py       DiTConfig, SparseWindow, the published configs and their tiny CPU twins
    registry.py     the model variants (predict, transfer, multiview, action): class, sampler modes,
                    example inputs, FLOP terms; a new variant is one entry here plus its tests
    dit.py          the Cosmos-Predict2.5 DiT on cosmos_kernels (official parameter names)
    transfer.py     Transfer2.5 control branch;  variants.py  multiview and action-conditioned DiTs
    flops.py        analytic FLOPs of every variant (and FlopCounterMode formulas for our ops)
    checkpoint.py   weight files: official / diffusers / our names, load strictly, save safetensors
    vae.py          the WAN2.1 VAE front end (diffusers AutoencoderKLWan + latent normalization)
    block_autoencoder.py  the tiny configs' autoencoder: a block PCA in the WAN VAE's latent layout
    text.py         text embeddings: the Reason1 (Qwen2.5-VL) encoder and precomputed embeddings
    text_encoder.py prompts to embeddings for users: find the encoder (never downloading), disk cache
    tiny_text_encoder.py  a tiny random Qwen2.5-VL in Reason1's layout for the tiny configs

May import: cosmos_kernels, cosmos_models._deps, and each other. Nothing from data/, sampling/,
training/, distill/, perf/, cli/ or bench/ (tests/test_import_graph.py enforces it).
"""
