"""Launch-grid arithmetic shared by the Triton and the CUDA launches of the row kernels."""
from __future__ import annotations

# About this many programs/blocks per launch: several waves over 132 SMs, and few enough that the
# backward's per-chunk partial sums stay small next to the activations.
TARGET_PROGRAMS = 2048


def row_chunks(frames: int, N: int) -> tuple[int, int]:
    """(chunks per frame, rows per chunk) for `frames` frames (or frame × column-block programs)
    of N rows each; every chunk is non-empty."""
    chunks = max(1, min(N, TARGET_PROGRAMS // max(1, frames)))
    rows = -(-N // chunks)
    return -(-N // rows), rows
