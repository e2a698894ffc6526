"""Triton kernels, one module per kernel family. Each module lists its H100 launch
configurations in AOT_SPECS for `python -m cosmos_kernels.aot`."""
