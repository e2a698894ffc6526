"""The lean model-and-trainer layer of cosmos-kernels (DiT, trainer, samplers, distillation)."""
