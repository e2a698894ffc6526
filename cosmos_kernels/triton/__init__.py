"""Triton kernels, one module per kernel family. Each module lists its H100 launch
configurations in AOT_SPECS (AotSpec, below) for `python -m cosmos_kernels.aot`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AotSpec:
    """One launch configuration of a Triton kernel, as the module launches it on an H100."""
    name: str                 # short label, e.g. "adaln_fwd[bf16,D=2048]"
    fn: object                # the @triton.jit function
    signature: dict           # arg -> Triton type string ("*bf16", "i32", "fp32", "constexpr")
    constexprs: dict          # constexpr arg -> value
    num_warps: int = 4
    num_stages: int = 3
    expect_wgmma: bool = False  # True for kernels whose inner loop is tl.dot on H100 tiles
    # args the runtime specializes as divisible by 16 (16-byte aligned pointers, strides % 16 == 0),
    # as it does at launch; without this the report would describe unvectorized loads
    aligned: tuple = ()
    expect_tma: bool = False  # True for the Hopper variants: TMA copies (cp.async.bulk.tensor) must show
    expect_warp_specialized: bool = False  # ... and a warp-specialized loop (ttg.warp_specialize partitions)
